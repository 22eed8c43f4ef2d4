"""Shipped checkpoints: found by name from any folder, each with a model card rendered from its own
metadata and the training JSON (never typed by hand)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffmix_aug.sdm import SHIPPED_CHECKPOINTS, load_sdm, read_sdm_metadata, resolve_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def test_committed_cards_equal_the_rendering():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "model_cards.py"), "--check"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    for name, file in SHIPPED_CHECKPOINTS.items():
        card = (ROOT / "diffmix_aug" / "weights" / (Path(file).stem + ".md")).read_text()
        assert f'from_checkpoint("{name}")' in card and "## Licence and attribution" in card


@pytest.mark.parametrize("name, mpp", [("consep-20x", 0.5), ("toy", None)])
def test_shipped_names_load_from_any_folder(tmp_path, name, mpp):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert read_sdm_metadata(name)["mpp"] == mpp
        assert resolve_checkpoint(name).is_file()
    finally:
        os.chdir(cwd)
    assert load_sdm(name).checkpoint_info["num_classes"] == 5


def test_a_path_wins_over_a_name_and_unknown_names_list_the_known_ones(tmp_path):
    (tmp_path / "toy").mkdir()  # a folder named like a shipped checkpoint
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert resolve_checkpoint("toy") == Path("toy")
    finally:
        os.chdir(cwd)
    with pytest.raises(FileNotFoundError, match=r"'consep-40x' does not exist.*\['consep-20x', 'toy'\]"):
        resolve_checkpoint("consep-40x")
    with pytest.raises(TypeError, match="shipped name"):
        resolve_checkpoint(3)
