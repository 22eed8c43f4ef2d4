"""What the reference and the fast DDIM samplers share: settings, the respaced schedule, input checks, noise.

The schedule follows guided-diffusion's ``SpacedDiffusion`` with ``timestep_respacing="ddimN"`` and the
diffusers img2img ``strength`` convention (``design/method.md`` §3, §5.4): ``num_steps`` respaced steps,
of which the last ``int(num_steps * strength)`` are run, starting at respaced index
``int(num_steps * strength) - 1`` (original t = 540 for 100 steps and strength 0.55).
"""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_choice, check_in_range, check_positive_int, describe
from ..diffusion.schedule import BETA_SCHEDULES, get_beta_schedule, space_timesteps

__all__ = ["GUIDANCE_FORMS", "DDIMSettings"]

GUIDANCE_FORMS = ("reference", "paper")


class DDIMSettings:
    """Validated sampler settings and the float64 respaced schedule (no torch state).

    Args:
        num_train_timesteps: Length T of the training process (1000).
        num_steps: Respaced steps N ("ddimN": stride T / N, so 100 gives 0, 10, ..., 990).
        strength: Fraction of the respaced schedule that is run, in (0, 1]; 1 starts from pure noise.
        guidance_scale: Classifier-free guidance weight; its meaning depends on ``guidance_form``.
        eta: DDIM stochasticity (0 = deterministic DDIM, 1 = DDPM-like variance).
        beta_schedule: ``"linear"`` or ``"cosine"``.
        clip_denoised: Clamp the predicted x0 to [-1, 1] before the update.
        guidance_form: ``"reference"``: eps = eps_u + s (eps_c - eps_u) with s = ``guidance_scale``
            (the public SDM / DiffMix code; s = 1.5 is DiffMix's setting; s must be >= 1 and s = 1
            means no guidance, one pass). ``"paper"``: the paper's Eq. 7, eps = eps_c + w (eps_c - eps_u)
            with w = ``guidance_scale`` >= 0, which equals the reference form with s = 1 + w.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        num_steps: int = 100,
        strength: float = 0.55,
        guidance_scale: float = 1.5,
        eta: float = 0.0,
        beta_schedule: str = "linear",
        clip_denoised: bool = True,
        guidance_form: str = "reference",
    ) -> None:
        self.num_train_timesteps = check_positive_int("num_train_timesteps", num_train_timesteps)
        self.num_steps = check_positive_int("num_steps", num_steps)
        if self.num_steps > self.num_train_timesteps:
            raise ValueError(f"`num_steps` must be <= num_train_timesteps={self.num_train_timesteps}, "
                             f"got {num_steps}")
        self.strength = check_in_range("strength", strength, 0.0, 1.0, low_inclusive=False)
        self.guidance_form = check_choice("guidance_form", guidance_form, GUIDANCE_FORMS)
        low = 1.0 if guidance_form == "reference" else 0.0
        self.guidance_scale = check_in_range("guidance_scale", guidance_scale, low, float("inf"))
        self.eta = check_in_range("eta", eta, 0.0, float("inf"))
        self.beta_schedule = check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        if not isinstance(clip_denoised, bool):
            raise TypeError(f"`clip_denoised` must be a bool, got {describe(clip_denoised)}")
        self.clip_denoised = clip_denoised

        start = int(self.num_steps * self.strength) - 1
        if start < 0:
            raise ValueError(f"`strength`={strength} runs no step out of num_steps={num_steps}: "
                             f"int(num_steps * strength) must be >= 1; raise strength or num_steps")
        self.start_index = start
        kept = space_timesteps(self.num_train_timesteps, f"ddim{self.num_steps}")
        abar_full = np.cumprod(1.0 - get_beta_schedule(self.beta_schedule, self.num_train_timesteps))
        #: original timesteps of the respaced process, ascending (respaced index k -> kept[k])
        self.respaced_timesteps = np.asarray(kept, dtype=np.int64)
        #: alpha-bar of the respaced process, float64 [num_steps] (equal to abar at the kept timesteps)
        self.alphas_cumprod = abar_full[self.respaced_timesteps]

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
        """Original timesteps visited, descending (540, 530, ..., 0 for the defaults)."""
        return [int(t) for t in self.respaced_timesteps[: self.start_index + 1][::-1]]

    @property
    def num_inference_steps(self) -> int:
        """Number of DDIM steps run (55 for the defaults)."""
        return self.start_index + 1

    def settings(self) -> dict:
        """The constructor arguments, JSON-able."""
        return {
            "num_train_timesteps": self.num_train_timesteps, "num_steps": self.num_steps,
            "strength": self.strength, "guidance_scale": self.guidance_scale, "eta": self.eta,
            "beta_schedule": self.beta_schedule, "clip_denoised": self.clip_denoised,
            "guidance_form": self.guidance_form,
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
                             f"entry of respaced index k at [k]), got {describe(step_noise)}")


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

    Draw order: one ``shape`` draw per step with respaced index k = start, ..., 1 (k = 0 adds no
    noise and is left zero), i.e. the order in which a loop drawing per step would draw.
    """
    if settings.eta == 0.0:
        return None
    out = torch.zeros((settings.num_inference_steps, *shape), dtype=torch.float32, device=device)
    for k in range(settings.start_index, 0, -1):
        out[k] = draw_normal(shape, generator, device)
    return out
