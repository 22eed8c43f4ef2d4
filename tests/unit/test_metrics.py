"""HoVer-Net metrics: golden values, vectorised vs plain per-nucleus reference, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.metrics_reference import (
    ref_aji,
    ref_aji_plus,
    ref_classification,
    ref_dice,
    ref_dice2,
    ref_pq,
)
from diffmix_aug.data.remap import remap_label
from diffmix_aug.metrics import (
    aji,
    aji_plus,
    classification_stats,
    dice,
    dice2,
    pair_table,
    panoptic_quality,
)

GOLDEN = {  # formats.md §4, from hover_net's README (tensorflow-final, src/metrics/sample)
    "pred_1": dict(dice2=0.6477, aji=0.4790, aji_plus=0.6375, dq=0.8889, sq=0.7653, pq=0.6803, dice=0.8054),
    "pred_2": dict(dice2=0.9007, aji=0.6414, aji_plus=0.6414, dq=0.8889, sq=0.7721, pq=0.6863, dice=0.7815),
}


def _load(data_dir, name):
    from PIL import Image

    img = Image.open(data_dir / "hovernet_metrics_sample" / f"{name}.png").convert("L")
    return remap_label(np.asarray(img).astype(np.int32))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_hovernet_sample(data_dir, name):
    true, pred = _load(data_dir, "true"), _load(data_dir, name)
    assert true.max() == 5 and pred.max() == 4
    dq, sq, pq = panoptic_quality(true, pred)
    got = dict(dice2=dice2(true, pred), aji=aji(true, pred), aji_plus=aji_plus(true, pred),
               dq=dq, sq=sq, pq=pq, dice=dice(true, pred))
    for key, want in GOLDEN[name].items():
        assert round(got[key], 4) == want, (key, got[key], want)
        assert isinstance(got[key], float)


def _random_maps(seed, size=40, n_true=10, n_pred=10):
    """GT discs and a jittered / split / merged / spurious prediction, non-contiguous ids."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    true = np.zeros((size, size), np.int32)
    pred = np.zeros((size, size), np.int32)
    for k in range(n_true):
        cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.integers(2, 7)
        true[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 3 * k + 2
        if rng.random() < 0.8:  # detected, shifted and resized
            dy, dx, dr = rng.integers(-3, 4), rng.integers(-3, 4), rng.integers(-1, 2)
            pred[(yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 <= max(r + dr, 1) ** 2] = 5 * k + 7
    for k in range(n_pred):  # spurious blobs, some overlapping several GT
        cy, cx = rng.integers(0, size, 2)
        h, w = rng.integers(1, 9, 2)
        pred[cy:cy + h, cx:cx + w] = 1000 + k
    true[0, 0] = pred[0, 0] = 0  # the reference assumes a background pixel
    return true, pred


def _check_against_reference(true, pred):
    t, p = remap_label(true), remap_label(pred)
    assert dice(true, pred) == pytest.approx(ref_dice(t, p), abs=1e-12)
    assert dice2(true, pred) == pytest.approx(ref_dice2(t, p), abs=1e-12)
    assert aji(true, pred) == pytest.approx(ref_aji(t, p), abs=1e-12)
    assert aji_plus(true, pred) == pytest.approx(ref_aji_plus(t, p), abs=1e-12)
    for thr in (0.5, 0.3, 0.75):
        np.testing.assert_allclose(panoptic_quality(true, pred, thr), ref_pq(t, p, thr), atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 100_000), n_true=st.integers(1, 14), n_pred=st.integers(0, 8))
def test_vectorised_matches_reference_on_random_maps(seed, n_true, n_pred):
    true, pred = _random_maps(seed, n_true=n_true, n_pred=n_pred)
    if true.max() == 0 or pred.max() == 0 or pair_table(true, pred).inter.size == 0:
        return  # degenerate maps: the reference raises there (covered by the edge-case tests)
    _check_against_reference(true, pred)


def test_reference_agreement_with_large_ids_uses_sparse_path():
    true, pred = _random_maps(3, n_true=12, n_pred=6)
    big_t = np.where(true > 0, true.astype(np.int64) * 10_000_019, 0)
    big_p = np.where(pred > 0, pred.astype(np.int64) * 9_999_991, 0)
    for f in (dice2, aji, aji_plus, panoptic_quality):
        np.testing.assert_allclose(f(big_t, big_p), f(true, pred))


def test_pair_table_counts():
    true = np.array([[0, 1, 1], [2, 2, 0], [2, 0, 0]], np.int32)
    pred = np.array([[5, 5, 0], [5, 9, 9], [0, 0, 0]], np.int32)
    tab = pair_table(true, pred)
    assert tab.true_area.tolist() == [2, 3] and tab.pred_area.tolist() == [3, 2]
    assert list(zip(tab.true_idx, tab.pred_idx, tab.inter)) == [(0, 0, 1), (1, 0, 1), (1, 1, 1)]


def test_perfect_prediction_scores_one():
    true, _ = _random_maps(1)
    pred = np.where(true > 0, true + 100, 0)
    assert dice(true, pred) == dice2(true, pred) == 1.0
    assert aji(true, pred) == pytest.approx(1.0) and aji_plus(true, pred) == pytest.approx(1.0)
    dq, sq, pq = panoptic_quality(true, pred)
    assert dq == 1.0 and sq == pytest.approx(1.0, abs=1e-5) and pq == pytest.approx(1.0, abs=1e-5)


def test_edge_both_empty():
    z = np.zeros((8, 8), np.int32)
    assert dice(z, z) == dice2(z, z) == aji(z, z) == aji_plus(z, z) == 1.0
    assert panoptic_quality(z, z) == (1.0, 1.0, 1.0)
    with pytest.raises(ZeroDivisionError):  # documented deviation from the reference
        ref_pq(z, z)


def test_edge_one_side_empty():
    true, _ = _random_maps(2)
    z = np.zeros_like(true)
    for t, p in ((true, z), (z, true)):
        assert dice(t, p) == dice2(t, p) == aji(t, p) == aji_plus(t, p) == 0.0
        assert panoptic_quality(t, p) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):  # the reference AJI fails on an empty prediction
        ref_aji(remap_label(true), z)


def test_edge_no_overlap_and_no_background():
    true = np.zeros((6, 6), np.int32)
    pred = np.zeros((6, 6), np.int32)
    true[:2, :2], pred[4:, 4:] = 1, 1
    assert dice2(true, pred) == 0.0 and aji(true, pred) == 0.0 and panoptic_quality(true, pred)[2] == 0.0
    full_t = np.ones((4, 4), np.int32)
    full_t[:, 2:] = 2
    full_p = np.full((4, 4), 7, np.int32)  # no background: every id is an instance
    assert dice(full_t, full_p) == 1.0
    assert aji(full_t, full_p) == pytest.approx(0.5)
    assert panoptic_quality(full_t, full_p) == (0.0, 0.0, 0.0)


def test_bad_input_messages():
    with pytest.raises(ValueError, match="same shape"):
        aji(np.zeros((3, 3), np.int32), np.zeros((3, 4), np.int32))
    with pytest.raises(TypeError, match="`true`"):
        aji(np.zeros((3, 3), np.float32), np.zeros((3, 3), np.int32))
    with pytest.raises(ValueError, match=">= 0"):
        aji(-np.ones((3, 3), np.int32), np.zeros((3, 3), np.int32))
    with pytest.raises(ValueError, match="match_iou"):
        panoptic_quality(np.zeros((3, 3), np.int32), np.zeros((3, 3), np.int32), 1.5)


# ---------------------------------------------------------------- classification


def _random_points(rng, n_img=4, k=4):
    true_list, pred_list = [], []
    for _ in range(n_img):
        n = int(rng.integers(0, 25))
        tc = rng.uniform(0, 100, (n, 2))
        tt = rng.integers(1, k + 1, n)
        keep = rng.random(n) < 0.8
        pc = tc[keep] + rng.normal(0, 6, (int(keep.sum()), 2))
        pt = np.where(rng.random(int(keep.sum())) < 0.7, tt[keep], rng.integers(1, k + 1, int(keep.sum())))
        m = int(rng.integers(0, 5))
        pc = np.concatenate([pc, rng.uniform(0, 100, (m, 2))])
        pt = np.concatenate([pt, rng.integers(1, k + 1, m)])
        true_list.append({"inst_centroid": tc, "inst_type": tt[:, None]})
        pred_list.append({"inst_centroid": pc, "inst_type": pt})
    return true_list, pred_list


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 100_000))
def test_classification_matches_reference(seed):
    true_list, pred_list = _random_points(np.random.default_rng(seed))
    got = classification_stats(true_list, pred_list)
    want = ref_classification(true_list, pred_list)
    types = sorted(got["f1_per_type"])
    flat = [got["f1_detection"], got["accuracy"]] + [got["f1_per_type"][c] for c in types]
    np.testing.assert_allclose(flat, want, atol=1e-12, equal_nan=True)


def test_classification_hand_example():
    true_list = [{"inst_centroid": [[10, 10], [50, 50], [90, 90]], "inst_type": [1, 2, 2]}]
    pred_list = [{"inst_centroid": [[11, 10], [50, 58], [0, 90]], "inst_type": [1, 1, 2]}]
    out = classification_stats(true_list, pred_list)
    # pairs: (t0,p0) type 1/1, (t1,p1) type 2/1 (distance 8 <= 12); t2 and p2 unpaired
    assert out["tp"] == 2 and out["fp"] == 1 and out["fn"] == 1
    assert out["f1_detection"] == pytest.approx(4 / 6) and out["accuracy"] == pytest.approx(0.5)
    assert out["f1_per_type"][1] == pytest.approx(2 / (2 + 2)) and out["f1_per_type"][2] == pytest.approx(0 / 4)


def test_classification_edge_cases():
    empty = {"inst_centroid": np.zeros((0, 2)), "inst_type": np.zeros(0, int)}
    out = classification_stats([empty], [empty])
    assert out["f1_detection"] == 1.0 and math.isnan(out["accuracy"]) and out["f1_per_type"] == {}
    one = {"inst_centroid": [[5.0, 5.0]], "inst_type": [3]}
    out = classification_stats([one, empty], [empty, empty], type_ids=[3, 4])
    assert out["f1_detection"] == 0.0 and out["f1_per_type"] == {3: 0.0, 4: 1.0}
    with pytest.raises(ValueError, match="same length"):
        classification_stats([one], [])
    with pytest.raises(ValueError, match="inst_type"):
        classification_stats([{"inst_centroid": [[1, 2]]}], [one])
