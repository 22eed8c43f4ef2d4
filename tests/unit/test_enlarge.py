"""Enlarging maps: reference semantics, the plain per-nucleus oracle, properties, replay."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from labelmap_helpers import load_he_patches, maps_from_seed

from benchmarks.labelmaps import reference_enlarge
from diffmix_aug.data.sample import instance_info
from diffmix_aug.labelmaps.enlarge import EnlargeParams, apply_enlarge, draw_enlarge_params, enlarge_label_map
from diffmix_aug.labelmaps.settings import EnlargeSettings

SEEDS = st.integers(0, 2**32 - 1)


def _check_valid(inst: np.ndarray, typ: np.ndarray) -> None:
    assert inst.dtype == np.int32 and typ.dtype == np.int32
    ids = np.unique(inst[inst > 0])
    assert ids.tolist() == list(range(1, ids.size + 1)), "ids must be contiguous 1..n"
    assert ((typ > 0) <= (inst > 0)).all(), "typed background"
    pairs = np.unique(np.stack([inst[inst > 0], typ[inst > 0]]), axis=1)
    assert pairs.shape[1] == ids.size, "each instance must have exactly one type"


def _multiset(inst, typ, ids=None):
    info = instance_info(inst, typ)
    keep = np.ones(len(info), bool) if ids is None else np.isin(info.ids, ids)
    return Counter(zip(info.types[keep].tolist(), info.areas[keep].tolist()))


def test_reference_shift_law_and_border_band():
    inst = np.zeros((256, 256), np.int32)
    k = 0
    for y in range(8, 248, 12):  # a grid of 3x3 nuclei, some in the 32-px band
        for x in range(8, 248, 12):
            k += 1
            inst[y:y + 3, x:x + 3] = k
    p = draw_enlarge_params(np.random.default_rng(0), inst)
    bb = instance_info(inst).bboxes
    in_band = (bb[:, 0] < 32) | (bb[:, 1] < 32) | (bb[:, 2] > 224) | (bb[:, 3] > 224)
    np.testing.assert_array_equal(p.fixed, in_band)
    assert (p.shifts[p.fixed] == 0).all()
    s = p.shifts[~p.fixed]
    assert s.min() >= -15 and s.max() <= 14, "randint(-15, 15) draws -15..14"
    frac = (s != 0).mean()
    assert 0.22 < frac < 0.38, f"each axis is kept with p = 0.3 (minus zero draws), got {frac}"
    # the maintainers' "0-3 px": symmetric draws -3..3
    p3 = draw_enlarge_params(np.random.default_rng(1), inst, EnlargeSettings(max_shift=3, symmetric=True, p_shift=1.0))
    s3 = p3.shifts[~p3.fixed]
    assert s3.min() == -3 and s3.max() == 3


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, overlap=st.sampled_from(["overwrite", "avoid"]), margin=st.sampled_from([0, 8, 32]))
def test_matches_per_nucleus_reference(seed, overlap, margin):
    inst, typ = maps_from_seed(seed)
    rng = np.random.default_rng(seed)
    p = draw_enlarge_params(rng, inst, EnlargeSettings(max_shift=6, p_shift=0.5, border_margin=margin, overlap=overlap,
                                                       max_overlap=0.3))
    fi, ft, _ = apply_enlarge(inst, typ, p)
    ri, rt = reference_enlarge(inst, typ, p)
    np.testing.assert_array_equal(fi, ri)
    np.testing.assert_array_equal(ft, rt)
    _check_valid(fi, ft)


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS)
def test_avoid_preserves_type_area_multiset_unless_dropped(seed):
    inst, typ = maps_from_seed(seed)
    p = draw_enlarge_params(np.random.default_rng(seed), inst, EnlargeSettings(
        max_shift=8, p_shift=0.8, border_margin=4, overlap="avoid", max_overlap=0.0, max_tries=3))
    out_i, out_t, rep = apply_enlarge(inst, typ, p)
    _check_valid(out_i, out_t)
    kept = p.ids[~p.dropped]
    assert rep["dropped_ids"] == p.ids[p.dropped].tolist()
    assert rep["vanished_ids"] == [] and rep["overwritten_pixels"] == 0
    assert _multiset(out_i, out_t) == _multiset(inst, typ, kept)
    assert int(out_i.max()) == kept.size


@settings(max_examples=10, deadline=None)
@given(seed=SEEDS, k=st.integers(0, 2), max_shift=st.sampled_from([3, 15]))
def test_properties_on_real_maps(seed, k, max_shift):
    _, inst, typ = load_he_patches()[k]
    avoid = EnlargeSettings(max_shift=max_shift, overlap="avoid", max_overlap=0.0)
    p = draw_enlarge_params(np.random.default_rng(seed), inst, avoid)
    out_i, out_t, rep = apply_enlarge(inst, typ, p)
    _check_valid(out_i, out_t)
    assert _multiset(out_i, out_t) == _multiset(inst, typ, p.ids[~p.dropped])
    assert rep["dropped_ids"] == p.ids[p.dropped].tolist()
    o2 = enlarge_label_map(inst, typ, np.random.default_rng(seed), avoid)
    np.testing.assert_array_equal(o2[0], out_i)


def test_overwrite_later_wins_and_reports_vanished():
    inst = np.zeros((40, 40), np.int32)
    inst[10:14, 10:14] = 1
    inst[10:14, 20:24] = 2
    typ = np.where(inst == 1, 2, 3 * (inst > 0)).astype(np.int32)
    shifts = np.array([[0, 10], [0, 0]], np.int32)  # 1 moves exactly onto 2; 2 is painted later and wins
    p = EnlargeParams((40, 40), np.array([1, 2], np.int32), shifts, np.zeros(2, bool), np.zeros(2, bool),
                      np.zeros(2, bool))
    out_i, out_t, rep = apply_enlarge(inst, typ, p)
    assert rep["vanished_ids"] == [1] and rep["overwritten_pixels"] == 16
    assert out_i.max() == 1 and (out_t == 3).sum() == 16
    # first-writer-wins under "avoid"
    pa = EnlargeParams((40, 40), p.ids, shifts, p.fixed, p.dropped, p.reverted, "avoid")
    out_i, out_t, rep = apply_enlarge(inst, typ, pa)
    assert rep["vanished_ids"] == [2] and (out_t == 2).sum() == 16


def test_shift_out_of_image_clips_pixels():
    inst = np.zeros((32, 32), np.int32)
    inst[2:6, 2:6] = 1
    p = EnlargeParams((32, 32), np.array([1], np.int32), np.array([[-4, 0]], np.int32), np.zeros(1, bool),
                      np.zeros(1, bool), np.zeros(1, bool))
    out_i, _, _ = apply_enlarge(inst, inst.copy(), p)
    assert (out_i > 0).sum() == 8 and out_i[:2, 2:6].all()


def test_fixed_seed_and_json_replay():
    inst, typ = maps_from_seed(7, n_nuclei=25)
    small = EnlargeSettings(max_shift=6, border_margin=4)
    a = enlarge_label_map(inst, typ, np.random.default_rng(3), small)
    b = enlarge_label_map(inst, typ, np.random.default_rng(3), small)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    p = draw_enlarge_params(np.random.default_rng(3), inst, EnlargeSettings(max_shift=6, border_margin=4, overlap="avoid"))
    p2 = EnlargeParams.from_dict(json.loads(json.dumps(p.to_dict())))
    np.testing.assert_array_equal(apply_enlarge(inst, typ, p)[0], apply_enlarge(inst, typ, p2)[0])


def test_precomputed_info_gives_the_same_params():
    inst, _ = maps_from_seed(4, n_nuclei=20)
    a = draw_enlarge_params(np.random.default_rng(2), inst, EnlargeSettings(border_margin=4))
    b = draw_enlarge_params(np.random.default_rng(2), inst, EnlargeSettings(border_margin=4), info=instance_info(inst))
    assert a.to_dict() == b.to_dict()


def test_empty_map():
    z = np.zeros((16, 16), np.int32)
    i, t = enlarge_label_map(z, z, np.random.default_rng(0), EnlargeSettings(overlap="avoid"))
    assert not i.any() and not t.any()


def test_real_patches():
    for _, inst, typ in load_he_patches():
        for overlap in ("overwrite", "avoid"):
            p = draw_enlarge_params(np.random.default_rng(0), inst, EnlargeSettings(overlap=overlap, max_overlap=0.0))
            out_i, out_t, rep = apply_enlarge(inst, typ, p)
            _check_valid(out_i, out_t)
            ri, rt = reference_enlarge(inst, typ, p)
            np.testing.assert_array_equal(out_i, ri)
            np.testing.assert_array_equal(out_t, rt)
            assert rep["fixed"] + int((~p.fixed).sum()) == p.ids.size


def test_bad_arguments():
    z = np.zeros((8, 8), np.int32)
    with pytest.raises(ValueError, match="overlap"):
        enlarge_label_map(z, z, np.random.default_rng(0), EnlargeSettings(overlap="merge"))
    with pytest.raises(ValueError, match="same shape"):
        enlarge_label_map(z, np.zeros((8, 9), np.int32), np.random.default_rng(0))
    with pytest.raises(TypeError, match="inst_map"):
        enlarge_label_map(z.astype(float), z, np.random.default_rng(0))
    with pytest.raises(ValueError, match="p_shift"):
        enlarge_label_map(z, z, np.random.default_rng(0), EnlargeSettings(p_shift=1.5))
    with pytest.raises(TypeError, match="EnlargeSettings"):
        enlarge_label_map(z, z, np.random.default_rng(0), {"p_shift": 0.5})
    inst, typ = maps_from_seed(1, n_nuclei=5)
    p = draw_enlarge_params(np.random.default_rng(0), inst)
    with pytest.raises(ValueError, match="draw_enlarge_params"):
        apply_enlarge(inst[:, :40], typ[:, :40], p)
