"""The hybrid loss of improved DDPM as used by SDM: MSE on eps + the variational bound (mean detached).

Pure functions; ``design/method.md`` §3.
"""

from __future__ import annotations

import math

import torch

from .gaussian import (
    DiffusionTables,
    learned_range_log_variance,
    predict_xstart_from_eps,
    q_posterior_mean_variance,
    q_sample,
)

__all__ = [
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "hybrid_loss",
    "mean_flat",
    "normal_kl",
    "training_losses",
    "vb_terms_bpd",
]


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every non-batch dimension: ``[N, ...] -> [N]``."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
              ) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))`` in nats (broadcasting)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Fast tanh approximation of the standard normal CDF (as the reference)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
                                        ) -> torch.Tensor:
    """Log-likelihood (nats, elementwise) of 8-bit images ``x`` in [-1, 1] under a Gaussian discretised
    into 256 bins of width 2/255; the edge bins extend to +-infinity.

    Args:
        x: Targets in [-1, 1] (on the 8-bit grid).
        means, log_scales: Gaussian mean and log standard deviation, broadcastable to ``x``.
    """
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def vb_terms_bpd(tables: DiffusionTables, model_mean: torch.Tensor, model_log_variance: torch.Tensor,
                 x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Variational-bound term in bits per dimension, ``[N]``.

    ``KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))`` for ``t > 0``; the discretised decoder NLL
    ``-log p(x_0|x_1)`` at ``t == 0``.
    """
    true_mean, _, true_log_var = q_posterior_mean_variance(tables, x0, xt, t)
    kl = mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_variance)) / math.log(2.0)
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance)) / math.log(2.0)
    return torch.where(t == 0, nll, kl)


def hybrid_loss(tables: DiffusionTables, model_output: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor,
                t: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """SDM's training loss per sample: ``mse(eps, eps_hat) + L_vb(t)`` with the mean detached in L_vb.

    Args:
        tables: Diffusion tables.
        model_output: ``[N, 2C, H, W]`` (eps, v) from the network (learned sigma).
        x0, xt, noise: ``[N, C, H, W]``; ``xt = q_sample(x0, t, noise)``.
        t: ``[N]`` timesteps.

    Returns:
        ``{"loss", "mse", "vb"}``, each float32 ``[N]``.
    """
    c = x0.shape[1]
    if model_output.shape[1] != 2 * c:
        raise ValueError(f"`model_output` must have {2 * c} channels (eps and v, learned sigma), got "
                         f"{tuple(model_output.shape)}; for a fixed-variance model use the MSE term alone")
    model_output = model_output.float()
    eps, v = model_output[:, :c], model_output[:, c:]
    # the VB term trains only the variance: stop the gradient through the mean
    pred_x0 = predict_xstart_from_eps(tables, xt, t, eps.detach())
    model_mean, _, _ = q_posterior_mean_variance(tables, pred_x0, xt, t)
    model_log_var = learned_range_log_variance(tables, v, t)
    vb = vb_terms_bpd(tables, model_mean, model_log_var, x0, xt, t)
    mse = mean_flat((noise - eps) ** 2)
    return {"loss": mse + vb, "mse": mse, "vb": vb}


def training_losses(model, tables: DiffusionTables, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
                    noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """Noise ``x0`` to ``x_t``, run ``model(x_t, t, y)`` and return :func:`hybrid_loss` (or MSE only
    when the model does not learn sigma, ``{"loss", "mse"}``)."""
    xt = q_sample(tables, x0, t, noise)
    out = model(xt, t, y)
    if out.shape[1] == x0.shape[1]:
        mse = mean_flat((noise - out.float()) ** 2)
        return {"loss": mse, "mse": mse}
    return hybrid_loss(tables, out, x0, xt, t, noise)
