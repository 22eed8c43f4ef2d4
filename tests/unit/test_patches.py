"""HoVer-Net patch extraction: counts of formats.md §1a and equality with a plain transcription."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffmix_aug.data.patches import crop_reflect, extract_patches, patch_origins


def _reference(x, win, step, mode):
    """Plain loops in the order of hover_net/misc/patch_extractor.py (np.pad, then slicing)."""
    if mode == "mirror":
        pads = []
        for ax in range(2):
            diff = win[ax] - step[ax]
            pads.append((diff // 2, diff - diff // 2))
        x = np.pad(x, pads + [(0, 0)] * (x.ndim - 2), mode="reflect")
    im_h, im_w = x.shape[:2]

    def infos(length, w, s):
        flag = (length - w) % s != 0
        last = (math.floor((length - w) / s) + 1) * s
        return flag, last

    h_flag, h_last = infos(im_h, win[0], step[0])
    w_flag, w_last = infos(im_w, win[1], step[1])
    out = []
    for row in range(0, h_last, step[0]):
        for col in range(0, w_last, step[1]):
            out.append(x[row:row + win[0], col:col + win[1]])
    if h_flag:
        row = im_h - win[0]
        for col in range(0, w_last, step[1]):
            out.append(x[row:row + win[0], col:col + win[1]])
    if w_flag:
        col = im_w - win[1]
        for row in range(0, h_last, step[0]):
            out.append(x[row:row + win[0], col:col + win[1]])
    if h_flag and w_flag:
        out.append(x[im_h - win[0]:, im_w - win[1]:])
    return out


@pytest.mark.parametrize(("step", "expected"), [(164, 49), (80, 169), (76, 196)])
def test_counts_for_a_consep_tile(step, expected):
    origins = patch_origins((1000, 1000), 540, step, "mirror")
    assert len(origins) == expected
    # the central step x step parts tile the tile: the first centre starts at 0
    pad = (540 - step) // 2
    assert origins[0].tolist() == [-pad, -pad]


def test_valid_mode_edge_windows_and_order():
    origins = patch_origins((10, 12), (4, 5), (3, 3), "valid")
    # grid rows 0, 3 (then flush 6); grid cols 0, 3, 6 (flush 7)
    expected = [(0, 0), (0, 3), (0, 6), (3, 0), (3, 3), (3, 6), (6, 0), (6, 3), (6, 6),
                (0, 7), (3, 7), (6, 7)]
    assert [tuple(o) for o in origins.tolist()] == expected
    assert len(patch_origins((9, 9), 3, 3, "valid")) == 9  # divides evenly: no extra windows


@settings(max_examples=40, deadline=None)
@given(h=st.integers(8, 40), w=st.integers(8, 40), wh=st.integers(2, 16), ww=st.integers(2, 16),
       sh=st.integers(1, 16), sw=st.integers(1, 16), mode=st.sampled_from(["mirror", "valid"]),
       channels=st.sampled_from([0, 1, 5]))
def test_equal_to_reference(h, w, wh, ww, sh, sw, mode, channels):
    sh, sw = min(sh, wh), min(sw, ww)
    rng = np.random.default_rng(h * 1000 + w)
    shape = (h, w) if channels == 0 else (h, w, channels)
    x = rng.integers(0, 1000, shape).astype(np.int32)
    if mode == "mirror" and (wh - sh - (wh - sh) // 2 >= h or ww - sw - (ww - sw) // 2 >= w):
        return  # np.pad's reflect would need multiple reflections; we reject those
    grow = (wh - sh, ww - sw) if mode == "mirror" else (0, 0)
    if wh > h + grow[0] or ww > w + grow[1]:
        with pytest.raises(ValueError, match="smaller than the window"):
            extract_patches(x, (wh, ww), (sh, sw), mode)
        return
    got = extract_patches(x, (wh, ww), (sh, sw), mode)
    ref = _reference(x, (wh, ww), (sh, sw), mode)
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert a.dtype == x.dtype
        np.testing.assert_array_equal(a, b)


def test_crop_reflect_matches_np_pad_and_views_inside():
    x = np.arange(7 * 9 * 2).reshape(7, 9, 2)
    padded = np.pad(x, ((3, 3), (4, 4), (0, 0)), mode="reflect")
    for y0, x0 in [(-3, -4), (2, 5), (-1, 6), (4, -2)]:
        np.testing.assert_array_equal(crop_reflect(x, y0, x0, 6, 7), padded[y0 + 3:y0 + 9, x0 + 4:x0 + 11])
    assert np.shares_memory(crop_reflect(x, 1, 1, 3, 3), x)
    with pytest.raises(ValueError, match="overhangs"):
        crop_reflect(x, -8, 0, 3, 3)


def test_bad_arguments():
    x = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="mode"):
        extract_patches(x, 8, 4, "same")
    with pytest.raises(ValueError, match="step_size <= win_size"):
        extract_patches(x, 4, 8, "mirror")
    with pytest.raises(ValueError, match="win_size"):
        extract_patches(x, 0, 4)
    with pytest.raises(TypeError, match="win_size"):
        extract_patches(x, "big", 4)
    with pytest.raises(TypeError, match="`x`"):
        extract_patches([1, 2, 3], 2, 1)
    with pytest.raises(ValueError, match="mirror padding"):
        extract_patches(np.zeros((5, 5)), 40, 2, "mirror")
