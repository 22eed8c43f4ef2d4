"""remap_label: HoVer-Net's contract, checked against its plain loop on random maps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from diffmix_aug.data import remap_label


def _hovernet_remap(pred, by_size=False):
    """A transcription of hover_net/misc/utils.py::remap_label (plain loops)."""
    pred_id = list(np.unique(pred))
    pred_id.remove(0)
    if len(pred_id) == 0:
        return pred
    if by_size:
        pred_size = [(pred == i).sum() for i in pred_id]
        pairs = sorted(zip(pred_id, pred_size), key=lambda x: x[1], reverse=True)
        pred_id = [p[0] for p in pairs]
    new_pred = np.zeros(pred.shape, np.int32)
    for idx, inst_id in enumerate(pred_id):
        new_pred[pred == inst_id] = idx + 1
    return new_pred


maps = arrays(np.int64, st.tuples(st.integers(1, 12), st.integers(1, 12)),
              elements=st.sampled_from([0, 0, 1, 2, 5, 9, 40, 1000, 2**31 - 1]))


@settings(max_examples=60, deadline=None)
@given(inst=maps, by_size=st.booleans())
def test_equals_hovernet_loop(inst, by_size):
    inst = inst.copy()
    inst.flat[0] = 0  # HoVer-Net requires a background pixel
    out = remap_label(inst, by_size=by_size)
    np.testing.assert_array_equal(out, _hovernet_remap(inst, by_size))
    assert out.dtype == np.int32


@settings(max_examples=60, deadline=None)
@given(inst=maps, by_size=st.booleans())
def test_contiguous_and_partition_preserving(inst, by_size):
    out = remap_label(inst, by_size=by_size, allow_no_background=True)
    ids = np.unique(out[out > 0])
    np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))
    np.testing.assert_array_equal(out == 0, inst == 0)
    # a bijection between old and new ids: the partition of the pixels is unchanged
    pairs = {(int(a), int(b)) for a, b in zip(inst.ravel(), out.ravel())}
    assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs})
    if by_size and ids.size:
        sizes = np.bincount(out.ravel())[1:]
        assert (np.diff(sizes) <= 0).all()
    if not by_size:
        old = sorted({a for a, _ in pairs if a})
        assert [b for _, b in sorted(p for p in pairs if p[0])] == list(range(1, len(old) + 1))


def test_idempotent_and_dtypes():
    inst = np.array([[0, 7, 7], [3, 3, 0]], np.uint16)
    out = remap_label(inst)
    np.testing.assert_array_equal(out, [[0, 2, 2], [1, 1, 0]])
    np.testing.assert_array_equal(remap_label(out), out)
    np.testing.assert_array_equal(remap_label(inst, by_size=True), out)  # equal sizes: id order
    assert remap_label(np.zeros((0, 3), np.int32)).shape == (0, 3)
    assert not remap_label(np.zeros((2, 2), np.int8)).any()


def test_errors():
    with pytest.raises(ValueError, match="no background"):
        remap_label(np.ones((2, 2), np.int32))
    np.testing.assert_array_equal(remap_label(np.full((2, 2), 4), allow_no_background=True), np.ones((2, 2)))
    with pytest.raises(ValueError, match=">= 0"):
        remap_label(np.array([[0, -1]]))
    with pytest.raises(TypeError, match="integer"):
        remap_label(np.zeros((2, 2), np.float32))
    with pytest.raises(TypeError, match="ndarray"):
        remap_label([[0, 1]])
