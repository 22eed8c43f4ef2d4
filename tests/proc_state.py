"""The kernel's view of a process, for the tests of the producer pause (Linux ``/proc``)."""

from __future__ import annotations

import time


def state(pid: int) -> str:
    """The one-letter state of ``pid`` (``T``: stopped, ``Z``: zombie), ``''`` once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


def wait_state(pid: int, want: set[str], timeout: float = 5.0) -> str:
    """Poll until ``pid`` is in one of the states ``want`` or ``timeout`` s passed; the last state seen."""
    end = time.monotonic() + timeout
    s = state(pid)
    while s not in want and time.monotonic() < end:
        time.sleep(0.002)
        s = state(pid)
    return s
