"""``Synthesizer``: model + sampler + label encoding + precision, uint8 in and uint8 out.

This is what the dataset wrapper's background producer calls (``docs/architecture.md``)::

    synth = Synthesizer.from_checkpoint("sdm_consep.safetensors", device="cuda", precision="fp16")
    out = synth(images_uint8, inst_maps, type_maps, generator=torch.Generator().manual_seed(0))

Calls are serialised by a lock, so one producer thread (not the main thread) may call it while the main
thread trains; on CUDA the work runs on the synthesizer's own stream.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable

import numpy as np
import torch

from .._checks import check_array, check_choice, describe
from ..labelmaps.encode import encode_condition_torch
from .ddim import DDIMSampler, ModelCaches
from .denoisers import PRECISIONS
from .presets import make_sampler, preset_of
from .reference import ReferenceDDIMSampler

__all__ = ["Synthesizer"]

class Synthesizer:
    """Guided partial-noise synthesis of nuclei patches from (image, instance map, type map).

    Args:
        model: The SDM U-Net (or any ``model(x, t, y)`` with ``label_channels``); moved to ``device``
            and put in eval mode.
        sampler: A :class:`~diffmix_aug.sampling.ddim.DDIMSampler` (re-configured here with this
            synthesizer's precision, CUDA-graph and memory-format settings), a preset name of
            :data:`~diffmix_aug.sampling.presets.PRESETS` (``"reference"``: the paper's 55 DDIM steps
            from t = 540), None for :data:`~diffmix_aug.sampling.presets.DEFAULT_PRESET`, or a
            :class:`~diffmix_aug.sampling.reference.ReferenceDDIMSampler` (fp32 only).
        device: Where the model runs.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (autocast; norms, guidance and DDIM update in fp32).
        cuda_graph: Replay one captured step per batch shape on CUDA (ignored on CPU).
        channels_last: NHWC model and inputs; default True on CUDA, False on CPU.

    Attributes:
        num_classes: Type classes counting the background (label channels - 1).
        sampler_settings: The sampler's settings as a JSON-able dict (see the property).
    """

    def __init__(self, model, sampler: DDIMSampler | ReferenceDDIMSampler | str | None = None, device="cpu",
                 precision: str = "fp32", cuda_graph: bool = True, channels_last: bool | None = None) -> None:
        self.device = torch.device(device)
        self.precision = check_choice("precision", precision, tuple(PRECISIONS))
        label_channels = getattr(model, "label_channels", None)
        if not isinstance(label_channels, int) or label_channels < 2:
            raise TypeError(f"`model` must expose `label_channels` (num_classes + 1 >= 2), got {describe(model)}")
        if channels_last is None:
            channels_last = self.device.type == "cuda"
        if sampler is None or isinstance(sampler, str):
            sampler = make_sampler(sampler)
        if isinstance(sampler, DDIMSampler):
            sampler = sampler.replace(precision=precision, channels_last=channels_last,
                                      cuda_graph=bool(cuda_graph) and self.device.type == "cuda")
        elif isinstance(sampler, ReferenceDDIMSampler):
            if precision != "fp32":
                raise ValueError(f"`precision`={precision!r} needs the fast DDIMSampler; ReferenceDDIMSampler "
                                 "is fp32 only")
        else:
            raise TypeError(f"`sampler` must be a DDIMSampler, a ReferenceDDIMSampler or a preset name, got "
                            f"{describe(sampler)}")
        model = model.to(self.device).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.sampler = sampler
        #: the model's denoisers and CUDA graphs (the Synthesizer owns the model, so it owns them)
        self.caches = ModelCaches(model)
        self.num_classes = label_channels - 1
        self._lock = threading.Lock()
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    @property
    def sampler_settings(self) -> dict:
        """What the sampler runs, JSON-able, for patch metadata and result files.

        The sampler's :meth:`~diffmix_aug.sampling._base.DDIMSettings.settings` (``solver``, ``steps``,
        ``t_start``, ``spacing``, ``guidance_scale``, ``guidance_form``, ``eta``, ``clip_denoised``,
        ``beta_schedule``, ``num_train_timesteps``), plus ``precision``, ``timesteps`` (the grid the
        network is evaluated at, descending) and ``preset`` (the name of the matching preset, or None).
        """
        from ._base import DDIMSettings

        out = DDIMSettings.settings(self.sampler)
        out.update(precision=self.precision, timesteps=self.sampler.timesteps, preset=preset_of(out))
        return out

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device=None, precision: str | None = None,
                        cuda_graph: bool = True, sampler: str | None = None, **sampler_kwargs) -> Synthesizer:
        """Load an SDM (inference export or training directory, via :func:`diffmix_aug.sdm.load_sdm`).

        Args:
            path: ``.safetensors`` export, training directory, or a shipped name (``"consep-20x"``,
                ``"toy"``; see :mod:`~diffmix_aug.sdm.registry`).
            device: Default CUDA when available, else CPU.
            precision: Default ``"fp32"`` (the highest-precision path; pass ``"fp16"`` on a GPU for speed).
            cuda_graph: See the class.
            sampler: A preset name of :data:`~diffmix_aug.sampling.presets.PRESETS` (``"reference"``:
                the paper's protocol); None is :data:`~diffmix_aug.sampling.presets.DEFAULT_PRESET`.
            **sampler_kwargs: :class:`~diffmix_aug.sampling.ddim.DDIMSampler` arguments overriding the
                preset (``steps``, ``t_start``, ``solver``, ``guidance_scale``, ...).
        """
        from ..sdm.checkpoint import load_sdm
        from ..sdm.registry import resolve_checkpoint

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_sdm(path, device=device)  # raises ValueError naming the file on NaN / inf weights
        synth = cls(model, make_sampler(sampler, **sampler_kwargs), device=device, precision=precision or "fp32",
                    cuda_graph=cuda_graph)
        synth.checkpoint = os.fspath(resolve_checkpoint(path))
        return synth

    checkpoint: str | None = None  # the file or directory ``from_checkpoint`` loaded, for error messages

    def __getstate__(self) -> dict:
        # the lock, the stream and the model caches are made again where a pickled copy is loaded
        state = self.__dict__.copy()
        for k in ("_lock", "_stream", "caches"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.caches = ModelCaches(self.model)
        self._lock = threading.Lock()
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def _check_finite_output(self, out: torch.Tensor) -> None:
        """Raise ``ValueError`` when the denoised batch holds NaN / inf (it would decode to black images)."""
        finite = torch.isfinite(out)
        if not bool(finite.all()):
            bad = sorted({int(i) for i in (~finite).flatten(1).any(1).nonzero().flatten().tolist()})
            src = f"checkpoint {self.checkpoint}" if self.checkpoint else "the model (no checkpoint path known)"
            raise ValueError(f"Synthesizer: the denoised batch holds non-finite (NaN/inf) values in sample(s) "
                             f"{bad[:8]} of {out.shape[0]}; expected finite images from {src}. The weights are "
                             "corrupt or diverged, or the precision overflows: re-export the checkpoint or try "
                             "precision='fp32'")

    def __repr__(self) -> str:
        return (f"Synthesizer(device={str(self.device)!r}, precision={self.precision!r}, "
                f"num_classes={self.num_classes}, sampler={self.sampler!r})")

    def _check(self, images, inst_maps, type_maps) -> None:
        check_array("images", images, ndim=4, dtype_kind="u", channels=3)
        if images.dtype != np.uint8:
            raise TypeError(f"`images` must be uint8 [B, H, W, 3], got {describe(images)}")
        check_array("inst_maps", inst_maps, ndim=3, dtype_kind="iu")
        check_array("type_maps", type_maps, ndim=3, dtype_kind="iu")
        if inst_maps.shape != images.shape[:3] or type_maps.shape != images.shape[:3]:
            raise ValueError(f"`inst_maps` {inst_maps.shape} and `type_maps` {type_maps.shape} must both be "
                             f"[B, H, W] = {images.shape[:3]} like `images`; pass one map pair per image")
        down = self.size_multiple
        if down > 1 and (images.shape[1] % down or images.shape[2] % down):
            raise ValueError(f"`images` size {images.shape[1:3]} must be divisible by {down} for this "
                             f"model ({len(self.model.config.channel_mult)} levels); crop or pad the patches")

    @property
    def size_multiple(self) -> int:
        """Patch sides must be multiples of this (``2 ** (levels - 1)`` of the U-Net; 1 when unknown)."""
        config = getattr(self.model, "config", None)
        levels = len(getattr(config, "channel_mult", ())) if config is not None else 0
        return 2 ** (levels - 1) if levels > 1 else 1

    @torch.no_grad()
    def __call__(self, images: np.ndarray, inst_maps: np.ndarray, type_maps: np.ndarray,
                 generator: torch.Generator | None = None,
                 should_stop: Callable[[], bool] | None = None) -> np.ndarray:
        """Synthesize one image per (image, label map) pair.

        Args:
            images: ``uint8 [B, H, W, 3]`` original patches (the partial-noise start).
            inst_maps: ``int [B, H, W]`` instance ids of the target label maps (0 = background).
            type_maps: ``int [B, H, W]`` types in ``0..num_classes-1`` (0 = background).
            generator: ``torch.Generator`` for every random number (a CPU generator reproduces the same
                output on any device); None uses torch's global generator.
            should_stop: Polled between denoising steps; True stops the call with
                :class:`~diffmix_aug.sampling.SamplingInterrupted` (used by the producer's ``close()``).

        Returns:
            ``uint8 [B, H, W, 3]``.
        """
        self._check(images, inst_maps, type_maps)
        if images.shape[0] == 0:
            return images.copy()
        with self._lock:
            ctx = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
            with ctx:
                dev = self.device
                x0 = torch.from_numpy(np.ascontiguousarray(images)).to(dev).permute(0, 3, 1, 2).float()
                x0 = x0 / 127.5 - 1.0
                cond = encode_condition_torch(torch.from_numpy(np.ascontiguousarray(type_maps)).to(dev),
                                              torch.from_numpy(np.ascontiguousarray(inst_maps)).to(dev),
                                              self.num_classes)
                kw = {"caches": self.caches} if isinstance(self.sampler, DDIMSampler) else {}
                if should_stop is not None:
                    kw["should_stop"] = should_stop
                out = self.sampler.sample(self.model, x0, cond, generator=generator, **kw)
                self._check_finite_output(out)
                out = ((out + 1.0) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
                result = out.cpu().numpy()
            if self._stream is not None:
                self._stream.synchronize()
        return result

