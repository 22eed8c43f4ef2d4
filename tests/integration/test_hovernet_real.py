"""docs/hovernet.md against HoVer-Net's real code: ``docs/hovernet_check.py`` on a checkout named by
``DIFFMIX_HOVER_NET`` (``git clone https://github.com/vqdang/hover_net``); skipped without one.

Slow (the real network's training steps and 256 px renders on a CPU take minutes): ``python -m pytest -m slow``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = os.environ.get("DIFFMIX_HOVER_NET")
CONSEP = ROOT.parent / "shared" / "data" / "consep_256" / "train"


@pytest.mark.slow
@pytest.mark.skipif(not CHECKOUT or not (Path(CHECKOUT) / "run_train.py").is_file(),
                    reason="set DIFFMIX_HOVER_NET to a vqdang/hover_net checkout to run the recipe against it")
def test_recipe_runs_on_hovernets_own_code():
    cmd = [sys.executable, str(ROOT / "docs" / "hovernet_check.py"), "--hover-net", CHECKOUT]
    if CONSEP.is_dir():
        cmd += ["--data", str(CONSEP)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "all steps passed" in res.stdout
    assert "with the fix: viz_step_output and proc_valid_step_output ok" in res.stdout
