"""``LoadPause``: the producer process stopped while the training process loads a batch itself.

With ``num_workers=0`` the training process loads its own items, on the critical path of every
step. A CPU producer process beside it takes its CPU share from whatever runs on the host; on a
host whose cores are all busy a share of that comes out of the loop's loading. Stopping the
producer (``SIGSTOP``) for the duration of the load and resuming it (``SIGCONT``) afterwards moves
its CPU time into the training step (a GPU step leaves the host CPU idle). Measured beside two
CPU-bound processes on 2 cores (``python -m benchmarks.loader --busy 2``, rows ``live_process``
and ``live_nopause``; extra wait of a 100 ms step against the bare dataset): -3.7 % with the pause
and +3.1 % without it (medians of 3 paired runs), -4.1 +- 1.1 % and -3.0 +- 1.2 % in 60
interleaved rounds, where the paused producer also made more patches (104 on 6.4 CPU s against 60
on 9.4 CPU s). Both include the cheaper synthetic items (``spent``: -3.1 %).

Three guards make a stopped process safe:

- Signals go through a pidfd (:func:`os.pidfd_open`), so a stop can never reach a recycled pid;
  where pidfds are unavailable (not Linux, kernel < 5.3) there is no pause.
- A leaky bucket keeps the producer stopped at most ``max_share`` of the wall time: a loop that
  loads without a break (a CPU-bound training step, or none) still leaves it time to make patches.
- :meth:`close` resumes the process before anything waits for it to end. The producer process
  sets its parent-death signal to ``SIGCONT`` (:func:`continue_on_parent_death`), so a training
  process killed in mid-load (``SIGKILL``) leaves no stopped orphan: it resumes and its orphan
  guard ends it.

Nothing reads the cache while the producer is stopped by this process: the pause spans the load,
never :meth:`~diffmix_aug.cache.ReplayCache.read` (a torn slot would make the reader retry).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time

__all__ = ["NO_PAUSE", "LoadPause", "continue_on_parent_death", "open_load_pause"]

_log = logging.getLogger(__name__)

#: the context of a load that pauses nothing (thread backend, workers, option off)
NO_PAUSE = contextlib.nullcontext()

#: the longest share of wall time a producer stays stopped (a loop that only loads still leaves it 10 %)
MAX_SHARE = 0.9
#: seconds of pause the bucket holds when full: a loop that starts loading without a break keeps the
#: producer stopped for BURST_S / (1 - MAX_SHARE) = 2.5 s before the cap lets it run
BURST_S = 0.25


class LoadPause:
    """Stop process ``pidfd`` while any thread of this process is inside the context.

    Re-entrant and thread-safe: the first thread in sends ``SIGSTOP``, the last one out sends
    ``SIGCONT``. Use one per producer process, from the process that forked it.

    Args:
        pidfd: A pidfd of the process to stop (owned: :meth:`close` closes it).
        max_share: Largest share of wall time the process is kept stopped (leaky bucket).
        burst_s: Seconds of pause the bucket holds when full.
    """

    def __init__(self, pidfd: int, max_share: float = MAX_SHARE, burst_s: float = BURST_S) -> None:
        if not 0.0 < max_share < 1.0:
            raise ValueError(f"`max_share` must be in (0, 1), got {max_share!r}")
        if not burst_s > 0:
            raise ValueError(f"`burst_s` must be > 0, got {burst_s!r}")
        self.max_share, self.burst_s = float(max_share), float(burst_s)
        self._fd: int | None = pidfd
        self._lock = threading.Lock()
        self._depth = 0
        self._credit = self.burst_s
        self._last = time.monotonic()
        self._stopped = False
        #: seconds the process was kept stopped, and the number of pauses (for stats and tests)
        self.paused_s = 0.0
        self.pauses = 0
        self.skipped = 0  # loads that found the bucket empty and left the process running

    @property
    def closed(self) -> bool:
        return self._fd is None

    def _account(self, now: float) -> None:
        """Fill the bucket at ``max_share`` per second; a stopped second drains one."""
        dt = now - self._last
        self._last = now
        self._credit = min(self.burst_s, self._credit + self.max_share * dt - (dt if self._stopped else 0.0))
        if self._stopped:
            self.paused_s += dt

    def _signal(self, sig: int) -> bool:
        try:
            signal.pidfd_send_signal(self._fd, sig)
            return True
        except ProcessLookupError:  # it ended (and may be reaped): nothing left to stop or resume
            self._close_fd()
        except OSError as exc:  # not expected for a child of ours: stop pausing rather than fail a load
            _log.warning("cannot signal the producer process (%s): it is no longer paused during loads", exc)
            self._close_fd()
        return False

    def __enter__(self) -> LoadPause:
        with self._lock:
            self._depth += 1
            if self._depth == 1 and self._fd is not None:
                self._account(time.monotonic())
                if self._credit > 0:
                    self._stopped = self._signal(signal.SIGSTOP)
                    self.pauses += int(self._stopped)
                else:
                    self.skipped += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._stopped:
                self._account(time.monotonic())
                self._stopped = False
                if self._fd is not None:
                    self._signal(signal.SIGCONT)

    def close(self) -> None:
        """Resume the process (if stopped) and stop pausing it; idempotent."""
        with self._lock:
            if self._fd is None:
                return
            if self._stopped:
                self._account(time.monotonic())
                self._stopped = False
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self._fd, signal.SIGCONT)
            self._close_fd()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def open_load_pause(pid: int) -> LoadPause | None:
    """A :class:`LoadPause` for child ``pid``, or None where the platform has no pidfds."""
    if not (hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")):
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError as exc:  # ENOSYS (kernel < 5.3), EPERM (seccomp): run without pausing
        _log.debug("no pidfd for the producer process (%s): it is not paused during loads", exc)
        return None
    return LoadPause(fd)


def continue_on_parent_death() -> None:
    """In a producer process: receive ``SIGCONT`` when the parent dies (Linux ``PR_SET_PDEATHSIG``).

    A parent killed while it held the producer stopped would otherwise leave a stopped orphan that
    never notices it is one. ``SIGCONT`` to a running process does nothing, so the signal is
    harmless where it fires early (it also fires when the forking *thread* ends). No-op elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGCONT), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
