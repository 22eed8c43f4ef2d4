"""Shared fixtures: tiny sizes, deterministic seeds, the real H&E patches in tests/data."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

DATA_DIR = Path(__file__).parent / "data"

# One intra-op thread per test process, and per child process (subprocesses inherit OMP_NUM_THREADS):
# the suite must pass beside other CPU-bound jobs (CI runs two burners beside it on 2 cores), where
# more threads than free cores make OpenMP's barriers spin and slow every op several-fold. A value
# set by the caller is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


def _bounded(fn, timeout: float, what: str):
    """``fn()`` in a daemon thread; fails the test when it has not returned within ``timeout`` seconds
    (a hang), else returns its value or raises its exception."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"{what} did not return within {timeout:.0f} s (a hang)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture
def bounded():
    """``bounded(fn, timeout, what)``: every wait of a fault test bounded (see :func:`_bounded`)."""
    return _bounded
