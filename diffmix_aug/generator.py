"""``PatchGenerator``: source pick -> custom label map -> render -> metadata, pure in its seed.

The one way a synthetic patch is made, used by ``diffmix-aug synthesize`` (into a
:class:`~diffmix_aug.store.PatchStore`) and by the online :class:`~diffmix_aug.producer.Producer`
(into the replay cache)::

    gen = PatchGenerator(source, label_sampler, synth, mode="union", classes=ClassTable(5, (1,)),
                         patch_shape=(256, 256), seed=0)
    patches = gen.batch(key=0, size=4)      # list[Patch]; the same patches for the same (seed, rank, key)

A batch ``key`` gives the job list (which source patches, drawn from ``(seed, rank, key)``; biased
toward the rare classes a caller says it lacks), each job its label map
(:class:`~diffmix_aug.labelmaps.jobs.LabelMapJobs`: seeded by ``(seed, rank, stream, position)``),
and the render its noise (a CPU ``torch.Generator`` seeded by ``(seed, rank, key)``). Every patch's
metadata holds those seeds, the label-map parameters, the source index and the synthesizer's
identity (checkpoint sha256, sampler type and settings): what is needed to make it again.
"""

from __future__ import annotations

import hashlib
import inspect
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ._checks import check_positive_int
from ._seeds import derive_seed
from .class_table import ClassTable
from .data.sample import NucleiSample
from .labelmaps.jobs import LabelMapJobs
from .modes import check_mode, mode_balances
from .sampling._base import SamplingInterrupted
from .store import Patch, jsonable, store_identity

__all__ = ["GenerationStopped", "PatchGenerator", "model_sha256", "synthesizer_identity"]

_PICK_SALT = 0x10B5  # job-list draws live apart from the map seeds (seed, rank, stream, position)


class GenerationStopped(Exception):
    """A render was stopped by its ``should_stop`` (between denoising steps, or after the call)."""


_MODEL_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_sha256(model: torch.nn.Module) -> str:
    """sha256 over the model's state dict (names, dtypes, shapes, bytes): the checkpoint's identity,
    whatever file or device it came from. Computed once per model object."""
    cached = _MODEL_HASHES.get(model)
    if cached is None:
        h = hashlib.sha256()
        for name, t in model.state_dict().items():
            t = t.detach().to("cpu").contiguous().reshape(-1)
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        cached = h.hexdigest()
        _MODEL_HASHES[model] = cached
    return cached


def synthesizer_identity(synthesizer: Any) -> dict[str, Any]:
    """``{"checkpoint": {"path", "sha256"}, "sampler": {"type", "settings"}}`` of a synthesizer.

    The sampler settings are whatever the synthesizer reports (``sampler_settings``: what changes the
    output, e.g. steps, ``t_start``, solver, guidance, precision), else its sampler (``to_dict()``,
    else ``settings()``), recorded as they are. A plain callable without a model is named by its type
    (``sha256`` None).
    """
    model = getattr(synthesizer, "model", None)
    checkpoint = {"path": getattr(synthesizer, "checkpoint", None),
                  "sha256": model_sha256(model) if isinstance(model, torch.nn.Module) else None}
    if model is None:
        checkpoint["callable"] = f"{type(synthesizer).__module__}.{type(synthesizer).__qualname__}"
    sampler = getattr(synthesizer, "sampler", None)
    settings = getattr(synthesizer, "sampler_settings", None)
    for name in ("to_dict", "settings"):
        fn = getattr(sampler, name, None)
        if settings is None and callable(fn):
            settings = fn()
    return jsonable({"checkpoint": checkpoint,
                     "sampler": None if sampler is None else {"type": type(sampler).__name__, "settings": settings}})


def accepts_keyword(fn: Any, name: str) -> bool:
    """Whether ``fn`` names a ``name`` parameter (``**kwargs`` alone does not count: a wrapper may
    forward it to a callable that does not take it)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name and p.kind is not inspect.Parameter.POSITIONAL_ONLY for p in params)


class PatchGenerator:
    """Makes synthetic patches from a labelled source (see the module).

    Args:
        source: Sequence of :class:`NucleiSample` (the base's raw patches) label maps start from.
        label_sampler: A ``LabelMapSampler`` (``sampler(sample, rng) -> LabelMapResult``), or None
            to keep the source maps.
        synthesizer: ``synth(images uint8 [B,H,W,3], inst int [B,H,W], types int [B,H,W],
            generator=, [should_stop=]) -> uint8 [B,H,W,3]``.
        mode: The label-map mode (recorded; balancing modes bias the source pick).
        classes: The pipeline's :class:`ClassTable`.
        patch_shape: ``(H, W)`` of the patches (sources are cropped or reflect-padded to it).
        seed: Base seed.
        rank: Distributed rank (ranks make disjoint patches).
        bias_candidates: Sources scored per pick when the caller passes class fractions (1 = uniform).
    """

    def __init__(self, source: Sequence[NucleiSample], label_sampler: Any, synthesizer: Callable[..., Any], *,
                 mode: str, classes: ClassTable, patch_shape: tuple[int, int], seed: int = 0, rank: int = 0,
                 bias_candidates: int = 4) -> None:
        if not callable(synthesizer):
            raise TypeError(f"`synthesizer` must be callable (images, inst_maps, type_maps, generator), "
                            f"got {type(synthesizer).__name__}")
        if len(source) == 0:
            raise ValueError("`source` must hold at least one sample to draw label maps from, got an empty dataset")
        if not isinstance(classes, ClassTable):
            raise TypeError(f"`classes` must be a ClassTable, got {type(classes).__name__}")
        self.source = source
        self.synthesizer = synthesizer
        self.mode = check_mode(mode)
        self.classes = classes
        self.patch_shape = (int(patch_shape[0]), int(patch_shape[1]))
        self.seed, self.rank = int(seed), int(rank)
        self.bias_candidates = check_positive_int("bias_candidates", bias_candidates)
        #: the map builder (a dataset over jobs: label workers read it through a DataLoader)
        self.jobs = LabelMapJobs(source, label_sampler, self.patch_shape, self.seed, self.rank)
        #: classes the source pick favours when the caller lacks them (balancing modes only)
        self.bias_classes = classes.rare_classes if mode_balances(self.mode) else ()
        self._accepts_stop = accepts_keyword(synthesizer, "should_stop")
        self._identity = synthesizer_identity(synthesizer)
        self._class_counts: dict[int, np.ndarray] = {}

    @property
    def identity(self) -> dict[str, Any]:
        """:func:`~diffmix_aug.store.store_identity` of the patches this generator makes."""
        return store_identity(self.mode, self.classes, self.patch_shape, self._identity)

    # ------------------------------------------------------------------ source pick and label maps
    def _counts(self, index: int) -> np.ndarray:
        c = self._class_counts.get(index)
        if c is None:
            c = self.source[index].class_counts(self.classes.num_classes)
            self._class_counts[index] = c
        return c

    def pick_source(self, rng: np.random.Generator, class_fractions: np.ndarray | None = None) -> int:
        """A source index: uniform, or, given the current class fractions of what was made, the best
        of ``bias_candidates`` uniform candidates at filling the rare classes' deficit."""
        n = len(self.source)
        m = self.bias_candidates if self.bias_classes and class_fractions is not None else 1
        cand = rng.integers(0, n, size=m)
        if m == 1:
            return int(cand[0])
        k = self.classes.num_classes
        target = np.zeros(k)
        target[1:] = 1.0 / max(1, k - 1)
        deficit = np.clip(target - np.asarray(class_fractions, np.float64)[:k], 0, None)
        weights = np.zeros(k)
        for c in self.bias_classes:
            weights[c] = deficit[c] + 1e-6
        scores = [float(self._counts(int(i)) @ weights) for i in cand]
        return int(cand[int(np.argmax(scores))])

    def job_list(self, stream: int, size: int, class_fractions: np.ndarray | None = None) -> list[tuple[int, int, int]]:
        """``size`` jobs ``(stream, position, source)``, drawn from ``(seed, rank, stream)`` (and the fractions)."""
        rng = np.random.default_rng(derive_seed(self.seed, self.rank, stream, _PICK_SALT))
        return [(int(stream), j, self.pick_source(rng, class_fractions)) for j in range(size)]

    def maps(self, jobs: Sequence[tuple[int, int, int]]) -> list[dict[str, Any]]:
        """The ready label maps of ``jobs`` (what label workers build elsewhere)."""
        return [self.jobs[job] for job in jobs]

    # ------------------------------------------------------------------ render
    def render(self, key: int, maps: Sequence[dict[str, Any]],
               should_stop: Callable[[], bool] | None = None) -> list[Patch]:
        """Synthesise the images of ``maps`` with the noise of batch ``key``; one :class:`Patch` each.

        Raises:
            GenerationStopped: ``should_stop`` said so (the synthesizer stops at its next denoising step).
            ValueError: the synthesizer returned something other than uint8 images of the input's shape.
        """
        bseed = derive_seed(self.seed, self.rank, key)
        args = (np.stack([m["image"] for m in maps]), np.stack([m["inst"] for m in maps]),
                np.stack([m["type"] for m in maps]))
        kwargs: dict[str, Any] = {"generator": torch.Generator().manual_seed(bseed)}
        if should_stop is not None and self._accepts_stop:
            kwargs["should_stop"] = should_stop
        try:
            out = self.synthesizer(*args, **kwargs)
        except SamplingInterrupted as exc:
            raise GenerationStopped from exc
        if should_stop is not None and should_stop():  # an uninterruptible synthesizer returned late
            raise GenerationStopped
        out = np.asarray(out)
        if out.shape != args[0].shape or out.dtype != np.uint8:
            raise ValueError(f"the synthesizer must return uint8 {args[0].shape}, got {out.dtype} {out.shape}")
        ident = self._identity
        return [Patch(img, m["inst"], m["type"],
                      jsonable({**m["meta"], "mode": self.mode, "seed": self.seed, "batch_seed": bseed, "batch_index": int(key),
                                "position": j, "checkpoint_sha256": ident["checkpoint"]["sha256"],
                                "sampler": ident["sampler"]}))
                for j, (img, m) in enumerate(zip(out, maps))]

    def batch(self, key: int, size: int, class_fractions: np.ndarray | None = None,
              should_stop: Callable[[], bool] | None = None) -> list[Patch]:
        """Jobs, maps and render of batch ``key`` in this thread (pure in ``(seed, rank, key)`` and the
        fractions)."""
        return self.render(key, self.maps(self.job_list(key, size, class_fractions)), should_stop)
