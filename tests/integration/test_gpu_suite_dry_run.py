"""``benchmarks/gpu_suite.py --dry-run`` runs on the CPU, so the GPU script is known to work before a device is lent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_suite_dry_run(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_suite.py", "--dry-run", "--budget-s", "240",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert res["dry_run"] and not res["skipped"]
    assert res["peak"]["copy_gb_per_s"] > 0
    arms = {r["arm"]: r for r in res["sampler"]["rows"]}
    assert "reference-fp32-eager" in arms and "fast-bf16-eager" in arms
    assert "CUDA" in res["sampler"]["skipped"]["fast-bf16-graph"]
    assert arms["fast-bf16-eager"]["max_abs_diff_vs_reference"] < 0.2  # bf16 on CPU, a few steps
    solver_rows = [r for r in res["sampler"]["rows"] if r["solver"] != "ddim"]
    assert {r["solver"] for r in solver_rows} == {"unipc", "dpmpp_2m"} and all(r["patches_per_s"] > 0 for r in solver_rows)
    assert res["loader"]["diffmix_items_per_s"] > 0 and res["loader"]["stats"]["items"] >= 0
    assert (tmp_path / "gpu_suite.md").read_text().startswith("# GPU suite (dry run")


def test_gpu_suite_dry_run_writes_outside_the_source_tree():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_suite.py", "--dry-run", "--skip", "peak,sampler,loader,tests"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = Path(proc.stdout.strip().splitlines()[-1].split("wrote ", 1)[1].split(" and ")[0])
    assert written.is_file() and ROOT not in written.resolve().parents
    assert not (ROOT / "benchmarks" / "results" / "gpu" / "dry_run").exists()
    import shutil

    shutil.rmtree(written.parent)
