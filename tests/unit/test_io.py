"""Atomic writes: all-or-nothing, no temporary left behind, ordinary file permissions."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from diffmix_aug._io import atomic_open, atomic_save_npy, atomic_write_text


def test_permissions_follow_the_umask_not_mkstemp(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
        os.umask(0o077)
        atomic_save_npy(tmp_path / "b.npy", np.zeros(3, np.int32))
        assert stat.S_IMODE((tmp_path / "b.npy").stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert np.array_equal(np.load(tmp_path / "b.npy"), np.zeros(3, np.int32))


def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "c.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError, match="disk"), atomic_open(path, "w") as fh:
        fh.write("half of the new")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]
    with pytest.raises(ValueError, match="mode"), atomic_open(path, "a"):
        pass
