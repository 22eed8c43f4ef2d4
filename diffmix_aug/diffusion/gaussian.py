"""Gaussian diffusion tables and the forward / posterior math (pure functions, after improved DDPM).

Tables are computed in float64 and kept as float64 buffers of :class:`DiffusionTables` (moved
with ``.to(device)``); values are gathered per sample and cast to the input's dtype.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .._checks import check_probability, describe
from .schedule import get_beta_schedule

__all__ = [
    "DiffusionTables",
    "compute_tables",
    "drop_labels",
    "extract",
    "learned_range_log_variance",
    "predict_xstart_from_eps",
    "q_posterior_mean_variance",
    "q_sample",
    "sample_timesteps",
]


def compute_tables(betas: np.ndarray) -> dict[str, np.ndarray]:
    """Every per-timestep table of the process defined by ``betas`` (float64 ``[T]`` each).

    Returns:
        ``betas, alphas_cumprod, alphas_cumprod_prev, sqrt_alphas_cumprod,
        sqrt_one_minus_alphas_cumprod, sqrt_recip_alphas_cumprod, sqrt_recipm1_alphas_cumprod,
        posterior_variance, posterior_log_variance_clipped, posterior_mean_coef1,
        posterior_mean_coef2, log_betas``.
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size < 2 or not ((betas > 0) & (betas <= 1)).all():
        raise ValueError(f"`betas` must be a 1-D array of length >= 2 with values in (0, 1], got {describe(betas)}")
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    return {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": post_var,
        # the posterior variance is 0 at t = 0: its log is clipped to the t = 1 value
        "posterior_log_variance_clipped": np.log(np.append(post_var[1], post_var[1:])),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        "log_betas": np.log(betas),
    }


class DiffusionTables(nn.Module):
    """The diffusion tables as float64 buffers (follow the model with ``.to(device)``).

    Args:
        betas: float64 ``[T]``.

    Example:
        >>> tables = DiffusionTables.from_schedule("linear", 1000)
    """

    betas: torch.Tensor

    def __init__(self, betas: np.ndarray):
        super().__init__()
        for name, value in compute_tables(betas).items():
            self.register_buffer(name, torch.from_numpy(value), persistent=False)

    @classmethod
    def from_schedule(cls, name: str = "linear", num_timesteps: int = 1000) -> DiffusionTables:
        return cls(get_beta_schedule(name, num_timesteps))

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def forward(self, *args, **kwargs):  # pragma: no cover - a container, not a layer
        raise TypeError("DiffusionTables holds buffers; use the functions of diffmix_aug.diffusion")


def extract(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather ``table[t]`` and shape it ``[N, 1, ..., 1]`` to broadcast against ``like`` (its dtype)."""
    out = table.to(t.device)[t]
    return out.to(like.dtype).reshape(t.shape[0], *([1] * (like.ndim - 1)))


def q_sample(tables: DiffusionTables, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Sample ``x_t ~ q(x_t | x_0) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise``.

    Args:
        tables: Diffusion tables.
        x0: ``[N, C, H, W]`` clean images in [-1, 1].
        t: ``[N]`` int64 timesteps.
        noise: Standard normal, same shape as ``x0``.
    """
    return extract(tables.sqrt_alphas_cumprod, t, x0) * x0 + extract(tables.sqrt_one_minus_alphas_cumprod, t,
                                                                      x0) * noise


def q_posterior_mean_variance(tables: DiffusionTables, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and clipped log-variance of ``q(x_{t-1} | x_t, x_0)`` (broadcastable)."""
    mean = extract(tables.posterior_mean_coef1, t, xt) * x0 + extract(tables.posterior_mean_coef2, t, xt) * xt
    return mean, extract(tables.posterior_variance, t, xt), extract(tables.posterior_log_variance_clipped, t, xt)


def predict_xstart_from_eps(tables: DiffusionTables, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
                            ) -> torch.Tensor:
    """``x_0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps``."""
    return extract(tables.sqrt_recip_alphas_cumprod, t, xt) * xt - extract(tables.sqrt_recipm1_alphas_cumprod,
                                                                           t, xt) * eps


def learned_range_log_variance(tables: DiffusionTables, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """LEARNED_RANGE: ``log sigma^2 = frac log beta_t + (1 - frac) log beta~_t``, ``frac = (v + 1) / 2``.

    Args:
        v: ``[N, C, H, W]`` the model's variance channels (roughly in [-1, 1]).
        t: ``[N]`` timesteps.
    """
    min_log = extract(tables.posterior_log_variance_clipped, t, v)
    max_log = extract(tables.log_betas, t, v)
    frac = (v + 1) / 2
    return frac * max_log + (1 - frac) * min_log


def sample_timesteps(n: int, num_timesteps: int, *, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Uniform timesteps ``[n]`` int64 in ``0..num_timesteps-1`` (the reference's uniform sampler)."""
    gen_device = generator.device if generator is not None else "cpu"
    return torch.randint(0, num_timesteps, (n,), generator=generator, device=gen_device).to(device or gen_device)


def drop_labels(y: torch.Tensor, drop_rate: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Classifier-free training: zero each sample's whole label with probability ``drop_rate``.

    The null label is all zeros (every channel, background and edge included). The per-sample
    keep mask is drawn first (``rand(N) >= drop_rate``), then applied.

    Args:
        y: ``[N, C, H, W]`` condition.
        drop_rate: Probability in [0, 1].
        generator: Source of randomness (its device is used for the draw).
    """
    check_probability("drop_rate", drop_rate)
    if drop_rate == 0:
        return y
    gen_device = generator.device if generator is not None else "cpu"
    keep = torch.rand(y.shape[0], generator=generator, device=gen_device) >= drop_rate
    return y * keep.to(device=y.device, dtype=y.dtype).reshape(-1, *([1] * (y.ndim - 1)))
