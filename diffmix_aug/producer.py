"""The background producer: label maps -> synthesizer -> :class:`~diffmix_aug.cache.ReplayCache`.

It runs in one daemon thread of the main process (on its own CUDA stream when the synthesizer is
on a GPU), or, for a CPU synthesizer under ``backend="process"`` / ``"auto"`` (Linux), in one
forked daemon process of its own, so that the synthesis never holds the consumer's GIL; DataLoader
workers never touch the synthesizer. Each batch is made from
a per-batch seed derived from ``(seed, rank, batch index)``, so a batch is reproducible on its own,
and in ``cooperative`` use (:meth:`Producer.step` called synchronously by the dataset) whole runs
are bit-reproducible. The thread waits on the cache's credits (a slot whose patch was already
read) instead of overwriting unread patches, and on ``threading`` events, never on sleeps.

A failure inside the thread is stored with its traceback and re-raised by :meth:`check` (the
consumer calls it on every item), and published in the cache so that workers in other processes
raise it too. ``close()``, the context manager and interpreter exit stop the thread.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ._checks import check_choice, check_positive_int
from ._seeds import derive_seed
from .cache import ReplayCache
from .config import CPU_PRIORITIES, PRODUCER_BACKENDS
from .data.sample import NucleiSample
from .labelmaps.jobs import LabelMapJobs, collate_jobs
from .load_pause import NO_PAUSE, LoadPause, continue_on_parent_death, open_load_pause
from .sampling._base import SamplingInterrupted

__all__ = ["CPU_PRIORITIES", "PRODUCER_BACKENDS", "Producer", "ProducerError", "derive_seed", "idle_is_reversible",
           "preload_imports"]


_LOADER_STREAMS = 1 << 40
_TIMES = 64  # finished-batch times kept for patches_per_second()
_EXC_BYTES = 1 << 16  # room for the producer process's pickled exception

#: modules the producer thread may import lazily; imported by :func:`preload_imports` first
_HEAVY_MODULES = ("cv2", "scipy.ndimage", "safetensors", "tqdm")


class ProducerError(RuntimeError):
    """The background producer failed; ``__cause__`` is the original exception."""


class _Stopped(Exception):
    """Raised inside a synthesis call when :meth:`Producer.close` asked it to stop."""


def preload_imports() -> None:
    """Import, in the calling thread, every heavy module the producer thread could import lazily.

    A thread that imports a package while the main thread starts a spawn worker can corrupt the
    worker's import state: while ``cv2`` loads, its package folder is briefly on ``sys.path`` and a
    spawn worker started in that moment resolves ``typing`` to ``cv2/typing`` and dies, leaving
    the parent blocked in ``popen_spawn_posix._launch`` for ever. Importing first removes the race.
    """
    import importlib

    for name in _HEAVY_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


class Producer:
    """Fills a :class:`ReplayCache` with synthetic patches, in a thread or on demand.

    Args:
        cache: The cache to fill (the producer is its only writer).
        synthesizer: ``synth(images uint8 [B,H,W,3], inst int [B,H,W], types int [B,H,W],
            generator=torch.Generator) -> uint8 [B,H,W,3]`` (a :class:`Synthesizer` or any callable).
        source: Sequence of :class:`NucleiSample` the label maps start from.
        label_sampler: A ``LabelMapSampler`` (``sampler(sample, rng) -> LabelMapResult``: the
            parameters are drawn, then applied once), or None to keep the source label maps.
        batch_size: Patches per synthesizer call.
        seed: Base seed; the per-batch seeds also depend on ``rank``.
        rank: Distributed rank (ranks produce disjoint patches).
        rare_classes: Classes to favour when the cache lacks them; None (default) takes the label
            sampler's ``rare_classes`` when it ``balances``, else none (enlarging has no bias).
        label_workers: Processes building the label maps of the next batches (a ``DataLoader``
            over :class:`~diffmix_aug.labelmaps.jobs.LabelMapJobs`, started with the thread); 0
            builds them in the producer itself (always so for :meth:`step` without a thread, which
            keeps cooperative runs bit-reproducible).
        bias_candidates: Source candidates scored per patch for the rare-class bias (1 = uniform).
        idle_timeout: Seconds the thread waits for a read before overwriting an unread patch anyway.
        cpu_priority: Scheduling of the producer thread when it synthesises on the CPU (Linux):
            ``"auto"`` (default: ``SCHED_IDLE`` with a starvation guard where ``SCHED_IDLE`` can be
            left again, else a constant nice :attr:`boost_nice`; see :meth:`_lower_priority`),
            ``"idle"`` (``SCHED_IDLE`` only), ``"low"`` (nice +10) or ``"normal"``.
        starve_after: Seconds a batch may take under ``"auto"`` before the producer's threads are
            raised from ``SCHED_IDLE`` to :attr:`boost_nice` (+10) for the rest of that batch
            (busy hosts).
        backend: Where :meth:`start` runs the loop: ``"thread"`` (default here: a daemon thread of
            this process), ``"process"`` (a CPU synthesizer on Linux: a forked daemon process, as
            DataLoader workers are, with one intra-op thread; it builds its label maps itself and
            writes into the shared cache; its GIL is its own, so a starved, deprioritised producer
            never holds the consumer's) or ``"auto"`` (the process where it can run, else the
            thread: on CUDA, which must launch kernels from the process holding the CUDA context,
            and off Linux). :meth:`step` always runs in the calling thread.
    """

    def __init__(
        self,
        cache: ReplayCache,
        synthesizer: Callable[..., np.ndarray],
        source: Sequence[NucleiSample],
        label_sampler: Any = None,
        *,
        batch_size: int = 4,
        seed: int = 0,
        rank: int = 0,
        rare_classes: Sequence[int] | None = None,
        label_workers: int = 0,
        bias_candidates: int = 4,
        idle_timeout: float = 5.0,
        cpu_priority: str = "auto",
        starve_after: float = 10.0,
        backend: str = "thread",
        pause_on_load: bool = True,
    ) -> None:
        if not callable(synthesizer):
            raise TypeError(f"`synthesizer` must be callable (images, inst_maps, type_maps, generator), "
                            f"got {type(synthesizer).__name__}")
        if len(source) == 0:
            raise ValueError("`source` must hold at least one sample to draw label maps from, got an empty dataset")
        self.cache = cache
        self.synthesizer = synthesizer
        self.source = source
        self.label_sampler = label_sampler
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        if rare_classes is None:
            rare_classes = getattr(label_sampler, "rare_classes", ()) if getattr(label_sampler, "balances", False) \
                else ()
        self.rare_classes = tuple(int(c) for c in rare_classes)
        self.label_workers = check_positive_int("label_workers", label_workers, allow_zero=True)
        self.jobs = LabelMapJobs(source, label_sampler, cache.patch_shape, seed, rank)
        self._maps_iter: Any = None  # DataLoader iterator over job lists (label_workers > 0)
        self._streams_issued = 0  # job lists handed to the loader
        self.bias_candidates = check_positive_int("bias_candidates", bias_candidates)
        self.idle_timeout = float(idle_timeout)
        self.cpu_priority = check_choice("cpu_priority", cpu_priority, CPU_PRIORITIES)
        if isinstance(starve_after, bool) or not isinstance(starve_after, (int, float)) or not starve_after > 0:
            raise ValueError(f"`starve_after` must be a positive number of seconds, got {starve_after!r}")
        self.starve_after = float(starve_after)
        self._accepts_stop = _accepts_keyword(synthesizer, "should_stop")
        self._batch_started: float | None = None  # monotonic time the batch in flight began
        self._warmup = 0  # patches start() was told the caller blocks for
        self._process_side = False  # True in the producer process itself
        self._boosted: list[int] = []  # thread ids raised from SCHED_IDLE by the watchdog
        self._watchdog: threading.Thread | None = None
        #: seq -> metadata of the latest patches (``item_info`` falls back to it after eviction;
        #: filled by the thread backend and by :meth:`step`, a producer process keeps its own)
        self.history: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self.history_size = 4 * cache.capacity
        self._class_counts: dict[int, np.ndarray] = {}
        self._cond = threading.Condition()
        self._exc: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._process: Any = None  # multiprocessing.Process of the process backend
        self._stream = None
        device = getattr(synthesizer, "device", None)
        if device is not None and torch.device(device).type == "cuda":
            self._stream = torch.cuda.Stream(device=torch.device(device))
        backend = check_choice("backend", backend, PRODUCER_BACKENDS)
        forkable = sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
        if backend == "process" and (self._stream is not None or not forkable):
            why = f"got a synthesizer on {device}" if self._stream is not None else f"this is {sys.platform}"
            raise ValueError(f"`producer_backend`='process' forks a process for a CPU synthesizer on Linux, {why}; "
                             "use producer_backend='auto' or 'thread'")
        if backend == "auto":
            backend = "process" if self._stream is None and forkable else "thread"
        #: ``"thread"`` or ``"process"``: where :meth:`start` runs the loop (``"auto"`` resolved)
        self.backend = backend
        if not isinstance(pause_on_load, bool):
            raise TypeError(f"`pause_on_load` must be True or False, got {pause_on_load!r}")
        self.pause_on_load = pause_on_load
        self._pause: LoadPause | None = None  # the process backend's pause during this process's loads
        # the process backend shares the stop event, the locks and the batch clock with its child
        shared = backend == "process"
        sync: Any = multiprocessing.get_context("fork") if shared else threading
        self._stop = _SharedFlag() if shared else threading.Event()
        self._lock = sync.Lock()  # one batch at a time (thread, process or cooperative step)
        self._write_lock = sync.Lock()  # close() takes it: no cache write after close()
        # [batches, finished batches ever, ring of their monotonic times (CLOCK_MONOTONIC: one clock
        # for every process of the host)]
        self._clock = torch.zeros(2 + _TIMES, dtype=torch.float64)
        # the process backend's failure, pickled (length in the first 8 bytes), for check()'s __cause__
        self._exc_blob = torch.zeros(8 + _EXC_BYTES if shared else 0, dtype=torch.uint8)
        if shared:
            self._clock.share_memory_()
            self._exc_blob.share_memory_()
        self._owner = os.getpid()  # forked copies never stop the producer (see _shutdown)
        _ALL_STOPS[self._stop] = self._owner
        self._finalizer = weakref.finalize(self, _shutdown, self._stop, cache, self._thread_box, self._iter_box,
                                           self._owner)
        if not _ALL_STOPS_REGISTERED:
            _ALL_STOPS_REGISTERED.append(atexit.register(_stop_all))

    @property
    def _thread_box(self) -> list:
        if not hasattr(self, "_box"):
            self._box: list[threading.Thread] = []
        return self._box

    @property
    def _iter_box(self) -> list:
        if not hasattr(self, "_ibox"):
            self._ibox: list[Any] = []
        return self._ibox

    @property
    def batches(self) -> int:
        """Batches made so far (the per-batch seeds derive from it); shared with a producer process."""
        return int(self._clock[0])

    @batches.setter
    def batches(self, value: int) -> None:
        self._clock[0] = int(value)

    @property
    def batch_times(self) -> list[float]:
        """Monotonic times of the last (up to 64) finished batches, oldest first."""
        n = int(self._clock[1])
        ring = self._clock[2:].tolist()
        return [ring[i % _TIMES] for i in range(max(0, n - _TIMES), n)]

    def _record_batch(self) -> None:
        n = int(self._clock[1])
        self._clock[2 + n % _TIMES] = time.monotonic()
        self._clock[1] = n + 1
        self._clock[0] += 1

    @property
    def running_in(self) -> str | None:
        """``"thread"`` or ``"process"`` once started (None before, and for :meth:`step` only)."""
        return "process" if self._process is not None else ("thread" if self._thread is not None else None)

    # ------------------------------------------------------------------ batch construction
    def _counts(self, index: int) -> np.ndarray:
        c = self._class_counts.get(index)
        if c is None:
            c = self.source[index].class_counts(self.cache.num_classes)
            self._class_counts[index] = c
        return c

    def pick_source(self, rng: np.random.Generator) -> int:
        """A source index; with rare classes, the candidate that best fills the cache's deficit."""
        n = len(self.source)
        m = self.bias_candidates if self.rare_classes else 1
        cand = rng.integers(0, n, size=m)
        if m == 1:
            return int(cand[0])
        frac = self.cache.class_fractions()
        k = self.cache.num_classes
        target = np.zeros(k)
        target[1:] = 1.0 / max(1, k - 1)
        deficit = np.clip(target - frac, 0, None)
        weights = np.zeros(k)
        for c in self.rare_classes:
            if 0 < c < k:
                weights[c] = deficit[c] + 1e-6
        scores = [float(self._counts(int(i)) @ weights) for i in cand]
        return int(cand[int(np.argmax(scores))])

    def _job_lists(self):
        """Endless job lists for the label-map loader (pulled, a few batches ahead, by the loader)."""
        while True:
            stream = self._streams_issued
            self._streams_issued += 1
            rng = np.random.default_rng(derive_seed(self.seed, self.rank, stream, 0x10B5))
            # loader streams live above 2**40, in-thread ones are batch indices: their map seeds never meet
            yield [(_LOADER_STREAMS + stream, j, self.pick_source(rng)) for j in range(self.batch_size)]

    def _maps(self, batch_index: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        """The label maps of one batch: from the worker loader when it runs, else built here."""
        if self._maps_iter is not None and not self._stop.is_set():
            maps = list(next(self._maps_iter))[: self.batch_size]
            rest = self.batch_size - len(maps)  # batch_size was raised since the list was issued
        else:
            maps, rest = [], self.batch_size
        if rest:
            maps += [self.jobs[(batch_index, j, self.pick_source(rng))] for j in range(len(maps), self.batch_size)]
        return maps

    def make_batch(self, batch_index: int) -> list[dict[str, Any]]:
        """Build and synthesise batch ``batch_index`` (pure in its seed, given the cache state and,
        without label workers, the maps built from that seed)."""
        bseed = derive_seed(self.seed, self.rank, batch_index)
        rng = np.random.default_rng(bseed)
        items = self._maps(batch_index, rng)
        for j, it in enumerate(items):
            it["meta"] = {**it["meta"], "batch_seed": bseed, "batch_index": batch_index, "position": j}
        gen = torch.Generator().manual_seed(bseed)
        args = (np.stack([it["image"] for it in items]), np.stack([it["inst"] for it in items]),
                np.stack([it["type"] for it in items]))
        kwargs: dict[str, Any] = {"generator": gen}
        if self._accepts_stop:
            kwargs["should_stop"] = self._stop.is_set
        try:
            if self._stream is not None:
                with torch.cuda.stream(self._stream):
                    out = self.synthesizer(*args, **kwargs)
                self._stream.synchronize()
            else:
                out = self.synthesizer(*args, **kwargs)
        except SamplingInterrupted as exc:
            raise _Stopped from exc
        if self._stop.is_set():  # an uninterruptible synthesizer returned after close()
            raise _Stopped
        out = np.asarray(out)
        if out.shape != args[0].shape or out.dtype != np.uint8:
            raise ValueError(f"synthesizer must return uint8 {args[0].shape}, got {out.dtype} {out.shape}")
        for it, img in zip(items, out):
            it["image"] = img
        return items

    def step(self, n_batches: int = 1) -> int:
        """Synchronously produce ``n_batches`` batches into the cache; returns patches written.

        Nothing is written once :meth:`close` has been called (a batch in flight is dropped).
        """
        self.check()
        written = 0
        for _ in range(n_batches):
            if self._stop.is_set():
                break
            with self._lock:
                self._batch_started = time.monotonic()
                try:
                    items = self.make_batch(self.batches)
                except _Stopped:
                    break
                finally:
                    self._batch_started = None
                    self._restore_priority()
                with self._write_lock:
                    if self._stop.is_set():
                        break
                    for it in items:
                        seq = self.cache.write(it["image"], it["inst"], it["type"], it["meta"])
                        self.history[seq] = {**it["meta"], "seq": seq}
                while len(self.history) > self.history_size:
                    self.history.popitem(last=False)
                self._record_batch()
                written += len(items)
            with self._cond:
                self._cond.notify_all()
        return written

    def patches_per_second(self) -> float | None:
        """Recent production rate (over the last up to 64 batches), None before two batches."""
        t = self.batch_times
        if len(t) < 2 or t[-1] <= t[0]:
            return None
        return (len(t) - 1) * self.batch_size / (t[-1] - t[0])

    # ------------------------------------------------------------------ thread
    def start(self, warmup: int = 0) -> Producer:
        """Start the background thread or process (idempotent).

        Args:
            warmup: Patches the caller is about to block for (``DiffMixDataset``'s ``warmup``). The
                process backend makes them at normal priority, since nothing of the caller's runs
                meanwhile, and only then lowers itself (see :meth:`_lower_priority`): on a busy
                host a deprioritised warm-up would take minutes.
        """
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"`warmup` must be a number of patches >= 0, got {warmup!r}")
        if self._thread is None and self._process is None:
            if self._stop.is_set():
                raise RuntimeError("this Producer was closed; build a new one")
            self._warmup = warmup
            if self.backend != "thread" and self._stream is None:
                self._start_process()
                return self
            preload_imports()
            if self.label_workers > 0:
                # workers start here, from the calling (main) thread, before the producer thread runs
                loader = torch.utils.data.DataLoader(self.jobs, batch_sampler=self._job_lists(),
                                                     num_workers=self.label_workers, collate_fn=collate_jobs,
                                                     prefetch_factor=2)
                self._maps_iter = iter(loader)
                self._iter_box.append(self._maps_iter)
            self._thread = threading.Thread(target=self._run, name="diffmix-producer", daemon=True)
            self._thread_box.append(self._thread)
            self._thread.start()
            if self._stream is None and self.idle_guarded:
                self._watchdog = threading.Thread(target=self._watch, name="diffmix-watchdog", daemon=True)
                self._watchdog.start()
        return self

    def _start_process(self) -> None:
        """Fork the producer process (it runs :meth:`_process_main` on a copy of this object)."""
        preload_imports()  # a module half imported by another thread at fork time would stay half imported
        proc = multiprocessing.get_context("fork").Process(target=self._process_main, args=(os.getpid(),),
                                                           name="diffmix-producer", daemon=True)
        # fork only while no other thread is inside a call of the synthesizer (a second dataset's
        # thread producer sharing it): measured, a fork while another thread held the Synthesizer's
        # lock left the child waiting on its copy for ever (0 warm-up patches in 600 s)
        paused = getattr(self.synthesizer, "paused", None)
        with paused(_FORK_WAIT_S) if callable(paused) else contextlib.nullcontext():
            proc.start()
        self._process = proc
        if self.pause_on_load:
            self._pause = open_load_pause(proc.pid)
            if self._pause is not None:
                self._thread_box.append(self._pause)  # resumed by _shutdown before it ends the process
        self._thread_box.append(proc)

    def _process_main(self, parent: int) -> None:
        """Entry point of the producer process (a fork of the process that made the producer): the
        thread backend's loop, run in this process's main thread on the shared stop event, locks,
        batch clock and cache.

        One intra-op thread: GNU OpenMP, which PyTorch's CPU kernels use, hangs in a forked child
        whose parent ran a parallel region (measured here: a 2-thread matmul in the child never
        returned); with one thread it runs. DataLoader workers are limited the same way.
        """
        torch.set_num_threads(1)
        continue_on_parent_death()  # a parent killed while it held us stopped (LoadPause) must not leave us stopped
        self._process_side = True
        self._finalizer.detach()  # the parent's copy owns the shutdown
        threading.Thread(target=_orphan_guard, args=(parent, self._stop), name="diffmix-orphan-guard",
                         daemon=True).start()
        if self.idle_guarded:
            self._watchdog = threading.Thread(target=self._watch, name="diffmix-watchdog", daemon=True)
            self._watchdog.start()
        self._run()  # a failure is published in the cache (set_error) for every process to raise
        if self._exc is not None:
            raise SystemExit(1)

    @property
    def boost_nice(self) -> int:
        """Nice value of a starved batch (``"auto"`` with :attr:`idle_guarded`) or of the whole run
        (``"auto"`` without it): +10 for both backends.

        On a host whose cores are all busy, nice +10 (weight 110 against 1024 for a nice-0 task)
        leaves the producer a small share (+19: weight 15). Measured: beside two busy processes it
        made 0.26 patches/s at 0 workers; in the demo's training stage (a loop and 2 workers on 2
        cores) the process producer made no patch after its warm-up at either value (synthetic share
        2.7 %). A thread at +19 would keep the consumer waiting longer for the GIL when preempted
        while holding it.
        """
        return 10

    @property
    def idle_guarded(self) -> bool:
        """Whether ``cpu_priority="auto"`` runs the producer under ``SCHED_IDLE`` with the starvation
        guard: only where a thread may leave ``SCHED_IDLE`` again (:func:`idle_is_reversible`: root,
        ``CAP_SYS_NICE`` or ``RLIMIT_NICE`` >= 20). For an ordinary user on Linux the kernel refuses
        that (EPERM), so the guard could never raise a starved batch; ``"auto"`` then keeps the
        producer at the constant nice :attr:`boost_nice` instead.
        """
        return self.cpu_priority == "auto" and idle_is_reversible()

    def _watch(self) -> None:
        """Starvation guard of ``"auto"``: raise a ``SCHED_IDLE`` batch that runs too long to :attr:`boost_nice`."""
        while not self._stop.wait(min(1.0, self.starve_after / 4)):
            started = self._batch_started
            if started is not None and not self._boosted and time.monotonic() - started > self.starve_after:
                self._boosted = _raise_idle_threads(nice=self.boost_nice)

    def _run(self) -> None:
        try:
            # the process backend makes the patches a blocked caller waits for at normal priority
            # (priority can always be lowered, an ordinary user can never raise it again)
            deferred = self._process_side and len(self.cache) < self._warmup
            if not deferred:
                self._lower_priority()
            while not self._stop.is_set():
                got = 0
                while got < self.batch_size and not self._stop.is_set():
                    if not self.cache.acquire_credit(timeout=self.idle_timeout):
                        break  # nobody read for a while: refresh anyway
                    got += 1
                if self._stop.is_set():
                    return
                self.step()
                if deferred and len(self.cache) >= self._warmup:
                    deferred = False
                    self._lower_priority()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, never swallowed
            if self._stop.is_set():
                return  # closed under it (the cache may be gone): nothing to report
            self._exc = exc
            text = "".join(traceback.format_exception(exc))
            if self._exc_blob.numel():  # a producer process: the original for check()'s __cause__, if it pickles
                with contextlib.suppress(Exception):
                    blob = pickle.dumps(exc.with_traceback(None))
                    if len(blob) <= _EXC_BYTES:
                        self._exc_blob[8:8 + len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
                        self._exc_blob[:8].view(torch.int64)[0] = len(blob)
            with contextlib.suppress(Exception):
                self.cache.set_error(text)
        finally:
            with self._cond:
                self._cond.notify_all()

    def _lower_priority(self) -> None:
        """Make a CPU producer thread yield to the DataLoader workers and the training step.

        Synthesis on the CPU competes with the workers and the consumer for the same cores; a
        consumer that waits loses more than a producer that makes fewer fresh patches (the cache
        replays). Linux schedules threads one by one (the OpenMP threads the producer starts later
        inherit its policy); elsewhere this is a no-op. A CUDA producer keeps its priority: it must
        launch kernels on time.

        ``"idle"`` (``SCHED_IDLE``) runs the thread only on otherwise idle cores and is preempted at
        once by a waking consumer; ``"low"`` adds 10 to its nice value, which on 2 cores still left
        the consumer ~2 ms per batch waiting for the niced thread's time slice to end (EEVDF);
        ``"normal"`` changes nothing. ``"auto"`` is ``"idle"`` with a guard: on a host whose
        cores are all busy, ``SCHED_IDLE`` threads never run (measured: 0 new patches in 20,000
        items), so a watchdog thread raises the producer's threads to :attr:`boost_nice` when a batch
        has run longer than ``starve_after`` seconds, and they go back to ``SCHED_IDLE`` after the batch.
        Where the kernel would refuse that raise (an ordinary user: :attr:`idle_guarded` is False),
        ``"auto"`` is the constant nice :attr:`boost_nice` (+10) instead.
        The process backend calls this only after the ``warmup`` patches of :meth:`start`.
        """
        if self._stream is not None or self.cpu_priority == "normal" or not hasattr(os, "setpriority"):
            return
        tid = threading.get_native_id()
        if (self.cpu_priority == "idle" or self.idle_guarded) and hasattr(os, "SCHED_IDLE"):
            with contextlib.suppress(OSError):
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
                return
        with contextlib.suppress(OSError):
            now = os.getpriority(os.PRIO_PROCESS, tid)
            target = self.boost_nice if self.cpu_priority == "auto" else now + 10
            os.setpriority(os.PRIO_PROCESS, tid, min(19, max(now, target)))

    def _restore_priority(self) -> None:
        """Put threads the watchdog raised back under ``SCHED_IDLE`` (after their batch)."""
        tids, self._boosted = self._boosted, []
        for tid in tids:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))

    def check(self) -> None:
        """Re-raise a failure of the background thread (the original is ``__cause__``) or process."""
        if self._exc is not None:
            raise ProducerError(f"the DiffMix producer thread failed: {self._exc!r}") from self._exc
        proc = self._process
        if proc is None or self._stop.is_set():
            return
        err = self.cache.error()
        if err is not None:
            cause = self._child_exception()
            if cause is not None:
                cause.add_note(f"raised in the DiffMix producer process (pid {proc.pid}):\n{err}")
            raise ProducerError(f"the DiffMix producer process failed:\n{err}") from cause
        code = proc.exitcode
        if code is not None:
            cause = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            raise ProducerError(f"the DiffMix producer process (pid {proc.pid}) ended with {cause} and left no "
                                "error (killed by the OOM killer or a signal?); build the dataset again, or use "
                                "producer_backend='thread'")

    def _child_exception(self) -> BaseException | None:
        """The producer process's exception, unpickled (its traceback is in the cache's error text)."""
        n = int(self._exc_blob[:8].view(torch.int64)[0]) if self._exc_blob.numel() else 0
        if not 0 < n <= _EXC_BYTES:
            return None
        try:
            exc = pickle.loads(self._exc_blob[8:8 + n].numpy().tobytes())
        except Exception:  # noqa: BLE001 - an exception class that does not unpickle: the text remains
            return None
        return exc if isinstance(exc, BaseException) else None

    def wait_for(self, count: int, timeout: float | None = None) -> bool:
        """Block until the cache holds ``count`` patches (or the producer failed / stopped)."""
        if self._process is not None:  # another process writes: poll (no condition crosses processes)
            end = None if timeout is None else time.monotonic() + float(timeout)
            while True:
                self.check()
                if len(self.cache) >= count:
                    return True
                left = None if end is None else end - time.monotonic()
                if self._stop.is_set() or (left is not None and left <= 0):
                    return False
                self._stop.wait(0.05 if left is None else min(0.05, left))
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.cache) >= count or self._exc is not None
                                     or self._stop.is_set(), timeout=timeout)
        self.check()
        return bool(ok) and len(self.cache) >= count

    @property
    def alive(self) -> bool:
        """Whether the background thread or process is running."""
        if self._process is not None:
            return _process_alive(self._process)
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the background thread or process has ended (it ends on a failure or after
        :meth:`close`); True when it has."""
        worker = self._process if self._process is not None else self._thread
        if worker is not None:
            with contextlib.suppress(ValueError):  # a Process object already closed
                worker.join(timeout)
        return not self.alive

    def close(self, timeout: float = 2.0) -> bool:
        """Stop the thread: the synthesis call in flight stops at its next step boundary.

        Returns within about ``timeout`` seconds. After it returns no patch is written to the
        cache. A synthesizer that cannot be interrupted (a plain callable without ``should_stop``)
        is abandoned as a daemon thread, never joined for ever.

        Returns:
            True when the thread has ended, False when it was abandoned.
        """
        self._stop.set()
        deadline = time.monotonic() + float(timeout)
        _raise_idle_threads(nice=0)  # a starved SCHED_IDLE thread must be able to reach the boundary
        with contextlib.suppress(Exception):
            self.cache.release_credit(self.batch_size)
        with self._cond:
            self._cond.notify_all()
        if self._pause is not None:
            self._pause.close()  # a process stopped by a load in another thread must reach its boundary
        if self._process is not None:  # stops at its next step boundary, or is terminated
            _end_process(self._process, max(0.0, deadline - time.monotonic() - 0.5))
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._watchdog is not None:
            self._watchdog.join(max(0.0, deadline - time.monotonic()))
        _shutdown_loaders(self._iter_box)
        got = self._write_lock.acquire(timeout=max(0.05, deadline - time.monotonic()))
        if got:
            self._write_lock.release()
        if not self.alive:
            self._finalizer.detach()
        # else: the finaliser stays registered, so interpreter exit joins the thread once more
        # (a daemon thread still inside a torch op when the interpreter tears down aborts the process)
        return not self.alive

    def __enter__(self) -> Producer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def loading(self) -> contextlib.AbstractContextManager:
        """Context of a load by the training process itself (``num_workers=0``): the producer
        process is stopped while it runs (:class:`~diffmix_aug.load_pause.LoadPause`, at most 90 %
        of the time), so its CPU time never comes out of the loop's loading on a busy host.

        A no-op for the thread backend, with ``pause_on_load=False``, before :meth:`start`, after
        :meth:`close` and in any other process (a DataLoader worker never stops the producer).
        """
        pause = self._pause
        if pause is None or pause.closed or os.getpid() != self._owner:
            return NO_PAUSE
        return pause

    @contextlib.contextmanager
    def paused(self):
        """Hold off the next batch while the block runs (a consistent ``state_dict`` of the dataset)."""
        got = self._lock.acquire(timeout=0.1)
        while not got and (self._process is None or self.alive):
            got = self._lock.acquire(timeout=0.1)
        # else: the producer process ended holding the lock (terminated by close()): nothing to hold off
        try:
            yield self
        finally:
            if got:
                self._lock.release()

    def state_dict(self) -> dict[str, Any]:
        """The batch counter (per-batch seeds derive from it and from ``seed`` and ``rank``)."""
        return {"batches": self.batches, "seed": self.seed, "rank": self.rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches = int(state["batches"])


#: the stop events of every producer alive: at interpreter exit all are set before any join, since
#: producers sharing one synthesizer wait on each other's synthesis lock
_ALL_STOPS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()  # stop event -> owner pid
_ALL_STOPS_REGISTERED: list = []  # holds the atexit hook once it is registered (lazily: no import side effect)


#: seconds the process backend's start waits for a synthesis call of another thread to finish before it forks
_FORK_WAIT_S = 300.0

#: seconds interpreter exit waits for a producer thread still inside a synthesis step
_EXIT_JOIN_S = 15.0


def _shutdown(stop: Any, cache: ReplayCache, box: list, iter_box: list, owner: int) -> None:
    """Finaliser / atexit hook: stop and join the thread (or end the process) without referencing
    the producer. Only in the process that made the producer: a forked copy (a DataLoader worker)
    shares the process backend's stop event and must never stop the real producer."""
    if os.getpid() != owner:
        return
    stop.set()
    _raise_idle_threads(nice=0)
    with contextlib.suppress(Exception):  # best effort at interpreter exit
        cache.release_credit(8)
    for t in box:
        if isinstance(t, LoadPause):
            t.close()  # resume a process stopped by a load, so that it can reach its step boundary
        elif isinstance(t, threading.Thread):
            if t is not threading.current_thread():  # a GC pass run by the thread itself
                t.join(_EXIT_JOIN_S)
        else:
            _end_process(t, 2.0)
    _shutdown_loaders(iter_box)


def _process_alive(proc: Any) -> bool:
    with contextlib.suppress(ValueError):  # a closed Process object
        return proc.is_alive()
    return False


def _end_process(proc: Any, grace: float) -> None:
    """Wait ``grace`` s for the producer process to stop by itself, then terminate / kill it and
    release its handle (idempotent)."""
    if not _process_alive(proc):
        with contextlib.suppress(ValueError):
            proc.join(0)
            proc.close()
        return
    _raise_idle_threads(nice=0, pid=proc.pid)  # a starved SCHED_IDLE child must reach its boundary
    proc.join(grace)
    if proc.is_alive():
        proc.terminate()
        proc.join(0.5)
    if proc.is_alive():
        proc.kill()
        proc.join(0.5)
    if not proc.is_alive():
        proc.close()


def _shutdown_loaders(iter_box: list) -> None:
    """Stop the label-map worker processes (their sentinel first, then join; idempotent)."""
    while iter_box:
        it = iter_box.pop()
        with contextlib.suppress(Exception):
            it._shutdown_workers()


def _stop_all() -> None:
    """atexit hook (runs before the finalisers' joins): ask every live producer to stop."""
    for stop, owner in list(_ALL_STOPS.items()):
        if owner == os.getpid():
            stop.set()


def _accepts_keyword(fn: Any, name: str) -> bool:
    """Whether ``fn`` names a ``name`` parameter (``**kwargs`` alone does not count: a wrapper may
    forward it to a callable that does not take it)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name and p.kind is not inspect.Parameter.POSITIONAL_ONLY for p in params)


_IDLE_REVERSIBLE: dict[int, bool] = {}  # pid -> probe result


def idle_is_reversible() -> bool:
    """Whether a thread of this process may leave ``SCHED_IDLE`` for ``SCHED_OTHER`` again.

    Linux treats ``SCHED_IDLE`` as nice 20: moving back needs ``CAP_SYS_NICE`` or an
    ``RLIMIT_NICE`` that allows nice 0, which ordinary users do not have (default limit 0), so for
    them ``SCHED_IDLE`` is one way. Probed once per process on a throwaway thread (capabilities,
    limits and container policies all decide); False off Linux.
    """
    pid = os.getpid()
    if pid not in _IDLE_REVERSIBLE:
        if not hasattr(os, "SCHED_IDLE"):
            _IDLE_REVERSIBLE[pid] = False
        else:
            result: list[bool] = []

            def probe() -> None:
                try:
                    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
                    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
                    result.append(True)
                except OSError:
                    result.append(False)

            t = threading.Thread(target=probe, name="diffmix-idle-probe", daemon=True)
            t.start()
            t.join()
            _IDLE_REVERSIBLE[pid] = bool(result and result[0])
    return _IDLE_REVERSIBLE[pid]


def _raise_idle_threads(nice: int, pid: int | None = None) -> list[int]:
    """Move the ``SCHED_IDLE`` threads of this process (or of process ``pid``: the producer's) to
    ``SCHED_OTHER`` at ``nice``.

    Returns the thread ids moved (Linux; elsewhere nothing is done and ``[]`` returned).
    """
    tasks = f"/proc/{'self' if pid is None else int(pid)}/task"
    if not hasattr(os, "SCHED_IDLE") or not os.path.isdir(tasks):
        return []
    try:
        names = os.listdir(tasks)
    except OSError:  # the process ended meanwhile
        return []
    moved = []
    for name in names:
        with contextlib.suppress(OSError, ValueError):
            tid = int(name)
            if os.sched_getscheduler(tid) == os.SCHED_IDLE:
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, tid, nice)
                moved.append(tid)
    return moved



class _SharedFlag:
    """The process backend's stop event: one int64 in shared memory, waited on by polling.

    Not a ``multiprocessing.Event``: its ``set()`` waits until every sleeper has woken, and a
    process that ended inside ``wait()`` (the producer process, terminated) never wakes, so
    ``set()`` would block for ever.
    """

    def __init__(self) -> None:
        self._flag = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set(self) -> None:
        self._flag[0] = 1

    def is_set(self) -> bool:
        return bool(self._flag[0])

    def wait(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + float(timeout)
        while not self.is_set():
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            time.sleep(0.01 if left is None else min(0.01, left))
        return True


def _orphan_guard(parent: int, stop: Any) -> None:
    """End the producer process when the process that started it is gone (killed with SIGKILL)."""
    while not stop.wait(1.0):
        if os.getppid() != parent:
            os._exit(0)
