"""Reference and fast DDIM samplers: schedule, math vs an independent computation, fast == reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sampling_helpers import AnalyticModel, ConvModel, make_inputs, randomize_sdm

from diffmix_aug.sampling import DDIMSampler, DDIMStepOutput, ReferenceDDIMSampler
from diffmix_aug.sdm import build_sdm

SAMPLERS = [ReferenceDDIMSampler, DDIMSampler]


# ----------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("cls", SAMPLERS)
def test_timesteps_visited(cls):
    s = cls()  # the reference protocol: ddim100 entered at respaced index 54
    assert s.timesteps == list(range(540, -1, -10))
    assert s.num_inference_steps == 55 and s.start_index == 54
    assert cls(t_start=990, steps=100).timesteps == list(range(990, -1, -10))
    assert cls(steps=3, t_start=200).timesteps == [200, 100, 0]
    for steps in (1, 5, 11, 20, 100):  # the entry point never depends on the step count
        assert cls(steps=steps).timesteps[0] == 540


@pytest.mark.parametrize("cls", SAMPLERS)
@pytest.mark.parametrize(("removed", "names"), [({"strength": 0.55}, "t_start"), ({"num_steps": 100}, "steps")])
def test_removed_settings_name_their_replacement(cls, removed, names):
    with pytest.raises(ValueError, match=rf"`{next(iter(removed))}` was removed: .*{names}"):
        cls(**removed)
    with pytest.raises(TypeError, match="stepz"):
        cls(stepz=5)


def test_start_coefficients_and_start_state():
    s = ReferenceDDIMSampler()
    abar = s.alphas_cumprod[s.start_index]
    assert math.sqrt(abar) == pytest.approx(0.2260, abs=5e-5)
    assert math.sqrt(1 - abar) == pytest.approx(0.9741, abs=5e-5)

    seen = []

    def model(x, t, y):
        seen.append((x.clone(), t.clone()))
        return torch.zeros_like(x)

    x0, cond = make_inputs(1, 8, 3)
    z = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    for cls in SAMPLERS:
        seen.clear()
        cls().sample(model, x0, cond, noise=z)
        x_start, t = seen[0]
        assert t.tolist() in ([540], [540, 540])
        torch.testing.assert_close(x_start[:1], 0.22600 * x0 + 0.97413 * z, atol=2e-4, rtol=0)


@settings(max_examples=40, deadline=None)
@given(steps=st.integers(1, 120), t_start=st.integers(0, 999), spacing=st.sampled_from(["linear", "quadratic",
                                                                                        "logsnr"]))
def test_schedule_properties(steps, t_start, spacing):
    if steps > t_start + 1:
        with pytest.raises(ValueError, match="steps"):
            DDIMSampler(steps=steps, t_start=t_start, spacing=spacing)
        return
    s = DDIMSampler(steps=steps, t_start=t_start, spacing=spacing)
    ts = s.timesteps
    assert len(ts) == steps == s.num_inference_steps and ts[0] == t_start
    assert ts[-1] == (t_start if steps == 1 else 0)  # one step: x0 predicted at t_start
    assert all(a > b for a, b in zip(ts, ts[1:]))
    if spacing == "linear" and steps > 1 and t_start % (steps - 1) == 0:  # exactly uniform where it can be
        assert ts == list(range(t_start, -1, -(t_start // (steps - 1))))
    tab = s.tables("cpu")
    assert tab.a[0] == 0.0 and tab.w[0, 0] == 1.0 and float(tab.noise.abs().max()) == 0.0  # last step: x = x0


# ----------------------------------------------------------------------------- one full loop, independently
def _independent_loop(x0, cond, z, step_z, s, eta, steps, stride):
    """The same math written from scratch in float64 numpy (guided-diffusion's formulas): ``steps``
    steps from t = stride * (steps - 1) down to 0."""
    betas = np.linspace(1e-4, 0.02, 1000)
    abar_full = np.cumprod(1 - betas)
    ts = np.arange(0, steps * stride, stride)
    abar = abar_full[ts]
    start = steps - 1
    x0, y, z = (a.double().numpy() for a in (x0, cond, z))
    x = np.sqrt(abar[start]) * x0 + np.sqrt(1 - abar[start]) * z
    for k in range(start, -1, -1):
        e_c = 0.3 * x + 0.4 * y[:, :3] + 0.05 * ts[k] / 1000
        e_u = 0.3 * x + 0.05 * ts[k] / 1000
        eps = e_u + s * (e_c - e_u) if s > 1 else e_c
        a, a_prev = abar[k], (abar[k - 1] if k > 0 else 1.0)
        px0 = np.clip(x / np.sqrt(a) - np.sqrt(1 / a - 1) * eps, -1, 1)
        eps = (x / np.sqrt(a) - px0) / np.sqrt(1 / a - 1)
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        x = np.sqrt(a_prev) * px0 + np.sqrt(1 - a_prev - sigma ** 2) * eps
        if k > 0:
            x = x + sigma * step_z[k].double().numpy()
    return torch.from_numpy(x)


@pytest.mark.parametrize("cls", SAMPLERS)
@pytest.mark.parametrize(("scale", "eta"), [(1.5, 0.0), (1.0, 0.0), (3.0, 0.7)])
def test_full_loop_matches_independent_computation(cls, scale, eta):
    x0, cond = make_inputs(2, 8, 3, seed=1)
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(x0.shape, generator=gen)
    kw = dict(steps=12, t_start=550, guidance_scale=scale, eta=eta)
    n_steps = cls(**kw).num_inference_steps
    step_z = torch.randn((n_steps, *x0.shape), generator=gen)
    out = cls(**kw).sample(AnalyticModel(), x0, cond, noise=z, step_noise=step_z if eta else None)
    expected = _independent_loop(x0, cond, z, step_z, scale, eta, 12, 50)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    assert out.dtype == torch.float32 and out.abs().max() <= 1.0


# ----------------------------------------------------------------------------- fast == reference
def test_fast_matches_reference_generic_model():
    model = ConvModel()
    x0, cond = make_inputs(3, 16)
    ref = ReferenceDDIMSampler(steps=6, t_start=250).sample(model, x0, cond,
                                                           generator=torch.Generator().manual_seed(0))
    for max_batch in (None, 2):
        fast = DDIMSampler(steps=6, t_start=250, max_batch=max_batch)
        out = fast.sample(model, x0, cond, generator=torch.Generator().manual_seed(0))
        assert fast.last_run["denoiser"] == "BatchedGuidance"
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("preset", "size"), [("tiny", 32), ("small", 32)])
@pytest.mark.parametrize("kind", ["full", "hidden"])
def test_fast_matches_reference_sdm(preset, size, kind):
    torch.manual_seed(0)
    model = randomize_sdm(build_sdm(preset, 6, image_size=64 if preset == "tiny" else 256))
    x0, cond = make_inputs(2, size)
    kw = dict(steps=2, t_start=100)
    ref = ReferenceDDIMSampler(**kw).sample(model, x0, cond, generator=torch.Generator().manual_seed(0))
    fast = DDIMSampler(**kw, modulation_kind=kind)
    out = fast.sample(model, x0, cond, generator=torch.Generator().manual_seed(0))
    assert fast.last_run["denoiser"] == "SDMGuidance" and fast.last_run["kind"] == kind
    assert (out - ref).abs().max() <= 1e-4
    assert (out - x0).abs().max() > 1e-3  # the model did something


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_matches_reference_equal_network(channels_last):
    """The w32 preset (the equal-network benchmark's 15.8 M model) at 64 px: fused blocks, NHWC, <= 1e-4."""
    torch.manual_seed(0)
    model = randomize_sdm(build_sdm("w32", 6))
    x0, cond = make_inputs(1, 64)
    kw = dict(steps=2, t_start=10)  # 2 guided steps
    ref = ReferenceDDIMSampler(**kw).sample(model, x0, cond, generator=torch.Generator().manual_seed(0))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fast = DDIMSampler(**kw, channels_last=channels_last)
    out = fast.sample(model, x0, cond, generator=torch.Generator().manual_seed(0))
    assert fast.last_run["denoiser"] == "SDMGuidance" and fast.last_run["kind"] == "full"
    assert (out - ref).abs().max() <= 1e-4
    assert (out - x0).abs().max() > 1e-3


def test_cache_budget_picks_hidden():
    model = randomize_sdm(build_sdm("tiny", 6, image_size=64))
    x0, cond = make_inputs(2, 32)
    s = DDIMSampler(steps=1, t_start=0)
    need = s.full_cache_bytes(model, 2, (32, 32))
    assert need == sum(2 * n.mlp_gamma.out_channels * (32 // n.ds) ** 2 for n in model.spade_layers()) * 4 * 4
    for budget, kind in ((need, "full"), (need - 1, "hidden")):
        s = DDIMSampler(steps=1, t_start=0, cache_budget_bytes=budget)
        s.sample(model, x0, cond, generator=torch.Generator().manual_seed(0))
        assert s.last_run["kind"] == kind


# ----------------------------------------------------------------------------- passes, noise, determinism
@pytest.mark.parametrize(("scale", "form", "ref_calls", "fast_calls"),
                         [(1.0, "reference", [2] * 3, [2] * 3), (1.5, "reference", [2] * 6, [4] * 3),
                          (0.0, "paper", [2] * 3, [2] * 3)])
def test_single_pass_without_guidance(scale, form, ref_calls, fast_calls):
    x0, cond = make_inputs(2, 8)
    for cls, calls in ((ReferenceDDIMSampler, ref_calls), (DDIMSampler, fast_calls)):
        model = ConvModel()
        cls(steps=3, t_start=200, guidance_scale=scale, guidance_form=form).sample(model, x0, cond,
                                                                                  noise=torch.zeros_like(x0))
        assert model.calls == calls


def test_paper_form_equals_reference_form():
    model, (x0, cond) = ConvModel(), make_inputs(2, 8)
    a = DDIMSampler(steps=5, t_start=400, guidance_scale=0.5, guidance_form="paper")
    b = DDIMSampler(steps=5, t_start=400, guidance_scale=1.5)
    assert a.scale == b.scale == 1.5
    torch.testing.assert_close(a.sample(model, x0, cond, generator=torch.Generator().manual_seed(1)),
                               b.sample(model, x0, cond, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("cls", SAMPLERS)
def test_eta_zero_draws_no_noise(cls):
    model, (x0, cond) = ConvModel(), make_inputs(2, 8)
    gen, z = torch.Generator().manual_seed(7), torch.randn_like(x0)
    state, global_state = gen.get_state(), torch.random.get_rng_state()
    cls(steps=5, t_start=400).sample(model, x0, cond, noise=z, generator=gen)
    assert torch.equal(gen.get_state(), state)
    assert torch.equal(torch.random.get_rng_state(), global_state)
    cls(steps=5, t_start=400, eta=1.0).sample(model, x0, cond, noise=z, generator=gen)
    assert not torch.equal(gen.get_state(), state)


def test_eta_noise_same_draws_in_fast_and_reference():
    model, (x0, cond) = ConvModel(), make_inputs(3, 8)
    kw = dict(steps=8, t_start=350, eta=0.5)
    ref = ReferenceDDIMSampler(**kw).sample(model, x0, cond, generator=torch.Generator().manual_seed(2))
    out = DDIMSampler(**kw, max_batch=2).sample(model, x0, cond, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_fixed_generator_is_bit_identical(eta):
    model = randomize_sdm(build_sdm("tiny", 6, image_size=64))
    x0, cond = make_inputs(2, 16)
    s = DDIMSampler(steps=3, t_start=200, eta=eta)
    a = s.sample(model, x0, cond, generator=torch.Generator().manual_seed(11))
    b = s.sample(model, x0, cond, generator=torch.Generator().manual_seed(11))
    c = s.sample(model, x0, cond, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bf16_close_to_fp32():
    model = randomize_sdm(build_sdm("tiny", 6, image_size=64))
    x0, cond = make_inputs(2, 16)
    outs = [DDIMSampler(steps=2, t_start=100, precision=p).sample(
        model, x0, cond, generator=torch.Generator().manual_seed(0)) for p in ("fp32", "bf16")]
    assert (outs[0] - outs[1]).abs().max() < 0.05


# ----------------------------------------------------------------------------- step()
@settings(max_examples=20, deadline=None)
@given(k=st.integers(1, 54), seed=st.integers(0, 2**16))
def test_step_recovers_true_x0_and_noise(k, seed):
    """If eps is the noise that made x_t from a clean x0, the step returns x0 and the exact x_{t-1}."""
    s = DDIMSampler()
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand((1, 3, 4, 4), generator=gen) * 1.8 - 0.9
    eps = torch.randn((1, 3, 4, 4), generator=gen)
    a, a_prev = s.alphas_cumprod[k], s.alphas_cumprod[k - 1]
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    out = s.step(eps, k, x_t)
    assert isinstance(out, DDIMStepOutput)
    torch.testing.assert_close(out.pred_x0, x0, atol=2e-4, rtol=0)
    torch.testing.assert_close(out.prev_sample, math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps,
                               atol=2e-4, rtol=0)


def test_step_output_frozen_and_clipped():
    s = DDIMSampler()
    out = s.step(torch.full((1, 3, 2, 2), -50.0), 54, torch.zeros(1, 3, 2, 2))
    assert out.pred_x0.max() == 1.0
    with pytest.raises(AttributeError):
        out.pred_x0 = None
    same = s.step(torch.full((1, 3, 2, 2), -50.0), torch.tensor([54]), torch.zeros(1, 3, 2, 2))
    assert torch.equal(same.prev_sample, out.prev_sample)
    with pytest.raises(ValueError, match="noise"):
        DDIMSampler(eta=1.0).step(torch.zeros(1, 3, 2, 2), 3, torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="step_index"):
        s.step(torch.zeros(1, 3, 2, 2), 55, torch.zeros(1, 3, 2, 2))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"t_start": 1000}, "t_start"), ({"t_start": -1}, "t_start"), ({"steps": 0}, "steps"),
    ({"steps": 542}, "steps"), ({"t_start": 3, "steps": 5}, "steps"), ({"spacing": "cosine"}, "spacing"),
    ({"guidance_scale": 0.5}, "guidance_scale"), ({"guidance_form": "eq7"}, "guidance_form"),
    ({"eta": -1.0}, "eta"), ({"beta_schedule": "quad"}, "beta_schedule"),
    ({"precision": "fp8"}, "precision"), ({"modulation_kind": "half"}, "modulation_kind"),
])
def test_bad_settings(kwargs, match):
    cls = DDIMSampler if set(kwargs) & {"precision", "modulation_kind"} else ReferenceDDIMSampler
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("cls", SAMPLERS)
def test_bad_inputs(cls):
    model = build_sdm("tiny", 6, image_size=64)
    s = cls(steps=1, t_start=0)
    x0, cond = make_inputs(2, 16)
    with pytest.raises(ValueError, match="label channels"):
        s.sample(model, x0, cond[:, :5])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        s.sample(model, x0 * 3, cond)
    with pytest.raises(ValueError, match="batch"):
        s.sample(model, x0, cond[:1])
    with pytest.raises(ValueError, match="noise"):
        s.sample(model, x0, cond, noise=torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="step_noise"):
        s.sample(model, x0, cond, step_noise=torch.zeros(3, 2, 3, 16, 16))
    with pytest.raises(TypeError, match="x0"):
        s.sample(model, x0.numpy(), cond)
    with pytest.raises(ValueError, match="3 channels"):
        s.sample(model, cond, cond)


@pytest.mark.slow
def test_torch_compile_option_matches_eager():
    model, (x0, cond) = ConvModel(), make_inputs(2, 8)
    eager = DDIMSampler(steps=3, t_start=200).sample(model, x0, cond, generator=torch.Generator().manual_seed(0))
    s = DDIMSampler(steps=3, t_start=200, compile=True)
    out = s.sample(model, x0, cond, generator=torch.Generator().manual_seed(0))
    assert s.last_run["path"] == "compiled"
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=0)


def test_shared_caches_never_hand_over_another_settings_denoiser():
    """ModelCaches key denoisers by every setting that changes them (issue 30): samplers with another guidance
    scale or precision sharing one caches object each get their own result."""
    from diffmix_aug.sampling.ddim import ModelCaches

    model = randomize_sdm(build_sdm("tiny", 6, image_size=64))
    x0, cond = make_inputs(2, 16)
    caches = ModelCaches(model)
    settings = [dict(guidance_scale=1.5), dict(guidance_scale=3.0), dict(guidance_scale=1.5, precision="bf16"),
                dict(guidance_scale=1.0)]
    for kw in settings:
        alone = DDIMSampler(steps=2, t_start=100, **kw).sample(model, x0, cond, generator=torch.Generator().manual_seed(0))
        shared = DDIMSampler(steps=2, t_start=100, **kw).sample(model, x0, cond, generator=torch.Generator().manual_seed(0),
                                                                caches=caches)
        assert torch.equal(shared, alone), kw
    assert len(caches.denoisers) == len(settings)
