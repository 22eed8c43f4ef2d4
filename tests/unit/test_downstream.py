"""Downstream harness: HoVer-Net targets vs a plain reference, losses, post-processing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.downstream.targets import crop_to_shape, fix_mirror_padding, gen_targets


def _plain_fix_mirror(ann):
    from scipy import ndimage

    ann = ann.astype(np.int32).copy()
    current_max = int(ann.max())
    for inst_id in [i for i in np.unique(ann) if i != 0]:
        pieces = ndimage.label(ann == inst_id)[0]
        pieces[pieces > 1] += current_max
        ann[pieces > 1] = pieces[pieces > 1]
        current_max = int(ann.max())
    return ann


def _plain_gen_targets(ann, crop_shape):
    """Line-by-line HoVer-Net logic with full-image masks; the box is padded so it never clips."""
    from scipy import ndimage

    pad = 3
    fixed = np.pad(_plain_fix_mirror(ann), pad)
    h0 = int((ann.shape[0] - crop_shape[0]) * 0.5) + pad
    w0 = int((ann.shape[1] - crop_shape[1]) * 0.5) + pad
    crop = fixed[h0:h0 + crop_shape[0], w0:w0 + crop_shape[1]]
    x_map = np.zeros(fixed.shape, np.float32)
    y_map = np.zeros(fixed.shape, np.float32)
    for inst_id in np.unique(crop):
        if inst_id == 0 or (crop == inst_id).sum() < 30:
            continue
        m = (fixed == inst_id).astype(np.uint8)
        rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        r0, r1, c0, c1 = rows[0] - 2, rows[-1] + 1 + 2, cols[0] - 2, cols[-1] + 1 + 2
        m = m[r0:r1, c0:c1]
        com = ndimage.center_of_mass(m)
        cy, cx = int(com[0] + 0.5), int(com[1] + 0.5)
        xx, yy = np.meshgrid(np.arange(1, m.shape[1] + 1) - cx, np.arange(1, m.shape[0] + 1) - cy)
        xx[m == 0] = 0
        yy[m == 0] = 0
        xx, yy = xx.astype(np.float32), yy.astype(np.float32)
        for a in (xx, yy):
            if a.min() < 0:
                a[a < 0] /= -a[a < 0].min()
            if a.max() > 0:
                a[a > 0] /= a[a > 0].max()
        x_map[r0:r1, c0:c1][m > 0] = xx[m > 0]
        y_map[r0:r1, c0:c1][m > 0] = yy[m > 0]
    hv = np.dstack([x_map, y_map])[pad:-pad, pad:-pad]
    return crop_to_shape(hv, crop_shape), crop_to_shape((ann > 0).astype(np.int32), crop_shape)


def _random_inst_map(rng, size, n):
    """Random discs and rectangles, overlapping (later ones win), some ids repeated (mirror-like)."""
    inst = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    for k in range(1, n + 1):
        cy, cx = rng.integers(0, size, 2)
        r = rng.integers(2, 9)
        inst[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    if n >= 2:  # duplicate an id as a separate piece
        inst[0:4, size - 6:size] = 1
    return inst


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 12), crop=st.sampled_from([(40, 40), (31, 27), (48, 48)]))
def test_gen_targets_matches_plain_reference(seed, n, crop):
    inst = _random_inst_map(np.random.default_rng(seed), 48, n)
    out = gen_targets(inst, crop)
    hv_ref, np_ref = _plain_gen_targets(inst, crop)
    assert out["np_map"].dtype == np.int32 and out["hv_map"].dtype == np.float32
    assert out["hv_map"].shape == crop + (2,)
    np.testing.assert_array_equal(out["np_map"], np_ref)
    np.testing.assert_allclose(out["hv_map"], hv_ref, atol=1e-6)
    assert out["hv_map"].min() >= -1 and out["hv_map"].max() <= 1


def test_fix_mirror_padding_matches_plain(rng):
    inst = _random_inst_map(rng, 64, 15)
    inst[60:64, 0:5] = 3
    np.testing.assert_array_equal(fix_mirror_padding(inst), _plain_fix_mirror(inst))


def test_hv_map_single_disc_spans_minus_one_to_one():
    yy, xx = np.mgrid[:32, :32]
    inst = ((yy - 16) ** 2 + (xx - 16) ** 2 <= 36).astype(np.int32)
    hv = gen_targets(inst, (32, 32))["hv_map"]
    for c in range(2):
        assert hv[..., c].min() == -1 and hv[..., c].max() == 1
    assert (hv[inst == 0] == 0).all()
    # x channel grows left to right, y channel top to bottom
    assert hv[16, 20, 0] > 0 > hv[16, 12, 0] and hv[20, 16, 1] > 0 > hv[12, 16, 1]


def test_small_instance_inside_crop_keeps_np_but_no_hv():
    inst = np.zeros((20, 20), np.int32)
    inst[5:10, 5:10] = 1  # 25 px < 30
    out = gen_targets(inst, (20, 20))
    assert out["np_map"].sum() == 25 and not out["hv_map"].any()


def test_crop_shape_errors():
    with pytest.raises(ValueError, match="crop_shape"):
        gen_targets(np.zeros((8, 8), np.int32), (10, 10))
    with pytest.raises(TypeError, match="inst_map"):
        gen_targets(np.zeros((8, 8), np.float32), (4, 4))
