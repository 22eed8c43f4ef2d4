"""``ProcessLock``: a cross-process lock that dies with its holder, with a bounded wait.

A ``multiprocessing.Lock`` is a semaphore: a process SIGKILLed while it holds one (the OOM killer,
``kill -9`` on a DataLoader worker) never gives it back, and every later ``acquire`` waits for ever.
This lock is a POSIX record lock (``fcntl``) on an anonymous file: the kernel drops it when its
holder dies, whatever killed it. Record locks exclude processes, not the threads of one process, so
a thread lock (one per process, made again after a fork) is taken first. The wait for another
process is bounded: past ``timeout`` seconds a ``TimeoutError`` names the holder and its state (a
stopped process, SIGSTOP or a debugger, keeps the lock: nobody may take it from a live holder).

The file travels to spawned processes as a duplicated descriptor (only while a process is being
started, as a semaphore does); forked children inherit it. Where ``fcntl`` does not exist the
lock falls back to a ``multiprocessing`` lock with the same bounded wait (no recovery from a
killed holder there).
"""

from __future__ import annotations

import multiprocessing
import os
import struct
import tempfile
import threading
import time
from multiprocessing import context as _mp_context
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["ProcessLock", "acquire_or_undo"]


def acquire_or_undo(lock: Any, timeout: float) -> bool:
    """``lock.acquire(timeout=timeout)`` that never leaves ``lock`` held when it raises.

    A ``KeyboardInterrupt`` (Ctrl-C) is raised at the end of the call that took the lock, after the
    lock was taken: a plain ``acquire`` (or ``with lock:``) then leaves it held for ever. ``lock``
    must be a ``threading.RLock`` not already held by the calling thread; its owner check tells an
    interrupted acquire from a failed one.
    """
    try:
        return bool(lock.acquire(timeout=timeout))
    except BaseException:
        if lock._is_owned():  # taken, then interrupted: give it back
            lock.release()
        raise


class ProcessLock:
    """A lock shared by the processes that got it at their start; released by the kernel when its
    holder dies.

    Args:
        what: What the lock guards, for the timeout message.
        timeout: Seconds to wait for another process before ``TimeoutError``.

    Use ``with lock:``. Not re-entrant. A ``KeyboardInterrupt`` inside ``with lock:`` (or while it is
    being taken) leaves the lock free.
    """

    def __init__(self, what: str, timeout: float = 10.0) -> None:
        self.what = str(what)
        self.timeout = float(timeout)
        self._file: Any = None
        self._fd: int | None = None
        self._fallback: Any = None
        if fcntl is not None:
            self._file = tempfile.TemporaryFile(prefix="diffmix_lock_")  # noqa: SIM115 - unlinked, held open
            self._fd = self._file.fileno()
        else:  # pragma: no cover - not POSIX
            self._fallback = multiprocessing.get_context("spawn").Lock()
        self._local()

    # ------------------------------------------------------------------ per process
    def _local(self) -> threading.RLock:
        """This process's thread lock (a forked child gets a fresh one: the parent's may be held). An
        RLock for its owner check (:func:`acquire_or_undo`), never taken twice."""
        if self.__dict__.get("_pid") != os.getpid():
            self._tlock = threading.RLock()
            self._pid = os.getpid()
        return self._tlock

    def __getstate__(self) -> dict[str, Any]:
        if _mp_context.get_spawning_popen() is None:
            raise TypeError("a ProcessLock can only travel to a process being started (spawn or fork)")
        state = {"what": self.what, "timeout": self.timeout, "_fallback": self._fallback}
        if self._fd is not None:
            from multiprocessing.reduction import DupFd

            state["_dupfd"] = DupFd(self._fd)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        dup = state.pop("_dupfd", None)
        self.__dict__.update(state)
        self._file = None
        self._fd = dup.detach() if dup is not None else None
        self._local()

    # ------------------------------------------------------------------ locking
    def __enter__(self) -> ProcessLock:
        tlock = self._local()
        if tlock._is_owned():
            raise RuntimeError(f"{self.what}: this thread already holds it (the lock is not re-entrant)")
        if not acquire_or_undo(tlock, self.timeout):
            raise TimeoutError(f"{self.what}: another thread of this process held it for {self.timeout:.0f} s")
        try:
            self._acquire_process()
        except BaseException:  # a timeout, or Ctrl-C after the record lock was taken: leave both free
            if self._fd is not None:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)  # harmless when this process does not hold it
            tlock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._release_process()
        finally:
            self._tlock.release()

    def _acquire_process(self) -> None:
        if self._fd is None:
            if self._fallback is None:
                raise RuntimeError(f"{self.what}: the lock was closed")
            if not self._fallback.acquire(timeout=self.timeout):
                raise TimeoutError(f"{self.what}: held by another process for {self.timeout:.0f} s")
            return
        deadline = time.monotonic() + self.timeout
        delay = 1e-4
        while True:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except (BlockingIOError, PermissionError):
                pass
            if time.monotonic() > deadline:
                pid = self._holder()
                raise TimeoutError(
                    f"{self.what}: held by process {pid if pid is not None else '(unknown)'} for more than "
                    f"{self.timeout:.0f} s ({_process_state(pid)}); a process stopped (SIGSTOP, a debugger) while "
                    "holding it keeps it: resume or kill that process (a killed holder releases it at once)")
            time.sleep(delay)
            delay = min(2 * delay, 0.01)

    def _release_process(self) -> None:
        if self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)  # also harmless when this process does not hold it
        elif self._fallback is not None:
            self._fallback.release()

    def _holder(self) -> int | None:
        """Pid of the process holding the record lock (Linux ``F_GETLK``; None elsewhere)."""
        if self._fd is None or not hasattr(fcntl, "F_GETLK"):
            return None
        try:
            fmt = "hhxxxxqqi4x"  # struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid
            probe = struct.pack(fmt, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
            l_type, _, _, _, pid = struct.unpack(fmt, fcntl.fcntl(self._fd, fcntl.F_GETLK, probe))
            return int(pid) if l_type != fcntl.F_UNLCK and pid > 0 else None
        except (OSError, struct.error):
            return None

    def close(self) -> None:
        """Close this process's descriptor (the creator's also drops the file)."""
        if self._file is not None:
            self._file.close()
        elif self._fd is not None:
            os.close(self._fd)
        self._file = self._fd = self._fallback = None


def _process_state(pid: int | None) -> str:
    """``"state T (stopped)"`` from ``/proc/<pid>/stat``, or ``"state unknown"``."""
    if pid is None:
        return "state unknown"
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "state unknown"
    names = {"T": "stopped", "t": "stopped by a debugger", "R": "running", "S": "sleeping", "D": "in disk wait",
             "Z": "zombie"}
    return f"state {state} ({names.get(state, 'see man proc')})"
