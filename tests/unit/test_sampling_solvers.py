"""Multistep solvers: coefficient tables, fast == plain reference (1e-4), orders, settings and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sampling_helpers import AnalyticModel, ConvModel, make_inputs, plain_solver_sample, randomize_sdm

from diffmix_aug.diffusion.schedule import get_beta_schedule, timestep_grid
from diffmix_aug.sampling import DDIMSampler, ReferenceDDIMSampler, SamplingInterrupted
from diffmix_aug.sampling.solvers import MULTISTEP_SOLVERS, SOLVERS, solver_order, solver_table
from diffmix_aug.sdm import build_sdm

ABAR = np.cumprod(1.0 - get_beta_schedule("linear", 1000))


def _grid_abar(steps, t_start=540, spacing="linear"):
    return ABAR[timestep_grid(t_start, steps, spacing, ABAR)]


# ----------------------------------------------------------------------------- tables
@settings(max_examples=30, deadline=None)
@given(solver=st.sampled_from(list(SOLVERS)), steps=st.integers(1, 60), t_start=st.integers(60, 999),
       spacing=st.sampled_from(["linear", "quadratic", "logsnr"]))
def test_tables_are_exact_for_a_constant_prediction(solver, steps, t_start, spacing):
    """With D = x0 for ever, the ODE solution is x_t = alpha_t x0 + sigma_t / sigma_s (x_s - alpha_s x0): every
    step must reproduce it (a = sigma'/sigma, sum of w = alpha' - a alpha), and the last step returns D."""
    abar = _grid_abar(steps, t_start, spacing)
    tab = solver_table(solver, abar)
    alpha, sigma = np.sqrt(np.append(abar, 1.0)), np.sqrt(1.0 - np.append(abar, 1.0))
    np.testing.assert_allclose(tab.a, sigma[1:] / sigma[:-1], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(tab.w.sum(1), alpha[1:] - tab.a * alpha[:-1], rtol=1e-9, atol=1e-12)
    assert tab.a[-1] == 0.0 and tab.w[-1, 0] == 1.0 and not tab.w[-1, 1:].any()
    assert list(tab.order) == [solver_order(solver, i, steps) for i in range(steps)]
    assert tab.order.max() <= SOLVERS[solver] and tab.order[-1] == 1
    for i, order in enumerate(tab.order):  # a step never reads a prediction it has not made
        depth_used = order + (1 if solver == "unipc" and i > 0 else 0)
        assert not tab.w[i, max(depth_used, i + 1):].any()


def test_ddim_table_is_the_reference_update():
    """DDIM's a, w equal the reference code's update with eps re-derived from the clipped x0 (and, for eta = 0,
    DPM-Solver++ of order 1); eta noise factors match the DDIM sigma."""
    abar = _grid_abar(12)
    for eta in (0.0, 0.7):
        tab = solver_table("ddim", abar, eta)
        for i in range(12):
            a_t, a_n = abar[i], (abar[i + 1] if i < 11 else 1.0)
            s = eta * math.sqrt((1 - a_n) / (1 - a_t)) * math.sqrt(1 - a_t / a_n)
            c = math.sqrt(1 - a_n - s * s)
            # x' = sqrt(a_n) x0 + c (x - sqrt(a_t) x0) / sqrt(1 - a_t) + s z
            assert tab.a[i] == pytest.approx(c / math.sqrt(1 - a_t), abs=1e-14)
            assert tab.w[i, 0] == pytest.approx(math.sqrt(a_n) - c * math.sqrt(a_t) / math.sqrt(1 - a_t), abs=1e-12)
            assert tab.noise[i] == pytest.approx(s, abs=1e-14)
    first = solver_table("dpmpp_2m", abar)
    np.testing.assert_allclose(first.w[0, 0], solver_table("ddim", abar).w[0, 0], rtol=1e-12)
    assert not first.w[0, 1:].any()


# ----------------------------------------------------------------------------- fast == plain reference
@pytest.mark.parametrize("solver", MULTISTEP_SOLVERS)
@pytest.mark.parametrize(("steps", "t_start", "spacing", "scale", "clip"), [
    (1, 540, "linear", 1.5, True), (2, 540, "linear", 1.5, True), (3, 300, "logsnr", 1.5, True),
    (5, 540, "quadratic", 1.0, True), (7, 999, "linear", 2.0, True), (6, 540, "linear", 1.5, False),
    (10, 540, "logsnr", 1.5, True),
])
def test_fast_equals_plain_reference_generic_model(solver, steps, t_start, spacing, scale, clip):
    model = ConvModel()
    x0, cond = make_inputs(3, 16, seed=2)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    fast = DDIMSampler(solver=solver, steps=steps, t_start=t_start, spacing=spacing, guidance_scale=scale,
                       clip_denoised=clip)
    out = fast.sample(model, x0, cond, noise=z)
    ref = plain_solver_sample(model, x0, cond, z, fast.timesteps, solver, scale=scale, clip=clip)
    assert fast.last_run["solver"] == solver and fast.last_run["denoiser"] == "BatchedGuidance"
    assert (out - ref).abs().max() <= 1e-4
    assert (out - x0).abs().max() > 1e-2  # the model did something


@pytest.mark.parametrize("solver", MULTISTEP_SOLVERS)
@pytest.mark.parametrize("kind", ["full", "hidden"])
def test_fast_equals_plain_reference_sdm(solver, kind):
    """The SDM exact rewrites (shared encoder, hoisted SPADE, batched guidance) under each solver, <= 1e-4."""
    torch.manual_seed(0)
    model = randomize_sdm(build_sdm("tiny", 6, image_size=64))
    x0, cond = make_inputs(2, 32)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    fast = DDIMSampler(solver=solver, steps=6, t_start=540, spacing="logsnr", modulation_kind=kind)
    out = fast.sample(model, x0, cond, noise=z)
    ref = plain_solver_sample(model, x0, cond, z, fast.timesteps, solver)
    assert fast.last_run["denoiser"] == "SDMGuidance" and fast.last_run["kind"] == kind
    assert (out - ref).abs().max() <= 1e-4
    assert (out - x0).abs().max() > 1e-3


def test_fast_multistep_in_chunks_and_bf16():
    """History buffers are per chunk (max_batch), the same result; bf16 autocast stays close to fp32."""
    torch.manual_seed(0)
    model = randomize_sdm(build_sdm("tiny", 6, image_size=64))
    x0, cond = make_inputs(3, 16)
    kw = dict(solver="dpmpp_3m", steps=5)
    whole = DDIMSampler(**kw).sample(model, x0, cond, generator=torch.Generator().manual_seed(3))
    chunked = DDIMSampler(**kw, max_batch=2).sample(model, x0, cond, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(chunked, whole, atol=1e-4, rtol=0)  # batch-size-dependent conv rounding
    bf16 = DDIMSampler(**kw, precision="bf16").sample(model, x0, cond, generator=torch.Generator().manual_seed(3))
    assert (bf16 - whole).abs().mean() < 0.02


def test_one_step_solvers_agree_with_ddim():
    """One step (order 1, straight to the x0 prediction) is the same for every solver; so is DPM-Solver++ of
    two steps (its second step is the first-order one to the clean image) with DDIM."""
    model, (x0, cond) = ConvModel(), make_inputs(2, 8)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    for steps in (1, 2):
        ddim = DDIMSampler(steps=steps).sample(model, x0, cond, noise=z)
        for solver in ("dpmpp_2m", "dpmpp_3m"):
            torch.testing.assert_close(DDIMSampler(solver=solver, steps=steps).sample(model, x0, cond, noise=z), ddim,
                                       atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- accuracy: the orders show
def test_higher_order_solvers_converge_faster():
    """On a smooth analytic model (no clipping): the ODE solved with 541 unit steps by two second-order solvers
    agrees to 1e-4, while 541 unit DDIM steps are still ~1e-3 off (first order). Against it, the multistep
    solvers' error at 10 and 20 steps is far below DDIM's and falls faster with the step count."""
    x0, cond = make_inputs(2, 8, 3, seed=5)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(6))

    def run(solver, steps, spacing="linear"):
        s = DDIMSampler(solver=solver, steps=steps, t_start=540, clip_denoised=False, spacing=spacing)
        return s.sample(AnalyticModel(), x0, cond, noise=z).double()

    def rmse(a, b):
        return float((a - b).pow(2).mean().sqrt())

    exact = run("dpmpp_2m", 541)
    assert rmse(run("unipc", 541), exact) < 1e-4 < rmse(run("ddim", 541), exact)
    errors = {s: [rmse(run(s, n), exact) for n in (10, 20)] for s in SOLVERS}
    for solver in MULTISTEP_SOLVERS:
        assert errors[solver][0] < errors["ddim"][0] / 2 and errors[solver][1] < errors["ddim"][1] / 4
        # order >= 2: doubling the steps cuts the error by much more than DDIM's first-order halving
        assert errors[solver][0] / errors[solver][1] > 1.5 * errors["ddim"][0] / errors["ddim"][1]


# ----------------------------------------------------------------------------- settings and errors
def test_solver_settings_and_errors():
    s = DDIMSampler(solver="unipc", steps=8)
    assert s.settings()["solver"] == "unipc" and s.timesteps[0] == 540 and s.history_depth == 3
    assert DDIMSampler().history_depth == 0  # DDIM reads only its own prediction
    assert DDIMSampler(**s.settings()).settings() == s.settings()
    with pytest.raises(ValueError, match="solver"):
        DDIMSampler(solver="dpm3")
    with pytest.raises(ValueError, match="eta.*solver='ddim'"):
        DDIMSampler(solver="dpmpp_2m", eta=0.5)
    with pytest.raises(ValueError, match="plain DDIM oracle"):
        ReferenceDDIMSampler(solver="unipc")
    with pytest.raises(ValueError, match="step\\(\\) is the single DDIM update"):
        s.step(torch.zeros(1, 3, 2, 2), 3, torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="solver"):
        solver_table("heun", _grid_abar(3))


def test_multistep_stops_at_a_step_boundary():
    model, (x0, cond) = ConvModel(), make_inputs(1, 8)
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(SamplingInterrupted):
        DDIMSampler(solver="dpmpp_2m", steps=6).sample(model, x0, cond, should_stop=should_stop)
    assert len(model.calls) == 2  # two steps ran, one batched guided pass each
