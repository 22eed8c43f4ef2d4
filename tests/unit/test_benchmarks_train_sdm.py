"""Smoke test of the SDM training-throughput benchmark (``benchmarks/train_sdm.py``)."""

from __future__ import annotations

import json

import torch

from benchmarks.train_sdm import main


def test_train_sdm_benchmark_quick(tmp_path, capsys):
    out = tmp_path / "x.json"
    threads = torch.get_num_threads()
    try:  # one thread: fast and steady even when the cores are shared
        assert main(["--quick", "--presets", "tiny", "--image-size", "32", "--batch-size", "1", "--steps", "1",
                     "--repeats", "1", "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert report["benchmark"] == "train_sdm"
    assert report["config"]["presets"] == ["tiny"] and report["config"]["image_size"] == 32
    assert {"platform", "processor", "cpu_count", "torch", "cuda_device"} <= set(report["machine"])
    rows = report["results"]
    assert [(r["preset"], r["precision"]) for r in rows] == [("tiny", "fp32")]
    row = rows[0]
    assert row["it_per_s"] > 0 and row["it_per_s_min"] > 0 and row["it_per_s_max"] >= row["it_per_s_min"]
    assert row["ratio_vs_tiny"] == 1.0
    assert row["peak_memory_bytes"] >= 0
    assert "tiny" in capsys.readouterr().out
