"""Issue 11 hardening: bad label values, crop windows and metric inputs raise clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from diffmix_aug.data import NucleiSample
from diffmix_aug.data.readers import conic_to_maps, hovernet_array_to_sample, read_consep_label
from diffmix_aug.metrics import classification_stats
from diffmix_aug.metrics import instance as M


def _mat(tmp_path, **arrays):
    from scipy.io import savemat

    path = tmp_path / "t.mat"
    savemat(path, arrays)
    return path


def test_consep_inst_id_above_int32_rejected(tmp_path):
    inst = np.zeros((4, 4), np.int64)
    inst[0, 0] = 2**32 + 1  # would wrap to 1
    path = _mat(tmp_path, inst_map=inst)
    with pytest.raises(ValueError, match=r"t\.mat: `inst_map`.*int32.*4294967297"):
        read_consep_label(path)


def test_consep_float_type_above_int32_rejected(tmp_path):
    inst = np.zeros((4, 4), np.int32)
    inst[0, 0] = 1
    typ = np.zeros((4, 4), np.float64)
    typ[0, 0] = 3e9  # would become -2147483648
    path = _mat(tmp_path, inst_map=inst, type_map=typ)
    with pytest.raises(ValueError, match=r"t\.mat: `type_map`.*int32"):
        read_consep_label(path)


def test_consep_nan_inst_map_rejected(tmp_path):
    inst = np.zeros((4, 4), np.float64)
    inst[1, 1] = np.nan
    path = _mat(tmp_path, inst_map=inst)
    with pytest.raises(ValueError, match=r"t\.mat: `inst_map`.*NaN"):
        read_consep_label(path)


def test_consep_non_integral_float_rejected(tmp_path):
    inst = np.zeros((4, 4), np.float64)
    inst[1, 1] = 1.5
    path = _mat(tmp_path, inst_map=inst)
    with pytest.raises(ValueError, match=r"t\.mat: `inst_map`.*whole numbers"):
        read_consep_label(path)


def test_consep_inst_type_above_int32_rejected(tmp_path):
    inst = np.zeros((4, 4), np.int32)
    inst[0, 0] = 1
    path = _mat(tmp_path, inst_map=inst, inst_type=np.array([[2**33]], np.int64))
    with pytest.raises(ValueError, match=r"`inst_type`.*int32"):
        read_consep_label(path)


def test_hovernet_and_conic_ids_above_int32_rejected():
    data = np.zeros((4, 4, 5), np.int64)
    data[0, 0, 3] = 2**31
    with pytest.raises(ValueError, match=r"patch\.npy: inst channel.*int32"):
        hovernet_array_to_sample(data, "patch.npy")
    labels = np.zeros((4, 4, 2), np.float64)
    labels[0, 0, 1] = 3e9
    with pytest.raises(ValueError, match=r"labels class channel.*int32"):
        conic_to_maps(labels)


def test_int32_max_still_accepted(tmp_path):
    inst = np.zeros((4, 4), np.int64)
    inst[0, 0] = 2**31 - 1
    got, _ = read_consep_label(_mat(tmp_path, inst_map=inst))
    assert got.dtype == np.int32 and got[0, 0] == 2**31 - 1


def _sample():
    inst = np.zeros((11, 9), np.int32)
    inst[2:4, 2:4] = 1
    return NucleiSample(np.zeros((11, 9, 3), np.uint8), inst, (inst > 0).astype(np.int32))


@pytest.mark.parametrize("h, w", [(-5, 4), (4, -5), (0, 4), (4, 0)])
def test_crop_rejects_non_positive_size(h, w):
    with pytest.raises(ValueError, match=r"crop size must be positive.*h >= 1"):
        _sample().crop(0, 0, h, w)


@pytest.mark.parametrize("y, x", [(-1, 0), (0, -1), (11, 0), (0, 9), (8, 0)])
def test_crop_rejects_out_of_range_origin(y, x):
    with pytest.raises(ValueError, match=r"outside the sample of shape \(11, 9\)"):
        _sample().crop(y, x, 4, 4)


def test_crop_rejects_non_int_arguments():
    with pytest.raises(TypeError, match=r"crop `h` must be an int, got float"):
        _sample().crop(0, 0, 2.5, 4)


def test_crop_valid_window_unchanged():
    c = _sample().crop(np.int64(1), 2, 4, 3)
    assert c.shape == (4, 3)


def _neg_maps():
    true = np.zeros((8, 8), np.int32)
    true[1:3, 1:3] = 1
    pred = true.copy()
    pred[5:7, 5:7] = -3
    return true, pred


def test_dice_rejects_negative_ids():
    true, pred = _neg_maps()
    with pytest.raises(ValueError, match=r"`pred` ids must be >= 0.*-3"):
        M.dice(true, pred)
    with pytest.raises(ValueError, match=r"`true` ids must be >= 0.*-3"):
        M.dice(pred, true)


@pytest.mark.parametrize("fn", [M.dice2, M.aji, M.aji_plus, M.panoptic_quality, M.pair_table])
def test_instance_metrics_reject_negative_ids(fn):
    true, pred = _neg_maps()
    with pytest.raises(ValueError, match=r"`pred` ids must be >= 0.*-3"):
        fn(true, pred)


@pytest.mark.parametrize("fn", [M.dice, M.dice2, M.aji, M.aji_plus, M.panoptic_quality])
def test_instance_metrics_reject_float_maps(fn):
    true = np.zeros((8, 8), np.float32)
    with pytest.raises(TypeError, match=r"`true` must have a dtype of kind"):
        fn(true, np.zeros((8, 8), np.int32))


def _item(cen, typ):
    return {"inst_centroid": np.asarray(cen), "inst_type": np.asarray(typ)}


def test_classification_stats_rejects_bad_types_and_centroids():
    good = _item([[1.0, 1.0]], [1])
    with pytest.raises(ValueError, match=r"`pred_list\[0\]\['inst_type'\]` type ids must be >= 0, got minimum -1"):
        classification_stats([good], [_item([[1.0, 1.0]], [-1])])
    with pytest.raises(ValueError, match=r"`pred_list\[0\]\['inst_type'\]` must hold whole-number"):
        classification_stats([good], [_item([[1.0, 1.0]], [1.7])])
    with pytest.raises(ValueError, match=r"`true_list\[0\]\['inst_centroid'\]` must hold finite coordinates"):
        classification_stats([_item([[np.nan, 1.0]], [1])], [good])
    assert classification_stats([good], [_item([[1.0, 1.0]], [1.0])])["tp"] == 1
