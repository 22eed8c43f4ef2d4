"""The procedural toy dataset: determinism, validity, imbalance, laziness."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from diffmix_aug.data import NucleiSample, get_dataset_info, remap_label
from diffmix_aug.data.dataset import NucleiDataset
from diffmix_aug.data.toy import ToyGenerator, make_toy_dataset


def test_types_shapes_and_validity():
    ds = make_toy_dataset(6, size=64, seed=3)
    assert isinstance(ds, NucleiDataset) and len(ds) == 6
    assert ds.info == get_dataset_info("toy") and ds.num_classes == 5
    for s in ds:
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        assert s.inst_map.dtype == np.int32 and s.type_map.dtype == np.int32
        # The trusted output passes full validation unchanged (strict: one type per instance).
        NucleiSample(s.image, s.inst_map, s.type_map, num_classes=5, strict=True)
        # ids are contiguous 1..n in order of appearance
        np.testing.assert_array_equal(remap_label(s.inst_map), s.inst_map)
        assert 1 <= len(s.info) <= 40
        assert set(np.unique(s.info.types)) <= {1, 2, 3, 4}


def test_instances_are_connected():
    from scipy import ndimage

    for s in make_toy_dataset(8, size=64, seed=1):
        for i in s.info.ids:
            _, n = ndimage.label(s.inst_map == i)
            assert n == 1, f"instance {i} has {n} pieces"


def test_deterministic_and_independent_of_access_order():
    a = make_toy_dataset(5, size=64, seed=7)
    b = make_toy_dataset(5, size=64, seed=7)
    for i in (4, 0, 2):
        x, y = a[i], b[i]
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.inst_map, y.inst_map)
        np.testing.assert_array_equal(x.type_map, y.type_map)
    # item i is a pure function of (seed, i): the same through a pickled copy (a spawned worker)
    c = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(c[3].image, a[3].image)
    assert not np.array_equal(make_toy_dataset(1, size=64, seed=8)[0].image, a[0].image)
    assert not np.array_equal(a[0].image, a[1].image)


def test_generation_is_lazy_and_pickles_small():
    ds = make_toy_dataset(100_000, size=256, seed=0)
    assert len(ds) == 100_000
    assert len(pickle.dumps(ds)) < 2_000


def test_default_imbalance_rare_class_near_2_5_percent():
    stats = make_toy_dataset(300, size=64, seed=0).class_stats()
    share = stats["count_share"]
    assert 0.02 <= share[1] <= 0.03, share
    assert share[1] == share[1:].min()
    assert (share[2:] > 0.2).all()
    assert stats["counts"][0] == 0 and stats["num_nuclei"] > 2500
    # areas: miscellaneous and epithelial nuclei are larger than inflammatory ones
    mean_area = stats["areas"][1:] / np.maximum(stats["counts"][1:], 1)
    assert mean_area[0] > mean_area[1] and mean_area[2] > 1.5 * mean_area[1]


def test_nuclei_density_and_stain():
    ds = make_toy_dataset(30, size=64, seed=2)
    counts = [len(s.info) for s in ds]
    assert 5 <= np.median(counts) <= 20
    s = ds[0]
    fg = s.inst_map > 0
    img = s.image.astype(float)
    # hematoxylin nuclei are darker and bluer than the eosin stroma
    assert img[fg].mean() < img[~fg].mean() - 30
    assert (img[fg][:, 2] - img[fg][:, 1]).mean() > (img[~fg][:, 2] - img[~fg][:, 1]).mean()


def test_class_frequencies_argument():
    only_spindle = make_toy_dataset(4, size=64, seed=0, class_frequencies={4: 1.0})
    for s in only_spindle:
        assert set(np.unique(s.info.types)) <= {4}
    seq = make_toy_dataset(2, size=64, seed=0, class_frequencies=[1, 1, 1, 1])
    assert isinstance(seq[0], NucleiSample)
    with pytest.raises(ValueError, match="class_frequencies"):
        make_toy_dataset(2, class_frequencies=[1, 2])
    with pytest.raises(ValueError, match="class_frequencies"):
        make_toy_dataset(2, class_frequencies=[0, 0, 0, 0])
    with pytest.raises(ValueError, match="class_frequencies"):
        make_toy_dataset(2, class_frequencies={5: 1.0})
    with pytest.raises(ValueError, match="size"):
        make_toy_dataset(2, size=8)
    with pytest.raises(ValueError, match="`n`"):
        make_toy_dataset(0)


def test_generator_is_frozen_and_picklable():
    g = ToyGenerator(size=64, seed=1)
    assert pickle.loads(pickle.dumps(g)) == g
    np.testing.assert_array_equal(g(5).inst_map, ToyGenerator(size=64, seed=1)(5).inst_map)
