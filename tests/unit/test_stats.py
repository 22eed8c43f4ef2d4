"""``benchmarks/stats.py``: AP and AUROC against plain references, the hierarchical bootstrap, the paired analysis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.stats import (
    Z_RESOLVE,
    average_precision,
    average_precision_weighted,
    bootstrap_weights,
    counts_f1,
    resolvable_difference,
    roc_auc,
    roc_auc_weighted,
    summarise_draws,
)


def plain_ap(scores, labels):
    """AP as the step-wise sum over distinct thresholds, descending (scikit-learn's definition)."""
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    if not y.any():
        return float("nan")
    total, prev_recall = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        tp = (pred & y).sum()
        precision, recall = tp / pred.sum(), tp / y.sum()
        total += (recall - prev_recall) * precision
        prev_recall = recall
    return float(total)


def plain_auc(scores, labels):
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = s[y], s[~y]
    if not pos.size or not neg.size:
        return float("nan")
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))


scores_labels = st.integers(2, 40).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 6).map(lambda v: v / 6), min_size=n, max_size=n),
    st.lists(st.booleans(), min_size=n, max_size=n)))


@settings(max_examples=60, deadline=None)
@given(scores_labels)
def test_ap_and_auroc_match_plain_references(sl):
    s, y = sl
    for fast, plain in ((average_precision, plain_ap), (roc_auc, plain_auc)):
        a, b = fast(s, y), plain(s, y)
        assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b)


@settings(max_examples=40, deadline=None)
@given(scores_labels, st.integers(0, 10**6))
def test_integer_weights_equal_repeated_nuclei(sl, seed):
    s, y = np.asarray(sl[0]), np.asarray(sl[1])
    w = np.random.default_rng(seed).integers(0, 4, s.size)
    rep_s, rep_y = np.repeat(s, w), np.repeat(y, w)
    for fast, rows in ((average_precision, average_precision_weighted), (roc_auc, roc_auc_weighted)):
        a, b = fast(s, y, w), fast(rep_s, rep_y)
        assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b)
        many = rows(s, y, np.stack([w, np.ones_like(w)]))
        assert (np.isnan(many[0]) and np.isnan(a)) or many[0] == pytest.approx(a)


def test_bootstrap_weights_resample_tiles_and_seeds():
    d = bootstrap_weights(5, 6, 300, seed=1)
    assert d.tiles.shape == (300, 5) and d.seeds.shape == (300, 6)
    assert (d.tiles.sum(1) == 5).all() and (d.seeds.sum(1) == 6).all()
    assert 0.3 < (d.tiles[:, 0] == 0).mean() < 0.4  # P(a tile left out) = (4/5)^5 = 0.33
    np.testing.assert_array_equal(bootstrap_weights(5, 6, 300, seed=1).tiles, d.tiles)


def test_summarise_draws_and_resolvable_difference():
    d = bootstrap_weights(4, 5, 400, seed=0)
    rng = np.random.default_rng(0)
    per_seed = rng.normal(0.3, 0.05, (5, 400))
    point = per_seed.mean(1)
    s = summarise_draws(per_seed, point, d)
    assert s["ci95"][0] < s["mean"] < s["ci95"][1] and s["draws_used"] == 400
    assert s["se"] == pytest.approx(np.std((per_seed * d.seeds.T).sum(0) / 5, ddof=1))
    per_seed[0, :10] = np.nan  # undefined resamples are dropped, and counted
    assert summarise_draws(per_seed, point, d)["draws_used"] == 390
    assert resolvable_difference([0.01, 0.02, 0.03]) == pytest.approx(Z_RESOLVE * 0.02)
    np.testing.assert_allclose(counts_f1([1, 0], [1, 0], [0, 0]), [2 / 3, np.nan])
