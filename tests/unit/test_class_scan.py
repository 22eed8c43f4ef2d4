"""Real data that cannot go silently wrong: class merging decided from the labels, resolution and
class table carried from export to reader and from training to checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffmix_aug.data.classes import get_dataset_info
from diffmix_aug.data.dataset import NucleiDataset
from diffmix_aug.data.toy import make_toy_dataset

CONSEP = get_dataset_info("consep")
# raw CoNSeP ids per merged class: 1 other; 2 inflammatory; 3, 4 epithelial; 5, 6, 7 spindle
RAW_OF = {1: (1,), 2: (2,), 3: (3, 4), 4: (5, 6, 7)}


def _write_folder(root: Path, raw: bool, n: int = 4, with_inst_type: bool = True) -> np.ndarray:
    """A CoNSeP-layout folder from toy tiles; returns the merged nuclei per class it holds."""
    import cv2
    from scipy.io import savemat

    (root / "Images").mkdir(parents=True)
    (root / "Labels").mkdir()
    counts = np.zeros(5, np.int64)
    rng = np.random.default_rng(0)
    for i, s in enumerate(make_toy_dataset(n, size=64, seed=3)):
        info = s.info
        merged = info.types
        counts += np.bincount(merged, minlength=5)[:5]
        types = np.array([rng.choice(RAW_OF[int(t)]) for t in merged], np.int64) if raw else merged.astype(np.int64)
        lut = np.zeros(int(s.inst_map.max()) + 1, np.int64)
        lut[info.ids] = types
        type_map = lut[s.inst_map]
        mat = {"inst_map": s.inst_map, "type_map": type_map}
        if with_inst_type:  # CoNSeP stores one row per id 1..max (ids contiguous here)
            assert (info.ids == np.arange(1, len(info) + 1)).all()
            mat["inst_type"] = types[:, None]
        savemat(root / "Labels" / f"train_{i + 1}.mat", mat)
        cv2.imwrite(str(root / "Images" / f"train_{i + 1}.png"), s.image[..., ::-1])
    return counts


@pytest.mark.parametrize("with_inst_type", [True, False])
def test_default_arguments_read_merged_and_raw_folders_right(tmp_path, with_inst_type):
    merged_counts = _write_folder(tmp_path / "merged", raw=False, with_inst_type=with_inst_type)
    raw_counts = _write_folder(tmp_path / "raw", raw=True, with_inst_type=with_inst_type)
    assert (merged_counts == raw_counts).all() and (merged_counts[1:] > 0).all()
    for name in ("merged", "raw"):
        got = NucleiDataset.from_consep_dir(tmp_path / name).class_stats()["counts"]
        assert got.tolist() == merged_counts.tolist(), name


def test_explicit_merge_on_merged_labels_and_no_merge_on_raw_labels_warn(tmp_path):
    _write_folder(tmp_path / "merged", raw=False)
    _write_folder(tmp_path / "raw", raw=True)
    with pytest.warns(UserWarning, match=r"look merged already.*4 -> 3.*merge='auto'"):
        NucleiDataset.from_consep_dir(tmp_path / "merged", merge=True)
    with pytest.warns(UserWarning, match=r"merge=False keeps raw type ids up to [5-7] .*names only 1..4.*'auto'"):
        ds = NucleiDataset.from_consep_dir(tmp_path / "raw", merge=False)
    assert ds[0].type_map.max() > 4  # kept raw, as asked
    with pytest.raises(ValueError, match="`merge` must be 'auto', True or False, got 'yes'"):
        NucleiDataset.from_consep_dir(tmp_path / "raw", merge="yes")


def test_export_prints_counts_writes_a_card_and_the_reader_takes_its_resolution(tmp_path):
    counts = _write_folder(tmp_path / "raw", raw=True)
    out = tmp_path / "npy"
    res = subprocess.run([sys.executable, "-m", "diffmix_aug.cli", "export", "--dataset", "consep", "--input",
                          str(tmp_path / "raw"), "--out", str(out), "--downsample", "2", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "'spindle': 0" not in res.stdout and "0.5 um/px" in res.stdout
    card = json.loads((out / "dataset.json").read_text())
    assert card["mpp"] == 0.5 and card["class_names"] == list(CONSEP.class_names)
    assert sum(card["nuclei_per_class"].values()) > 0 and counts.sum() > 0
    ds = NucleiDataset.from_hovernet_npy_dir(out, CONSEP)
    assert ds.info.mpp == 0.5 and len(ds) == 4
    with pytest.raises(ValueError, match=r"dataset\.json lists classes .*get_dataset_info\('consep'\)"):
        NucleiDataset.from_hovernet_npy_dir(out, get_dataset_info("pannuke"))
    (out / "dataset.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"dataset\.json: not valid JSON"):
        NucleiDataset.from_hovernet_npy_dir(out, CONSEP)


def test_resolution_follows_downsampling_and_tiling():
    ds = NucleiDataset.from_samples(list(make_toy_dataset(2, size=64, seed=0)), CONSEP)
    assert ds.info.mpp == 0.25
    assert ds.downsampled(2).info.mpp == 0.5 and ds.downsampled(2).tiled(16).info.mpp == 0.5
    assert ds.downsampled(2).info.class_names == CONSEP.class_names
    assert make_toy_dataset(2, size=32, seed=0).info.mpp is None


@pytest.mark.skipif(not Path("../shared/data/consep_256/train").is_dir(),
                    reason="../shared/data/consep_256 is absent (a fresh clone has no ../shared)")
def test_consep_256_keeps_its_four_classes():
    stats = NucleiDataset.from_consep_dir("../shared/data/consep_256/train").class_stats()
    assert stats["counts"][1:].tolist() == [432, 4507, 6609, 6668]  # the data README's counts
