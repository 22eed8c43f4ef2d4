"""Condition encoding: plain per-pixel loop oracle, the per-nucleus baseline, numpy vs torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from labelmap_helpers import HE_NUM_CLASSES, load_he_patches, maps_from_seed

from benchmarks.labelmaps import reference_encode
from diffmix_aug.labelmaps.encode import encode_condition, encode_condition_torch, instance_edges


def loop_encode(type_map: np.ndarray, inst_map: np.ndarray, num_classes: int) -> np.ndarray:
    """The definition, pixel by pixel."""
    h, w = type_map.shape
    out = np.zeros((num_classes + 1, h, w), np.float32)
    for y in range(h):
        for x in range(w):
            out[type_map[y, x], y, x] = 1
            for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and inst_map[yy, xx] != inst_map[y, x]:
                    out[num_classes, y, x] = 1
    return out


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), num_classes=st.integers(5, 7))
def test_matches_loop_and_per_nucleus_reference(seed, num_classes):
    inst, typ = maps_from_seed(seed, size=24)
    typ = np.minimum(typ, num_classes - 1)
    out = encode_condition(typ, inst, num_classes)
    assert out.shape == (num_classes + 1, 24, 24) and out.dtype == np.float32
    np.testing.assert_array_equal(out, loop_encode(typ, inst, num_classes))
    np.testing.assert_array_equal(out, reference_encode(typ, inst, num_classes))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint32, np.int64])
def test_any_integer_dtype(dtype):
    inst, typ = maps_from_seed(3, size=20)
    np.testing.assert_array_equal(encode_condition(typ.astype(dtype), inst.astype(dtype), 5),
                                  loop_encode(typ, inst, 5))
    big = encode_condition(typ.astype(np.uint8), inst, 300)  # more classes than uint8 holds
    assert big.shape == (301, 20, 20) and big[:300].sum() == 400


def test_numpy_and_torch_agree_on_a_batch():
    maps = [maps_from_seed(s, size=48) for s in range(4)]
    ref = np.stack([encode_condition(t, i, 5) for i, t in maps])
    ti = torch.from_numpy(np.stack([i for i, _ in maps]))
    tt = torch.from_numpy(np.stack([t for _, t in maps])).long()
    out = encode_condition_torch(tt, ti, 5)
    assert out.shape == (4, 6, 48, 48) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), ref)
    assert encode_condition_torch(tt, ti, 5, dtype=torch.float16).dtype == torch.float16


def test_real_patches_and_channel_layout():
    for _, inst, typ in load_he_patches():
        y = encode_condition(typ, inst, HE_NUM_CLASSES)
        assert y.shape == (HE_NUM_CLASSES + 1, 256, 256)
        np.testing.assert_array_equal(y[:HE_NUM_CLASSES].sum(0), 1)  # exactly one class channel per pixel
        np.testing.assert_array_equal(y, reference_encode(typ, inst, HE_NUM_CLASSES))


def test_edges_two_pixels_thick_and_borders_unmarked():
    inst = np.zeros((6, 6), np.int32)
    inst[:, :3] = 1  # touches the image border; only the 1|0 seam is an edge
    e = instance_edges(inst)
    assert e[:, 2].all() and e[:, 3].all() and e.sum() == 12
    assert not instance_edges(np.full((5, 5), 3, np.int32)).any()
    y = encode_condition(np.zeros((5, 5), np.int32), np.zeros((5, 5), np.int32), 5)
    assert y.shape == (6, 5, 5) and y[0].all() and not y[1:].any()


def test_bad_inputs():
    z = np.zeros((4, 4), np.int32)
    with pytest.raises(ValueError, match="num_classes"):
        encode_condition(z + 5, z, 5)
    with pytest.raises(ValueError, match="same shape"):
        encode_condition(z, np.zeros((4, 5), np.int32), 5)
    with pytest.raises(TypeError, match="type_map"):
        encode_condition(z.astype(np.float32), z, 5)
    with pytest.raises(TypeError, match="integer"):
        encode_condition_torch(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="N, H, W"):
        encode_condition_torch(torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long), 5)
