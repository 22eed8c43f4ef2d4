"""LabelMapSampler: modes, params-first replay, JSON round trip, pickling, DataLoader workers."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from diffmix_aug.data.sample import NucleiSample
from diffmix_aug.data.toy import make_toy_dataset
from diffmix_aug.labelmaps.balance import apply_balance, draw_balance_params
from diffmix_aug.labelmaps.donors import DonorBank
from diffmix_aug.labelmaps.enlarge import apply_enlarge, draw_enlarge_params
from diffmix_aug.labelmaps.sampler import LabelMapParams, LabelMapResult, LabelMapSampler
from diffmix_aug.labelmaps.settings import BalanceSettings, EnlargeSettings

SIZE = 96
BAL, ENL = BalanceSettings(border=10), EnlargeSettings(border_margin=8, max_shift=6)
KW = dict(balance=BAL, enlarge=ENL, num_classes=5, rare_classes=(2,))  # toy class 2 nuclei are small


@pytest.fixture(scope="module")
def data():
    ds = make_toy_dataset(4, SIZE, 0)
    return ds, DonorBank.from_dataset(ds, rare_classes=(2,), border=BAL.border)


def _valid(out: LabelMapResult, shape):
    assert out.inst_map.dtype == np.int32 and out.type_map.dtype == np.int32
    assert out.inst_map.shape == shape
    ids = np.unique(out.inst_map[out.inst_map > 0])
    assert ids.tolist() == list(range(1, ids.size + 1))
    pairs = np.unique(np.stack([out.inst_map[out.inst_map > 0], out.type_map[out.inst_map > 0]]), axis=1)
    assert pairs.shape[1] == ids.size


@pytest.mark.parametrize("mode", ["balance", "enlarge", "union", "composed"])
def test_params_first_replay_and_json(data, mode):
    ds, bank = data
    lms = LabelMapSampler(mode, donors=bank, **{**KW, "num_classes": ds.num_classes})
    s = ds[1]
    out = lms(s, np.random.default_rng(5))
    _valid(out, s.shape)
    steps = {"balance": {"balance"}, "enlarge": {"enlarge"}, "composed": {"balance", "enlarge"}}
    assert out.mode == mode
    if mode == "union":  # one of the two, drawn per map
        assert set(out.report) in ({"balance"}, {"enlarge"}) and out.params.kind in ("balance", "enlarge")
    else:
        assert set(out.report) == steps[mode] and out.params.kind == mode
    params = lms.get_params(np.random.default_rng(5), s)
    assert isinstance(params, LabelMapParams)
    again = lms.apply(s, params)
    np.testing.assert_array_equal(again.inst_map, out.inst_map)
    np.testing.assert_array_equal(again.type_map, out.type_map)
    restored = LabelMapParams.from_dict(json.loads(json.dumps(params.to_dict())))
    np.testing.assert_array_equal(lms.apply(s, restored).inst_map, out.inst_map)
    replay = pickle.loads(pickle.dumps(params))
    np.testing.assert_array_equal(lms.apply(s, replay).type_map, out.type_map)


def test_composed_is_balance_then_enlarge(data):
    ds, bank = data
    s = ds[2]
    rng = np.random.default_rng(9)
    out = LabelMapSampler("composed", donors=bank, **KW)(s, np.random.default_rng(9))
    bp = draw_balance_params(rng, s.inst_map, s.type_map, bank, BAL, rare_classes=(2,), exclude_source=2)
    bi, bt, _ = apply_balance(s.inst_map, s.type_map, bp, bank)
    ep = draw_enlarge_params(rng, bi, ENL)
    ei, et, _ = apply_enlarge(bi, bt, ep)
    np.testing.assert_array_equal(out.inst_map, ei)
    np.testing.assert_array_equal(out.type_map, et)
    assert out.report["balance"]["converted_total"] > 0


def test_union_is_one_balancing_or_enlarging_map_drawn_first(data):
    """The paper's DiffMix: each map is exactly the balance-only or the enlarge-only map of the same
    generator state after one uniform draw (p = 0.5), never both."""
    ds, bank = data
    union = LabelMapSampler("union", donors=bank, **KW)
    only = {m: LabelMapSampler(m, donors=bank, **KW) for m in ("balance", "enlarge")}
    kinds = []
    for seed in range(40):
        s = ds[seed % len(ds)]
        out = union(s, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        kind = "balance" if rng.random() < 0.5 else "enlarge"
        ref = only[kind](s, rng)
        np.testing.assert_array_equal(out.inst_map, ref.inst_map)
        np.testing.assert_array_equal(out.type_map, ref.type_map)
        assert out.params.kind == kind and out.mode == "union" and set(out.report) == {kind}
        kinds.append(kind)
    assert 10 <= kinds.count("balance") <= 30  # both kinds, about half each


def test_both_is_refused_naming_its_replacements():
    from diffmix_aug.config import DiffMixConfig

    for make in (lambda: LabelMapSampler("both", num_classes=5), lambda: DiffMixConfig(mode="both")):
        with pytest.raises(ValueError, match="'both' was removed") as info:
            make()
        assert "mode='union'" in str(info.value) and "mode='composed'" in str(info.value)
        assert "probability 0.5" in str(info.value) and "enlarge(balance(map))" in str(info.value)


def test_enlarging_needs_no_rare_classes_balancing_does():
    assert LabelMapSampler("enlarge", num_classes=5).rare_classes == ()
    for mode in ("balance", "union", "composed"):
        with pytest.raises(ValueError, match="non-empty"):
            LabelMapSampler(mode, num_classes=5, rare_classes=())


def test_accepts_map_tuples_and_is_picklable(data):
    ds, bank = data
    lms = LabelMapSampler("balance", donors=bank, **KW)
    clone = pickle.loads(pickle.dumps(lms))
    s = ds[0]
    a = lms((s.inst_map, s.type_map), np.random.default_rng(1))
    b = clone((s.inst_map, s.type_map), np.random.default_rng(1))
    np.testing.assert_array_equal(a.inst_map, b.inst_map)
    assert "LabelMapSampler" in repr(lms)


class _Maps(torch.utils.data.Dataset):
    def __init__(self, ds, lms, seed):
        self.ds, self.lms, self.seed = ds, lms, seed

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        out = self.lms(self.ds[i], np.random.default_rng([self.seed, i]))
        return torch.from_numpy(out.inst_map), torch.from_numpy(out.type_map)


def test_runs_in_dataloader_workers(data):
    ds, bank = data
    lms = LabelMapSampler("union", donors=bank, **KW)
    ref = [_Maps(ds, lms, 3)[i] for i in range(len(ds))]
    loader = torch.utils.data.DataLoader(_Maps(ds, lms, 3), batch_size=None, num_workers=2,
                                         multiprocessing_context="fork")
    got = list(loader)
    for (ri, rt), (gi, gt) in zip(ref, got):
        assert torch.equal(ri, gi) and torch.equal(rt, gt)


def test_bad_arguments(data):
    ds, bank = data
    with pytest.raises(ValueError, match="mode"):
        LabelMapSampler("mix", num_classes=5)
    with pytest.raises(ValueError, match="rare_classes"):
        LabelMapSampler("balance", rare_classes=(7,), num_classes=5)
    with pytest.raises(TypeError, match="DonorBank"):
        LabelMapSampler("balance", donors=[1], num_classes=5, rare_classes=(1,))
    with pytest.raises(ValueError, match="overlap"):
        LabelMapSampler("enlarge", num_classes=5, enlarge=EnlargeSettings(overlap="merge"))
    with pytest.raises(TypeError, match=r"`enlarge` must be of type EnlargeSettings.*max_shift"):
        LabelMapSampler("enlarge", num_classes=5, enlarge={"max_shift": 3})
    with pytest.raises(TypeError, match=r"`balance` must be of type BalanceSettings"):
        LabelMapSampler("balance", num_classes=5, rare_classes=(1,), balance=EnlargeSettings())
    with pytest.raises(TypeError, match="max_shift"):
        LabelMapSampler("enlarge", num_classes=5, max_shift=3)  # the options live in EnlargeSettings
    lms = LabelMapSampler("enlarge", num_classes=5)
    with pytest.raises(TypeError, match="Generator"):
        lms(ds[0], 0)
    with pytest.raises(ValueError, match="mode"):
        lms.apply(ds[0], LabelMapParams("balance"))


def test_borders_scale_below_the_reference_patch_and_the_default_sampler_uses_them():
    from diffmix_aug.dataset import build_label_sampler
    from diffmix_aug.labelmaps.sampler import borders_for_patch

    assert borders_for_patch(256) == {"balance": BalanceSettings(), "enlarge": EnlargeSettings()}  # the reference
    assert borders_for_patch(64) == {"balance": BalanceSettings(border=8), "enlarge": EnlargeSettings(border_margin=8)}
    assert borders_for_patch(8) == {"balance": BalanceSettings(border=2), "enlarge": EnlargeSettings(border_margin=2)}
    with pytest.raises(ValueError, match="patch_size"):
        borders_for_patch(0)
    ds = make_toy_dataset(16, 64, 0)
    small = build_label_sampler(ds, "composed", 5, (1,), patch_size=(64, 64))
    assert small.balance.border == 8 and small.enlarge.border_margin == 8
    assert small.donors.border == 8
    large = build_label_sampler(ds, "enlarge", 5, (1,), patch_size=512)
    assert large.enlarge == EnlargeSettings() and large.balance == BalanceSettings()
    # at 64 px the reference bands leave no interior nucleus; the scaled ones balance for real
    rng = np.random.default_rng(0)
    converted = sum(sum(small(ds[i], rng).report["balance"]["converted"].values()) for i in range(len(ds)))
    reference = LabelMapSampler("balance", donors=DonorBank.from_dataset(ds, (1,)), num_classes=5, rare_classes=(1,))
    unchanged = sum(sum(reference(ds[i], rng).report["balance"]["converted"].values()) for i in range(len(ds)))
    assert converted > 0 and unchanged == 0


def _maps_with(types_value=None, inst_value=None):
    inst = np.zeros((40, 40), np.int32)
    inst[5:12, 5:12], inst[20:30, 20:30] = 1, 2
    typ = np.where(inst == 1, 1, np.where(inst == 2, 2, 0)).astype(np.int32)
    if types_value is not None:
        typ[inst == 2] = types_value
    if inst_value is not None:
        inst[inst == 2] = inst_value
    return NucleiSample.trusted(np.zeros((40, 40, 3), np.uint8), inst, typ, meta={"index": 7})


@pytest.mark.parametrize("mode", ["enlarge", "balance", "union", "composed"])
def test_class_ids_beyond_num_classes_are_refused_not_rendered(mode):
    """Issue 32, case 6: types up to 28 in a 5-class set-up were drawn and rendered (as another class)."""
    lms = LabelMapSampler(mode, num_classes=5, rare_classes=(1,))
    for value, got in ((28, "got 0..28"), (-1, "got -1..1")):
        sample = _maps_with(types_value=value)
        for call in (lambda s=sample: lms.get_params(np.random.default_rng(0), s),
                     lambda s=sample: lms(s, np.random.default_rng(0)),
                     lambda s=sample: lms.get_params(np.random.default_rng(0), (s.inst_map, s.type_map))):
            with pytest.raises(ValueError) as err:
                call()
            msg = str(err.value)
            assert "`type_map`" in msg and "must be in 0..4 (num_classes=5" in msg and got in msg
            assert "merge the dataset's classes" in msg
    with pytest.raises(ValueError, match=r"`type_map` of item 7 classes"):
        lms.get_params(np.random.default_rng(0), _maps_with(types_value=28))
    assert lms.get_params(np.random.default_rng(0), _maps_with(types_value=4)) is not None  # the last class is fine


def test_bad_ids_and_samples_get_a_clear_error():
    lms = LabelMapSampler("enlarge", num_classes=5, rare_classes=(1,))
    with pytest.raises(ValueError, match=r"`inst_map` of item 7 ids must be >= 0 .*minimum -3.*remap_label"):
        lms.get_params(np.random.default_rng(0), _maps_with(inst_value=-3))
    s = _maps_with()
    with pytest.raises(TypeError, match=r"`type_map` must hold integer ids, got float64"):
        lms.get_params(np.random.default_rng(0), (s.inst_map, s.type_map.astype(float)))
    with pytest.raises(TypeError, match=r"`sample` must be a NucleiSample or an \(inst_map, type_map\) tuple, got"):
        lms.get_params(np.random.default_rng(0), {"inst_map": s.inst_map, "type_map": s.type_map})
    for bad in ("abc", 1, [1.5], [True]):
        with pytest.raises(TypeError, match=r"`rare_classes` must be a sequence of class ids \(ints in 1..4\)"):
            LabelMapSampler("balance", num_classes=5, rare_classes=bad)
