"""Diffusion math: tables, q_sample, posterior, learned-range variance, loss pieces vs closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffmix_aug.diffusion import (
    DiffusionTables,
    discretized_gaussian_log_likelihood,
    drop_labels,
    hybrid_loss,
    learned_range_log_variance,
    normal_kl,
    predict_xstart_from_eps,
    q_posterior_mean_variance,
    q_sample,
    sample_timesteps,
    training_losses,
)


@pytest.fixture(scope="module")
def tables():
    return DiffusionTables.from_schedule("linear", 1000)


def test_tables_are_float64_buffers(tables):
    assert tables.betas.dtype == torch.float64 and tables.num_timesteps == 1000
    names = dict(tables.named_buffers())
    assert "alphas_cumprod" in names and "posterior_log_variance_clipped" in names
    # known value from design/method.md §5.4: original t = 540
    assert abs(math.sqrt(tables.alphas_cumprod[540].item()) - 0.2260) < 5e-4
    lv = tables.posterior_log_variance_clipped
    assert lv[0] == lv[1]


def test_q_sample_and_xstart_roundtrip(tables):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    xt = q_sample(tables, x0, t, noise)
    ac = tables.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(xt, ac.sqrt() * x0 + (1 - ac).sqrt() * noise)
    torch.testing.assert_close(predict_xstart_from_eps(tables, xt, t, noise), x0, rtol=1e-3, atol=2e-3)


def test_posterior_matches_bayes_formula(tables):
    """q(x_{t-1}|x_t,x_0) mean/var from the product of Gaussians, written out in float64."""
    t = torch.tensor([1, 250, 999])
    x0 = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    xt = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    mean, var, logvar = q_posterior_mean_variance(tables, x0, xt, t)
    b = tables.betas[t].reshape(-1, 1, 1, 1)
    ac = tables.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    acp = tables.alphas_cumprod_prev[t].reshape(-1, 1, 1, 1)
    # precision-weighted combination of N(sqrt(acp) x0, 1-acp) and the likelihood of x_t given x_{t-1}
    prec = 1 / (1 - acp) + (1 - b) / b
    ref_var = 1 / prec
    ref_mean = ref_var * (acp.sqrt() * x0 / (1 - acp) + (1 - b).sqrt() * xt / b)
    torch.testing.assert_close(mean, ref_mean)
    torch.testing.assert_close(var.expand_as(ref_var), ref_var)
    torch.testing.assert_close(logvar, var.log())
    assert (1 - ac).min() > 0


def test_learned_range_endpoints(tables):
    t = torch.tensor([5, 700])
    v = torch.ones(2, 3, 2, 2)
    torch.testing.assert_close(learned_range_log_variance(tables, v, t),
                               tables.betas[t].log().float().reshape(-1, 1, 1, 1).expand(2, 3, 2, 2))
    torch.testing.assert_close(learned_range_log_variance(tables, -v, t),
                               tables.posterior_log_variance_clipped[t].float().reshape(-1, 1, 1, 1).expand(2, 3, 2, 2))


@settings(max_examples=20, deadline=None)
@given(mean=st.floats(-3, 3), logvar=st.floats(-5, 3))
def test_kl_of_equal_gaussians_is_zero(mean, logvar):
    m = torch.tensor(mean, dtype=torch.float64)
    lv = torch.tensor(logvar, dtype=torch.float64)
    assert abs(normal_kl(m, lv, m, lv).item()) < 1e-12
    # and positive otherwise, matching the closed form with explicit variances
    kl = normal_kl(m, lv, m + 0.5, lv + 0.3).item()
    v1, v2 = math.exp(logvar), math.exp(logvar + 0.3)
    ref = math.log(math.sqrt(v2 / v1)) + (v1 + 0.25) / (2 * v2) - 0.5
    assert kl > 0 and abs(kl - ref) < 1e-9


@pytest.mark.parametrize("value", [-1.0, -1 + 2 * 40 / 255, 2 * 130 / 255 - 1, 1.0])
def test_discretized_nll_matches_numerical_integration(value):
    from scipy.integrate import quad

    mean, sigma = 0.05, 0.04
    x = torch.tensor([value], dtype=torch.float64)
    ll = discretized_gaussian_log_likelihood(x, torch.tensor(mean, dtype=torch.float64),
                                             torch.tensor(math.log(sigma), dtype=torch.float64)).item()
    lo = -np.inf if value < -0.999 else value - 1 / 255
    hi = np.inf if value > 0.999 else value + 1 / 255

    def pdf(z):
        return math.exp(-0.5 * ((z - mean) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))

    if np.isinf(lo) or np.isinf(hi):
        # integrate the tail from the bin edge (quad handles one infinite limit)
        p = quad(pdf, lo, hi, limit=200)[0]
    else:
        p = quad(pdf, lo, hi)[0]
    p = max(p, 1e-12)
    # the tanh CDF approximation is accurate to ~1e-3 absolute probability
    assert abs(math.exp(ll) - p) < 2e-3, (math.exp(ll), p)


def test_hybrid_loss_zero_mse_and_mean_detached(tables):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(3, 3, 4, 4, generator=g)
    t = torch.tensor([0, 3, 900])
    xt = q_sample(tables, x0, t, noise)
    out = torch.cat([noise, torch.zeros_like(noise)], 1).requires_grad_(True)
    losses = hybrid_loss(tables, out, x0, xt, t, noise)
    assert losses["mse"].abs().max() < 1e-12
    # exact eps => model mean equals the true posterior mean => KL reduces to the variance mismatch only
    assert (losses["vb"][1:] >= -1e-6).all()
    losses["loss"].sum().backward()
    # gradient through eps comes only from the MSE term: at eps == noise it is exactly zero
    assert out.grad[:, :3].abs().max() == 0
    assert out.grad[:, 3:].abs().max() > 0


def test_training_losses_runs_mse_only_for_fixed_sigma(tables):
    class Net(torch.nn.Module):
        def forward(self, x, t, y):
            return x * 0

    x0 = torch.zeros(2, 3, 4, 4)
    noise = torch.ones_like(x0)
    out = training_losses(Net(), tables, x0, torch.zeros(2, 6, 4, 4), torch.tensor([1, 2]), noise)
    assert set(out) == {"loss", "mse"}
    torch.testing.assert_close(out["loss"], torch.ones(2))


def test_sample_timesteps_uniform_and_seeded():
    a = sample_timesteps(2000, 10, generator=torch.Generator().manual_seed(3))
    b = sample_timesteps(2000, 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.int64
    counts = torch.bincount(a, minlength=10)
    assert counts.min() > 150 and a.max() == 9


def test_drop_labels():
    y = torch.ones(1000, 2, 3, 3)
    g = torch.Generator().manual_seed(0)
    out = drop_labels(y, 0.2, generator=g)
    dropped = (out.flatten(1).sum(1) == 0)
    kept = (out.flatten(1) == 1).all(1)
    assert bool((dropped | kept).all())  # whole label zeroed or untouched
    assert 0.15 < dropped.float().mean() < 0.25
    assert drop_labels(y, 0.0) is y
    assert drop_labels(y, 1.0, generator=g).abs().sum() == 0
    with pytest.raises(ValueError, match="drop_rate"):
        drop_labels(y, 1.5)
