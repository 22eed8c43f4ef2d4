"""Training previews: a small DDIM sampler (from pure noise) and the label / sample grid PNG."""

from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["ddim_sample", "label_overlay_simple", "write_sample_grid"]


@torch.no_grad()
def ddim_sample(model, y: torch.Tensor, *, steps: int = 50, guidance: float = 1.0,
                generator: torch.Generator | None = None, num_timesteps: int = 1000,
                beta_schedule: str = "linear") -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from pure noise, x0 clipped to [-1, 1] at every step.

    The project's one fast sampler (:class:`~diffmix_aug.sampling.ddim.DDIMSampler`) run over the
    whole ``"ddim{steps}"`` schedule (``steps`` steps from its last timestep, e.g. 980 for 50 steps)
    and started from the noise itself.

    Args:
        model: :class:`~diffmix_aug.sdm.SDMUNet`.
        y: ``float [N, K+1, H, W]`` condition.
        steps: DDIM steps (``num_timesteps`` must be a multiple of it).
        guidance: ``s`` in ``eps_u + s (eps_c - eps_u)``; 1 skips the unconditional pass.
        generator: Source of the start noise.
        num_timesteps, beta_schedule: The training diffusion process.

    Returns:
        ``float32 [N, 3, H, W]`` in [-1, 1].
    """
    from ..diffusion.schedule import space_timesteps
    from ..sampling._base import draw_normal
    from ..sampling.ddim import DDIMSampler

    n, _, h, w = y.shape
    t_start = space_timesteps(num_timesteps, f"ddim{steps}")[-1]  # evenly strided: linear spacing hits it
    sampler = DDIMSampler(num_train_timesteps=num_timesteps, steps=steps, t_start=t_start,
                          guidance_scale=max(1.0, float(guidance)), beta_schedule=beta_schedule)
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    noise = draw_normal((n, 3, h, w), generator, gen_dev).to(y.device)  # drawn where the generator lives
    x0 = torch.zeros((n, 3, h, w), device=y.device)
    return sampler.sample(model, x0, y, noise=noise, from_noise=True)


def label_overlay_simple(image: np.ndarray, type_onehot: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Image blended 50 % with class colours, instance edges in white.

    Args:
        image: ``uint8 [H, W, 3]``.
        type_onehot: ``float [K+1, H, W]`` condition (one-hot types then edges).
        palette: ``uint8 [K, 3]`` class colours (background first).
    """
    types = type_onehot[:-1].argmax(0)
    edges = type_onehot[-1] > 0.5
    out = image.astype(np.float32)
    fg = types > 0
    out[fg] = 0.5 * out[fg] + 0.5 * palette[types[fg]].astype(np.float32)
    out[edges] = 255.0
    return out.clip(0, 255).astype(np.uint8)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_sample_grid(path: str | os.PathLike[str], samples: torch.Tensor, real: torch.Tensor, y: torch.Tensor,
                      palette: np.ndarray) -> None:
    """Save a PNG grid: row 1 the real crops, row 2 the label overlaid on the samples, row 3 the samples.

    Args:
        path: Destination PNG (written atomically).
        samples, real: ``[N, 3, H, W]`` in [-1, 1].
        y: ``[N, K+1, H, W]`` the conditions used.
        palette: ``uint8 [K, 3]``.
    """
    from matplotlib.image import imsave

    from .._io import atomic_open

    gen = _to_uint8(samples)
    ref = _to_uint8(real)
    cond = y.detach().float().cpu().numpy()
    overlays = np.stack([label_overlay_simple(g, c, palette) for g, c in zip(gen, cond)])
    rows = [np.concatenate(list(r), axis=1) for r in (ref, overlays, gen)]
    grid = np.concatenate(rows, axis=0)
    with atomic_open(path, "wb") as fh:
        imsave(fh, grid, format="png")
