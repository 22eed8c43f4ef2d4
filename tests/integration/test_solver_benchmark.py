"""``benchmarks/solver.py --quick`` on real CoNSeP maps: the report holds every setting, the bar and the cross-check.

Reads ``../shared/data/consep_256`` (CoNSeP, Graham et al. 2019, research use), which a fresh clone does not
have: the test skips with that reason there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONSEP = ROOT.parent / "shared" / "data" / "consep_256" / "train"
pytestmark = pytest.mark.skipif(not (CONSEP / "Labels").is_dir(),
                                reason=f"real CoNSeP patches not found at {CONSEP} (../shared/data/consep_256 is "
                                       "not part of a fresh clone)")


def test_solver_benchmark_quick(tmp_path):
    from benchmarks.solver import QUICK_PLAN, main

    assert main(["--quick", "--data-root", str(CONSEP), "--out", str(tmp_path), "--threads", "1"]) == 0
    res = json.loads((tmp_path / "solver.json").read_text())
    assert res["n_maps"] == 3 and set(res["maps_by_kind"]) == {"real", "balance", "enlarge"}
    measured = {(r["solver"], r["spacing"], r["steps"]) for r in res["rows"]}
    assert measured >= {(s, sp, n) for (s, sp), counts in QUICK_PLAN.items() for n in counts}
    assert res["bar"]["solver"] == "ddim" and res["bar"]["steps"] == 55 and res["bar"]["rmse_worst"] > 0
    # the converged reference and its cross-check (another second-order method) agree far below the bar
    cross = next(iter(res["cross_checks"].values()))
    assert cross["rmse_worst"] < res["bar"]["rmse_worst"] / 3
    for r in res["rows"]:
        assert r["rmse_mean"] <= r["rmse_worst"] <= r["max_abs_worst"] and r["s_per_patch"] > 0
    assert set(res["smallest_meeting_bar"]) == {f"{s}/{sp}" for s, sp in QUICK_PLAN} | {"ddim/linear"}
    assert (tmp_path / "solver.png").stat().st_size > 0 and "| unipc | logsnr | 10 |" in (tmp_path / "solver.md").read_text()
