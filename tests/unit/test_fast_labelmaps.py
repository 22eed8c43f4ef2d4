"""The run-based fast paths of label-map building against their plain oracles.

``group_runs`` / ``instance_info`` / ``dilated_areas`` / ``draw_balance_params`` are compared
with ``group_by_id_reference`` / ``instance_info_reference`` / ``dilated_area`` (one
``cv2.dilate`` per nucleus) / ``draw_balance_params_reference``, exactly, on random and real maps.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from balance_reference import draw_balance_params_reference
from grouping_reference import group_by_id_reference, instance_info_reference
from hypothesis import given, settings
from hypothesis import strategies as st
from labelmap_helpers import HE_RARE, load_he_patches, maps_from_seed

from benchmarks.labelmaps import random_label_map
from diffmix_aug.data.grouping import group_runs, run_pixels
from diffmix_aug.data.sample import instance_info
from diffmix_aug.labelmaps.balance import (
    dilated_area,
    dilated_areas,
    draw_balance_params,
)
from diffmix_aug.labelmaps.donors import DonorBank
from diffmix_aug.labelmaps.settings import BalanceSettings

SEEDS = st.integers(0, 2**32 - 1)


def _random_map(seed: int, h: int, w: int, n_ids: int, fill: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pool = rng.integers(1, 10_000, size=max(n_ids, 1))
    inst = np.where(rng.random((h, w)) < fill, rng.choice(pool, (h, w)), 0).astype(np.int32)
    types = rng.integers(0, 5, (h, w)).astype(np.int32)
    return inst, types


def _same_info(a, b):
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert x.dtype == y.dtype, f.name
        if f.name == "centroids":
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-9, err_msg=f.name)
        else:
            np.testing.assert_array_equal(x, y, err_msg=f.name)


@settings(max_examples=60, deadline=None)
@given(seed=SEEDS, h=st.integers(1, 40), w=st.integers(1, 40), n_ids=st.integers(0, 200),
       fill=st.floats(0.0, 1.0))
def test_runs_and_info_match_reference(seed, h, w, n_ids, fill):
    inst, types = _random_map(seed, h, w, n_ids, fill)
    runs = group_runs(inst)
    ids, _, areas, pos = group_by_id_reference(inst.ravel())
    np.testing.assert_array_equal(runs.ids, ids)
    np.testing.assert_array_equal(runs.areas, areas)
    np.testing.assert_array_equal(run_pixels(runs), pos)
    assert (runs.length > 0).all() and int(runs.length.sum()) == int((inst > 0).sum())
    for t in (types, None):
        _same_info(instance_info(inst, t), instance_info_reference(inst, t))
        _same_info(instance_info(np.asfortranarray(inst), t), instance_info_reference(inst, t))


def test_runs_do_not_cross_rows():
    inst = np.array([[0, 7, 7], [7, 7, 0]], np.int32)  # id 7 ends row 0 and starts row 1
    runs = group_runs(inst)
    assert runs.count.tolist() == [2] and runs.length.tolist() == [2, 2]
    assert run_pixels(runs).tolist() == [1, 2, 3, 4]


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, size=st.sampled_from([8, 17, 40]), n=st.integers(1, 30))
def test_dilated_areas_match_per_nucleus_dilation(seed, size, n):
    rng = np.random.default_rng(seed)
    inst, _ = _random_map(seed, size, size, n, 0.0)
    for _ in range(n):  # small rectangles and single pixels, touching the border and each other
        y, x = rng.integers(0, size, 2)
        hh, ww = rng.integers(1, 7, 2)
        inst[y:y + hh, x:x + ww] = rng.integers(1, 50)
    info = instance_info(inst)
    if len(info) == 0:
        return
    order = np.random.default_rng(seed + 1).permutation(len(info))
    got = dilated_areas(inst, info.ids[order])
    want = [dilated_area(inst, int(info.ids[k]), info.bboxes[k]) for k in order]
    assert got.tolist() == want


@pytest.mark.parametrize("k", [0, 1, 2])
def test_dilated_areas_real_patches(k):
    _, inst, _ = load_he_patches()[k]
    info = instance_info(inst)
    want = [dilated_area(inst, int(i), b) for i, b in zip(info.ids, info.bboxes)]
    assert dilated_areas(inst, info.ids).tolist() == want


def _same_params(a, b):
    da, db = a.to_dict(), b.to_dict()
    assert da.keys() == db.keys()
    for key in da:
        assert np.array_equal(np.asarray(da[key]), np.asarray(db[key])) if not isinstance(da[key], dict) \
            else da[key] == db[key], key


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, fraction=st.sampled_from([0.5, 0.8, 1.0]), ratio=st.sampled_from([1.0, 2.3, 4.0]),
       target=st.sampled_from([None, {1: 0.3, 2: 0.3, 3: 0.2, 4: 0.2}]))
def test_draw_balance_params_matches_reference(seed, fraction, ratio, target):
    inst, typ = maps_from_seed(seed, n_nuclei=25)
    rng = np.random.default_rng(seed + 1)
    bank = DonorBank.from_maps([random_label_map(rng, 64, 25, rare_share=0.4, radius=(1.5, 5)) for _ in range(3)],
                               (1,), border=6)
    kw = dict(rare_classes=(1,), settings=BalanceSettings(major_fraction=fraction, size_ratio=ratio, border=6,
                                                          target_distribution=target))
    fast = draw_balance_params(np.random.default_rng(seed), inst, typ, bank, **kw)
    ref = draw_balance_params_reference(np.random.default_rng(seed), inst, typ, bank, **kw)
    _same_params(fast, ref)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_draw_balance_params_real_patches(k):
    patches = load_he_patches()
    bank = DonorBank.from_maps([(i, t) for _, i, t in patches], rare_classes=HE_RARE)
    _, inst, typ = patches[k]
    for seed in range(5):
        kw = dict(rare_classes=HE_RARE, exclude_source=k)
        _same_params(draw_balance_params(np.random.default_rng(seed), inst, typ, bank, **kw),
                     draw_balance_params_reference(np.random.default_rng(seed), inst, typ, bank, **kw))
