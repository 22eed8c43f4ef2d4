"""The background producer: a daemon thread, patch generator -> :class:`~diffmix_aug.cache.ReplayCache`.

One thread of the training process runs the :class:`~diffmix_aug.generator.PatchGenerator`: on its
own CUDA stream when the synthesizer is on a GPU, at a lowered CPU priority (nice +10, its own
thread only, once the patches of a blocking warm-up are made) when it synthesises on the CPU. DataLoader workers never touch the synthesizer; they
read the shared cache. The thread waits on the cache's credits (a slot whose patch was already
served) instead of overwriting unread patches, and on events, never on sleeps. With
``label_workers > 0`` the label maps of the next batches are built in a small ``DataLoader`` while
the current batch renders.

A failure inside the thread is kept with its traceback and re-raised by :meth:`Producer.check` (the
dataset calls it on every item in the main process) and published in the cache, so workers raise
it too. :meth:`Producer.close` is bounded: the render in flight stops at its next denoising step,
and no patch reaches the cache afterwards. The thread is not a daemon: at interpreter exit every
producer is told to stop (a ``threading`` exit hook, which runs before the interpreter joins its
threads), and the interpreter then waits for each to finish its denoising step. A daemon thread
still inside a torch op when the interpreter tears down aborts the process (SIGABRT, measured on a
host with load 12 on 2 cores, where a nice +10 thread needs seconds per step).

A CPU-only host whose cores the training loop keeps busy leaves a CPU synthesizer little time;
there, render the patches beforehand (``diffmix-aug synthesize``) and serve them with
``cache_dir=`` (docs/configuration.md, "The offline pool").
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
import traceback
import weakref
from collections import deque
from typing import Any

import torch

from ._checks import check_positive_int
from ._proclock import acquire_or_undo
from ._seeds import derive_seed
from ._threads import PRODUCER_NICE, interrupts_deferred, lower_thread_priority, preload_imports
from .cache import ReplayCache
from .generator import GenerationStopped, PatchGenerator
from .label_workers import LabelWorkers
from .store import PatchStore

__all__ = ["PRODUCER_NICE", "Producer", "ProducerError", "derive_seed", "preload_imports"]

_LABEL_POLL = 1.0  # seconds between the producer's checks on its label workers (alive? closed?)


class ProducerError(RuntimeError):
    """The background producer failed; ``__cause__`` is the original exception."""


class Producer:
    """Fills a :class:`ReplayCache` from a :class:`PatchGenerator`, in a thread or on demand (:meth:`step`).

    Args:
        cache: The cache to fill (the producer is its only writer).
        generator: Makes the patches (source pick, label map, render, metadata).
        batch_size: Patches per synthesizer call.
        label_workers: Processes building the label maps of the next batches (a ``DataLoader``
            over the generator's jobs, started with the thread); 0 builds them in the producer
            itself (always so for :meth:`step`, which keeps cooperative runs bit-reproducible).
        store: A :class:`PatchStore` each new patch is also written to (None: memory only).
        store_prefix: File-name prefix of this producer's patches in ``store``.
        idle_timeout: Seconds the thread waits for a serve before overwriting a served-or-not patch anyway.
        pause_timeout: Seconds :meth:`paused` waits for the cache writes of the batch in flight (the
            render itself is never waited for) before ``TimeoutError``.
    """

    def __init__(self, cache: ReplayCache, generator: PatchGenerator, *, batch_size: int = 4,
                 label_workers: int = 0, store: PatchStore | None = None, store_prefix: str = "online",
                 idle_timeout: float = 5.0, pause_timeout: float = 60.0) -> None:
        if not isinstance(generator, PatchGenerator):
            raise TypeError(f"`generator` must be a PatchGenerator, got {type(generator).__name__}")
        self.cache, self.generator, self.store = cache, generator, store
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.label_workers = check_positive_int("label_workers", label_workers, allow_zero=True)
        self.store_prefix = str(store_prefix)
        self.idle_timeout = float(idle_timeout)
        self.pause_timeout = float(pause_timeout)
        #: batches made so far (the per-batch keys of the generator)
        self.batches = 0
        self._times: deque[float] = deque(maxlen=64)  # monotonic end times of the last batches
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one batch at a time (thread or cooperative step)
        # held while a batch's patches go into the cache (and the batch counter moves): paused() and
        # close() take it, never the render's lock, so neither waits for a render in flight
        self._write_lock = threading.RLock()  # an RLock for acquire_or_undo's owner check
        self._generation = 0  # moved by load_state_dict(): a batch rendered before it is dropped
        self._exc: BaseException | None = None
        self._warmup = 0  # patches start() was told the caller blocks for
        self._thread: threading.Thread | None = None
        self._stream = None
        device = getattr(generator.synthesizer, "device", None)
        if device is not None and torch.device(device).type == "cuda":
            self._stream = torch.cuda.Stream(device=torch.device(device))
        self._labels: LabelWorkers | None = None  # started by start() (its workers ended by close())
        _LIVE.add(self)  # weakly: the thread's own reference keeps a running producer in the set
        if not _ATEXIT:  # before the interpreter joins the (non-daemon) producer threads
            register = getattr(threading, "_register_atexit", atexit.register)
            _ATEXIT.append(register(_stop_all))

    # ------------------------------------------------------------------ batches
    @property
    def source(self):
        return self.generator.source

    def make_batch(self, batch_index: int) -> list:
        """Build and render batch ``batch_index`` (from the label loader when it runs, else here)."""
        gen = self.generator
        maps = [] if self._labels is None else self._labels.next_maps(self._stop.is_set)[: self.batch_size]
        if len(maps) < self.batch_size:  # no loader, or batch_size raised since the list was issued
            jobs = gen.job_list(batch_index, self.batch_size, self.cache.class_fractions())
            maps += gen.maps(jobs[len(maps):])
        if self._stream is None:
            return gen.render(batch_index, maps, self._stop.is_set)
        with torch.cuda.stream(self._stream):
            out = gen.render(batch_index, maps, self._stop.is_set)
        self._stream.synchronize()
        return out

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
                generation = self._generation
                try:
                    patches = self.make_batch(self.batches)
                except GenerationStopped:
                    break
                with self._write_lock:
                    if self._stop.is_set():
                        break
                    if self._generation != generation:
                        continue  # load_state_dict() replaced the state while it rendered: its key is stale
                    for p in patches:
                        seq = self.cache.write(p.image, p.inst_map, p.type_map, p.meta)
                        if self.store is not None:
                            self.store.keep(f"{self.store_prefix}_{seq:09d}", p)
                    self.batches += 1
                    self._times.append(time.monotonic())
                written += len(patches)
            with self._cond:
                self._cond.notify_all()
        return written

    def patches_per_second(self) -> float | None:
        """Recent production rate (over the last up to 64 batches), None before two batches."""
        t = list(self._times)
        if len(t) < 2 or t[-1] <= t[0]:
            return None
        return (len(t) - 1) * self.batch_size / (t[-1] - t[0])

    # ------------------------------------------------------------------ thread
    def start(self, warmup: int = 0) -> Producer:
        """Start the background thread (and the label workers); idempotent.

        Args:
            warmup: Patches the caller is about to block for (``DiffMixDataset``'s ``warmup``): the
                thread makes them at the caller's priority, since nothing of the caller's runs
                meanwhile, and lowers its own only then (a thread may always lower its priority).
        """
        if self._thread is not None:
            return self
        if self._stop.is_set():
            raise RuntimeError("this Producer was closed; build a new one")
        self._warmup = check_positive_int("warmup", warmup, allow_zero=True)
        with interrupts_deferred():  # a Ctrl-C in here must not leave a producer that never runs
            preload_imports()
            if self.label_workers > 0:  # workers start here, from the calling thread, before the producer runs
                self._labels = LabelWorkers(self.generator, self.batch_size, self.label_workers,
                                            self.cache.class_fractions, poll=_LABEL_POLL)
            # not a daemon: the interpreter joins it at exit (after _stop_all), never tears down under it
            self._thread = threading.Thread(target=self._run, name="diffmix-producer", daemon=False)
            self._thread.start()
        return self

    def _run(self) -> None:
        try:
            lowered = self._stream is not None  # a CUDA producer keeps its priority: it launches kernels
            while not self._stop.is_set():
                if not lowered and len(self.cache) >= self._warmup:
                    lower_thread_priority()
                    lowered = True
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

    def check(self) -> None:
        """Re-raise a failure of the background thread (the original is ``__cause__``)."""
        if self._exc is not None:
            raise ProducerError(f"the DiffMix producer thread failed: {self._exc!r}") from self._exc

    def wait_for(self, count: int, timeout: float | None = None) -> bool:
        """Block until the cache holds ``count`` patches (False on timeout, or when stopped)."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.cache) >= count or self._exc is not None
                                     or self._stop.is_set(), timeout=timeout)
        self.check()
        return bool(ok) and len(self.cache) >= count

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` or :meth:`close` was called."""
        return self._stop.is_set()

    @property
    def alive(self) -> bool:
        """Whether the background thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the thread has ended (on a failure or after :meth:`close`); True when it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.alive

    def stop(self) -> None:
        """Ask the thread to stop (without waiting): the render in flight ends at its next step."""
        self._stop.set()
        with contextlib.suppress(Exception):
            self.cache.release_credit(self.batch_size)
        with self._cond:
            self._cond.notify_all()

    def close(self, timeout: float = 2.0) -> bool:
        """Stop the thread and the label workers; returns within about ``timeout`` seconds.

        After it returns no patch is written to the cache. A thread still inside a step (or a plain
        callable synthesizer without ``should_stop``) when the time is up is left to finish that
        call by itself; interpreter exit waits for it.

        Returns:
            True when the thread has ended, False when it was left running.
        """
        deadline = time.monotonic() + float(timeout)
        self.stop()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._labels is not None:
            self._labels.close()
        if acquire_or_undo(self._write_lock, max(0.05, deadline - time.monotonic())):
            self._write_lock.release()
        return not self.alive

    def __enter__(self) -> Producer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def paused(self) -> _Paused:
        """Hold off the cache writes while the block runs (a consistent ``state_dict`` of the dataset).

        Waits only for the writes of a batch already rendered (milliseconds), never for the render in
        flight: that batch's patches go into the cache after the block, as batch ``batches`` (the
        number the state holds, so a resumed run renders it again with the same keys).

        Raises:
            TimeoutError: the writes took more than ``pause_timeout`` seconds (a producer thread
                stopped by a debugger inside them, or a patch store on a disk that does not answer).
        """
        return _Paused(self)

    def _pause(self) -> None:
        if not acquire_or_undo(self._write_lock, self.pause_timeout):
            store = "" if self.store is None else f", and to the patch store {self.store.path}"
            raise TimeoutError(
                f"the DiffMix producer has been writing a batch into the cache{store} for more than "
                f"{self.pause_timeout:g} s (pause_timeout; thread alive: {self.alive}): its thread is stopped "
                "(a debugger) or the disk does not answer; resume it, or close() the dataset and build a new one")

    def state_dict(self) -> dict[str, Any]:
        """The batch counter (the generator's per-batch keys derive from it)."""
        return {"batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the batch counter (inside :meth:`paused`: a batch rendered before it is then dropped)."""
        self.batches = int(state["batches"])
        self._generation += 1


class _Paused:
    """:meth:`Producer.paused`'s context (a class, not a generator: a Ctrl-C as it is entered leaves
    the lock free without waiting for a garbage collection)."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer

    def __enter__(self) -> Producer:
        self.producer._pause()
        return self.producer

    def __exit__(self, *exc: object) -> None:
        self.producer._write_lock.release()


#: every live producer (weakly): at interpreter exit all are told to stop before any is joined
#: (producers sharing one synthesizer wait on each other's synthesis lock)
_LIVE: weakref.WeakSet = weakref.WeakSet()
_ATEXIT: list = []  # holds the exit hook once registered (lazily: no import-time side effect)


def _stop_all() -> None:
    """Exit hook (runs before the interpreter joins its threads): ask every live producer to stop
    (which also wakes a thread waiting for credits)."""
    for producer in list(_LIVE):
        producer.stop()

