"""The ablation's arms (``benchmarks/arm_streams.py``): synthetic items come through ``DiffMixDataset``."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.arm_streams import ArmStream, RareCrops, open_store_dataset, wants_extra
from benchmarks.consep_pool import write_store
from diffmix_aug.data.dataset import NucleiDataset
from diffmix_aug.data.toy import make_toy_dataset


@pytest.fixture(scope="module")
def base():
    ds = make_toy_dataset(10, 32, seed=3)
    return NucleiDataset.from_samples([ds[i] for i in range(len(ds))], ds.info)


def _classes(base):
    from diffmix_aug.class_table import ClassTable

    return ClassTable(base.info.num_classes, tuple(base.info.rare_classes), tuple(base.info.class_names))


def _store(tmp_path, base, n, name, mode="balance", shift=0):
    items = [base[(i + shift) % len(base)] for i in range(n)]
    imgs = np.stack([255 - s.image for s in items])  # recognisable: no real patch has these pixels
    inst = np.stack([s.inst_map for s in items])
    typ = np.stack([s.type_map for s in items])
    return (write_store(tmp_path / name, imgs, inst, typ, [{"k": i} for i in range(n)], mode=mode,
                        classes=_classes(base)), imgs, inst)


def test_decisions_are_diffmix_datasets(tmp_path, base):
    store, _, _ = _store(tmp_path, base, 1, "e", mode="enlarge")
    ds = open_store_dataset(base, store, arm="diffmix-e", ratio=0.3, seed=4, max_reuse=1, capacity=1)
    try:
        for e in range(3):
            for i in range(len(base)):
                assert wants_extra(4, e, i, 0.3) == ds.wants_synthetic(i, e)
    finally:
        ds.close()


def test_synthetic_arm_serves_the_store_through_the_dataset(tmp_path, base):
    store, imgs, inst = _store(tmp_path, base, 4, "b")
    st = ArmStream("diffmix-b", base, seed=1, iterations=6, batch_size=4, ratio=0.5, store=store, store_size=4)
    ref = ArmStream("baseline", base, seed=1, iterations=6, batch_size=4, ratio=0.5)
    items = [st[t] for t in range(len(st))]
    st.finish()
    assert st.synthetic.sum() == st.extra.sum() > 0  # every slot that asked got a pool patch
    for t, item in enumerate(items):
        if st.synthetic[t]:
            assert any(np.array_equal(item.image, im) for im in imgs)
        else:  # the real item of the same slot in every arm
            np.testing.assert_array_equal(item.image, ref[t].image)
    ex = st.exposure(np.zeros((len(st), 2), np.int64))
    assert ex["dataset"]["synthetic_served"] == ex["dataset"]["synthetic_asked"] == st.extra.sum()
    assert ex["dataset"]["pool_serves_max"] <= st.max_reuse
    assert ex["dataset"]["source"].startswith("DiffMixDataset(base, None")
    with pytest.raises(ValueError, match="another configuration"):  # the store's mode is checked
        ArmStream("diffmix-e", base, seed=1, iterations=1, batch_size=1, ratio=0.5, store=store, store_size=4)


def test_gradmix_and_diffmix_b_replay_the_same_maps(tmp_path, base):
    b, _, _ = _store(tmp_path, base, 3, "b")
    g, _, _ = _store(tmp_path, base, 3, "g")
    sb = ArmStream("diffmix-b", base, seed=2, iterations=5, batch_size=4, ratio=0.5, store=b, store_size=3)
    sg = ArmStream("gradmix", base, seed=2, iterations=5, batch_size=4, ratio=0.5, store=g, store_size=3)
    for t in range(len(sb)):
        np.testing.assert_array_equal(sb[t].inst_map, sg[t].inst_map)
    sb.finish()
    sg.finish()


def test_rare_crops_centre_a_rare_nucleus():
    ds = make_toy_dataset(6, 64, seed=3, class_frequencies=[0.4, 0.2, 0.2, 0.2])
    base = NucleiDataset.from_samples([ds[i] for i in range(len(ds))], ds.info)
    rc = RareCrops([base[i] for i in range(len(base))], 16, (1,), jitter=2)
    for s in range(20):
        crop = rc(np.random.default_rng(s))
        assert crop.inst_map.shape == (16, 16)
        assert (crop.type_map == 1).any()
    st = ArmStream("rare-crop", base, seed=0, iterations=4, batch_size=4, ratio=0.5, rare_crops=rc)
    for t in range(len(st)):
        st[t]
    assert st.synthetic.sum() == st.extra.sum()
    assert st.rare_item[st.synthetic, 0].min() >= 1
    with pytest.raises(ValueError, match="rare_crops"):
        ArmStream("rare-crop", base, seed=0, iterations=1, batch_size=1, ratio=0.5)
    with pytest.raises(ValueError, match="store"):
        ArmStream("diffmix-e", base, seed=0, iterations=1, batch_size=1, ratio=0.5)
