"""CUDA-graph capture and replay of one guided solver step (``design/performance.md`` §4).

One step (encoder on B, decoder on 2B, guidance combine, the solver update, step index decrement) is
captured once per batch shape and replayed ``steps`` times. Its static buffers are x_t, the
conditioning (cond / null labels or the SPADE modulations), the step-index tensor, the history of
earlier x0 predictions (multistep solvers) and the pre-drawn eta noise; coefficient tables are device
tensors indexed by the step index, so the graph holds no baked-in host values. Warm-up (cuDNN autotuning, lazy allocations) runs on a side stream.
A partial batch is padded (by repeating its last image) to the captured size.

On CPU, or when capture fails, :meth:`StepGraphs.run` returns None and the sampler runs eagerly; the
reason is logged once per reason (``logging``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

__all__ = ["StepGraphs", "flatten_tensors"]

logger = logging.getLogger(__name__)
_LOGGED: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        logger.warning(message)


def flatten_tensors(obj) -> list[torch.Tensor]:
    """Every tensor inside ``obj`` (tensor, list/tuple/dict, dataclass or object with ``tensors()``), in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if hasattr(obj, "tensors") and callable(obj.tensors):
        return list(obj.tensors())
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in flatten_tensors(item)]
    if isinstance(obj, dict):
        return [t for key in obj for t in flatten_tensors(obj[key])]
    if dataclasses.is_dataclass(obj):
        return [t for f in dataclasses.fields(obj) for t in flatten_tensors(getattr(obj, f.name))]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return []
    raise TypeError(f"cannot find the tensors of a {type(obj).__name__} conditioning for CUDA-graph buffers")


def _pad(x: torch.Tensor | None, size: int, dim: int = 0) -> torch.Tensor | None:
    """Pad ``x`` along ``dim`` to ``size`` by repeating its last entry."""
    if x is None or x.shape[dim] == size:
        return x
    last = x.narrow(dim, x.shape[dim] - 1, 1)
    reps = [1] * x.ndim
    reps[dim] = size - x.shape[dim]
    return torch.cat([x, last.repeat(*reps)], dim=dim)


@dataclass
class _Entry:
    graph: torch.cuda.CUDAGraph
    buffers: object  # ddim.LoopBuffers: x, k, history, step_noise
    cond_tensors: list[torch.Tensor]
    conditioning: object

    @property
    def x(self) -> torch.Tensor:
        return self.buffers.x

    @property
    def k(self) -> torch.Tensor:
        return self.buffers.k


class StepGraphs:
    """The captured steps of one :class:`~diffmix_aug.sampling.ddim.DDIMSampler` (any solver), one per batch shape.

    Args:
        sampler: The owning sampler (its ``_loop_step`` and coefficient tables are captured).
        warmup: Eager warm-up runs on a side stream before capture.
    """

    def __init__(self, sampler, warmup: int = 2) -> None:
        self.sampler = sampler
        self.warmup = warmup
        self._entries: dict[tuple, _Entry] = {}
        self._pool = None
        self.failed: str | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def _unavailable(self, x: torch.Tensor) -> str | None:
        if self.failed is not None:
            return self.failed
        if x.device.type != "cuda":
            return f"cuda_graph=True but the batch is on {x.device}: CUDA graphs need a CUDA device; running eager"
        if torch.cuda.is_current_stream_capturing():
            return "cuda_graph=True inside another capture; running eager"
        return None

    @torch.no_grad()
    def run(self, denoiser, x: torch.Tensor, cond: torch.Tensor, step_noise: torch.Tensor | None,
            pad_to: int | None = None) -> torch.Tensor | None:
        """Run the whole loop by graph replay; None (eager fallback) when graphs are unavailable.

        Args:
            denoiser: The sampler's guided denoiser for this model.
            x: ``float32 [b, 3, H, W]`` the partially noised start.
            cond: ``[b, C, H, W]`` label maps.
            step_noise: ``[S, b, 3, H, W]`` eta noise or None.
            pad_to: Batch size to capture (>= b); the padded rows are dropped from the result.

        Returns:
            ``float32 [b, 3, H, W]`` or None.
        """
        reason = self._unavailable(x)
        if reason is not None:
            _log_once(reason)
            return None
        b = x.shape[0]
        size = max(b, pad_to or b)
        x, cond = _pad(x, size), _pad(cond, size)
        step_noise = _pad(step_noise, size, dim=1)
        conditioning = denoiser.prepare(cond)
        key = (id(denoiser), size, tuple(x.shape[1:]), tuple(cond.shape[1:]), x.device, step_noise is not None)
        entry = self._entries.get(key)
        if entry is None:
            try:
                entry = self._capture(denoiser, x, conditioning, step_noise)
            except Exception as exc:  # noqa: BLE001 - any capture failure falls back to eager
                self.failed = f"CUDA graph capture failed ({type(exc).__name__}: {exc}); running eager"
                _log_once(self.failed)
                return None
            self._entries[key] = entry
        self._load(entry, x, conditioning, step_noise)
        for _ in range(self.sampler.num_inference_steps):
            entry.graph.replay()
        return entry.x[:b].clone()

    def _load(self, entry: _Entry, x, conditioning, step_noise) -> None:
        entry.buffers.reset(x, self.sampler.start_index, step_noise)
        if conditioning is not entry.conditioning:
            for dst, src in zip(entry.cond_tensors, flatten_tensors(conditioning), strict=True):
                dst.copy_(src)

    def _capture(self, denoiser, x, conditioning, step_noise) -> _Entry:
        sampler = self.sampler
        sampler.tables(x.device)  # build the tables outside the capture
        buffers = sampler.buffers(x.clone(), None if step_noise is None else step_noise.clone())

        def fn() -> None:
            sampler._loop_step(denoiser, conditioning, buffers)

        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                buffers.k.fill_(sampler.start_index)
                fn()
        torch.cuda.current_stream(x.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: a capture on the producer thread must not break the training thread's CUDA calls
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            fn()
        return _Entry(graph, buffers, flatten_tensors(conditioning), conditioning)
