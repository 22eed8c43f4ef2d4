"""``benchmarks/gpu_evidence.py --dry-run``: the GPU protocol runs end to end on the CPU at tiny sizes.

Reads ``../shared/data/consep_256`` (CoNSeP, research use) and skips with the reason where it is absent.
Writes into a temporary folder, never the source tree.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONSEP = ROOT.parent / "shared" / "data" / "consep_256"


@pytest.mark.skipif(not (CONSEP / "train" / "Labels").is_dir(),
                    reason=f"real CoNSeP patches not found at {CONSEP} (not part of a fresh clone)")
def test_gpu_evidence_dry_run(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_evidence.py", "--dry-run", "--data-root", str(CONSEP),
                           "--out", str(out), "--budget-s", "3000"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads((out / "gpu_evidence.json").read_text())
    assert status["dry_run"] and status["done"] and len(status["folds"]) == 3 and not status["skipped"]
    folds = [f["validation_tiles"] for f in status["folds"]]
    assert sorted(t for f in folds for t in f) == [1, 6, 19]  # every tile validated once
    for f in status["folds"]:
        assert f["sdm_seconds"] > 0 and f["sampler"]["entry_timestep"] is not None
    r = json.loads((out / "ablation.json").read_text())
    assert r["benchmark"] == "gpu_evidence" and r["analysis"]["n_tiles"] == 3
    assert r["design"]["items_source"]["diffmix-union"].startswith("DiffMixDataset")
    assert (out / "ablation.md").is_file() and (out / "rare_ap.png").is_file()
    assert not (ROOT / "benchmarks" / "results" / "gpu" / "evidence").exists() or \
        (ROOT / "benchmarks" / "results" / "gpu" / "evidence" / "gpu_evidence.json").read_text() != \
        (out / "gpu_evidence.json").read_text()
