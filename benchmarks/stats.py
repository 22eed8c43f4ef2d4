"""Statistics of the real-tissue evidence: threshold-free rare-class scores and a hierarchical bootstrap.

- :func:`average_precision` and :func:`roc_auc` score ground-truth nuclei by the network's
  rare-class probability (threshold-free), with optional integer weights (a bootstrap's tile
  multiplicities). AP is the step-wise area under the precision-recall curve, tied scores forming
  one threshold (scikit-learn's ``average_precision_score``); AUROC is the Mann-Whitney statistic,
  ties counted half.
- :func:`bootstrap_weights` draws the hierarchical resamples: tiles with replacement, then seeds
  with replacement (the two real units of independence: nuclei of one tile are correlated, and
  a training run is one draw of weights, batches and pool). A statistic is evaluated per seed on
  the resampled tiles and averaged over the resampled seeds; a paired difference with the
  baseline is taken per seed (same tiles) before the seeds are resampled, so a seed that gained
  nothing counts as such.
- :func:`resolvable_difference`: the smallest difference the design resolves, ``(z_0.975 + z_0.8)``
  times the bootstrap standard error of a paired difference (two-sided 5 % test, 80 % power).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Z_RESOLVE", "BootstrapDraws", "average_precision", "average_precision_weighted", "bootstrap_weights",
           "counts_f1", "interval", "resolvable_difference", "roc_auc", "roc_auc_weighted", "summarise_draws"]

Z_RESOLVE = 1.959963984540054 + 0.8416212335729143  # two-sided 5 % and 80 % power


def _prep(scores, labels, weights):
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"`scores` and `labels` must have one entry per nucleus, got {s.shape} and {y.shape}")
    w = np.ones((1, s.size)) if weights is None else np.asarray(weights, np.float64)
    if w.ndim == 1:
        w = w[None]
    if w.shape[-1] != s.size:
        raise ValueError(f"`weights` must be [..., {s.size}] (one per nucleus), got {w.shape}")
    return s, y, w


def average_precision_weighted(scores, labels, weights=None) -> np.ndarray:
    """AP for each row of ``weights`` (``float [B, n]`` multiplicities; None: all 1).

    Returns:
        ``float64 [B]`` (NaN where a row weights no positive).
    """
    s, y, w = _prep(scores, labels, weights)
    order = np.argsort(-s, kind="stable")
    s, y, w = s[order], y[order], w[:, order]
    if s.size == 0:
        return np.full(w.shape[0], np.nan)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # end of each tie group
    tp = np.cumsum(w * y, axis=1)[:, last]
    tot = np.cumsum(w, axis=1)[:, last]
    pos = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tot > 0, tp / np.maximum(tot, 1e-300), 0.0)
        recall = tp / pos
        d_recall = np.diff(np.concatenate([np.zeros((w.shape[0], 1)), recall], 1), axis=1)
        ap = (d_recall * precision).sum(1)
    return np.where(pos[:, 0] > 0, ap, np.nan)


def average_precision(scores, labels, weights=None) -> float:
    """Average precision of ``scores`` for ``labels`` (one weight per nucleus, optional)."""
    w = None if weights is None else np.asarray(weights, np.float64).reshape(1, -1)
    return float(average_precision_weighted(scores, labels, w)[0])


def roc_auc_weighted(scores, labels, weights=None) -> np.ndarray:
    """AUROC for each row of ``weights`` (``float [B, n]``): P(score_pos > score_neg) + P(tie) / 2.

    Returns:
        ``float64 [B]`` (NaN where a row weights no positive or no negative).
    """
    s, y, w = _prep(scores, labels, weights)
    order = np.argsort(s, kind="stable")
    s, y, w = s[order], y[order], w[:, order]
    if s.size == 0:
        return np.full(w.shape[0], np.nan)
    group = np.r_[0, np.cumsum(np.diff(s) != 0)]
    n_groups = int(group[-1]) + 1
    wp = np.zeros((w.shape[0], n_groups))
    wn = np.zeros((w.shape[0], n_groups))
    for b in range(w.shape[0]):  # group sums (B is at most a few thousand)
        wp[b] = np.bincount(group, weights=w[b] * y, minlength=n_groups)
        wn[b] = np.bincount(group, weights=w[b] * ~y, minlength=n_groups)
    neg_below = np.cumsum(wn, 1) - wn
    u = (wp * (neg_below + 0.5 * wn)).sum(1)
    denom = wp.sum(1) * wn.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, u / denom, np.nan)


def roc_auc(scores, labels, weights=None) -> float:
    """AUROC of ``scores`` for ``labels`` (one weight per nucleus, optional)."""
    w = None if weights is None else np.asarray(weights, np.float64).reshape(1, -1)
    return float(roc_auc_weighted(scores, labels, w)[0])


def counts_f1(tp, fp, fn) -> np.ndarray:
    """``2 tp / (2 tp + fp + fn)`` elementwise (NaN where all three are 0)."""
    tp, fp, fn = (np.asarray(v, np.float64) for v in (tp, fp, fn))
    den = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), np.nan)


@dataclass(frozen=True)
class BootstrapDraws:
    """Hierarchical resamples.

    Attributes:
        tiles: ``int64 [B, n_tiles]`` multiplicity of each tile in each resample (sums to n_tiles).
        seeds: ``int64 [B, n_seeds]`` multiplicity of each seed (sums to n_seeds).
    """

    tiles: np.ndarray
    seeds: np.ndarray


def bootstrap_weights(n_tiles: int, n_seeds: int, n_boot: int, seed: int = 0) -> BootstrapDraws:
    """Draw ``n_boot`` hierarchical resamples: tiles with replacement, then seeds with replacement."""
    if n_tiles < 1 or n_seeds < 1 or n_boot < 1:
        raise ValueError(f"need n_tiles, n_seeds, n_boot >= 1, got {n_tiles}, {n_seeds}, {n_boot}")
    rng = np.random.default_rng([seed, 2028])
    t = rng.integers(0, n_tiles, (n_boot, n_tiles))
    s = rng.integers(0, n_seeds, (n_boot, n_seeds))
    tiles = np.stack([np.bincount(r, minlength=n_tiles) for r in t])
    seeds = np.stack([np.bincount(r, minlength=n_seeds) for r in s])
    return BootstrapDraws(tiles, seeds)


def summarise_draws(per_seed: np.ndarray, point: np.ndarray, draws: BootstrapDraws) -> dict[str, object]:
    """Seed-resampled means of a statistic already evaluated per seed on each tile resample.

    Args:
        per_seed: ``float [n_seeds, B]``: the statistic of seed s on tile resample b (a paired
            difference when it is one already).
        point: ``float [n_seeds]``: the statistic of each seed on all tiles.
        draws: The resamples (``draws.seeds`` is applied here).

    Returns:
        ``{"mean", "per_seed", "ci95": [lo, hi], "se", "draws_used"}``; resamples where a seed's
        statistic is undefined (NaN, e.g. no rare nucleus in the drawn tiles) are dropped and counted.
    """
    per_seed = np.asarray(per_seed, np.float64)
    w = draws.seeds.T.astype(np.float64)  # [n_seeds, B]
    ok = ~np.isnan(per_seed).any(0)
    vals = (np.where(np.isnan(per_seed), 0.0, per_seed) * w).sum(0) / w.sum(0)
    vals = vals[ok]
    point = np.asarray(point, np.float64)
    lo, hi = interval(vals)
    return {"mean": float(np.nanmean(point)) if np.isfinite(point).any() else float("nan"),
            "per_seed": [float(v) for v in point], "ci95": [lo, hi],
            "se": float(np.std(vals, ddof=1)) if vals.size > 1 else float("nan"), "draws_used": int(vals.size)}


def interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap values (NaN when there are none)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2 * 100
    return float(np.percentile(v, a)), float(np.percentile(v, 100 - a))


def resolvable_difference(se: float | Sequence[float]) -> float:
    """``Z_RESOLVE * se`` (the median over several standard errors when a sequence is given)."""
    arr = np.asarray(se, np.float64).reshape(-1)
    arr = arr[np.isfinite(arr)]
    return float(Z_RESOLVE * np.median(arr)) if arr.size else float("nan")


def per_tile_statistic(fn: Callable[[np.ndarray], np.ndarray], draws: BootstrapDraws) -> np.ndarray:
    """``fn(tile_weights [B', n_tiles]) -> [B']`` evaluated on all resamples plus the full data.

    Returns:
        ``float [B + 1]``: entry 0 on the full data (every tile once), then one per resample.
    """
    full = np.ones((1, draws.tiles.shape[1]), np.float64)
    return np.asarray(fn(np.concatenate([full, draws.tiles.astype(np.float64)])), np.float64)
