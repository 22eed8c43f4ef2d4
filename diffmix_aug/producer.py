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
import importlib
import os
import signal
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
from .cache import ReplayCache
from .generator import GenerationStopped, PatchGenerator
from .labelmaps.jobs import collate_jobs
from .store import PatchStore

__all__ = ["PRODUCER_NICE", "Producer", "ProducerError", "derive_seed", "preload_imports"]

#: nice value of a CPU producer thread (weight 110 against 1024 for the training loop's nice-0 threads)
PRODUCER_NICE = 10
_LABEL_POLL = 1.0  # seconds between the producer's checks on its label workers (alive? closed?)
_LOADER_STREAMS = 1 << 40  # job lists of the label workers: streams apart from the in-thread batch keys
#: modules the producer thread may import lazily; imported by :func:`preload_imports` first
_HEAVY_MODULES = ("cv2", "scipy.ndimage", "safetensors", "tqdm")


class ProducerError(RuntimeError):
    """The background producer failed; ``__cause__`` is the original exception."""


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
        self._streams_issued = 0  # job lists handed to the label loader
        self._maps_iter: Any = None
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
        self._box: list[Any] = []  # the label loader's iterator (its workers are shut down by close())
        _LIVE.add(self)  # weakly: the thread's own reference keeps a running producer in the set
        if not _ATEXIT:  # before the interpreter joins the (non-daemon) producer threads
            register = getattr(threading, "_register_atexit", atexit.register)
            _ATEXIT.append(register(_stop_all))

    # ------------------------------------------------------------------ batches
    @property
    def source(self):
        return self.generator.source

    def _job_lists(self):
        """Endless job lists for the label loader (pulled a few batches ahead by the loader)."""
        while True:
            stream = _LOADER_STREAMS + self._streams_issued
            self._streams_issued += 1
            yield self.generator.job_list(stream, self.batch_size, self.cache.class_fractions())

    def make_batch(self, batch_index: int) -> list:
        """Build and render batch ``batch_index`` (from the label loader when it runs, else here)."""
        gen = self.generator
        if self._maps_iter is not None and not self._stop.is_set():
            maps = list(self._next_maps())[: self.batch_size]
        else:
            maps = []
        if len(maps) < self.batch_size:  # no loader, or batch_size raised since the list was issued
            jobs = gen.job_list(batch_index, self.batch_size, self.cache.class_fractions())
            maps += gen.maps(jobs[len(maps):])
        if self._stream is None:
            return gen.render(batch_index, maps, self._stop.is_set)
        with torch.cuda.stream(self._stream):
            out = gen.render(batch_index, maps, self._stop.is_set)
        self._stream.synchronize()
        return out

    def _next_maps(self) -> Any:
        """The label loader's next job list; bounded: a dead label worker or :meth:`close` ends the wait.

        The loader waits ``_LABEL_POLL`` seconds at a time (its ``timeout``; a timed-out ``next`` leaves
        it as it was) and checks its workers after each wait; its workers are not in PyTorch's
        SIGCHLD handler (:meth:`start`), so their death reaches the training loop as this thread's
        failure (a :class:`ProducerError` on the next item), not as an error raised anywhere in it.
        """
        while True:
            if self._stop.is_set():
                raise GenerationStopped("closed while waiting for label maps")
            try:
                return next(self._maps_iter)
            except RuntimeError as exc:
                if self._stop.is_set():
                    raise GenerationStopped("closed while waiting for label maps") from exc
                if "timed out" in str(exc):
                    continue
                raise RuntimeError(
                    f"a label-map worker of the DiffMix producer died ({exc}): the OOM killer or a signal? The "
                    f"producer stopped; build the dataset again (fewer label_workers, or label_workers=0 to "
                    "build the label maps in the producer thread)") from exc

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
        with _interrupts_deferred():  # a Ctrl-C in here must not leave a producer that never runs
            preload_imports()
            if self.label_workers > 0:  # workers start here, from the calling thread, before the producer runs
                loader = torch.utils.data.DataLoader(self.generator.jobs, batch_sampler=self._job_lists(),
                                                     num_workers=self.label_workers, collate_fn=collate_jobs,
                                                     prefetch_factor=2, timeout=_LABEL_POLL)
                it = iter(loader)
                self._box.append(it)
                _unwatch_workers(it)
                self._maps_iter = it
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
        _shutdown_loaders(self._box)
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


@contextlib.contextmanager
def _interrupts_deferred():
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


#: every live producer (weakly): at interpreter exit all are told to stop before any is joined
#: (producers sharing one synthesizer wait on each other's synthesis lock)
_LIVE: weakref.WeakSet = weakref.WeakSet()
_ATEXIT: list = []  # holds the exit hook once registered (lazily: no import-time side effect)


def _shutdown_loaders(box: list, timeout: float = 2.0) -> None:
    """End the label-map worker processes (idempotent, bounded by about ``timeout`` seconds).

    They only build label maps and their loader is discarded, so they are terminated (a loaded host
    made their orderly exit take longer than ``close()``'s bound), then killed if still alive. PyTorch's
    own ``_shutdown_workers`` is never called afterwards: it sets a shared event whose lock a
    terminated worker may have held, and then waits on that lock for ever (pytorch/pytorch#21554);
    its queues are closed here instead.
    """
    while box:
        it = box.pop()
        it._shutdown = True  # PyTorch's __del__ / _shutdown_workers do nothing from here on
        _unwatch_workers(it)
        workers = list(getattr(it, "_workers", []))
        for w in workers:
            with contextlib.suppress(Exception):
                w.terminate()
        deadline = time.monotonic() + timeout
        for w in workers:
            with contextlib.suppress(Exception):
                w.join(max(0.0, deadline - time.monotonic()))
                if w.is_alive():
                    w.kill()
                    w.join(0.5)
        for q in [*getattr(it, "_index_queues", []), getattr(it, "_worker_result_queue", None)]:
            if q is not None:
                with contextlib.suppress(Exception):
                    q.cancel_join_thread()
                    q.close()


def _unwatch_workers(it: Any) -> None:
    """Take a loader's workers out of PyTorch's SIGCHLD handler, which raises in the main thread, at
    whatever it is doing, when one dies: the producer's thread checks them itself (:meth:`Producer._next_maps`)."""
    if getattr(it, "_worker_pids_set", False):
        from torch.utils.data._utils import signal_handling

        with contextlib.suppress(Exception):
            signal_handling._remove_worker_pids(id(it))
            it._worker_pids_set = False


def _stop_all() -> None:
    """Exit hook (runs before the interpreter joins its threads): ask every live producer to stop
    (which also wakes a thread waiting for credits)."""
    for producer in list(_LIVE):
        producer.stop()

