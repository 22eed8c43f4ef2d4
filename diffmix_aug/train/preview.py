"""Training previews: a small DDIM sampler (from pure noise) and the label / sample grid PNG."""

from __future__ import annotations

import os

import numpy as np
import torch

from ..diffusion.gaussian import DiffusionTables
from ..diffusion.schedule import space_timesteps

__all__ = ["ddim_sample", "label_overlay_simple", "write_sample_grid"]


@torch.no_grad()
def ddim_sample(model, tables: DiffusionTables, y: torch.Tensor, *, steps: int = 50, guidance: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from pure noise, x0 clipped to [-1, 1] at every step.

    Args:
        model: :class:`~diffmix_aug.sdm.SDMUNet`.
        tables: Diffusion tables.
        y: ``[N, K+1, H, W]`` condition.
        steps: Number of DDIM steps (``"ddim{steps}"`` spacing when it exists, else even spacing).
        guidance: ``s`` in ``eps_u + s (eps_c - eps_u)``; 1 skips the unconditional pass.
        generator: Source of the start noise.

    Returns:
        ``float32 [N, 3, H, W]`` in [-1, 1].
    """
    n, _, h, w = y.shape
    dev = y.device
    T = tables.num_timesteps
    try:
        ts = space_timesteps(T, f"ddim{steps}")
    except ValueError:
        ts = space_timesteps(T, steps)
    gen_dev = generator.device if generator is not None else "cpu"
    x = torch.randn(n, 3, h, w, generator=generator, device=gen_dev).to(dev)
    ac = tables.alphas_cumprod.to(dev)
    mods = model.modulation(y, "full")
    if guidance != 1.0:
        mods = mods.cat(model.null_modulation(n, (h, w), "full", device=dev, dtype=y.dtype))
    for i in range(len(ts) - 1, -1, -1):
        t = torch.full((n,), ts[i], device=dev, dtype=torch.long)
        state = model.encode(x, t)
        if guidance != 1.0:
            out = model.decode(state.repeat(2), mods)
            eps_c, eps_u = out[:n, :3], out[n:, :3]
            eps = eps_u + guidance * (eps_c - eps_u)
        else:
            eps = model.decode(state, mods)[:, :3]
        a_t = float(ac[ts[i]])
        a_prev = float(ac[ts[i - 1]]) if i > 0 else 1.0
        x0 = ((x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5).clamp(-1, 1)
        eps = (x - a_t ** 0.5 * x0) / (1 - a_t) ** 0.5
        x = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    return x.float()


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
