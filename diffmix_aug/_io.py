"""Atomic file writes: write to a temporary file in the same directory, fsync, then rename."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["atomic_open", "atomic_save_npy", "atomic_write_bytes", "atomic_write_text"]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    A crash or exception leaves ``path`` untouched (either the old content or absent) and
    removes the temporary file. The file gets the permissions a plain ``open`` would give it
    (``0o666`` less the umask), not ``mkstemp``'s private ``0o600``, so colleagues on a shared
    cluster can read checkpoints and patches.

    Args:
        path: Final destination.
        mode: ``"wb"`` or ``"w"``.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"`mode` must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process umask, read without changing it where the OS tells it (Linux), else by a quick toggle."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically (no pickles: ``allow_pickle=False``)."""
    with atomic_open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
