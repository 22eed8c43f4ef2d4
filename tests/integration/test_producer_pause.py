"""The process producer is stopped while the training process loads a batch itself (``num_workers=0``)
and only then: never by a DataLoader worker, never with ``producer_pause_on_load=False``; it still
makes patches when the loop loads without a break; ``close()`` and a killed training process never
leave it stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffmix_helpers import DictDataset, NoiseSynth
from torch.utils.data import DataLoader

from diffmix_aug import DiffMixDataset
from tests.proc_state import state as _state
from tests.proc_state import wait_state

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not (sys.platform.startswith("linux") and hasattr(os, "pidfd_open")),
                                reason="the process producer and its pause need Linux (fork, pidfds)")


def _becomes(pid: int, want: str, timeout: float) -> bool:
    return wait_state(pid, {want}, timeout) == want


class Watching(DictDataset):
    """Records, for each item it loads, whether the producer process was stopped meanwhile."""

    def __init__(self, n: int = 16, window: float = 0.5) -> None:
        super().__init__(n, torch_chw=False)
        self.pid: int | None = None
        self.window = window  # seconds a load waits to see the producer stopped
        self.stopped = torch.zeros(n, dtype=torch.int8).share_memory_()  # 0 unseen, 1 running, 2 stopped

    def __getitem__(self, i):
        if self.pid is not None:
            self.stopped[i] = 2 if _becomes(self.pid, "T", self.window) else 1
        return super().__getitem__(i)


def _dataset(base, **kw):
    kw = {"mode": "enlarge", "synthetic_ratio": 0.5, "cache_capacity": 4, "batch_size": 2, "warmup": "block",
          "warmup_items": 2, "warmup_timeout": 120, "producer_backend": "process", **kw}
    ds = DiffMixDataset(base, NoiseSynth(), **kw)
    assert ds.producer.running_in == "process"
    base.pid = ds.producer._process.pid
    return ds


def test_loads_of_the_training_process_stop_the_producer():
    base = Watching(16)
    with _dataset(base) as ds:
        pid = base.pid
        n = sum(len(b["image"]) for b in DataLoader(ds, batch_size=4, num_workers=0))
        assert n == 16
        seen = base.stopped.numpy()
        originals = np.flatnonzero(seen > 0)
        assert originals.size > 0 and (seen[originals] == 2).all()  # stopped during every load
        assert _becomes(pid, "S", 2.0) or _state(pid) == "R"  # and running again after the batch
        pause = ds.producer._pause
        assert pause.pauses == 4  # one pause per batch of 4 (DataLoader calls __getitems__)
        [ds[i] for i in range(4)]  # plain indexing pauses per item
        assert pause.pauses == 8


def test_workers_and_the_option_off_never_stop_it():
    base = Watching(16, window=0.05)
    with _dataset(base) as ds:
        list(DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork"))
        seen = base.stopped.numpy()
        assert (seen > 0).any() and not (seen == 2).any()
        assert ds.producer._pause.pauses == 0
    base = Watching(16, window=0.05)
    with _dataset(base, producer_pause_on_load=False) as ds:
        list(DataLoader(ds, batch_size=4, num_workers=0))
        seen = base.stopped.numpy()
        assert (seen > 0).any() and not (seen == 2).any()
        assert ds.producer._pause is None


class SlowLoads(DictDataset):
    def __getitem__(self, i):
        end = time.perf_counter() + 0.02  # a CPU-bound load of 20 ms
        while time.perf_counter() < end:
            pass
        return super().__getitem__(i)


class BurnSynth(NoiseSynth):
    def __call__(self, images, inst_maps, type_maps, generator=None):
        end = time.process_time() + 0.05  # 50 ms of CPU per batch
        while time.process_time() < end:
            pass
        return super().__call__(images, inst_maps, type_maps, generator)


def test_a_loop_that_only_loads_still_gets_new_patches():
    """The leaky bucket: the producer is stopped at most 90 % of the time."""
    base = SlowLoads(32, torch_chw=False)
    with DiffMixDataset(base, BurnSynth(), mode="enlarge", synthetic_ratio=0.5, cache_capacity=4, batch_size=2,
                        max_reuse=1, warmup="block", warmup_items=2, warmup_timeout=120,
                        producer_backend="process") as ds:
        w0 = ds.cache.writes
        loader = DataLoader(ds, batch_size=8, num_workers=0)
        end = time.monotonic() + 6.0
        while time.monotonic() < end:
            for _ in loader:
                pass
        pause = ds.producer._pause
        assert ds.cache.writes > w0, "no new patch while the loop loaded without a break"
        assert pause.pauses > 0 and pause.skipped > 0


def test_close_from_another_thread_during_a_load_resumes_and_ends_the_producer():
    class Blocking(DictDataset):
        def __init__(self):
            super().__init__(8, torch_chw=False)
            self.entered, self.release = threading.Event(), threading.Event()
            self.armed = False  # the producer process reads the base too (label maps): only our load blocks

        def __getitem__(self, i):
            if self.armed:
                self.entered.set()
                self.release.wait(10)
            return super().__getitem__(i)

    base = Blocking()
    ds = DiffMixDataset(base, NoiseSynth(), mode="enlarge", synthetic_ratio=0.0, cache_capacity=4, batch_size=2,
                        warmup="block", warmup_items=2, warmup_timeout=120, producer_backend="process")
    proc = ds.producer._process
    pid = proc.pid
    base.armed = True
    loader = threading.Thread(target=lambda: ds[0], daemon=True)
    loader.start()
    assert base.entered.wait(10)
    assert _becomes(pid, "T", 2.0)
    t = time.monotonic()
    ds.close()
    assert time.monotonic() - t < 2.5
    assert _state(pid) in {"", "Z"}  # ended (and reaped by close)
    base.release.set()
    loader.join(10)


_KILLED = textwrap.dedent("""
    import os, sys, time
    from diffmix_helpers import DictDataset, NoiseSynth
    from diffmix_aug import DiffMixDataset

    class Stuck(DictDataset):
        armed = False

        def __getitem__(self, i):
            if self.armed:
                print(ds.producer._process.pid, flush=True)
                time.sleep(600)  # killed in here, with the producer stopped
            return super().__getitem__(i)

    base = Stuck(8, torch_chw=False)
    ds = DiffMixDataset(base, NoiseSynth(), mode="enlarge", synthetic_ratio=0.0,
                        cache_capacity=4, batch_size=2, warmup="block", warmup_items=2, producer_backend="process")
    base.armed = True
    ds[0]
""")


def test_a_training_process_killed_mid_load_leaves_no_stopped_producer(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(_KILLED)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "integration")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pid = int(proc.stdout.readline())
        assert _becomes(pid, "T", 5.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert _becomes(pid, "", 15.0) or _state(pid) == "Z", f"producer left in state {_state(pid)!r}"
    finally:
        proc.kill()
        proc.wait()
