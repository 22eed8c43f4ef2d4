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


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 8), channels=st.integers(1, 4))
def test_integer_window_ids_partition_pixels_as_row_sort(seed, n, channels):
    """The three-sort integer keys group pixels exactly as sorting the 5x5 rows themselves does."""
    import torch.nn.functional as F

    from diffmix_aug.sdm.spade_windows import _window_ids

    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(2, channels, 12, 10, generator=g) < 0.1 * n).float()
    yi = torch.cat([y, torch.ones(2, 1, 12, 10)], dim=1)
    ids = _window_ids(yi)
    rows = F.unfold(yi, 5, padding=2).transpose(1, 2).reshape(-1, (channels + 1) * 25)
    _, ref = torch.unique(rows, dim=0, return_inverse=True)
    pairs = torch.unique(torch.stack([ids, ref], dim=1), dim=0)
    assert len(pairs) == len(ids.unique()) == len(ref.unique())  # a one-to-one relabelling
