"""Package-level guards: import cost, no network at import, lint.

torch itself may import some of these (torch.hub imports tqdm); the guard checks what
``import diffmix_aug`` adds on top of ``import numpy, torch``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ["albumentations", "cv2", "skimage", "yaml", "tqdm", "matplotlib", "scipy", "kornia", "safetensors"]


def test_import_is_light_and_offline():
    code = (
        "import socket, sys\n"
        "def _no_net(*a, **k): raise RuntimeError('network access at import time')\n"
        "socket.socket.connect = _no_net; socket.create_connection = _no_net\n"
        "import numpy, torch\n"
        "before = set(sys.modules)\n"
        "import diffmix_aug\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules and m not in before]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"`import diffmix_aug` imported heavy modules: {out.stdout.strip()}"


def test_public_names_resolve():
    import diffmix_aug

    missing = []
    for name in diffmix_aug.__all__:
        try:
            getattr(diffmix_aug, name)
        except (AttributeError, ImportError) as exc:
            missing.append(f"{name}: {exc}")
    assert not missing, missing


def test_unknown_attribute_raises():
    import diffmix_aug

    with pytest.raises(AttributeError, match="no_such_thing"):
        diffmix_aug.no_such_thing  # noqa: B018


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed (pip install -e '.[test]')")
def test_ruff_clean():
    out = subprocess.run(["ruff", "check", "diffmix_aug", "benchmarks", "tests"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
