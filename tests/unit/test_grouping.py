"""The counting-sort pixel grouping against the plain comparison sort, on random and real maps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from grouping_reference import group_by_id_reference, group_pixels_reference
from hypothesis import given, settings
from hypothesis import strategies as st
from labelmap_helpers import load_he_patches

from diffmix_aug.data.grouping import group_by_id
from diffmix_aug.data.sample import instance_info
from diffmix_aug.labelmaps.enlarge import group_pixels


def _same(a, b):
    if dataclasses.is_dataclass(a):
        a, b = dataclasses.astuple(a), dataclasses.astuple(b)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and np.array_equal(x, y)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(1, 40), w=st.integers(1, 40),
       n_ids=st.integers(0, 300), id_scale=st.sampled_from([1, 1000, 2**20, 2**31 - 2]),
       fill=st.floats(0.0, 1.0))
def test_group_by_id_matches_reference(seed, h, w, n_ids, id_scale, fill):
    rng = np.random.default_rng(seed)
    pool = rng.integers(1, max(2, min(id_scale, 2**31 - 1)), size=max(n_ids, 1))
    inst = np.where(rng.random((h, w)) < fill, rng.choice(pool, (h, w)), 0).astype(np.int32)
    types = rng.integers(0, 5, (h, w)).astype(np.int32)
    _same(group_by_id(inst.ravel()), group_by_id_reference(inst.ravel()))
    _same(group_pixels(inst, types), group_pixels_reference(inst, types))


def test_group_by_id_many_ids_falls_back():
    inst = np.arange(1, 70_001, dtype=np.int32).reshape(280, 250)  # > 65,535 distinct ids
    _same(group_by_id(inst.ravel()), group_by_id_reference(inst.ravel()))


def test_group_by_id_empty_and_dtypes():
    ids, starts, areas, pos = group_by_id(np.zeros(16, np.int32))
    assert ids.size == starts.size == areas.size == pos.size == 0
    for dtype in (np.uint8, np.uint16, np.int64):
        inst = np.array([[0, 3, 3], [1, 0, 3]], dtype)
        _same(group_by_id(inst.ravel()), group_by_id_reference(inst.ravel()))


@pytest.mark.parametrize("k", [0, 1, 2])
def test_real_patches(k):
    _, inst, types = load_he_patches()[k]
    for m in (inst, np.asfortranarray(inst)):  # .mat files load Fortran-ordered
        _same(group_pixels(m, types), group_pixels_reference(m, types))
    info = instance_info(inst, types)
    g = group_pixels_reference(inst, types)
    assert np.array_equal(info.ids, g.ids) and np.array_equal(info.areas, g.areas)
    assert np.array_equal(info.bboxes, g.bboxes) and np.array_equal(info.types, g.types)
