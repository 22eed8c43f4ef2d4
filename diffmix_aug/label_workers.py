"""``LabelWorkers``: the producer's label-map processes (a small ``DataLoader`` over the generator's jobs).

While the producer thread renders a batch, ``label_workers`` processes build the label maps of the
next ones (crop, draw parameters, apply). Their job lists are drawn a few batches ahead, biased
toward the cache's class deficit at the time they are issued, on generator streams apart from the
in-thread batch keys.

Every wait is bounded: the loader waits ``poll`` seconds at a time and the caller's stop flag is
checked after each wait; a dead worker (the OOM killer, ``kill -9``) ends the wait with a
``RuntimeError`` naming it, and the workers are out of PyTorch's SIGCHLD handler, so their death
reaches the training loop as the producer's failure, never as an error raised anywhere in the main
thread. :meth:`LabelWorkers.close` terminates them (they only build label maps) instead of PyTorch's
orderly shutdown, which can wait for ever on a lock a terminated worker held (pytorch/pytorch#21554).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .generator import GenerationStopped, PatchGenerator
from .labelmaps.jobs import collate_jobs

__all__ = ["LabelWorkers"]

_LOADER_STREAMS = 1 << 40  # job lists of the label workers: streams apart from the in-thread batch keys


class LabelWorkers:
    """``workers`` processes building the label maps of the next batches, started at construction.

    Args:
        generator: Its ``jobs`` dataset and ``job_list`` make the work.
        batch_size: Jobs per list (one producer batch).
        workers: Processes (at least 1).
        class_fractions: Called when a job list is issued: the cache's class fractions, ``float [K]``.
        poll: Seconds between checks of the caller's stop flag and of the workers while waiting.

    Start it from the thread that owns the process's children (the main thread), before the thread
    that reads it runs.
    """

    def __init__(self, generator: PatchGenerator, batch_size: int, workers: int,
                 class_fractions: Callable[[], Any], poll: float = 1.0) -> None:
        self.generator, self.batch_size, self.class_fractions = generator, int(batch_size), class_fractions
        self._issued = 0
        loader = torch.utils.data.DataLoader(generator.jobs, batch_sampler=self._job_lists(),
                                             num_workers=int(workers), collate_fn=collate_jobs,
                                             prefetch_factor=2, timeout=float(poll))
        self._it: Any = iter(loader)
        _unwatch_workers(self._it)

    @property
    def processes(self) -> list:
        """The worker processes (empty once closed)."""
        return [] if self._it is None else list(getattr(self._it, "_workers", []))

    def _job_lists(self) -> Iterator[list]:
        """Endless job lists (pulled a few batches ahead by the loader)."""
        while True:
            stream = _LOADER_STREAMS + self._issued
            self._issued += 1
            yield self.generator.job_list(stream, self.batch_size, self.class_fractions())

    def next_maps(self, stopped: Callable[[], bool]) -> list:
        """The next job list's label maps.

        Raises:
            GenerationStopped: ``stopped()`` became true (or the workers were closed) meanwhile.
            RuntimeError: a worker died, naming it and the fix.
        """
        while True:
            if stopped() or self._it is None:
                raise GenerationStopped("closed while waiting for label maps")
            try:
                return list(next(self._it))
            except RuntimeError as exc:
                if stopped():
                    raise GenerationStopped("closed while waiting for label maps") from exc
                if "timed out" in str(exc):
                    continue  # a timed-out next() leaves the loader as it was
                raise RuntimeError(
                    f"a label-map worker of the DiffMix producer died ({exc}): the OOM killer or a signal? The "
                    f"producer stopped; build the dataset again (fewer label_workers, or label_workers=0 to "
                    "build the label maps in the producer thread)") from exc

    def close(self, timeout: float = 2.0) -> None:
        """End the worker processes (idempotent, bounded by about ``timeout`` seconds).

        They are terminated (a loaded host made their orderly exit take longer than ``close()``'s
        bound), then killed if still alive. PyTorch's own ``_shutdown_workers`` is never called
        afterwards: it sets a shared event whose lock a terminated worker may have held, and then
        waits on that lock for ever (pytorch/pytorch#21554); the queues are closed here instead.
        """
        it, self._it = self._it, None
        if it is None:
            return
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
    whatever it is doing, when one dies: :meth:`LabelWorkers.next_maps` checks them itself."""
    if getattr(it, "_worker_pids_set", False):
        from torch.utils.data._utils import signal_handling

        with contextlib.suppress(Exception):
            signal_handling._remove_worker_pids(id(it))
            it._worker_pids_set = False
