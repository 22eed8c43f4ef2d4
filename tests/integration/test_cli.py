"""The CLI: ``--help`` without torch, and user errors as one line with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "diffmix_aug.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_help_lists_real_commands_and_imports_no_torch():
    proc = _cli("--help")
    assert proc.returncode == 0
    for name in ("demo", "train-sdm", "synthesize"):
        assert name in proc.stdout
    assert "preview-data" not in proc.stdout
    code = ("import sys, diffmix_aug.cli as c\n"
            "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_version_names_the_installed_package():
    from importlib.metadata import version

    proc = _cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"diffmix-aug {version('diffmix_aug')}"


def _bad_yaml(tmp_path: Path) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text("synthesize: [unclosed\n  num: 2\n")
    return p


@pytest.mark.parametrize("case", ["synthesize-missing", "train-missing", "synthesize-bad-yaml", "train-bad-yaml"])
def test_user_error_is_one_line_exit_2(case, tmp_path):
    cfg = str(tmp_path / "missing.yaml") if case.endswith("missing") else str(_bad_yaml(tmp_path))
    if case.startswith("synthesize"):
        proc = _cli("synthesize", "--config", cfg, "--out", str(tmp_path / "out"))
    else:
        proc = _cli("train-sdm", "--config", cfg)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffmix-aug: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    if case.endswith("missing"):  # the line names the file and the cause
        assert "--config" in lines[0] and "missing.yaml" in lines[0] and "does not exist" in lines[0], lines[0]


def test_debug_shows_the_traceback(tmp_path):
    proc = _cli("--debug", "train-sdm", "--config", str(tmp_path / "missing.yaml"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr
