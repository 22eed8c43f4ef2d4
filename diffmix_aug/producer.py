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

import contextlib
import os
import threading
import traceback
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ._checks import check_choice, check_positive_int
from .cache import ReplayCache
from .data.sample import NucleiSample

__all__ = ["CPU_PRIORITIES", "Producer", "ProducerError", "derive_seed"]

CPU_PRIORITIES = ("idle", "low", "normal")


class ProducerError(RuntimeError):
    """The background producer failed; ``__cause__`` is the original exception."""


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (``numpy.random.SeedSequence``; order matters)."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFF for k in keys]).generate_state(2, np.uint64)[0] >> 1)


def _fit(sample: NucleiSample, shape: tuple[int, int], rng: np.random.Generator) -> tuple[NucleiSample, tuple]:
    """Random crop (or reflect pad) ``sample`` to ``shape``; the offsets are drawn from ``rng``."""
    h, w = sample.shape
    th, tw = shape
    if h < th or w < tw:
        ph, pw = max(0, th - h), max(0, tw - w)
        pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
        mode = "reflect" if ph < h and pw < w else "symmetric"
        sample = NucleiSample.trusted(np.pad(sample.image, pad + ((0, 0),), mode=mode),
                                      np.pad(sample.inst_map, pad, mode=mode),
                                      np.pad(sample.type_map, pad, mode=mode), meta=sample.meta)
        h, w = sample.shape
    y = int(rng.integers(0, h - th + 1))
    x = int(rng.integers(0, w - tw + 1))
    return sample.crop(y, x, th, tw), (y, x)


class Producer:
    """Fills a :class:`ReplayCache` with synthetic patches, in a thread or on demand.

    Args:
        cache: The cache to fill (the producer is its only writer).
        synthesizer: ``synth(images uint8 [B,H,W,3], inst int [B,H,W], types int [B,H,W],
            generator=torch.Generator) -> uint8 [B,H,W,3]`` (a :class:`Synthesizer` or any callable).
        source: Sequence of :class:`NucleiSample` the label maps start from.
        label_sampler: Object with ``get_params(rng, sample)`` and ``apply(sample, params)``
            (a ``LabelMapSampler``), or None to keep the source label maps.
        batch_size: Patches per synthesizer call.
        seed: Base seed; the per-batch seeds also depend on ``rank``.
        rank: Distributed rank (ranks produce disjoint patches).
        rare_classes: Classes to favour when the cache lacks them (balance modes).
        bias_candidates: Source candidates scored per patch for the rare-class bias (1 = uniform).
        idle_timeout: Seconds the thread waits for a read before overwriting an unread patch anyway.
        cpu_priority: Scheduling of the producer thread when it synthesises on the CPU (Linux):
            ``"idle"`` (default, ``SCHED_IDLE``), ``"low"`` (nice +10) or ``"normal"``; see
            :meth:`_lower_priority`.
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
        rare_classes: Sequence[int] = (),
        bias_candidates: int = 4,
        idle_timeout: float = 5.0,
        cpu_priority: str = "idle",
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
        self.rare_classes = tuple(int(c) for c in rare_classes)
        self.bias_candidates = check_positive_int("bias_candidates", bias_candidates)
        self.idle_timeout = float(idle_timeout)
        self.cpu_priority = check_choice("cpu_priority", cpu_priority, CPU_PRIORITIES)
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
        self._finalizer = weakref.finalize(self, _shutdown, self._stop, cache, self._thread_box)

    @property
    def _thread_box(self) -> list:
        if not hasattr(self, "_box"):
            self._box: list[threading.Thread] = []
        return self._box

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

    def make_batch(self, batch_index: int) -> list[dict[str, Any]]:
        """Build and synthesise batch ``batch_index`` (pure in its seed, given the cache state)."""
        bseed = derive_seed(self.seed, self.rank, batch_index)
        rng = np.random.default_rng(bseed)
        shape = self.cache.patch_shape
        items = []
        for j in range(self.batch_size):
            src = self.pick_source(rng)
            sample, offset = _fit(self.source[src], shape, rng)
            params = None
            mode = "source"
            inst, typ = sample.inst_map, sample.type_map
            if self.label_sampler is not None:
                params = self.label_sampler.get_params(rng, sample)
                res = self.label_sampler.apply(sample, params)
                inst, typ, mode = res.inst_map, res.type_map, res.mode
            pdict = params.to_dict() if hasattr(params, "to_dict") else params
            items.append({"image": np.ascontiguousarray(sample.image), "inst": np.asarray(inst, np.int32),
                          "type": np.asarray(typ, np.int32),
                          "meta": {"batch_seed": bseed, "batch_index": batch_index, "position": j,
                                   "rank": self.rank, "source_index": src, "offset": offset,
                                   "mode": mode, "params": pdict}})
        gen = torch.Generator().manual_seed(bseed)
        args = (np.stack([it["image"] for it in items]), np.stack([it["inst"] for it in items]),
                np.stack([it["type"] for it in items]))
        if self._stream is not None:
            with torch.cuda.stream(self._stream):
                out = self.synthesizer(*args, generator=gen)
            self._stream.synchronize()
        else:
            out = self.synthesizer(*args, generator=gen)
        out = np.asarray(out)
        if out.shape != args[0].shape or out.dtype != np.uint8:
            raise ValueError(f"synthesizer must return uint8 {args[0].shape}, got {out.dtype} {out.shape}")
        for it, img in zip(items, out):
            it["image"] = img
        return items

    def step(self, n_batches: int = 1) -> int:
        """Synchronously produce ``n_batches`` batches into the cache; returns patches written."""
        self.check()
        written = 0
        for _ in range(n_batches):
            with self._lock:
                items = self.make_batch(self.batches)
                for it in items:
                    seq = self.cache.write(it["image"], it["inst"], it["type"], it["meta"])
                    self.history[seq] = {**it["meta"], "seq": seq}
                while len(self.history) > self.history_size:
                    self.history.popitem(last=False)
                self.batches += 1
                written += len(items)
            with self._cond:
                self._cond.notify_all()
        return written

    # ------------------------------------------------------------------ thread
    def start(self) -> Producer:
        """Start the background thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="diffmix-producer", daemon=True)
            self._thread_box.append(self._thread)
            self._thread.start()
        return self

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
            self._exc = exc
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
        ``"normal"`` changes nothing.
        """
        if self._stream is not None or self.cpu_priority == "normal" or not hasattr(os, "setpriority"):
            return
        tid = threading.get_native_id()
        if self.cpu_priority == "idle" and hasattr(os, "SCHED_IDLE"):
            with contextlib.suppress(OSError):
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
                return
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))

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

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread and wait for it (a batch in flight is finished first)."""
        self._stop.set()
        self.cache.release_credit(self.batch_size)
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._finalizer.detach()

    def __enter__(self) -> Producer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def state_dict(self) -> dict[str, Any]:
        """The batch counter (per-batch seeds derive from it and from ``seed`` and ``rank``)."""
        return {"batches": self.batches, "seed": self.seed, "rank": self.rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches = int(state["batches"])


def _shutdown(stop: threading.Event, cache: ReplayCache, box: list) -> None:
    """Finaliser / atexit hook: stop and join the thread without referencing the producer."""
    stop.set()
    with contextlib.suppress(Exception):  # best effort at interpreter exit
        cache.release_credit(8)
    for t in box:
        t.join(5.0)
