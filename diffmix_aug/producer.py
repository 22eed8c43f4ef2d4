"""The background producer: label maps -> synthesizer -> :class:`~diffmix_aug.cache.ReplayCache`.

It runs in the main process only, in one daemon thread (on its own CUDA stream when the
synthesizer is on a GPU); DataLoader workers never touch the synthesizer. Each batch is made from
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
import os
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
from .config import CPU_PRIORITIES
from .data.sample import NucleiSample
from .labelmaps.jobs import LabelMapJobs, collate_jobs
from .sampling._base import SamplingInterrupted

__all__ = ["CPU_PRIORITIES", "Producer", "ProducerError", "derive_seed", "preload_imports"]


_LOADER_STREAMS = 1 << 40

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
            ``"auto"`` (default: ``SCHED_IDLE`` with a starvation guard, see :meth:`_lower_priority`),
            ``"idle"`` (``SCHED_IDLE`` only), ``"low"`` (nice +10) or ``"normal"``.
        starve_after: Seconds a batch may take under ``"auto"`` before the producer's threads are
            raised from ``SCHED_IDLE`` to nice +10 for the rest of that batch (busy hosts).
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
        self._boosted: list[int] = []  # thread ids raised from SCHED_IDLE by the watchdog
        self._write_lock = threading.Lock()  # close() takes it: no cache write after close()
        self._watchdog: threading.Thread | None = None
        #: monotonic times of finished batches (patches/s in :meth:`stats`)
        self.batch_times: list[float] = []
        self.batches = 0
        #: seq -> metadata of the latest patches (``item_info`` falls back to it after eviction)
        self.history: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self.history_size = 4 * cache.capacity
        self._class_counts: dict[int, np.ndarray] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._exc: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one batch at a time (thread or cooperative step)
        self._stream = None
        device = getattr(synthesizer, "device", None)
        if device is not None and torch.device(device).type == "cuda":
            self._stream = torch.cuda.Stream(device=torch.device(device))
        _ALL_STOPS.add(self._stop)
        self._finalizer = weakref.finalize(self, _shutdown, self._stop, cache, self._thread_box, self._iter_box)
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
                self.batches += 1
                self.batch_times.append(time.monotonic())
                del self.batch_times[:-64]
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
    def start(self) -> Producer:
        """Start the background thread (idempotent)."""
        if self._thread is None:
            if self._stop.is_set():
                raise RuntimeError("this Producer was closed; build a new one")
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
            if self.cpu_priority == "auto" and self._stream is None and hasattr(os, "SCHED_IDLE"):
                self._watchdog = threading.Thread(target=self._watch, name="diffmix-watchdog", daemon=True)
                self._watchdog.start()
        return self

    def _watch(self) -> None:
        """Starvation guard of ``"auto"``: raise a ``SCHED_IDLE`` batch that runs too long to nice +10."""
        while not self._stop.wait(min(1.0, self.starve_after / 4)):
            started = self._batch_started
            if started is not None and not self._boosted and time.monotonic() - started > self.starve_after:
                self._boosted = _raise_idle_threads(nice=10)

    def _run(self) -> None:
        try:
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
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, never swallowed
            if self._stop.is_set():
                return  # closed under it (the cache may be gone): nothing to report
            self._exc = exc
            with contextlib.suppress(Exception):
                self.cache.set_error("".join(traceback.format_exception(exc)))
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
        items), so a watchdog thread raises the producer's threads to nice +10 when a batch has run
        longer than ``starve_after`` seconds, and they go back to ``SCHED_IDLE`` after the batch.
        """
        if self._stream is not None or self.cpu_priority == "normal" or not hasattr(os, "setpriority"):
            return
        tid = threading.get_native_id()
        if self.cpu_priority in ("idle", "auto") and hasattr(os, "SCHED_IDLE"):
            with contextlib.suppress(OSError):
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
                return
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))

    def _restore_priority(self) -> None:
        """Put threads the watchdog raised back under ``SCHED_IDLE`` (after their batch)."""
        tids, self._boosted = self._boosted, []
        for tid in tids:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))

    def check(self) -> None:
        """Re-raise a failure of the background thread (the original is ``__cause__``)."""
        if self._exc is not None:
            raise ProducerError(f"the DiffMix producer thread failed: {self._exc!r}") from self._exc

    def wait_for(self, count: int, timeout: float | None = None) -> bool:
        """Block until the cache holds ``count`` patches (or the producer failed / stopped)."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.cache) >= count or self._exc is not None
                                     or self._stop.is_set(), timeout=timeout)
        self.check()
        return bool(ok) and len(self.cache) >= count

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

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

    @contextlib.contextmanager
    def paused(self):
        """Hold off the next batch while the block runs (a consistent ``state_dict`` of the dataset)."""
        with self._lock:
            yield self

    def state_dict(self) -> dict[str, Any]:
        """The batch counter (per-batch seeds derive from it and from ``seed`` and ``rank``)."""
        return {"batches": self.batches, "seed": self.seed, "rank": self.rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches = int(state["batches"])


#: the stop events of every producer alive: at interpreter exit all are set before any join, since
#: producers sharing one synthesizer wait on each other's synthesis lock
_ALL_STOPS: weakref.WeakSet[threading.Event] = weakref.WeakSet()
_ALL_STOPS_REGISTERED: list = []  # holds the atexit hook once it is registered (lazily: no import side effect)


#: seconds interpreter exit waits for a producer thread still inside a synthesis step
_EXIT_JOIN_S = 15.0


def _shutdown(stop: threading.Event, cache: ReplayCache, box: list, iter_box: list) -> None:
    """Finaliser / atexit hook: stop and join the thread without referencing the producer."""
    stop.set()
    _raise_idle_threads(nice=0)
    with contextlib.suppress(Exception):  # best effort at interpreter exit
        cache.release_credit(8)
    for t in box:
        if t is not threading.current_thread():  # a GC pass run by the thread itself
            t.join(_EXIT_JOIN_S)
    _shutdown_loaders(iter_box)


def _shutdown_loaders(iter_box: list) -> None:
    """Stop the label-map worker processes (their sentinel first, then join; idempotent)."""
    while iter_box:
        it = iter_box.pop()
        with contextlib.suppress(Exception):
            it._shutdown_workers()


def _stop_all() -> None:
    """atexit hook (runs before the finalisers' joins): ask every live producer to stop."""
    for stop in list(_ALL_STOPS):
        stop.set()


def _accepts_keyword(fn: Any, name: str) -> bool:
    """Whether ``fn`` names a ``name`` parameter (``**kwargs`` alone does not count: a wrapper may
    forward it to a callable that does not take it)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name and p.kind is not inspect.Parameter.POSITIONAL_ONLY for p in params)


def _raise_idle_threads(nice: int) -> list[int]:
    """Move this process's ``SCHED_IDLE`` threads (the producer's) to ``SCHED_OTHER`` at ``nice``.

    Returns the thread ids moved (Linux; elsewhere nothing is done and ``[]`` returned).
    """
    if not hasattr(os, "SCHED_IDLE") or not os.path.isdir("/proc/self/task"):
        return []
    moved = []
    for name in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError, ValueError):
            tid = int(name)
            if os.sched_getscheduler(tid) == os.SCHED_IDLE:
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, tid, nice)
                moved.append(tid)
    return moved
