"""What the reference and the fast samplers share: settings, the timestep grid, input checks, noise.

A sampler starts from the original patch noised to the entry timestep ``t_start`` (an original
timestep, 0..T-1; the reference's is 540) and evaluates the network at ``steps`` timesteps from
``t_start`` down to 0 (:func:`~diffmix_aug.diffusion.schedule.timestep_grid`), then steps to the
clean image. The entry point never depends on the step count. With the defaults (``steps=55,
t_start=540, spacing="linear"``) the grid is 540, 530, ..., 0: the reference protocol of
``design/method.md`` §5.4 (``ddim100`` entered at respaced index 54), exactly.

Step index convention: the step at grid position i (i = 0 first) has index ``k = steps - 1 - i``, so
k = 0 is the last step (to the clean image); per-step tables and pre-drawn eta noise are indexed by k.
"""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_choice, check_in_range, check_positive_int, describe
from ..diffusion.schedule import BETA_SCHEDULES, SPACINGS, get_beta_schedule, timestep_grid
from .solvers import SOLVERS

__all__ = ["GUIDANCE_FORMS", "REMOVED_SETTINGS", "DDIMSettings", "reject_removed"]

GUIDANCE_FORMS = ("reference", "paper")

#: settings that no longer exist, with what replaces them (a clear error instead of a silent change)
REMOVED_SETTINGS = {
    "strength": "the entry timestep is its own setting now: pass t_start (an original timestep, 0..999; "
                "the reference's 540 is the default) and steps (network evaluations from t_start to 0). "
                "strength=0.55 of a 100-step schedule was t_start=540, steps=55; of a 20-step schedule it "
                "entered at t = 500",
    "num_steps": "the respaced schedule length is gone: pass steps (the number of denoising steps actually "
                 "run, e.g. 55 for the reference protocol) and t_start (the entry timestep, default 540)",
}


def reject_removed(kwargs: dict) -> None:
    """Raise for settings in :data:`REMOVED_SETTINGS` (named, with the replacement), then for unknown ones."""
    for name in kwargs:
        if name in REMOVED_SETTINGS:
            raise ValueError(f"`{name}` was removed: {REMOVED_SETTINGS[name]}")
    if kwargs:
        raise TypeError(f"unexpected sampler setting(s) {sorted(kwargs)}")


class DDIMSettings:
    """Validated sampler settings and the float64 timestep grid (no torch state).

    Args:
        num_train_timesteps: Length T of the training process (1000).
        steps: Network evaluations (guided batches) per patch: the grid has ``steps`` timesteps from
            ``t_start`` down to 0, followed by one last step to the clean image. 55 is the reference's.
        t_start: Entry timestep (original index, ``0 <= t_start < T``): the start is the original
            patch noised to ``t_start``. 540 (sqrt(abar) = 0.226) is the reference's; ``T - 1`` is
            (nearly) pure noise.
        solver: ``"ddim"`` (first order; the reference's), ``"dpmpp_2m"``, ``"dpmpp_3m"`` (DPM-Solver++
            multistep) or ``"unipc"`` (UniPC-bh2, order 2): :mod:`~diffmix_aug.sampling.solvers`. All
            take x0-clipped data predictions; the multistep ones need ``eta=0``.
        spacing: How the grid is spaced between ``t_start`` and 0: ``"linear"`` (uniform in t, the
            reference's), ``"quadratic"`` or ``"logsnr"``; see
            :func:`~diffmix_aug.diffusion.schedule.timestep_grid`.
        guidance_scale: Classifier-free guidance weight; its meaning depends on ``guidance_form``.
        eta: DDIM stochasticity (0 = deterministic DDIM, 1 = DDPM-like variance).
        beta_schedule: ``"linear"`` or ``"cosine"``.
        clip_denoised: Clamp the predicted x0 to [-1, 1] before the update.
        guidance_form: ``"reference"``: eps = eps_u + s (eps_c - eps_u) with s = ``guidance_scale``
            (the public SDM / DiffMix code; s = 1.5 is DiffMix's setting; s must be >= 1 and s = 1
            means no guidance, one pass). ``"paper"``: the paper's Eq. 7, eps = eps_c + w (eps_c - eps_u)
            with w = ``guidance_scale`` >= 0, which equals the reference form with s = 1 + w.

    Raises:
        ValueError: ``strength`` or ``num_steps`` (removed: the message names ``t_start`` and
            ``steps``), or a value out of range.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        steps: int = 55,
        t_start: int = 540,
        solver: str = "ddim",
        spacing: str = "linear",
        guidance_scale: float = 1.5,
        eta: float = 0.0,
        beta_schedule: str = "linear",
        clip_denoised: bool = True,
        guidance_form: str = "reference",
        **removed,
    ) -> None:
        reject_removed(removed)
        self.num_train_timesteps = check_positive_int("num_train_timesteps", num_train_timesteps)
        self.t_start = check_positive_int("t_start", t_start, allow_zero=True)
        if self.t_start >= self.num_train_timesteps:
            raise ValueError(f"`t_start` must be an original timestep in 0..{self.num_train_timesteps - 1}, "
                             f"got {t_start}")
        self.steps = check_positive_int("steps", steps)
        self.solver = check_choice("solver", solver, tuple(SOLVERS))
        self.spacing = check_choice("spacing", spacing, SPACINGS)
        self.guidance_form = check_choice("guidance_form", guidance_form, GUIDANCE_FORMS)
        low = 1.0 if guidance_form == "reference" else 0.0
        self.guidance_scale = check_in_range("guidance_scale", guidance_scale, low, float("inf"))
        self.eta = check_in_range("eta", eta, 0.0, float("inf"))
        if self.eta > 0 and self.solver != "ddim":
            raise ValueError(f"`eta`={eta} needs solver='ddim': the multistep solvers integrate the deterministic "
                             f"ODE; pass eta=0 with solver={solver!r}")
        self.beta_schedule = check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        if not isinstance(clip_denoised, bool):
            raise TypeError(f"`clip_denoised` must be a bool, got {describe(clip_denoised)}")
        self.clip_denoised = clip_denoised

        abar_full = np.cumprod(1.0 - get_beta_schedule(self.beta_schedule, self.num_train_timesteps))
        grid = timestep_grid(self.t_start, self.steps, self.spacing, abar_full)
        #: grid timesteps ascending: step index k evaluates the network at ``grid_timesteps[k]``
        self.grid_timesteps = grid[::-1].copy()
        #: alpha-bar at the grid timesteps, float64 ``[steps]``, indexed by k like ``grid_timesteps``
        self.alphas_cumprod = abar_full[self.grid_timesteps]

    @property
    def scale(self) -> float:
        """The guidance weight s of eps_u + s (eps_c - eps_u), whatever ``guidance_form`` is."""
        return self.guidance_scale if self.guidance_form == "reference" else 1.0 + self.guidance_scale

    @property
    def guided(self) -> bool:
        """True when the unconditional pass runs (s > 1)."""
        return self.scale > 1.0

    @property
    def timesteps(self) -> list[int]:
        """Original timesteps the network is evaluated at, descending (540, 530, ..., 0 for the defaults)."""
        return [int(t) for t in self.grid_timesteps[::-1]]

    @property
    def num_inference_steps(self) -> int:
        """Number of denoising steps run (``steps``)."""
        return self.steps

    @property
    def start_index(self) -> int:
        """Step index k of the first step (``steps - 1``)."""
        return self.steps - 1

    def settings(self) -> dict:
        """The constructor arguments, JSON-able: ``type(self)(**settings())`` is the same sampler.

        This is what a :class:`~diffmix_aug.sampling.synthesizer.Synthesizer` reports for patch
        metadata and result files (``Synthesizer.sampler_settings``).
        """
        return {
            "solver": self.solver, "steps": self.steps, "t_start": self.t_start, "spacing": self.spacing,
            "guidance_scale": self.guidance_scale, "guidance_form": self.guidance_form, "eta": self.eta,
            "clip_denoised": self.clip_denoised, "beta_schedule": self.beta_schedule,
            "num_train_timesteps": self.num_train_timesteps,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ inputs and noise
    def check_inputs(self, model, x0: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor | None) -> None:
        """Validate ``sample`` inputs; raises ValueError / TypeError naming the field and the fix."""
        if not callable(model):
            raise TypeError(f"`model` must be callable as model(x, t, y), got {type(model).__name__}")
        for name, value in (("x0", x0), ("cond", cond)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"`{name}` must be a torch.Tensor, got {describe(value)}")
            if value.ndim != 4 or not value.is_floating_point():
                raise ValueError(f"`{name}` must be a float tensor [N, C, H, W], got {describe(value)}")
        if x0.shape[1] != 3:
            raise ValueError(f"`x0` must have 3 channels (RGB scaled to [-1, 1]), got {describe(x0)}")
        if cond.shape[0] != x0.shape[0]:
            raise ValueError(f"`cond` batch {cond.shape[0]} does not match `x0` batch {x0.shape[0]}; "
                             "pass one label map per image")
        if cond.shape[2:] != x0.shape[2:]:
            raise ValueError(f"`cond` size {tuple(cond.shape[2:])} does not match `x0` size "
                             f"{tuple(x0.shape[2:])}")
        if cond.device != x0.device:
            raise ValueError(f"`cond` is on {cond.device} but `x0` is on {x0.device}; move both to one device")
        expected = getattr(model, "label_channels", None)
        if isinstance(expected, int) and cond.shape[1] != expected:
            raise ValueError(f"`cond` has {cond.shape[1]} channels but the model expects {expected} label "
                             f"channels (num_classes + 1 with the edge channel); encode the label map with "
                             f"num_classes={expected - 1}")
        if x0.numel():
            lo, hi = float(x0.min()), float(x0.max())
            if lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6 or lo != lo or hi != hi:
                raise ValueError(f"`x0` must lie in [-1, 1] (uint8 images: x / 127.5 - 1), got range "
                                 f"[{lo:.4g}, {hi:.4g}]")
        if noise is not None and (not isinstance(noise, torch.Tensor) or noise.shape != x0.shape):
            raise ValueError(f"`noise` must be a tensor of the shape of `x0` {tuple(x0.shape)}, got {describe(noise)}")

    def check_step_noise(self, step_noise: torch.Tensor | None, x0: torch.Tensor) -> None:
        """Validate a pre-drawn eta noise buffer ``[num_inference_steps, N, 3, H, W]``."""
        if step_noise is None:
            return
        expected = (self.num_inference_steps, *x0.shape)
        if not isinstance(step_noise, torch.Tensor) or tuple(step_noise.shape) != expected:
            raise ValueError(f"`step_noise` must be a tensor of shape {expected} (one draw per step, the "
                             f"entry of step index k at [k]), got {describe(step_noise)}")


class SamplingInterrupted(RuntimeError):
    """A sampling loop stopped at a step boundary because its ``should_stop()`` returned True."""


def draw_normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal float32 noise drawn on the generator's device, then moved to ``device``.

    Drawing on the generator's device makes a CPU generator reproduce the same numbers for any target.
    """
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device)


def draw_step_noise(
    settings: DDIMSettings, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor | None:
    """eta noise for the whole loop, ``[num_inference_steps, *shape]``, or None when eta = 0.

    Draw order: one ``shape`` draw per step with index k = steps - 1, ..., 1 (k = 0, the step to the
    clean image, adds no noise and is left zero), i.e. the order in which a loop drawing per step would draw.
    """
    if settings.eta == 0.0:
        return None
    out = torch.zeros((settings.num_inference_steps, *shape), dtype=torch.float32, device=device)
    for k in range(settings.start_index, 0, -1):
        out[k] = draw_normal(shape, generator, device)
    return out
