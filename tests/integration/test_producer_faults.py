"""Issue 32, cases 2, 3 and 5: a producer stopped inside a batch, Ctrl-C during a 0-worker load,
and a dead producer, each with every wait bounded in the test.

Case 2: ``state_dict()`` waited for the whole batch in flight (the render included), for ever when
the producer thread was stopped inside it. It now waits only for the batch's cache writes, bounded
by ``pause_timeout``, and says so when that bound passes. Case 3: a ``KeyboardInterrupt`` at random
moments of a 0-worker load (the first item's start of the producer included) leaves the dataset
serving, the producer making patches and ``state_dict()`` answering. Case 5: the producer's only
processes (the label workers) SIGKILLed are reported to the main process and to DataLoader workers.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from diffmix_helpers import DictDataset, NoiseSynth, run_child_session

from diffmix_aug import DiffMixDataset
from diffmix_aug.producer import ProducerError

ROOT = Path(__file__).resolve().parents[2]


class StallingSynth(NoiseSynth):
    """Stops inside its call number ``stall_at`` until ``go`` is set (a producer stopped inside a batch:
    a debugger, a stuck device)."""

    def __init__(self, stall_at: int):
        super().__init__()
        self.stall_at, self.inside, self.go = stall_at, threading.Event(), threading.Event()

    def __call__(self, *args, **kwargs):
        if self.calls + 1 == self.stall_at:
            self.inside.set()
            self.go.wait(120)
        return super().__call__(*args, **kwargs)


def _dataset(synth, **kw):
    opts = dict(mode="enlarge", synthetic_ratio=1.0, max_reuse=10**6, cache_capacity=8, batch_size=2,
                label_workers=0, warmup="none", seed=0)
    return DiffMixDataset(DictDataset(16), synth, **{**opts, **kw})


def test_state_dict_answers_while_the_producer_is_stopped_inside_a_batch(bounded):
    synth = StallingSynth(stall_at=3)
    with _dataset(synth) as ds:
        assert synth.inside.wait(60), "the producer never reached its third batch"
        try:
            state = bounded(ds.state_dict, 20, "state_dict() while the producer is stopped inside a batch")
            # the state holds the batches written; the one in flight is batch `batches` (made again on resume)
            assert state["producer"]["batches"] == 2 and state["cache"]["writes"] == 4
            before = state
        finally:
            synth.go.set()
        deadline = time.monotonic() + 60
        while ds.cache.writes < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ds.cache.writes >= 6  # the stopped batch went on and was written after the state was taken
        index = {ds.cache.slot_meta(s)["batch_index"] for s in range(len(ds.cache))}
        assert {0, 1, 2} <= index
    with _dataset(NoiseSynth(), start=False) as again:  # the state resumes: batch 2 is rendered next
        again.load_state_dict(before)
        assert again.producer.batches == 2 and again.cache.writes == 4


def test_a_producer_stopped_inside_its_cache_writes_gives_a_timeout_naming_it(bounded):
    with _dataset(NoiseSynth(), start=False) as ds:
        inside, go, write = threading.Event(), threading.Event(), ds.cache.write

        def stalled_write(*args, **kwargs):
            if threading.current_thread().name == "diffmix-producer" and not go.is_set():
                inside.set()
                go.wait(120)
            return write(*args, **kwargs)

        ds.cache.write = stalled_write
        ds.producer.pause_timeout = 0.5
        ds.start()
        try:
            assert inside.wait(60)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError) as err:
                bounded(ds.state_dict, 20, "state_dict() while the producer is stopped inside its writes")
            assert time.monotonic() - t0 < 10
            msg = str(err.value)
            assert "writing a batch into the cache" in msg and "0.5 s (pause_timeout" in msg
            assert "thread alive: True" in msg and "resume it, or close() the dataset" in msg
        finally:
            go.set()
        ds.producer.pause_timeout = 60
        assert bounded(ds.state_dict, 30, "state_dict() once the producer goes on")["cache"]["writes"] >= 2


def test_a_state_loaded_while_a_batch_renders_drops_that_batch(bounded):
    """load_state_dict() while a batch renders: that batch's key belongs to the replaced state, so it
    is dropped; the producer goes on from the loaded counter."""
    synth = StallingSynth(stall_at=4)
    with _dataset(synth) as ds:
        deadline = time.monotonic() + 60
        while ds.producer.batches < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        early = ds.state_dict()
        assert synth.inside.wait(60)
        assert early["producer"]["batches"] < 3
        bounded(lambda: ds.load_state_dict(early), 20, "load_state_dict() while a batch renders")
        synth.go.set()
        k = early["producer"]["batches"]
        deadline = time.monotonic() + 60
        while ds.producer.batches < k + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        ds.producer.close()
        metas = [ds.cache.slot_meta(s) for s in range(ds.cache.capacity)]
        index = sorted(m["batch_index"] for m in metas if m)
        assert 3 not in index or index.count(3) == 2, index  # batch 3 (in flight at the load) never written
        assert ds.cache.writes == 2 * ds.producer.batches  # every written batch counted once


_INTERRUPT_CHILD = textwrap.dedent("""
    import faulthandler, os, random, signal, sys, threading, time
    import torch
    from diffmix_helpers import DictDataset, NoiseSynth, run_child_session
    from diffmix_aug import DiffMixDataset

    STEP = 60


    def guard():
        faulthandler.dump_traceback_later(STEP, exit=True)


    def load(ds, epoch):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            ds[i]
            if i % 8 == 0:
                ds.state_dict()


    def main():
        trials, seed = int(sys.argv[1]), int(sys.argv[2])
        torch.set_num_threads(1)
        rnd = random.Random(seed)
        guard()
        ds = DiffMixDataset(DictDataset(24), NoiseSynth(), mode="enlarge", synthetic_ratio=1.0, max_reuse=2,
                            cache_capacity=8, batch_size=2, label_workers=0, warmup="block", warmup_items=2,
                            seed=seed, start=False)
        t0 = time.monotonic()
        load(ds, 0)
        span = 1.2 * (time.monotonic() - t0)
        ds.close()
        hits = 0
        for trial in range(trials):
            if trial % 4 == 0:  # a fresh dataset: the interrupt may land in the first item's start
                ds.close()
                ds = DiffMixDataset(DictDataset(24), NoiseSynth(), mode="enlarge", synthetic_ratio=1.0,
                                    max_reuse=2, cache_capacity=8, batch_size=2, label_workers=0, warmup="block",
                                    warmup_items=2, seed=seed + trial, start=False)
            guard()
            timer = threading.Timer(rnd.uniform(0, span), os.kill, (os.getpid(), signal.SIGINT))
            try:
                timer.start()
                load(ds, trial + 1)
                timer.join()
                time.sleep(0.05)  # a SIGINT sent as the load ended lands here
            except KeyboardInterrupt:
                hits += 1
            timer.join()
            guard()  # the dataset is usable: state_dict answers, items are served, new patches come
            ds.state_dict()
            w0 = ds.cache.writes
            deadline = time.monotonic() + STEP / 2
            i = 0
            while ds.cache.writes <= w0:
                assert time.monotonic() < deadline, f"trial {trial}: no new patch after the interrupt"
                ds[i % len(ds)]
                i += 1
                time.sleep(0.002)
            assert ds.producer.alive, trial
            assert any(ds[j].get("is_synthetic") for j in range(len(ds))), trial
        guard()
        t = time.monotonic()
        ds.close()
        faulthandler.cancel_dump_traceback_later()
        print(f"interrupts={hits} close_s={time.monotonic() - t:.2f}", flush=True)


    if __name__ == "__main__":
        main()
""")


def _run_child(script: str, args: list[str], tmp: Path, timeout: float) -> str:
    path = tmp / "child.py"
    path.write_text(script)
    return run_child_session(path, args, tmp, timeout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")
def test_ctrl_c_at_random_moments_of_a_0_worker_load_leaves_the_dataset_usable(tmp_path):
    out = _run_child(_INTERRUPT_CHILD, ["12", "3"], tmp_path, timeout=400)
    line = [ln for ln in out.splitlines() if ln.startswith("interrupts=")][-1]
    fields = {k: float(v) for k, v in (kv.split("=") for kv in line.split())}
    assert fields["interrupts"] >= 6, line  # the interrupts did land inside the loads
    assert fields["close_s"] < 2.0, line


def test_a_killed_label_worker_is_reported_in_the_main_process_and_in_dataloader_workers(bounded):
    """The producer's only processes are its label workers: SIGKILLed (the OOM killer), the next
    item raises ProducerError naming the dead worker, in the main process and in loader workers."""
    ds = _dataset(NoiseSynth(), label_workers=1, warmup="block", warmup_items=2)
    try:
        (worker,) = ds.producer._labels.processes
        os.kill(worker.pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        with pytest.raises(ProducerError, match=r"label-map worker of the DiffMix producer died") as err:
            while time.monotonic() < deadline:
                for i in range(len(ds)):
                    ds[i]
                time.sleep(0.01)
        assert f"pid(s) {worker.pid}" in str(err.value) and "label_workers=0" in str(err.value)
        assert ds.producer.join(10)  # the thread ends right after publishing its failure
        assert ds.stats()["producer_patches_per_s"] is None  # no rate of a dead producer
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=list, timeout=60)
        it = iter(loader)
        with pytest.raises(Exception, match="label-map worker of the DiffMix producer died"):
            bounded(lambda: list(it), 120, "a loader over a dataset whose producer died")
        # the failed epoch's loader workers are PyTorch's to end (up to 5 s each on a loaded host): ended
        # here, and any other garbage collected, not by a collection that runs inside close() below
        bounded(it._shutdown_workers, 60, "PyTorch's shutdown of the failed loader's workers")
        it = None  # noqa: F841 - the iterator goes before the collection below
        bounded(gc.collect, 60, "a garbage collection (PyTorch loader iterators of earlier tests)")
    finally:
        bounded(ds.close, 10, "close() after the producer died")


class InterruptedRLock:
    """An RLock whose next acquire takes the lock and then raises KeyboardInterrupt: what a Ctrl-C
    delivered as the acquire call returns does (Python runs signal handlers at the end of a call)."""

    def __init__(self, interrupts: int = 1):
        self._lock, self.interrupts = threading.RLock(), interrupts

    def acquire(self, blocking=True, timeout=-1):
        got = self._lock.acquire(blocking, timeout)
        if got and self.interrupts and threading.current_thread() is threading.main_thread():
            self.interrupts -= 1
            raise KeyboardInterrupt
        return got

    def release(self):
        self._lock.release()

    def _is_owned(self):
        return self._lock._is_owned()

    __enter__ = acquire

    def __exit__(self, *exc):
        self.release()


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt in this test (Python's default handler), whatever was installed."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")
def test_ctrl_c_while_the_first_item_starts_the_producer_leaves_it_running(monkeypatch, sigint_raises, bounded):
    """Ctrl-C before the producer's thread was launched (its imports, its label workers) left a
    dataset that believed it had started: no patch was ever made again, silently."""
    import diffmix_aug.producer as producer_module

    def interrupted_imports():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs here: before the thread exists

    monkeypatch.setattr(producer_module, "preload_imports", interrupted_imports)
    with _dataset(NoiseSynth(), start=False) as ds:
        with pytest.raises(KeyboardInterrupt):
            ds[0]
        deadline = time.monotonic() + 60
        while ds.cache.writes < 4 and time.monotonic() < deadline:
            ds[1]
            time.sleep(0.01)
        assert ds.producer.alive and ds.cache.writes >= 4, "no patch was made after the interrupted start"
        assert bounded(ds.state_dict, 20, "state_dict() after the interrupted start")["cache"]["writes"] >= 4


def test_ctrl_c_as_state_dict_takes_the_producer_lock_leaves_it_free(bounded):
    with _dataset(NoiseSynth()) as ds:
        ds.producer._write_lock = InterruptedRLock()
        with pytest.raises(KeyboardInterrupt):
            ds.state_dict()
        w0 = ds.cache.writes
        deadline = time.monotonic() + 60
        while ds.cache.writes <= w0 + 2 and time.monotonic() < deadline:
            ds[0]
            time.sleep(0.01)
        assert ds.cache.writes > w0 + 2, "the producer stopped writing after the interrupted state_dict()"
        assert bounded(ds.state_dict, 20, "state_dict() after the interrupted one")["producer"]["batches"] >= 2


class WarningSynth(NoiseSynth):
    def __call__(self, *args, **kwargs):
        import warnings

        warnings.warn("the synthesizer says: low contrast batch", UserWarning, stacklevel=1)
        return super().__call__(*args, **kwargs)


def test_warnings_raised_by_the_producer_reach_the_callers_warnings_capture():
    """Issue 32, case 10: warnings raised in the producer process went only to its stderr. The
    producer is a thread of the training process now (issue 30), so they reach ``warnings`` capture."""
    with pytest.warns(UserWarning, match="the synthesizer says: low contrast batch"), \
            _dataset(WarningSynth(), warmup="block", warmup_items=2) as ds:
        assert ds.cache.writes >= 2
