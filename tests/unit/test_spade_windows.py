"""SPADE modulations per distinct label window == the full convolutions (spade_windows.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from labelmap_helpers import HE_NUM_CLASSES, load_he_patches, maps_from_seed

from diffmix_aug.labelmaps.encode import encode_condition_torch
from diffmix_aug.sdm import build_sdm
from diffmix_aug.sdm.spade_windows import label_windows
from diffmix_aug.sdm.unet import WINDOW_RATIO_MAX


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def tiny7():
    torch.manual_seed(0)
    return _randomised(build_sdm("tiny", num_label_channels=HE_NUM_CLASSES + 1, image_size=64))


def _real_conditions(size: int = 64) -> torch.Tensor:
    """The three real patches' label maps, a ``size`` crop of each, encoded as the sampler sees them."""
    inst = torch.stack([torch.from_numpy(p[1][:size, :size].copy()) for p in load_he_patches()])
    typ = torch.stack([torch.from_numpy(p[2][:size, :size].copy()) for p in load_he_patches()])
    return encode_condition_torch(typ.long(), inst.long(), HE_NUM_CLASSES)


def _assert_same(a, b):
    assert a.kind == b.kind and len(a.values) == len(b.values)
    for x, y in zip(a._tensors(), b._tensors(), strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
        assert x.is_contiguous() == y.is_contiguous()
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["full", "affine"])
def test_windows_equal_full_convolutions_on_real_maps(tiny7, kind):
    y = _real_conditions()
    with torch.no_grad():
        _assert_same(tiny7.modulation(y, kind, windows=True), tiny7.modulation(y, kind, windows=False))
        _assert_same(tiny7.modulation(y, kind), tiny7.modulation(y, kind, windows=False))  # auto


def test_real_maps_repeat_windows_random_labels_do_not():
    real = label_windows(_real_conditions())
    assert real.ratio < WINDOW_RATIO_MAX, real.ratio  # nuclei maps: most windows repeat
    g = torch.Generator().manual_seed(0)
    noise = torch.nn.functional.one_hot(torch.randint(0, 6, (2, 32, 32), generator=g), 7).permute(0, 3, 1, 2).float()
    assert label_windows(noise).ratio > 0.9  # per-pixel random labels: auto keeps the full convolutions


def test_windows_channels_last_and_non_square(tiny7):
    y = _real_conditions()[:, :, :64, :48].contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        a = tiny7.modulation(y, "affine", windows=True)
        b = tiny7.modulation(y, "affine", windows=False)
    _assert_same(a, b)
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in a._tensors())


def test_windows_option_is_checked(tiny7):
    with pytest.raises(TypeError, match="windows"):
        tiny7.modulation(_real_conditions(), "full", windows="yes")


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.sampled_from([16, 24, 32]), n=st.integers(0, 6))
def test_windows_property_random_nuclei_maps(tiny7, seed, size, n):
    inst, typ = maps_from_seed(seed, size=size, n_nuclei=n)
    typ = np.minimum(typ, HE_NUM_CLASSES - 1)
    y = encode_condition_torch(torch.from_numpy(typ)[None].long(), torch.from_numpy(inst)[None].long(),
                               HE_NUM_CLASSES)
    with torch.no_grad():
        _assert_same(tiny7.modulation(y, "affine", windows=True), tiny7.modulation(y, "affine", windows=False))


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when the id tensors ``a`` and ``b`` group the positions identically (a relabelling)."""
    pairs = torch.unique(torch.stack([a.reshape(-1), b.reshape(-1)], dim=1), dim=0)
    return len(pairs) == len(a.unique()) == len(b.unique())


def _row_sort_fields(y: torch.Tensor) -> torch.Tensor:
    """What a pixel's gamma depends on, by sorting the rows themselves: its 5x5 label window (zero
    padded) and which of its nine taps lie inside the image."""
    import torch.nn.functional as F

    n, c, h, w = y.shape
    inside = F.unfold(torch.ones(n, 1, h, w), 3, padding=1)
    rows = torch.cat([F.unfold(y, 5, padding=2), inside], dim=1).transpose(1, 2).reshape(n * h * w, -1)
    return torch.unique(rows, dim=0, return_inverse=True)[1]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 8), channels=st.integers(1, 4),
       overflow=st.booleans())
def test_integer_window_ids_partition_pixels_as_row_sort(seed, n, channels, overflow):
    """The small-sort integer keys group pixels exactly as sorting the 5x5 rows does, also on the
    row-sort fallbacks taken where the keys would overflow."""
    from unittest import mock

    from diffmix_aug.sdm import spade_windows

    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(2, channels, 12, 10, generator=g) < 0.1 * n).float() * torch.randint(1, 4, (1,), generator=g)
    with mock.patch.object(spade_windows, "_KEY_LIMIT", 2 if overflow else spade_windows._KEY_LIMIT):
        win = label_windows(y)
    assert _same_partition(win.inverse, _row_sort_fields(y))
    assert win.taps.shape == (int(win.inverse.max()) + 1, 9) and win.y.shape[1:] == (channels, 3, 3)
    assert len(torch.unique(win.y.flatten(1), dim=0)) == win.y.shape[0]  # the 3x3 windows are distinct


def test_window_codes_fallback_equals_integer_keys():
    from diffmix_aug.sdm.spade_windows import _window_codes

    g = torch.Generator().manual_seed(3)
    code = torch.randint(0, 4, (2, 9, 11), generator=g)
    fast = _window_codes(code)
    rows = torch.stack([code[:, i:i + 7, j:j + 9] for i in range(3) for j in range(3)], dim=-1)
    assert fast.shape == (2, 7, 9) and _same_partition(fast, torch.unique(rows.reshape(-1, 9), dim=0,
                                                                            return_inverse=True)[1])


def test_modulation_tail_is_the_concatenation(tiny7):
    """``with_tail`` (the null half broadcast, not copied) decodes as the concatenated modulation."""
    y = _real_conditions()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 500, 990])
    with torch.no_grad():
        mods = tiny7.modulation(y, "affine")
        null = tiny7.null_modulation(1, 64, "affine")
        lazy = mods.with_tail(null, 3)
        assert lazy.batch_size == 6 and len(lazy._tensors()) == 2 * len(mods._tensors())
        _assert_same(lazy.materialize(), mods.cat(null.expand(3)))
        state = tiny7.encode(x, t, fast=True)
        torch.testing.assert_close(tiny7.decode(state, lazy, fast=True),
                                   tiny7.decode(state, lazy.materialize(), fast=True), rtol=0, atol=0)
        torch.testing.assert_close(tiny7.decode(state.repeat(2), lazy),  # the plain decode materialises it
                                   tiny7.decode(state.repeat(2), lazy.materialize()), rtol=0, atol=0)
        with pytest.raises(ValueError, match="tail"):
            mods.with_tail(mods, 3)  # not batch 1
        with pytest.raises(ValueError, match="tail"):
            mods.with_tail(tiny7.null_modulation(1, 64, "full"), 3)  # another kind
        with pytest.raises(ValueError, match="repeats"):
            mods.with_tail(null, 0)
        with pytest.raises(ValueError, match="expand"):
            lazy.expand(2)
