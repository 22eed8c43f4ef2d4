"""SDM U-Net: presets, parameter counts, the encode/modulation/decode split, precision, config errors."""

from __future__ import annotations

import pytest
import torch

from diffmix_aug.sdm import SDMConfig, SpadeModulation, build_sdm, load_sdm_config, preset_config
from diffmix_aug.sdm.blocks import AttentionBlock, SPADEGroupNorm


def _randomise_zero_convs(model: torch.nn.Module, seed: int = 0) -> None:
    """Zero-initialised output convs make every block an identity; perturb them for the tests."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("out_conv" in name or "proj_out" in name) and p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_sdm("tiny", num_label_channels=6, image_size=32).eval()
    _randomise_zero_convs(model)
    return model


def _inputs(n=2, size=32, seed=1, label_channels=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = (torch.rand(n, label_channels, size, size, generator=g) > 0.5).float()
    return x, t, y


@pytest.mark.parametrize("preset,expected_m", [("paper", 652.3), ("base", 188.0), ("small", 60.0)])
def test_param_counts_on_meta(preset, expected_m):
    model = build_sdm(preset, num_label_channels=6, device="meta")
    n = sum(p.numel() for p in model.parameters())
    assert all(p.device.type == "meta" for p in model.parameters())
    tol = 0.005 if preset == "paper" else 0.01
    assert abs(n / 1e6 - expected_m) / expected_m < tol, n
    # label never enters the encoder; 25 SDM res-blocks -> 50 SPADE layers
    assert len(model.spade_layers()) == 50
    assert not any("mlp_shared" in name for name, _ in model.input_blocks.named_parameters())


def test_tiny_fits_the_shipped_budget():
    model = build_sdm("tiny", num_label_channels=6)
    n = sum(p.numel() for p in model.parameters())
    assert n < 2.4e6  # < 5 MB in fp16
    assert model.config.image_size == 64 and model.config.model_channels == 32


@pytest.mark.parametrize("label_channels,learn_sigma", [(6, True), (5, False)])
def test_forward_shapes(label_channels, learn_sigma):
    model = build_sdm("tiny", label_channels, image_size=32, learn_sigma=learn_sigma)
    x, t, y = _inputs(label_channels=label_channels)
    out = model(x, t, y)
    assert out.shape == (2, 6 if learn_sigma else 3, 32, 32) and out.dtype == torch.float32
    assert model.out_channels == out.shape[1] and model.label_channels == label_channels
    assert model.learn_sigma is learn_sigma


def test_zero_init_output_is_zero():
    model = build_sdm("tiny", 6, image_size=32)
    x, t, y = _inputs()
    assert torch.count_nonzero(model(x, t, y)) == 0


@pytest.mark.parametrize("kind", ["full", "hidden"])
def test_decode_encode_equals_forward(tiny, kind):
    x, t, y = _inputs()
    with torch.no_grad():
        ref = tiny(x, t, y)
        out = tiny.decode(tiny.encode(x, t), tiny.modulation(y, kind))
    assert ref.abs().max() > 0
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["full", "hidden"])
def test_shared_encoder_and_null_modulation(tiny, kind):
    """The fast sampler's rewrite: encoder once, decoder on [cond, null]."""
    x, t, y = _inputs(n=3)
    with torch.no_grad():
        cond = tiny(x, t, y)
        uncond = tiny(x, t, torch.zeros_like(y))
        state = tiny.encode(x, t).repeat(2)
        mods = tiny.modulation(y, kind).cat(tiny.null_modulation(3, 32, kind))
        both = tiny.decode(state, mods)
    torch.testing.assert_close(both[:3], cond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[3:], uncond, rtol=1e-5, atol=1e-5)
    assert state.batch_size == 6 and mods.batch_size == 6


def test_modulation_layout(tiny):
    x, t, y = _inputs()
    full = tiny.modulation(y, "full")
    hidden = tiny.modulation(y, "hidden")
    assert len(full.values) == len(hidden.values) == len(tiny.spade_layers())
    for (g, b), a, layer in zip(full.values, hidden.values, tiny.spade_layers()):
        assert g.shape == b.shape and g.shape[1] == layer.mlp_gamma.out_channels
        assert a.shape[1] == tiny.config.spade_hidden and a.shape[-1] == g.shape[-1] == 32 // layer.ds
    rep = full.repeat(2)
    assert rep.batch_size == 4
    torch.testing.assert_close(rep.values[0][0][2:], full.values[0][0])


def test_decode_rejects_mismatched_batch(tiny):
    x, t, y = _inputs()
    with pytest.raises(ValueError, match="batch"):
        tiny.decode(tiny.encode(x, t), tiny.modulation(y).repeat(2))
    with pytest.raises(ValueError, match="label_channels"):
        tiny(x, t, y[:, :5])


def test_spade_reference():
    """SPADE against a plain readable implementation."""
    torch.manual_seed(0)
    layer = SPADEGroupNorm(16, 4, hidden=8, num_groups=4, ds=2)
    x = torch.randn(2, 16, 8, 8)
    y = torch.rand(2, 4, 16, 16)
    ys = y[:, :, ::2, ::2]  # nearest downsample by 2 picks the top-left pixel of each 2x2 cell
    a = torch.relu(torch.nn.functional.conv2d(ys, layer.mlp_shared.weight, layer.mlp_shared.bias, padding=1))
    gamma = torch.nn.functional.conv2d(a, layer.mlp_gamma.weight, layer.mlp_gamma.bias, padding=1)
    beta = torch.nn.functional.conv2d(a, layer.mlp_beta.weight, layer.mlp_beta.bias, padding=1)
    xg = x.reshape(2, 4, -1)
    xn = ((xg - xg.mean(-1, keepdim=True)) / torch.sqrt(xg.var(-1, unbiased=False, keepdim=True) + 1e-5))
    ref = xn.reshape_as(x) * (1 + gamma) + beta
    torch.testing.assert_close(layer(x, y), ref, rtol=1e-4, atol=1e-5)


def test_attention_reference():
    torch.manual_seed(0)
    block = AttentionBlock(16, num_head_channels=8, num_groups=4)
    torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    x = torch.randn(2, 16, 4, 4)
    flat = x.reshape(2, 16, 16)
    qkv = block.qkv(block.norm(flat)).reshape(2 * 2, 24, 16)
    q, k, v = qkv[:, :8], qkv[:, 8:16], qkv[:, 16:]
    w = torch.softmax(q.transpose(1, 2) @ k / 8 ** 0.5, dim=-1)
    a = (v @ w.transpose(1, 2)).reshape(2, 16, 16)
    ref = (flat + block.proj_out(a)).reshape_as(x)
    torch.testing.assert_close(block(x), ref, rtol=1e-4, atol=1e-5)


def test_channels_last_and_autocast(tiny):
    x, t, y = _inputs()
    with torch.no_grad():
        ref = tiny(x, t, y)
        cl = build_sdm(tiny.config).eval()
        cl.load_state_dict(tiny.state_dict())
        cl = cl.to(memory_format=torch.channels_last)
        out = cl(x.to(memory_format=torch.channels_last), t, y.to(memory_format=torch.channels_last))
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = tiny(x, t, y)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


def test_gradient_checkpointing_same_grads():
    torch.manual_seed(0)
    a = build_sdm("tiny", 6, image_size=32)
    _randomise_zero_convs(a)
    b = build_sdm("tiny", 6, image_size=32, use_checkpoint=True)
    b.load_state_dict(a.state_dict())
    x, t, y = _inputs()
    for m in (a, b):
        m.train()
        m(x, t, y).square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_config_roundtrip_and_unknown_keys(tmp_path):
    cfg = preset_config("tiny", 5)
    assert SDMConfig.from_dict(cfg.to_dict()) == cfg
    assert SDMConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="valid keys are .*model_channels"):
        SDMConfig.from_dict({**cfg.to_dict(), "widht": 3})
    with pytest.raises(ValueError, match="valid keys"):
        build_sdm("tiny", 6, widht=3)
    with pytest.raises(ValueError, match="preset"):
        build_sdm("huge", 6)
    path = tmp_path / "c.yaml"
    path.write_text("preset: tiny\nlabel_channels: 5\nmodel_channels: 16\n")
    loaded = load_sdm_config(path)
    assert loaded.model_channels == 16 and loaded.label_channels == 5
    path.write_text("model_channels: 16\nbogus: 1\n")
    with pytest.raises(ValueError, match="bogus"):
        load_sdm_config(path)


def test_bad_config_values():
    with pytest.raises(ValueError, match="image_size"):
        preset_config("paper", 6, image_size=100)
    with pytest.raises(ValueError, match="num_groups"):
        preset_config("tiny", 6, num_groups=7)


def test_spade_modulation_concat_rejects_mixed(tiny):
    _, _, y = _inputs()
    with pytest.raises(ValueError, match="one kind"):
        SpadeModulation.concat([tiny.modulation(y, "full"), tiny.modulation(y, "hidden")])


# ----------------------------------------------------------------------------- fast (inference) forms
def test_w32_preset_is_the_equal_network():
    """The public SDM at width 32 on 64 px (issue 14's equal-network benchmark): 15,761,382 parameters."""
    model = build_sdm("w32", num_label_channels=6, device="meta")
    assert sum(p.numel() for p in model.parameters()) == 15_761_382
    assert model.config.image_size == 64 and model.config.channel_mult == (1, 2, 3, 4)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kind", ["full", "affine", "hidden"])
def test_fast_encode_decode_equals_forward_with_shared_state(tiny, kind, channels_last):
    """Fused blocks, one encoder state for [cond, null], and every modulation kind give the plain result."""
    x, t, y = _inputs(n=3)
    model = tiny
    if channels_last:
        model = build_sdm(tiny.config).eval()
        model.load_state_dict(tiny.state_dict())
        model = model.to(memory_format=torch.channels_last)
        x, y = (v.contiguous(memory_format=torch.channels_last) for v in (x, y))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.no_grad():
        cond = tiny(x.contiguous(), t, y.contiguous())
        uncond = tiny(x.contiguous(), t, torch.zeros_like(y.contiguous()))
        state = model.encode(x, t, fast=True)
        mods = model.modulation(y, kind).cat(model.null_modulation(3, 32, kind, memory_format=fmt))
        both = model.decode(state, mods, fast=True)
        single = model.decode(state, model.modulation(y, kind), fast=True)
    torch.testing.assert_close(both[:3], cond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[3:], uncond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(single, cond, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batch"):  # the plain decode still wants matching batches
        model.decode(state, mods)


@pytest.mark.parametrize("kind", ["full", "affine", "hidden"])
@pytest.mark.parametrize("size", [(32, 32), (32, 16), (8, 16)])
def test_null_modulation_equals_modulation_of_zeros(tiny, kind, size):
    """The 3x3 border-pattern shortcut (and the full-size fallback for 1-pixel maps) == modulation(zeros)."""
    with torch.no_grad():
        fast = tiny.null_modulation(2, size, kind)
        plain = tiny.modulation(torch.zeros(1, 6, *size), kind).expand(2)
    assert fast.batch_size == 2 and fast.kind == kind
    for a, b in zip(fast._tensors(), plain._tensors(), strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_affine_modulation_is_one_plus_gamma(tiny):
    x, t, y = _inputs()
    with torch.no_grad():
        full, affine = tiny.modulation(y, "full"), tiny.modulation(y, "affine")
        torch.testing.assert_close(tiny.decode(tiny.encode(x, t), affine), tiny(x, t, y), rtol=1e-5, atol=1e-5)
    for (g, b), (g1, b1) in zip(full.values, affine.values, strict=True):
        torch.testing.assert_close(g1, 1 + g, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(b1, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_fast_equals_plain(channels_last):
    torch.manual_seed(0)
    block = AttentionBlock(24, num_heads=4, num_groups=4).eval()  # head width 6, as w32's 96-channel level
    torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    x = torch.randn(2, 24, 8, 8)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = block.forward_fast(x)
        ref = block(x.contiguous())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_fast_emb_cache_follows_weight_updates(tiny):
    """The stacked time-embedding weights are rebuilt when a weight changes in place (training)."""
    model = build_sdm(tiny.config).eval()
    model.load_state_dict(tiny.state_dict())
    x, t, y = _inputs()
    with torch.no_grad():
        model.decode(model.encode(x, t, fast=True), model.modulation(y), fast=True)
        model.middle_block[0].emb_layer.weight.mul_(2.0)
        fast = model.decode(model.encode(x, t, fast=True), model.modulation(y), fast=True)
        torch.testing.assert_close(fast, model(x, t, y), rtol=1e-5, atol=1e-5)
