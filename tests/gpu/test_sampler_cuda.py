"""CUDA-only sampler checks: graph replay == eager, no allocation on replay, fp16 vs fp32, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffmix_aug.sampling import DDIMSampler, ReferenceDDIMSampler, Synthesizer
from diffmix_aug.sampling.ddim import ModelCaches
from diffmix_aug.sdm import build_sdm

pytestmark = pytest.mark.cuda

KW = dict(steps=6, t_start=250)


def _model():
    torch.manual_seed(0)
    model = build_sdm("tiny", 6, image_size=64)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return model.eval().cuda()


def _inputs(n=4, size=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand((n, 3, size, size), generator=gen) * 2 - 1
    types = torch.randint(0, 5, (n, size, size), generator=gen)
    cond = torch.nn.functional.one_hot(types, 6).permute(0, 3, 1, 2).float()
    return x0.cuda(), cond.cuda()


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_fast_matches_reference_fp32_cuda():
    model, (x0, cond) = _model(), _inputs()
    ref = ReferenceDDIMSampler(**KW).sample(model, x0, cond, generator=torch.Generator().manual_seed(0))
    out = DDIMSampler(**KW).sample(model, x0, cond, generator=torch.Generator().manual_seed(0))
    assert (out - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graph_replay_equals_eager(precision):
    model, (x0, cond) = _model(), _inputs()
    eager = DDIMSampler(**KW, precision=precision).sample(model, x0, cond, generator=torch.Generator().manual_seed(0))
    graphed = DDIMSampler(**KW, precision=precision, cuda_graph=True)
    caches = ModelCaches(model)
    out = graphed.sample(model, x0, cond, generator=torch.Generator().manual_seed(0), caches=caches)
    assert graphed.last_run["path"] == "graph"
    torch.testing.assert_close(out, eager, atol=1e-2, rtol=0)
    # a second batch through the same graph (new conditioning copied into the static buffers)
    x1, c1 = _inputs(seed=1)
    out1 = graphed.sample(model, x1, c1, generator=torch.Generator().manual_seed(1), caches=caches)
    eager1 = DDIMSampler(**KW, precision=precision).sample(model, x1, c1, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out1, eager1, atol=1e-2, rtol=0)
    assert len(caches.graphs) == 1


def test_second_replay_allocates_no_memory():
    model, (x0, cond) = _model(), _inputs()
    s = DDIMSampler(**KW, precision="fp16", cuda_graph=True)
    caches = ModelCaches(model)
    s.sample(model, x0, cond, generator=torch.Generator().manual_seed(0), caches=caches)
    entry = next(iter(caches.graphs._entries.values()))
    entry.graph.replay()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    entry.k.fill_(s.start_index)
    entry.graph.replay()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before
    assert torch.cuda.max_memory_allocated() == before


def test_fp16_close_to_fp32():
    model, (x0, cond) = _model(), _inputs()
    outs = {p: DDIMSampler(**KW, precision=p).sample(model, x0, cond, generator=torch.Generator().manual_seed(0))
            for p in ("fp32", "fp16", "bf16")}
    assert _rel(outs["fp16"], outs["fp32"]) < 1e-2
    assert _rel(outs["bf16"], outs["fp32"]) < 5e-2


def test_partial_batch_is_padded_to_one_graph():
    model, (x0, cond) = _model(), _inputs(6)
    s = DDIMSampler(**KW, cuda_graph=True, max_batch=4)
    caches = ModelCaches(model)
    out = s.sample(model, x0, cond, generator=torch.Generator().manual_seed(0), caches=caches)
    eager = DDIMSampler(**KW).sample(model, x0, cond, generator=torch.Generator().manual_seed(0))
    assert len(caches.graphs) == 1 and out.shape == x0.shape
    torch.testing.assert_close(out, eager, atol=1e-3, rtol=0)


def test_eta_noise_graph_matches_eager():
    model, (x0, cond) = _model(), _inputs()
    kw = dict(KW, eta=0.5)
    eager = DDIMSampler(**kw).sample(model, x0, cond, generator=torch.Generator().manual_seed(4))
    out = DDIMSampler(**kw, cuda_graph=True).sample(model, x0, cond, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(out, eager, atol=1e-3, rtol=0)


def test_synthesizer_cuda_fp16_channels_last():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    inst = np.zeros((3, 64, 64), np.int32)
    inst[:, 10:30, 10:30] = 1
    types = inst.copy()
    synth = Synthesizer(_model(), DDIMSampler(**KW), device="cuda", precision="fp16")
    a = synth(images, inst, types, generator=torch.Generator().manual_seed(0))
    b = synth(images, inst, types, generator=torch.Generator().manual_seed(0))
    assert a.dtype == np.uint8 and a.shape == images.shape
    assert np.array_equal(a, b)
    assert synth.sampler.last_run["path"] == "graph"


# ----------------------------------------------------------------------------- multistep solvers on CUDA
MULTISTEP = ("dpmpp_2m", "dpmpp_3m", "unipc")


@pytest.mark.parametrize("solver", MULTISTEP)
def test_multistep_fast_equals_plain_reference_cuda(solver):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from sampling_helpers import plain_solver_sample

    model, (x0, cond) = _model(), _inputs()
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).cuda()
    fast = DDIMSampler(solver=solver, steps=8, spacing="logsnr")
    out = fast.sample(model, x0, cond, noise=z)
    ref = plain_solver_sample(model, x0, cond, z, fast.timesteps, solver)
    assert (out - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("solver", MULTISTEP)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_multistep_graph_replay_equals_eager(solver, precision):
    """The history of earlier predictions is a static buffer of the graph: replay == eager, and a second batch
    through the same graph starts from a cleared history."""
    model, (x0, cond) = _model(), _inputs()
    kw = dict(solver=solver, steps=8, precision=precision)
    eager = DDIMSampler(**kw).sample(model, x0, cond, generator=torch.Generator().manual_seed(0))
    graphed = DDIMSampler(**kw, cuda_graph=True)
    caches = ModelCaches(model)
    out = graphed.sample(model, x0, cond, generator=torch.Generator().manual_seed(0), caches=caches)
    assert graphed.last_run["path"] == "graph"
    tol = 1e-4 if precision == "fp32" else 1e-2
    torch.testing.assert_close(out, eager, atol=tol, rtol=0)
    x1, c1 = _inputs(seed=1)
    out1 = graphed.sample(model, x1, c1, generator=torch.Generator().manual_seed(1), caches=caches)
    eager1 = DDIMSampler(**kw).sample(model, x1, c1, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out1, eager1, atol=tol, rtol=0)
    assert len(caches.graphs) == 1
    entry = next(iter(caches.graphs._entries.values()))
    assert entry.buffers.history is not None and entry.buffers.history.shape[0] == graphed.history_depth


def test_multistep_replay_allocates_no_memory():
    model, (x0, cond) = _model(), _inputs()
    s = DDIMSampler(solver="unipc", steps=6, precision="fp16", cuda_graph=True)
    caches = ModelCaches(model)
    s.sample(model, x0, cond, generator=torch.Generator().manual_seed(0), caches=caches)
    entry = next(iter(caches.graphs._entries.values()))
    entry.graph.replay()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    entry.k.fill_(s.start_index)
    entry.graph.replay()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before
    assert torch.cuda.max_memory_allocated() == before
