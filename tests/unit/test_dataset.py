"""NucleiDataset: constructors, laziness, pickling, tiling, class statistics."""

from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pytest
import torch

from diffmix_aug.data import NucleiDataset, NucleiSample, get_dataset_info
from diffmix_aug.data.patches import extract_patches
from diffmix_aug.data.readers import write_hovernet_npy

TOY = get_dataset_info("toy")


def _sample(rng, h=16, w=16, n=3, k=4):
    inst = np.zeros((h, w), np.int32)
    typ = np.zeros((h, w), np.int32)
    for i in range(1, n + 1):
        y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
        inst[y:y + 3, x:x + 3] = i
    present = np.unique(inst)[1:]
    lut = np.zeros(n + 1, np.int32)
    lut[present] = rng.integers(1, k + 1, present.size)
    typ = lut[inst]
    return NucleiSample(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), inst, typ)


def test_from_samples_protocol_and_class_stats(rng):
    samples = [_sample(rng) for _ in range(5)]
    ds = NucleiDataset.from_samples(samples, TOY)
    assert isinstance(ds, torch.utils.data.Dataset)
    assert len(ds) == 5 and ds.num_classes == 5 and ds.info is TOY
    assert ds[-1] is samples[-1]
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(TypeError, match="index"):
        ds[1.0]
    stats = ds.class_stats()
    counts = sum(np.bincount(s.info.types, minlength=5) for s in samples)
    areas = sum(np.bincount(s.info.types, weights=s.info.areas, minlength=5) for s in samples)
    np.testing.assert_array_equal(stats["counts"], counts)
    np.testing.assert_array_equal(stats["areas"], areas.astype(np.int64))
    np.testing.assert_allclose(stats["count_share"][1:].sum(), 1.0)
    assert stats["class_names"] == list(TOY.class_names) and stats["num_samples"] == 5
    assert ds.class_stats() is stats  # computed once
    with pytest.raises(TypeError, match="samples\\[1\\]"):
        NucleiDataset.from_samples([samples[0], "x"], TOY)
    with pytest.raises(TypeError, match="DatasetInfo"):
        NucleiDataset.from_samples(samples, "toy")


def test_from_generator():
    calls = []

    def fn(i):
        calls.append(i)
        return NucleiSample.trusted(np.full((8, 8, 3), i, np.uint8), np.zeros((8, 8), np.int32),
                                    np.zeros((8, 8), np.int32))

    ds = NucleiDataset.from_generator(fn, 4, TOY)
    assert calls == [] and len(ds) == 4
    assert ds[2].image[0, 0, 0] == 2 and calls == [2]
    with pytest.raises(TypeError, match="fn"):
        NucleiDataset.from_generator(3, 4, TOY)
    with pytest.raises(ValueError, match="`n`"):
        NucleiDataset.from_generator(fn, 0, TOY)


def _write_pannuke(path, n, hw=16, seed=0):
    rng = np.random.default_rng(seed)
    images = np.lib.format.open_memmap(path / "images.npy", "w+", np.float64, (n, hw, hw, 3))
    masks = np.lib.format.open_memmap(path / "masks.npy", "w+", np.float64, (n, hw, hw, 6))
    images[:] = rng.integers(0, 256, images.shape)
    masks[:, 2:5, 2:5, 1] = 3  # an inflammatory nucleus in every image
    masks[:, 8:12, 8:12, 4] = 5  # an epithelial one
    masks[..., 5] = masks[..., :5].sum(-1) == 0
    images.flush()
    masks.flush()
    del images, masks


def test_pannuke_fold_is_lazy_memmapped_and_pickles_small(tmp_path):
    _write_pannuke(tmp_path, 1000)
    tracemalloc.start()
    ds = NucleiDataset.from_pannuke(tmp_path / "images.npy", tmp_path / "masks.npy")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000, f"construction allocated {peak} bytes"  # the fold is ~12 MB
    assert len(ds) == 1000 and ds.info.name == "pannuke"
    assert ds._source._arrays is None  # nothing opened yet
    blob = pickle.dumps(ds)
    assert len(blob) < 2_000
    s = ds[999]
    assert isinstance(ds._source._arrays[0], np.memmap)
    assert s.image.dtype == np.uint8 and s.inst_map.max() == 2
    assert set(np.unique(s.type_map)) == {0, 2, 5}
    # after use, the pickle still carries paths only (a spawned worker re-opens the maps)
    assert len(pickle.dumps(ds)) < 2_000
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._source._arrays is None
    np.testing.assert_array_equal(clone[999].image, s.image)


def test_from_pannuke_and_conic_errors(tmp_path):
    np.save(tmp_path / "img.npy", np.zeros((3, 8, 8, 3), np.uint8))
    np.save(tmp_path / "bad.npy", np.zeros((3, 8, 8, 5), np.int32))
    np.save(tmp_path / "short.npy", np.zeros((2, 8, 8, 6), np.int32))
    with pytest.raises(ValueError, match=r"bad\.npy.*last axis 6"):
        NucleiDataset.from_pannuke(tmp_path / "img.npy", tmp_path / "bad.npy")
    with pytest.raises(ValueError, match=r"short\.npy"):
        NucleiDataset.from_pannuke(tmp_path / "img.npy", tmp_path / "short.npy")
    with pytest.raises(FileNotFoundError, match="missing"):
        NucleiDataset.from_conic(tmp_path / "img.npy", tmp_path / "missing.npy")


def test_from_conic(tmp_path, rng):
    labels = np.zeros((3, 8, 8, 2), np.int32)
    labels[:, 1:4, 1:4] = (1, 6)
    np.save(tmp_path / "images.npy", rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8))
    np.save(tmp_path / "labels.npy", labels)
    ds = NucleiDataset.from_conic(tmp_path / "images.npy", tmp_path / "labels.npy")
    assert len(ds) == 3 and ds.num_classes == 7
    assert ds[1].info.types.tolist() == [6]
    assert ds.class_stats()["counts"][6] == 3


def test_hovernet_npy_dir_and_tiling(tmp_path, rng):
    samples = [_sample(rng, 20, 24, n=4) for _ in range(3)]
    for k, s in enumerate(samples):
        write_hovernet_npy(tmp_path / f"tile_{k:03d}.npy", s)
    ds = NucleiDataset.from_hovernet_npy_dir(tmp_path, TOY)
    assert len(ds) == 3
    np.testing.assert_array_equal(ds[2].to_hovernet(), samples[2].to_hovernet())
    tiled = NucleiDataset.from_hovernet_npy_dir(tmp_path, TOY, patch_size=12, step=5)
    expected = [p for s in samples for p in extract_patches(s.to_hovernet(), 12, 5, "mirror")]
    assert len(tiled) == len(expected)
    for i in (0, 7, len(expected) - 1, 3):
        np.testing.assert_array_equal(tiled[i].to_hovernet(), expected[i])
    valid = ds.tiled((10, 12), (10, 12), mode="valid")
    assert len(valid) == 3 * 2 * 2
    assert valid[5].meta["origin"] == (0, 12) and valid[5].meta["item"] == 1
    assert len(pickle.dumps(tiled)) < 5_000
    with pytest.raises(FileNotFoundError, match="no files"):
        NucleiDataset.from_hovernet_npy_dir(tmp_path, TOY, pattern="*.png")


def test_consep_dir_tiled_like_hovernet(tmp_path, rng):
    import cv2
    from scipy.io import savemat

    (tmp_path / "Images").mkdir()
    (tmp_path / "Labels").mkdir()
    tiles = []
    for k in range(2):
        s = _sample(rng, 40, 40, n=6, k=7)
        cv2.imwrite(str(tmp_path / "Images" / f"t{k}.png"), s.image[..., ::-1])
        savemat(tmp_path / "Labels" / f"t{k}.mat", {"inst_map": s.inst_map, "type_map": s.type_map})
        tiles.append(s)
    ds = NucleiDataset.from_consep_dir(tmp_path, "consep")
    assert len(ds) == 2 and ds.info.name == "consep"
    np.testing.assert_array_equal(ds[1].type_map, get_dataset_info("consep").merge(tiles[1].type_map))
    tiled = NucleiDataset.from_consep_dir(tmp_path, "consep", patch_size=20, step=8)
    merged = [NucleiSample(t.image, t.inst_map, get_dataset_info("consep").merge(t.type_map)) for t in tiles]
    expected = [p for t in merged for p in extract_patches(t.to_hovernet(), 20, 8)]
    assert len(tiled) == len(expected)
    for i in range(len(expected)):
        np.testing.assert_array_equal(tiled[i].to_hovernet(), expected[i])
    with pytest.raises(ValueError, match="dataset"):
        NucleiDataset.from_consep_dir(tmp_path, "pannuke")


def test_works_in_a_dataloader_with_a_collate(rng):
    ds = NucleiDataset.from_samples([_sample(rng) for _ in range(4)], TOY)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=lambda b: np.stack([s.image for s in b]))
    assert [b.shape for b in loader] == [(2, 16, 16, 3)] * 2
