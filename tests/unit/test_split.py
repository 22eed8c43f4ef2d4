"""Tile splits, subsets, downsampling and provenance of the data layer (real-tissue support)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
from PIL import Image

from diffmix_aug.data.classes import get_dataset_info
from diffmix_aug.data.dataset import NucleiDataset
from diffmix_aug.data.sample import NucleiSample
from diffmix_aug.data.split import split_by_tile, tile_number, tile_of
from diffmix_aug.train.data import data_fingerprint

CONSEP_256 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "consep_256" / "train"


def _write_consep(root: Path, names: list[str], size: int = 16) -> Path:
    (root / "Images").mkdir(parents=True)
    (root / "Labels").mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "Images" / f"{name}.png")
        inst = np.zeros((size, size), np.int32)
        inst[2:6, 2:6] = 1
        inst[8:14, 8:14] = 2
        types = np.where(inst == 1, 2, np.where(inst == 2, 3, 0)).astype(np.int32)
        sio.savemat(root / "Labels" / f"{name}.mat", {"inst_map": inst, "type_map": types,
                                                      "inst_type": np.array([[2], [3]]),
                                                      "inst_centroid": np.array([[4.0, 4.0], [11.0, 11.0]])})
    return root


@pytest.mark.parametrize("name, tile, number", [("train_12_007", "train_12", 12), ("train_1_000", "train_1", 1),
                                                ("test_3", "test_3", 3), ("slide", "slide", None)])
def test_tile_of(name, tile, number):
    assert tile_of(name) == tile
    assert tile_number(name) == number


def test_split_by_tile_keeps_tiles_whole(tmp_path):
    names = [f"train_{t}_{i:03d}" for t in (1, 2, 10, 11) for i in range(3)]
    ds = NucleiDataset.from_consep_dir(_write_consep(tmp_path / "c", names), merge=False)
    train, val = split_by_tile(ds, [1, "train_11"])
    got = ds.item_names()
    assert sorted(tile_of(got[i]) for i in val) == ["train_1"] * 3 + ["train_11"] * 3
    assert {tile_of(got[i]) for i in train} == {"train_2", "train_10"}   # 1 does not match 10 or 11
    assert sorted(train + val) == list(range(len(ds)))
    sub = ds.subset(train)
    assert sub.item_names() == [got[i] for i in train]
    assert np.array_equal(sub[0].image, ds[train[0]].image)
    with pytest.raises(ValueError, match=r"`val_tiles` \[7\] match no item"):
        split_by_tile(ds, [7])
    with pytest.raises(TypeError, match="val_tiles"):
        split_by_tile(ds, [1.5])
    with pytest.raises(IndexError, match="indices"):
        ds.subset([len(ds)])


def test_split_needs_names():
    ds = NucleiDataset.from_samples([NucleiSample(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.int32), np.zeros((8, 8), np.int32))],
                                    get_dataset_info("consep"))
    with pytest.raises(ValueError, match="file names"):
        split_by_tile(ds, [1])


def _reference_downsample(s: NucleiSample, f: int):
    h, w = s.shape[0] // f, s.shape[1] // f
    img = np.zeros((h, w, 3))
    for y in range(h):
        for x in range(w):
            img[y, x] = s.image[y * f:(y + 1) * f, x * f:(x + 1) * f].reshape(-1, 3).astype(float).mean(0)
    c = f // 2
    return (np.clip(np.rint(img), 0, 255).astype(np.uint8), s.inst_map[c::f, c::f][:h, :w],
            s.type_map[c::f, c::f][:h, :w])


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_downsampled_matches_reference(tmp_path, factor):
    ds = NucleiDataset.from_consep_dir(_write_consep(tmp_path / "c", ["a_1_000", "a_2_000"], size=17), merge=False)
    small = ds.downsampled(factor)
    for i in range(len(ds)):
        img, inst, types = _reference_downsample(ds[i], factor)
        got = small[i]
        assert got.image.dtype == np.uint8 and got.inst_map.dtype == np.int32
        assert np.array_equal(got.image, img) and np.array_equal(got.inst_map, inst)
        assert np.array_equal(got.type_map, types)
        assert got.shape == small._source.shape(i) if factor > 1 else True
    assert small.item_names() == ds.item_names()
    with pytest.raises(ValueError, match="factor"):
        ds.downsampled(0)


def test_materialised_and_fingerprint(tmp_path):
    ds = NucleiDataset.from_consep_dir(_write_consep(tmp_path / "c", ["a_1_000", "a_2_000"]), merge=False)
    mem = ds.materialised()
    assert mem.item_names() == ds.item_names()
    assert np.array_equal(mem[1].inst_map, ds[1].inst_map)
    h = data_fingerprint(mem)
    assert h == data_fingerprint(ds) and len(h) == 16
    assert data_fingerprint(ds.subset([0])) != h


@pytest.mark.skipif(not CONSEP_256.is_dir(), reason=f"real CoNSeP patches not found at {CONSEP_256} "
                    "(../shared/data/consep_256 is not part of a fresh clone)")
def test_consep_256_split_and_20x():
    ds = NucleiDataset.from_consep_dir(CONSEP_256, merge=False)
    assert len(ds) == 432
    train, val = split_by_tile(ds, [1, 2, 3, 4, 5])
    assert (len(train), len(val)) == (352, 80)
    s = ds.subset(val).downsampled(2)[0]
    assert s.shape == (128, 128) and set(np.unique(s.type_map)) <= {0, 1, 2, 3, 4}


def test_export_carries_provenance(tmp_path):
    from diffmix_aug.sdm.checkpoint import export_sdm, read_sdm_metadata
    from diffmix_aug.train.config import TrainConfig
    from diffmix_aug.train.loop import train_sdm

    cfg = TrainConfig.from_dict({"model": {"preset": "tiny", "image_size": 16,
                                           "overrides": {"model_channels": 8, "channel_mult": [1], "num_groups": 4,
                                                         "spade_hidden": 8, "attention_resolutions": [], "num_head_channels": 8}},
                                 "data": {"dataset": "toy", "num_images": 2, "image_size": 16, "crop_size": 16},
                                 "train": {"batch_size": 2, "stages": [{"name": "s", "steps": 1, "lr": 1e-3}],
                                           "sample_interval": 0, "save_interval": 0, "device": "cpu"},
                                 "out_dir": str(tmp_path / "run")})
    result = train_sdm(cfg, progress=False)
    out = export_sdm(result.out_dir, tmp_path / "x.safetensors")
    prov = read_sdm_metadata(out)["provenance"]
    assert len(prov["data_hash"]) == 16 and prov["num_items"] == 2
    assert prov["package_version"] and "git_commit" in prov
    assert prov["train_config"]["data"]["dataset"] == "toy" and prov["exported_weights"] == "ema"
