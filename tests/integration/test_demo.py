"""The main job (``diffmix-aug demo``) and the ablation benchmark's ``--quick`` run, end to end on CPU.

Both use a tiny SDM exported from random weights (the shipped weights are checked separately, so
these tests do not depend on how well the shipped model was trained).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from diffmix_aug.cli import main as cli_main


@pytest.fixture(scope="module")
def random_sdm(tmp_path_factory):
    from diffmix_aug.sdm import build_sdm, export_sdm

    torch.manual_seed(0)
    model = build_sdm("tiny", num_label_channels=6, image_size=64)
    return export_sdm(model, tmp_path_factory.mktemp("sdm") / "tiny.safetensors", num_classes=5, dataset="toy")


def _png_shape(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def test_demo_runs_all_stages_and_reports(tmp_path, random_sdm, capsys):
    out = tmp_path / "demo"
    rc = cli_main(["demo", "--out", str(out), "--sdm", str(random_sdm), "--n", "12", "--columns", "2",
                   "--ddim-steps", "4", "--iterations", "4", "--batch-size", "4", "--num-workers", "2",
                   "--warmup-patches", "4", "--max-reuse", "40", "--no-progress"])
    assert rc == 0
    for name in ("toy_preview.png", "class_histogram.png", "figure2.png", "class_histogram_balanced.png",
                 "report.md", "report.json", "class_stats.json"):
        assert (out / name).is_file(), name
    w, h = _png_shape(out / "figure2.png")
    assert w > 4 * 64 and h > 4 * 64  # 4 columns, 2 rows per example
    numbers = json.loads((out / "report.json").read_text())
    rare = 1
    hist = numbers["balance"]
    assert hist["after"][rare] > hist["before"][rare]  # balancing adds rare nuclei...
    assert sum(hist["after"][1:]) == sum(hist["before"][1:])  # ...by converting others, never adding any
    down = numbers["downstream"]
    assert down["iterations"] == 4 and down["items"] == 16
    assert 0.0 <= down["synthetic_share"] <= 1.0 and down["items_per_s"] > 0
    # the 4 warm-up patches, up to 40 serves each, cover every item asked for a synthetic one
    assert down["patches_synthesised"] >= 4 and down["warmup_s"] > 0
    assert down["synthetic_share"] > 0
    assert math.isfinite(down["loss_last"])
    assert numbers["synthesis"]["patches"] == 4
    report = (out / "report.md").read_text()
    for picture in ("figure2.png", "class_histogram_balanced.png", "class_histogram.png"):
        assert f"({picture})" in report
    printed = capsys.readouterr().out
    assert "[5/5] report" in printed and "synthetic share" in printed


def test_demo_data_only_and_bad_arguments(tmp_path, capsys):
    assert cli_main(["demo", "--out", str(tmp_path), "--n", "6", "--data-only", "--no-progress"]) == 0
    stats = json.loads((tmp_path / "class_stats.json").read_text())
    assert stats["n"] == 6 and len(stats["counts"]) == 5
    assert not (tmp_path / "figure2.png").exists()
    capsys.readouterr()
    assert cli_main(["demo", "--out", str(tmp_path), "--iterations", "0"]) == 2  # one line, no traceback
    assert "--iterations" in capsys.readouterr().err
    assert cli_main(["demo", "--out", str(tmp_path), "--warmup-patches", "65"]) == 2
    assert "--warmup-patches" in capsys.readouterr().err
    assert cli_main(["demo", "--out", str(tmp_path), "--train", "--sdm", "x.safetensors"]) == 2
    assert "either `--sdm PATH` or `--train`" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--iterations"):  # --debug re-raises
        cli_main(["--debug", "demo", "--out", str(tmp_path), "--iterations", "0"])


def test_shipped_demo_sdm_is_small_and_loads():
    from diffmix_aug.commands._demo_stages import shipped_sdm_path
    from diffmix_aug.sdm import load_sdm, read_sdm_metadata

    path = shipped_sdm_path()
    assert path.stat().st_size < 5 * 2**20  # ships under 5 MB (fp16)
    meta = read_sdm_metadata(path)
    assert meta["num_classes"] == 5 and meta["dataset"] == "toy"
    model = load_sdm(path)
    x = torch.zeros(1, 3, 64, 64)
    y = torch.zeros(1, 6, 64, 64)
    with torch.no_grad():
        assert torch.isfinite(model(x, torch.tensor([500]), y)).all()


def test_ablation_quick_runs_every_arm(tmp_path, random_sdm):
    """The ablation's design on the toy set (each image its own tile), every arm, the SDM's renders through
    DiffMixDataset."""
    from benchmarks.ablation import ARMS, main

    out = tmp_path / "ablation"
    assert main(["--dataset", "toy", "--quick", "--sdm", str(random_sdm), "--out", str(out), "--arms", ",".join(ARMS),
                 "--pool-dir", str(tmp_path / "pools"), "--work-dir", str(tmp_path / "work")]) == 0
    result = json.loads((out / "ablation.json").read_text())
    arms = result["analysis"]["arms"]
    assert set(arms) == set(ARMS)
    for arm in ARMS:
        assert 0.0 <= np.asarray(arms[arm]["metrics"]["pq"]["mean"], float) <= 1.0
    exposure = {arm: reps[0] for arm, reps in result["exposure"].items()}
    # every arm walks the same item plan; the baseline replaces nothing
    assert all(e["items"] == 4 * 4 for e in exposure.values())
    assert exposure["baseline"]["replaced_items"] == 0
    assert exposure["diffmix-union"]["dataset"]["synthetic_served"] == exposure["diffmix-union"]["asked_items"]
    # GradMix and DiffMix-B replay the same balancing draws (the matched control)
    assert exposure["gradmix"]["rare_instances_items"] == exposure["diffmix-b"]["rare_instances_items"]
    assert len(arms["diffmix-union"]["vs_baseline"]["pq"]["per_seed"]) == 2
    table = (out / "ablation.md").read_text()
    assert "## Primary endpoint" in table and "## Rare exposure served" in table
    assert (out / "f1_per_type.png").is_file() and (out / "rare_ap.png").is_file()
