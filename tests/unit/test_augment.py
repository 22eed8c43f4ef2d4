"""HoVer-Net's augmentation in the downstream harness (``benchmarks/downstream/augment.py``)."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.downstream import augment as aug


def _maps(seed: int, h: int = 40, w: int = 48):
    rng = np.random.default_rng(seed)
    inst = rng.integers(0, 30, (h, w)).astype(np.int32)
    typ = (inst % 5).astype(np.int32)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return img, inst, typ


def test_pure_translation_is_an_exact_crop():
    img, inst, typ = _maps(0)
    p = aug.draw_params(np.random.default_rng(0), inst.shape, 16, shape_only=True)
    p = dataclasses.replace(p, matrix=np.array([[1.0, 0, -5], [0, 1.0, -7]]), flip_lr=False, flip_ud=False)
    out_img, out_inst, out_typ = aug.apply(img, inst, typ, p)
    np.testing.assert_array_equal(out_inst, inst[7:23, 5:21])
    np.testing.assert_array_equal(out_typ, typ[7:23, 5:21])
    np.testing.assert_array_equal(out_img, img[7:23, 5:21])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), size=st.integers(8, 40))
def test_image_and_maps_take_the_same_source_pixels(seed, size):
    img, inst, typ = _maps(seed)
    ids = (np.arange(inst.size, dtype=np.int32).reshape(inst.shape) + 1)
    p = aug.draw_params(np.random.default_rng(seed), inst.shape, size)
    _, out_ids, _ = aug.apply(img, ids, ids, p)
    rows, cols = aug.source_indices(p, inst.shape)
    np.testing.assert_array_equal(out_ids, ids[rows, cols])
    _, out_inst, out_typ = aug.apply(img, inst, typ, p)
    np.testing.assert_array_equal(out_inst, inst[rows, cols])
    np.testing.assert_array_equal(out_typ, typ[rows, cols])  # a pixel keeps its own class
    assert out_inst.shape == (size, size) and out_inst.dtype == np.int32
    assert rows.min() >= 0 and rows.max() < inst.shape[0] and cols.max() < inst.shape[1]


def test_parameters_drawn_first_apply_deterministically():
    img, inst, typ = _maps(3)
    p = aug.draw_params(np.random.default_rng(5), inst.shape, 24)
    a, b = aug.apply(img, inst, typ, p), aug.apply(img, inst, typ, p)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    q = aug.draw_params(np.random.default_rng(5), inst.shape, 24)
    np.testing.assert_array_equal(p.matrix, q.matrix)
    assert p.blur == q.blur and p.photo_order == q.photo_order
    # HoVer-Net's ranges
    for s in range(50):
        r = aug.draw_params(np.random.default_rng(s), (64, 64), 32)
        assert -8 <= r.hue < 8 and 0.75 <= r.contrast <= 1.25 and -26 <= r.brightness <= 26
        assert r.blur[0] in ("gaussian", "median", "noise")


def test_reflect_index():
    np.testing.assert_array_equal(aug._reflect(np.array([-2, -1, 0, 4, 5, 6, 13]), 5), [2, 1, 0, 4, 3, 2, 3])
