"""GradMix label mixing: the per-nucleus oracle, report properties, edge cases, DonorBank."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from labelmap_helpers import HE_RARE, load_he_patches, maps_from_seed

from benchmarks.labelmaps import random_label_map, reference_balance
from diffmix_aug.data.sample import instance_info
from diffmix_aug.labelmaps.balance import (
    BalanceParams,
    apply_balance,
    balance_label_map,
    dilated_area,
    draw_balance_params,
)
from diffmix_aug.labelmaps.donors import DonorBank
from diffmix_aug.labelmaps.settings import BalanceSettings

SEEDS = st.integers(0, 2**32 - 1)
SMALL = BalanceSettings(border=6)  # 64-px test maps: a 30-px border would exclude almost every nucleus
KW = dict(rare_classes=(1,))


def _bank(seed: int, n: int = 4, rare_share: float = 0.4, size: int = 64) -> DonorBank:
    rng = np.random.default_rng(seed + 1)
    return DonorBank.from_maps([random_label_map(rng, size, 25, rare_share=rare_share, radius=(1.5, 5))
                                for _ in range(n)], border=SMALL.border, **KW)


def _check_valid(inst, typ):
    ids = np.unique(inst[inst > 0])
    assert ids.tolist() == list(range(1, ids.size + 1))
    pairs = np.unique(np.stack([inst[inst > 0], typ[inst > 0]]), axis=1)
    assert pairs.shape[1] == ids.size
    assert ((typ > 0) <= (inst > 0)).all()


def _check_report(inst, typ, out_i, out_t, rep, params, donors, size_ratio=BalanceSettings.size_ratio):
    _check_valid(out_i, out_t)
    before = instance_info(inst, typ)
    after = instance_info(out_i, out_t)
    kept = np.asarray(rep["kept_ids"])
    assert after.ids.size == kept.size
    old_type = dict(zip(before.ids.tolist(), before.types.tolist()))
    changed = {int(o) for o, t in zip(kept, after.types) if old_type[int(o)] != t}
    assert changed == set(rep["converted_ids"]) - set(rep["vanished_ids"]), "converts exactly what it reports"
    assert sum(rep["converted"].values()) == len(rep["converted_ids"]) == rep["converted_total"]
    assert len(set(rep["donors"])) == len(rep["donors"]), "no donor used twice in one map"
    areas = dict(zip(before.ids.tolist(), before.areas.tolist()))
    for m, ref in zip(rep["converted_ids"], rep["donors"]):
        donor_area = donors.areas[ref] if ref >= 0 else areas[-ref]
        size1 = params.major_areas[params.majors.tolist().index(m)]
        assert size1 >= size_ratio * donor_area, "every used donor obeys the size ratio"


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, fraction=st.sampled_from([0.5, 0.8, 1.0]))
def test_matches_per_nucleus_reference(seed, fraction):
    inst, typ = maps_from_seed(seed)
    bank = _bank(seed % 1000)
    p = draw_balance_params(np.random.default_rng(seed), inst, typ, bank,
                            BalanceSettings(major_fraction=fraction, border=SMALL.border), **KW)
    out_i, out_t, rep = apply_balance(inst, typ, p, bank)
    ri, rt, used = reference_balance(inst, typ, bank, p)
    np.testing.assert_array_equal(out_i, ri)
    np.testing.assert_array_equal(out_t, rt)
    assert list(zip(rep["converted_ids"], rep["donors"])) == used
    _check_report(inst, typ, out_i, out_t, rep, p, bank)


def test_selection_rule():
    inst, typ = maps_from_seed(5, n_nuclei=30)
    p = draw_balance_params(np.random.default_rng(0), inst, typ, _bank(0), SMALL, **KW)
    info = instance_info(inst, typ)
    c = info.centroids
    interior = (c[:, 0] >= 6) & (c[:, 0] <= 58) & (c[:, 1] >= 6) & (c[:, 1] <= 58)
    cand = info.ids[interior & (info.types > 1)]
    assert p.selected.size == int(SMALL.major_fraction * cand.size) and np.isin(p.selected, cand).all()
    assert np.unique(p.selected).size == p.selected.size
    area = dict(zip(info.ids.tolist(), info.areas.tolist()))
    assert [area[m] for m in p.majors] == sorted(area[m] for m in p.majors)
    own = [-r for r in p.pool if r < 0]
    assert own == sorted(own) and p.pool[:len(own)].tolist() == [-o for o in own], "own donors first"


def test_dilated_area_matches_scipy():
    from scipy.ndimage import binary_dilation

    inst, _ = maps_from_seed(11, n_nuclei=20)
    info = instance_info(inst)
    for i, bb in zip(info.ids, info.bboxes):
        assert dilated_area(inst, int(i), bb) == int(binary_dilation(inst == i, iterations=2).sum())


@pytest.mark.parametrize("case", ["empty", "one", "no_donors", "no_majors"])
def test_degenerate_maps_unchanged_with_reason(case):
    inst = np.zeros((96, 96), np.int32)
    typ = np.zeros_like(inst)
    if case == "one":
        inst[40:50, 40:50] = 1
        typ[inst > 0] = 2
    elif case == "no_donors":
        inst[40:50, 40:50], inst[60:66, 30:36] = 1, 2
        typ[inst > 0] = 3
    elif case == "no_majors":
        inst[40:44, 40:44] = 1
        typ[inst > 0] = 1
    donors = None if case == "no_donors" else _bank(0)
    out_i, out_t, rep = balance_label_map(inst, typ, donors, np.random.default_rng(0), (1,))
    np.testing.assert_array_equal(out_i, inst)
    np.testing.assert_array_equal(out_t, typ)
    assert rep["converted_total"] == 0 and isinstance(rep["reason"], str) and rep["reason"]


def test_target_distribution_converts_only_as_needed():
    inst, typ = random_label_map(np.random.default_rng(2), 128, 60, rare_share=0.0, radius=(3, 7))
    bank = _bank(3, n=8, rare_share=0.6)
    n = len(instance_info(inst, typ))
    _, out_t, rep = balance_label_map(inst, typ, bank, np.random.default_rng(0), (1,),
                                      BalanceSettings(major_fraction=1.0, border=6, target_distribution={1: 0.1}))
    assert rep["converted"] == {1: int(np.ceil(0.1 * n))}
    assert len(rep["skipped"].get("target_reached", [])) > 0
    full = balance_label_map(inst, typ, bank, np.random.default_rng(0), (1,),
                             BalanceSettings(major_fraction=1.0, border=6))[2]
    assert full["converted_total"] > rep["converted_total"]


def test_multiple_rare_classes():
    rng = np.random.default_rng(4)
    maps = []
    for _ in range(6):
        i, t = random_label_map(rng, 64, 25, rare_share=0.0, radius=(1.5, 5))
        t = np.where((i % 3 == 0) & (i > 0), 1, np.where((i % 3 == 1) & (i > 0), 4, t)).astype(np.int32)
        maps.append((i, t))
    bank = DonorBank.from_maps(maps, rare_classes=(1, 4), border=6)
    assert set(bank.types.tolist()) == {1, 4}
    inst, typ = random_label_map(np.random.default_rng(9), 96, 30, rare_share=0.0, radius=(4, 8))
    typ = np.where(typ == 4, 2, typ).astype(np.int32)
    p = draw_balance_params(np.random.default_rng(0), inst, typ, bank, SMALL, rare_classes=(1, 4))
    out_i, out_t, rep = apply_balance(inst, typ, p, bank)
    assert set(rep["converted"]) == {1, 4}
    assert p.assign_type.tolist() == [int(bank.types[d]) for d in p.assign_donor]
    _check_report(inst, typ, out_i, out_t, rep, p, bank)


def test_fixed_seed_and_json_replay():
    inst, typ = maps_from_seed(21, n_nuclei=25)
    bank = _bank(5)
    a = balance_label_map(inst, typ, bank, np.random.default_rng(1), settings=SMALL, **KW)
    b = balance_label_map(inst, typ, bank, np.random.default_rng(1), settings=SMALL, **KW)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[2] == b[2]
    p = draw_balance_params(np.random.default_rng(1), inst, typ, bank, SMALL, **KW)
    p2 = BalanceParams.from_dict(json.loads(json.dumps(p.to_dict())))
    np.testing.assert_array_equal(apply_balance(inst, typ, p2, bank)[0], a[0])


def test_real_patches_against_reference():
    patches = load_he_patches()
    bank = DonorBank.from_maps([(i, t) for _, i, t in patches], rare_classes=HE_RARE)
    assert len(bank) > 0
    for k, (_, inst, typ) in enumerate(patches):
        p = draw_balance_params(np.random.default_rng(k), inst, typ, bank, rare_classes=HE_RARE, exclude_source=k)
        out_i, out_t, rep = apply_balance(inst, typ, p, bank)
        ri, rt, used = reference_balance(inst, typ, bank, p)
        np.testing.assert_array_equal(out_i, ri)
        np.testing.assert_array_equal(out_t, rt)
        _check_report(inst, typ, out_i, out_t, rep, p, bank)


@settings(max_examples=10, deadline=None)
@given(seed=SEEDS, k=st.integers(0, 2), fraction=st.sampled_from([0.5, 0.8, 1.0]),
       ratio=st.sampled_from([1.5, 2.3, 4.0]))
def test_properties_on_real_maps(seed, k, fraction, ratio):
    patches = load_he_patches()
    bank = DonorBank.from_maps([(i, t) for _, i, t in patches], rare_classes=HE_RARE)
    _, inst, typ = patches[k]
    kw = dict(rare_classes=HE_RARE, settings=BalanceSettings(major_fraction=fraction, size_ratio=ratio),
              exclude_source=k)
    p = draw_balance_params(np.random.default_rng(seed), inst, typ, bank, **kw)
    out_i, out_t, rep = apply_balance(inst, typ, p, bank)
    _check_report(inst, typ, out_i, out_t, rep, p, bank, size_ratio=ratio)
    again = balance_label_map(inst, typ, bank, np.random.default_rng(seed), **kw)
    np.testing.assert_array_equal(again[0], out_i)


def test_donor_bank_contents_pickle_and_order():
    maps = [maps_from_seed(s, n_nuclei=25) for s in range(5)]
    bank = DonorBank.from_maps(maps, rare_classes=(1,), border=6)
    for m, a, src, i, bb in zip(bank.masks, bank.areas, bank.sources, bank.inst_ids, bank.bboxes):
        inst = maps[src][0]
        np.testing.assert_array_equal(m, inst[bb[0]:bb[2], bb[1]:bb[3]] == i)
        assert m.sum() == a and maps[src][1][inst == i][0] == 1
    assert ((bank.centroids >= 6) & (bank.centroids <= 58)).all(), "border rule"
    clone = pickle.loads(pickle.dumps(bank))
    assert len(clone) == len(bank) and bank.nbytes < 20_000
    o1 = bank.pool_order(np.random.default_rng(0))
    assert sorted(o1.tolist()) == list(range(len(bank)))
    srcs = bank.sources[o1]
    assert (np.diff(np.flatnonzero(np.r_[True, srcs[1:] != srcs[:-1]])) > 0).all()
    assert np.unique(srcs[np.r_[True, srcs[1:] != srcs[:-1]]]).size == np.unique(srcs).size, "grouped by source"
    o2 = bank.pool_order(np.random.default_rng(0), exclude_source=int(bank.sources[0]))
    assert int(bank.sources[0]) not in bank.sources[o2].tolist()
    orders = {tuple(bank.sources[bank.pool_order(np.random.default_rng(s))][:1]) for s in range(20)}
    assert len(orders) > 1, "the source order is drawn"


def test_donor_bank_from_dataset_and_images():
    from diffmix_aug.data.toy import make_toy_dataset

    ds = make_toy_dataset(3, 96, 0)
    a = DonorBank.from_dataset(ds, border=10)  # the toy set names its rare class
    b = DonorBank.from_maps([(ds[i].inst_map, ds[i].type_map) for i in range(3)], (1,), border=10)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    c = DonorBank.from_dataset(ds, border=10, keep_images=True, image_margin=4)
    assert c.images is not None and len(c.images) == len(c)
    for im, m in zip(c.images, c.masks):
        assert im.shape == (m.shape[0] + 8, m.shape[1] + 8, 3) and im.dtype == np.uint8
    if len(c):
        bb, src = c.bboxes[0], int(c.sources[0])
        np.testing.assert_array_equal(c.image_patch(0, bb[0] + 2, bb[1] + 2, 4, 4), ds[src].image[bb[0]:bb[0] + 4,
                                                                                                    bb[1]:bb[1] + 4])
        assert c.image_patch(0, bb[0], bb[1], 60, 60).shape == (60, 60, 3), "edge-padded beyond the crop"
    with pytest.raises(ValueError, match="keep_images"):
        a.image_patch(0, 0, 0, 2, 2)


def test_bad_arguments():
    z = np.zeros((8, 8), np.int32)
    with pytest.raises(ValueError, match="same shape"):
        balance_label_map(z, np.zeros((8, 9), np.int32), None, np.random.default_rng(0), (1,))
    with pytest.raises(ValueError, match="size_ratio"):
        balance_label_map(z, z, None, np.random.default_rng(0), (1,), BalanceSettings(size_ratio=0))
    with pytest.raises(ValueError, match="rare_classes"):
        balance_label_map(z, z, None, np.random.default_rng(0), rare_classes=())
    with pytest.raises(TypeError, match="donors"):
        balance_label_map(z, z, [1, 2], np.random.default_rng(0), (1,))
    with pytest.raises(ValueError, match="target_distribution"):
        balance_label_map(z, z, None, np.random.default_rng(0), (1,), BalanceSettings(target_distribution={1: 2.0}))
    with pytest.raises(TypeError, match="BalanceSettings"):
        balance_label_map(z, z, None, np.random.default_rng(0), (1,), {"size_ratio": 2.0})
