"""The reference DDIM sampler: plain, readable, fp32, two model passes per step. The oracle.

It follows guided-diffusion's ``ddim_sample_loop`` as used by DiffMix (``design/method.md`` §3, §5.4)
line by line: partial-noise start, classifier-free guidance with a separate unconditional pass,
clipped x0, epsilon re-derived from the clipped x0, DDIM update. Nothing is batched, cached or hoisted;
every fast path in :mod:`diffmix_aug.sampling.ddim` is tested against it.
"""

from __future__ import annotations

import math

import torch

from ._base import DDIMSettings, SamplingInterrupted, draw_normal

__all__ = ["ReferenceDDIMSampler"]


class ReferenceDDIMSampler(DDIMSettings):
    """Guided partial-noise DDIM, the readable way (see :class:`~diffmix_aug.sampling._base.DDIMSettings`).

    Guidance: the paper's Eq. 7 writes eps = eps_c + w (eps_c - eps_u); the public code (and this
    class, with ``guidance_form="reference"``) uses eps = eps_u + s (eps_c - eps_u), so s = 1 + w.
    DiffMix samples with s = 1.5. ``guidance_form="paper"`` takes w instead.

    Example:
        >>> sampler = ReferenceDDIMSampler(steps=55, t_start=540, guidance_scale=1.5)
        >>> sampler.timesteps[:3], len(sampler.timesteps)
        ([540, 530, 520], 55)
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.solver != "ddim":
            raise ValueError(f"ReferenceDDIMSampler is the plain DDIM oracle: solver={self.solver!r} runs in "
                             "DDIMSampler (checked against plain references of each solver in the tests); "
                             "use solver='ddim'")

    @torch.no_grad()
    def sample(
        self,
        model,
        x0: torch.Tensor,
        cond: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        step_noise: torch.Tensor | None = None,
        should_stop=None,
    ) -> torch.Tensor:
        """Synthesize images from original patches and label maps.

        Args:
            model: Callable ``(x [N,3,H,W], t [N] int64 original timesteps, y [N,C,H,W]) -> [N, 3 or 6, H, W]``.
            x0: ``float [N, 3, H, W]`` original patches in [-1, 1].
            cond: ``float [N, C, H, W]`` encoded label maps; the null label is ``zeros_like(cond)``.
            noise: ``[N, 3, H, W]`` start noise z; drawn from ``generator`` when None.
            generator: Source of every random number (start noise first, then eta noise per step).
            step_noise: Optional pre-drawn eta noise ``[steps, N, 3, H, W]``; entry ``[k]`` is used at
                step index k = steps - 1 - i of the i-th step (k = 0, the last step, adds none).

        Returns:
            ``float32 [N, 3, H, W]`` in [-1, 1] (with ``clip_denoised``).
        """
        self.check_inputs(model, x0, cond, noise)
        self.check_step_noise(step_noise, x0)
        x0 = x0.float()
        cond = cond.float()
        if noise is None:
            noise = draw_normal(tuple(x0.shape), generator, x0.device)
        s = self.scale
        abar = self.alphas_cumprod

        # partial-noise start at t_start (step index `start_index`): q_sample(x0, t_start)
        start = self.start_index
        x = math.sqrt(abar[start]) * x0 + math.sqrt(1.0 - abar[start]) * noise.float()

        for k in range(start, -1, -1):  # the grid from t_start down to 0; abar_prev = 1 after t = 0
            if should_stop is not None and should_stop():  # ``() -> bool``, polled per step (producer close)
                raise SamplingInterrupted("sampling stopped at a step boundary (should_stop() returned True)")
            t = torch.full((x.shape[0],), int(self.grid_timesteps[k]), dtype=torch.long, device=x.device)

            eps_cond = model(x, t, cond)[:, :3].float()
            if s > 1.0:
                eps_uncond = model(x, t, torch.zeros_like(cond))[:, :3].float()
                eps = eps_uncond + s * (eps_cond - eps_uncond)
            else:
                eps = eps_cond

            abar_t = abar[k]
            abar_prev = abar[k - 1] if k > 0 else 1.0
            pred_x0 = math.sqrt(1.0 / abar_t) * x - math.sqrt(1.0 / abar_t - 1.0) * eps
            if self.clip_denoised:
                pred_x0 = pred_x0.clamp(-1.0, 1.0)
            eps = (math.sqrt(1.0 / abar_t) * x - pred_x0) / math.sqrt(1.0 / abar_t - 1.0)

            sigma = (self.eta * math.sqrt((1.0 - abar_prev) / (1.0 - abar_t))
                     * math.sqrt(1.0 - abar_t / abar_prev))
            x = math.sqrt(abar_prev) * pred_x0 + math.sqrt(1.0 - abar_prev - sigma ** 2) * eps
            if k > 0 and self.eta > 0.0:
                z = step_noise[k].float() if step_noise is not None else draw_normal(tuple(x.shape), generator,
                                                                                     x.device)
                x = x + sigma * z
        return x
