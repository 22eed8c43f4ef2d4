"""Guided noise predictors for the fast sampler: batched cond/uncond, and the SDM exact rewrites.

A denoiser turns ``(x_t, t)`` into the guided epsilon ``eps_u + s (eps_c - eps_u)`` (float32) for a
batch whose conditioning was prepared once before the loop:

* :class:`BatchedGuidance` works for any ``model(x, t, y)``: conditional and unconditional passes run
  as one forward on 2B (``y`` = ``cat(cond, 0)``).
* :class:`SDMGuidance` uses the SDM's ``encode`` / ``modulation`` / ``decode`` split
  (``docs/architecture.md``, ``design/performance.md`` §3): the encoder, which never sees the label,
  runs once on B; the SPADE modulations are computed once per batch; the null-label modulations once
  per (resolution, kind, dtype) and cached; only the middle and decoder run on 2B.

Both give the two-pass reference result to float rounding. Model calls run under ``torch.autocast`` for
fp16 / bf16 (the SDM keeps its norms in fp32); the guidance combine is always float32.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "BatchedGuidance", "SDMGuidance", "autocast_context", "is_sdm", "make_denoiser",
           "nbytes"]

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_context(device: torch.device, precision: str):
    """``torch.autocast`` for fp16 / bf16 on ``device``; a no-op context for fp32.

    The weight-cast cache is off: each weight is used once per step anyway, and a cache that is freed
    when the context exits is unsafe inside a CUDA-graph capture.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision], cache_enabled=False)


def nbytes(tensors) -> int:
    """Total bytes of a list of tensors (e.g. ``graph.flatten_tensors(mods)``)."""
    return sum(t.numel() * t.element_size() for t in tensors)


def is_sdm(model) -> bool:
    """True when ``model`` exposes the SDM ``encode`` / ``modulation`` / ``decode`` split."""
    return all(callable(getattr(model, name, None)) for name in ("encode", "modulation", "decode"))


def _has_fast_split(model) -> bool:
    """True when ``encode`` / ``decode`` take ``fast=True`` (this package's SDMUNet)."""
    import inspect

    try:
        return all("fast" in inspect.signature(getattr(model, name)).parameters for name in ("encode", "decode"))
    except (TypeError, ValueError):
        return False


def _combine(out: torch.Tensor, scale: float, guided: bool) -> torch.Tensor:
    """Guided epsilon from a model output on 2B (cond first) or on B (unguided); float32 ``[B, 3, H, W]``."""
    eps = out[:, :3].float()
    if not guided:
        return eps
    eps_c, eps_u = eps.chunk(2)
    return eps_u + scale * (eps_c - eps_u)


def _memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class BatchedGuidance:
    """Classifier-free guidance for any ``model(x, t, y)``: one forward on ``cat(x, x)``.

    Args:
        model: Callable ``(x [M,3,H,W], t [M] int64, y [M,C,H,W]) -> [M, 3 or 6, H, W]``.
        scale: Guidance s (eps_u + s (eps_c - eps_u)).
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (autocast of the model call).
        channels_last: Feed NHWC tensors (the model should be converted by the caller).
    """

    def __init__(self, model, scale: float, precision: str = "fp32", channels_last: bool = False) -> None:
        self.model = model
        self.scale = float(scale)
        self.guided = self.scale > 1.0
        self.precision = precision
        self.channels_last = channels_last

    def prepare(self, cond: torch.Tensor) -> list[torch.Tensor]:
        """Conditioning for one batch: ``[cat(cond, zeros)]`` (2B) or ``[cond]`` without guidance."""
        cond = cond.float()
        y = torch.cat([cond, torch.zeros_like(cond)]) if self.guided else cond
        return [_memory_format(y, self.channels_last)]

    def __call__(self, x: torch.Tensor, t: torch.Tensor, conditioning: list[torch.Tensor]) -> torch.Tensor:
        """Guided epsilon, float32 ``[B, 3, H, W]``; ``t`` is ``[B]`` int64."""
        if self.guided:
            x, t = torch.cat([x, x]), torch.cat([t, t])
        with autocast_context(x.device, self.precision):
            out = self.model(_memory_format(x, self.channels_last), t, conditioning[0])
        return _combine(out, self.scale, self.guided)


class SDMGuidance:
    """Classifier-free guidance with the SDM exact rewrites (shared encoder, hoisted SPADE).

    Args:
        model: An SDM U-Net with ``encode(x, t) -> EncoderState``, ``modulation(y, kind)`` and
            ``decode(state, mods)``.
        scale: Guidance s.
        kind: ``"full"`` (cache every SPADE gamma/beta) or ``"hidden"`` (cache only each SPADE's
            hidden activation; gamma/beta are recomputed every step, less memory).
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        channels_last: Feed NHWC tensors.
    """

    def __init__(self, model, scale: float, kind: str = "full", precision: str = "fp32",
                 channels_last: bool = False) -> None:
        if kind not in ("full", "hidden"):
            raise ValueError(f"`kind` must be 'full' or 'hidden', got {kind!r}")
        self.model = model
        self.scale = float(scale)
        self.guided = self.scale > 1.0
        self.kind = kind
        self.precision = precision
        self.channels_last = channels_last
        self.fast = _has_fast_split(model)
        self._null: dict[tuple, object] = {}

    @property
    def _model_kind(self) -> str:
        # fp32 "full" caches (1 + gamma, beta): one addcmul per SPADE layer and step
        return "affine" if self.fast and self.kind == "full" and self.precision == "fp32" else self.kind

    def null_modulation(self, like: torch.Tensor):
        """Modulation of the all-zero label for one image of ``like``'s size, cached per (H, W, dtype, device)."""
        key = (tuple(like.shape[1:]), like.device, self.kind, self.precision, self.channels_last)
        mods = self._null.get(key)
        if mods is None:
            with autocast_context(like.device, self.precision):
                if callable(getattr(self.model, "null_modulation", None)):
                    fmt = torch.channels_last if self.channels_last else torch.contiguous_format
                    mods = self.model.null_modulation(1, tuple(like.shape[-2:]), kind=self._model_kind,
                                                      device=like.device, dtype=torch.float32, memory_format=fmt)
                else:
                    zero = _memory_format(torch.zeros_like(like[:1], dtype=torch.float32), self.channels_last)
                    mods = self.model.modulation(zero, kind=self._model_kind)
            self._null[key] = mods
        return mods

    def prepare(self, cond: torch.Tensor):
        """Modulations for one batch, computed once before the loop: ``cat(mods(cond), null x B)`` on 2B
        (with the fast blocks, the batch-1 null modulation as a broadcast tail, not copied B times)."""
        y = _memory_format(cond.float(), self.channels_last)
        with autocast_context(cond.device, self.precision):
            mods = self.model.modulation(y, kind=self._model_kind)
        if not self.guided:
            return mods
        null = self.null_modulation(y)
        if self.fast and callable(getattr(mods, "with_tail", None)):  # the null half broadcast, never copied
            return mods.with_tail(null, y.shape[0])
        return mods.cat(null.expand(y.shape[0]))

    def __call__(self, x: torch.Tensor, t: torch.Tensor, conditioning) -> torch.Tensor:
        """Guided epsilon, float32 ``[B, 3, H, W]``: encoder on B, middle and decoder on 2B.

        The model's fused inference blocks run (``fast=True``) when it has them; the encoder state is
        shared by the cond and null halves without being copied.
        """
        with autocast_context(x.device, self.precision):
            if self.fast:
                state = self.model.encode(_memory_format(x, self.channels_last), t, fast=True)
                out = self.model.decode(state, conditioning, fast=True)
            else:
                state = self.model.encode(_memory_format(x, self.channels_last), t)
                if self.guided:
                    state = state.repeat(2)
                out = self.model.decode(state, conditioning)
        return _combine(out, self.scale, self.guided)


def make_denoiser(model, scale: float, *, precision: str = "fp32", channels_last: bool = False,
                  kind: str = "full", use_split: bool = True):
    """:class:`SDMGuidance` for an SDM (when ``use_split``), else :class:`BatchedGuidance`."""
    if use_split and is_sdm(model):
        return SDMGuidance(model, scale, kind=kind, precision=precision, channels_last=channels_last)
    return BatchedGuidance(model, scale, precision=precision, channels_last=channels_last)
