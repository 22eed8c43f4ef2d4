"""The low-resolution form of conv3x3(nearest-up(h)) against the plain form (sdm/upsample_conv.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from diffmix_aug.sdm.blocks import SDMResBlock
from diffmix_aug.sdm.upsample_conv import add_nearest_up_, conv3x3_of_nearest_up, fold_nearest_up_conv3x3


def _plain(h, weight, bias):
    return F.conv2d(F.interpolate(h, scale_factor=2, mode="nearest"), weight, bias, padding=1)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), cin=st.integers(1, 6), cout=st.integers(1, 6), hh=st.integers(1, 7),
       ww=st.integers(1, 7), with_bias=st.booleans(), channels_last=st.booleans(), seed=st.integers(0, 2**16))
def test_equals_conv_of_the_upsampled_map(n, cin, cout, hh, ww, with_bias, channels_last, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, cin, hh, ww, generator=g)
    weight = torch.randn(cout, cin, 3, 3, generator=g)
    bias = torch.randn(cout, generator=g) if with_bias else None
    if channels_last:
        h = h.contiguous(memory_format=torch.channels_last)
    out = conv3x3_of_nearest_up(h, *fold_nearest_up_conv3x3(weight, bias))
    torch.testing.assert_close(out, _plain(h.contiguous(), weight, bias), rtol=1e-5, atol=1e-5)
    nhwc_in = channels_last and cin > 1 and hh * ww > 1  # otherwise both formats describe h
    fmt = torch.channels_last if nhwc_in else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 5), hh=st.integers(1, 6), ww=st.integers(1, 6),
       channels_last=st.booleans())
def test_add_nearest_up_equals_adding_the_upsampled_map(n, c, hh, ww, channels_last):
    h = torch.randn(n, c, 2 * hh, 2 * ww)
    x = torch.randn(n, c, hh, ww)
    if channels_last:
        h, x = (t.contiguous(memory_format=torch.channels_last) for t in (h, x))
    want = h + F.interpolate(x, scale_factor=2, mode="nearest")
    got = add_nearest_up_(h, x)
    assert got is h
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_fold_rejects_a_kernel_that_is_not_3x3():
    with pytest.raises(ValueError, match=r"\[O, I, 3, 3\]"):
        fold_nearest_up_conv3x3(torch.zeros(2, 2, 5, 5), None)


def _up_block():
    torch.manual_seed(0)
    block = SDMResBlock(8, 16, 8, label_channels=3, spade_hidden=8, resample="up", num_groups=4, ds=2).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 8, 5, 5)
    y = torch.rand(2, 3, 10, 10)
    emb = torch.randn(2, 16)
    return block, x, y, emb


def test_up_block_fast_equals_plain_and_follows_weight_updates():
    """SDMResBlock.forward_fast with resample='up' uses the folded kernel, rebuilt when in_conv changes."""
    block, x, y, emb = _up_block()
    cond = ("label", y)
    with torch.no_grad():
        e = block.emb_layer(F.silu(emb))[:, :, None, None]
        for _ in range(2):  # second pass: after an in-place weight update the cache must not be stale
            fast = block.forward_fast(x, e, cond, cond)
            torch.testing.assert_close(fast, block(x, emb, cond, cond), rtol=1e-5, atol=1e-5)
            assert fast.shape == (2, 8, 10, 10)
            block.in_conv.weight.mul_(-1.5)
