"""Issue 32, case 1: the cache's cross-process serve claim survives the death of the process that holds it.

A DataLoader worker SIGKILLed (OOM killer, ``kill -9``) inside :meth:`ReplayCache._claim` used to
leave the claim's lock taken for ever: every later serve, in the main process and in the next
epoch's workers, waited on it without end. Each case here kills a reader *inside* the claim (its
first read of the reuse counter, which only happens under the lock, calls ``SIGKILL`` on itself),
under fork and spawn, and then bounds every later wait in the test.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

from diffmix_aug._proclock import ProcessLock
from diffmix_aug.cache import ReplayCache

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals and fork")

H = W = 8
K = 4


def _patch(v: int = 1):
    inst = np.zeros((H, W), np.int32)
    inst[:3, :3] = 1
    return np.full((H, W, 3), v, np.uint8), inst, (inst > 0).astype(np.int32) * 2


class _DieOnRead:
    """Stands in for the shared reuse counters in the victim: the first read (inside the claim) kills
    the process with SIGKILL, as the OOM killer would, while it holds whatever the claim holds."""

    def __getitem__(self, key):
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # never reached

    def __setitem__(self, key, value):  # pragma: no cover - the process is dead before
        raise AssertionError("unreachable")


def _killed_inside_claim(cache: ReplayCache, slot: int) -> None:
    cache._np["reuse"] = _DieOnRead()
    cache.read(slot)


@pytest.mark.parametrize("ctx", ["fork", "spawn"])
def test_a_reader_killed_inside_the_claim_blocks_nobody(ctx, bounded):
    cache = ReplayCache(2, (H, W), max_reuse=100, num_classes=K)
    cache.write(*_patch())
    victim = multiprocessing.get_context(ctx).Process(target=_killed_inside_claim, args=(cache, 0))
    victim.start()
    victim.join(120)
    assert victim.exitcode == -signal.SIGKILL, victim.exitcode
    # this process (the main process of the next epoch), then a fresh reader process
    got = bounded(lambda: cache.read(0), 30, "a serve in the main process after the killed claim")
    assert got is not None and got.seq == 0
    served = multiprocessing.get_context(ctx).Value("i", 0)
    reader = multiprocessing.get_context(ctx).Process(target=_serve_n, args=(cache, 5, served))
    reader.start()
    reader.join(120)
    if reader.is_alive():
        reader.kill()
        pytest.fail("a reader process started after the killed claim hung in its serves")
    assert reader.exitcode == 0 and served.value == 5
    assert int(cache._np["reuse"][0]) == 6  # the dead reader's serve is lost, none is counted twice
    cache.close()


def _serve_n(cache: ReplayCache, n: int, served) -> None:
    for _ in range(n):
        if cache.read(0) is not None:
            with served.get_lock():
                served.value += 1


def _hold_claim_forever(cache: ReplayCache, ready) -> None:
    class _Stall:
        def __getitem__(self, key):
            ready.set()
            time.sleep(600)

    cache._np["reuse"] = _Stall()
    cache.read(0)


def test_a_stopped_holder_gives_a_clear_error_not_a_hang(bounded):
    """A reader stopped (SIGSTOP, a debugger) inside the claim is alive: the others cannot take the
    claim from it, but they wait a bounded time and say who holds it."""
    cache = ReplayCache(1, (H, W), max_reuse=100, num_classes=K, claim_timeout=1.0)
    cache.write(*_patch())
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_claim_forever, args=(cache, ready))
    holder.start()
    try:
        assert ready.wait(60)
        os.kill(holder.pid, signal.SIGSTOP)
        with pytest.raises(TimeoutError, match=rf"serve claim.*held by process {holder.pid}.*stopped"):
            bounded(lambda: cache.read(0), 30, "a serve while the holder is stopped")
    finally:
        holder.kill()
        holder.join(30)
    got = bounded(lambda: cache.read(0), 30, "a serve after the stopped holder was killed")
    assert got is not None


def test_claims_from_threads_of_one_process_are_exclusive():
    """The claim also excludes threads of one process (a record lock alone would not): 4 threads x 200
    tries on one slot serve exactly max_reuse patches and count each serve once."""
    cache = ReplayCache(1, (H, W), max_reuse=500, num_classes=K)
    cache.write(*_patch())
    got = [0] * 4

    def run(k):
        for _ in range(200):
            if cache.read(0) is not None:
                got[k] += 1

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sum(got) == 500 and cache.reads == 500 and int(cache._np["reuse"][0]) == 500


def test_ctrl_c_as_the_claim_is_taken_leaves_the_lock_free(bounded):
    """A KeyboardInterrupt raised as the thread lock's acquire returns (where Python delivers Ctrl-C)
    left it held: every later serve of the process waited claim_timeout and failed."""
    lock = ProcessLock("test claim", timeout=1.0)
    lock._local()
    inner = lock._tlock

    class Interrupted:
        def acquire(self, blocking=True, timeout=-1):
            inner.acquire(blocking, timeout)
            raise KeyboardInterrupt

        def __getattr__(self, name):
            return getattr(inner, name)

    lock._tlock = Interrupted()
    with pytest.raises(KeyboardInterrupt), lock:
        pass
    lock._tlock = inner

    def claim():
        with lock:
            return True

    assert bounded(claim, 10, "the claim after the interrupted one")  # another thread: the thread lock is free
    assert claim()  # this thread, and the record lock is free too
    lock.close()
