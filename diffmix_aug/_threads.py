"""Thread helpers of the producer: imports done before any thread runs, a lowered priority for one
thread, and a block Ctrl-C cannot cut in half."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import threading
from typing import Any

__all__ = ["PRODUCER_NICE", "interrupts_deferred", "lower_thread_priority", "preload_imports"]

#: nice value of a CPU producer thread (weight 110 against 1024 for the training loop's nice-0 threads)
PRODUCER_NICE = 10
#: modules the producer thread may import lazily; imported by :func:`preload_imports` first
_HEAVY_MODULES = ("cv2", "scipy.ndimage", "safetensors", "tqdm")


def preload_imports() -> None:
    """Import, in the calling thread, every heavy module the producer thread could import lazily.

    A thread that imports a package while the main thread starts a spawn worker can corrupt the
    worker's import state: while ``cv2`` loads, its package folder is briefly on ``sys.path`` and a
    spawn worker started in that moment resolves ``typing`` to ``cv2/typing`` and dies, leaving
    the parent blocked in ``popen_spawn_posix._launch`` for ever. Importing first removes the race.
    """
    for name in _HEAVY_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


@contextlib.contextmanager
def interrupts_deferred():
    """Run the block with Ctrl-C held back: a SIGINT that arrives inside it reaches the handler that
    was installed (Python's ``KeyboardInterrupt`` by default) once the block has ended.

    For the few steps that must not stop half-done (starting the producer). Only the main thread
    receives signals; elsewhere, or when SIGINT has no Python handler, the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # SIG_IGN / SIG_DFL / a handler set outside Python: nothing to defer
        yield
        return
    caught: list[tuple[int, Any]] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            previous(*caught[0])


def lower_thread_priority(nice: int = PRODUCER_NICE) -> None:
    """Raise the calling thread's nice value to ``nice`` (Linux schedules threads one by one; a
    thread may always lower its own priority). Elsewhere, or when refused, nothing changes."""
    if not hasattr(os, "setpriority"):
        return
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        now = os.getpriority(os.PRIO_PROCESS, tid)
        if now < nice:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, nice))
