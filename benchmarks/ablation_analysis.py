"""From the runs of the ablation to its numbers: per-arm endpoints with hierarchical intervals.

Input per (arm, seed): the whole-tile evaluation of :func:`benchmarks.downstream.evaluate.evaluate_tiles`
(per-tile counts and segmentation scores, per ground-truth nucleus its tile, true type and mean type
probabilities). Every statistic is a function of tile weights (a bootstrap resample's tile
multiplicities), evaluated per seed on the same resamples for every arm; the seed level is then
resampled (:mod:`benchmarks.stats`). Paired differences with the baseline are per seed (the same
seed's baseline run shares the real items, the weights' initialisation and the tile resample).

Endpoints (rare class = CoNSeP's miscellaneous):

- ``rare_ap`` (primary): average precision of the rare class on ground-truth nuclei, threshold-free;
- ``rare_auroc``: the same scores' AUROC (the baseline's is the gate);
- ``rare_f1`` with ``rare_tp`` / ``rare_fp`` / ``rare_fn``: HoVer-Net's per-type F1 after detection
  (FP and FN include unpaired detections);
- ``pq``: mean panoptic quality over tiles; ``accuracy``: HoVer-Net's type accuracy of paired
  nuclei; ``gt_accuracy``: the type argmax on ground-truth nuclei; ``f1_<c>``: per-class F1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.stats import (
    Z_RESOLVE,
    average_precision_weighted,
    bootstrap_weights,
    resolvable_difference,
    roc_auc_weighted,
    summarise_draws,
)

__all__ = ["PRIMARY", "analyse", "metric_functions"]

PRIMARY = "rare_ap"


def metric_functions(ev: dict[str, Any], type_ids: Sequence[int], rare: int) -> dict[str, Any]:
    """``{name: f(tile_weights float [B, n_tiles]) -> float [B]}`` for one run's evaluation."""
    counts = np.asarray(ev["counts"], np.float64)
    seg = np.asarray(ev["seg"], np.float64)
    tile = np.asarray(ev["nuc_tile"], np.int64)
    label = np.asarray(ev["nuc_type"]) == rare
    prob = np.asarray(ev["nuc_prob"], np.float64)
    score = prob[:, rare] if prob.size else np.zeros(0)
    gt_ok = (np.argmax(prob[:, 1:], 1) + 1 == np.asarray(ev["nuc_type"])) if prob.size else np.zeros(0, bool)
    k = list(type_ids).index(rare)

    def c(w):
        return w @ counts

    def per_type(w, j):
        s = c(w)
        tp, fp, fn, fpd, fnd = (s[:, 3 + 5 * j + i] for i in range(5))
        den = 2 * tp + 2 * fp + 2 * fn + fpd + fnd
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), np.nan)

    def accuracy(w):
        s = c(w)
        paired = s[:, 0]
        right = sum(s[:, 3 + 5 * j] for j in range(len(type_ids)))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(paired > 0, right / np.where(paired > 0, paired, 1), np.nan)

    def weighted_mean(w, values):
        with np.errstate(invalid="ignore", divide="ignore"):
            return (w @ values) / w.sum(1)

    fns = {
        "rare_ap": lambda w: average_precision_weighted(score, label, w[:, tile]),
        "rare_auroc": lambda w: roc_auc_weighted(score, label, w[:, tile]),
        "rare_f1": lambda w: per_type(w, k),
        "rare_tp": lambda w: c(w)[:, 3 + 5 * k],
        "rare_fp": lambda w: c(w)[:, 4 + 5 * k] + c(w)[:, 6 + 5 * k],
        "rare_fn": lambda w: c(w)[:, 5 + 5 * k] + c(w)[:, 7 + 5 * k],
        "pq": lambda w: weighted_mean(w, seg[:, 5]),
        "dice": lambda w: weighted_mean(w, seg[:, 0]),
        "aji": lambda w: weighted_mean(w, seg[:, 1]),
        "f1_detection": lambda w: _f1(c(w)[:, 0], c(w)[:, 1], c(w)[:, 2]),
        "accuracy": accuracy,
        "gt_accuracy": lambda w: weighted_mean(w[:, tile], gt_ok.astype(np.float64)) if tile.size else
        np.full(w.shape[0], np.nan),
    }
    for j, t in enumerate(type_ids):
        fns[f"f1_{t}"] = (lambda w, j=j: per_type(w, j))
    return fns


def _f1(tp, fp, fn):
    den = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), np.nan)


def _nuc_weights(fn, draws_tiles: np.ndarray) -> np.ndarray:
    full = np.ones((1, draws_tiles.shape[1]))
    return np.asarray(fn(np.concatenate([full, draws_tiles.astype(np.float64)])), np.float64)


#: head-to-head comparisons reported besides the differences with the baseline (when both arms ran)
PAIRS = (("diffmix-union", "diffmix-composed"), ("diffmix-b", "gradmix"), ("diffmix-b", "rare-crop"))


def analyse(runs: dict[str, dict[int, dict[str, Any]]], *, type_ids: Sequence[int], rare: int, n_boot: int,
            seed: int = 0, baseline: str = "baseline", pairs: Sequence[tuple[str, str]] = PAIRS) -> dict[str, Any]:
    """Per arm: every endpoint with its hierarchical interval; paired differences with the baseline.

    Args:
        runs: ``runs[arm][seed]`` = the evaluation dict of that run (all arms: the same seeds).
        type_ids: Scored types.
        rare: The rare class of the endpoints.
        n_boot: Bootstrap resamples.
        seed: Seed of the resamples (the same for every arm).
        baseline: The reference arm of the paired differences.
        pairs: Head-to-head comparisons ``(a, b)`` (``a - b``, paired per seed), where both arms ran.

    Returns:
        ``{"n_boot", "seeds", "arms": {arm: {"metrics": {name: summary}, "vs_baseline": {name: summary +
        seeds_better}}}, "pairs": {"a vs b": {name: summary}}, "resolvable": {name: smallest resolvable
        difference}, "z_resolve"}``.
    """
    arms = list(runs)
    seeds = sorted(runs[arms[0]])
    for arm in arms:
        if sorted(runs[arm]) != seeds:
            raise ValueError(f"arm {arm!r} has seeds {sorted(runs[arm])}, the others {seeds}: the paired "
                             "analysis needs every arm on the same seeds")
    n_tiles = np.asarray(runs[arms[0]][seeds[0]]["counts"]).shape[0]
    draws = bootstrap_weights(n_tiles, len(seeds), n_boot, seed)
    values: dict[str, dict[str, np.ndarray]] = {}  # arm -> metric -> [n_seeds, B + 1]
    for arm in arms:
        per = [metric_functions(runs[arm][s], type_ids, rare) for s in seeds]
        values[arm] = {name: np.stack([_nuc_weights(p[name], draws.tiles) for p in per]) for name in per[0]}
    out: dict[str, Any] = {"n_boot": n_boot, "seeds": seeds, "n_tiles": n_tiles, "arms": {}, "z_resolve": Z_RESOLVE}
    ses: dict[str, list[float]] = {}
    for arm in arms:
        row: dict[str, Any] = {"metrics": {}, "vs_baseline": {}}
        for name, v in values[arm].items():
            row["metrics"][name] = summarise_draws(v[:, 1:], v[:, 0], draws)
            if arm != baseline and baseline in values:
                d = v - values[baseline][name]
                summ = summarise_draws(d[:, 1:], d[:, 0], draws)
                summ["seeds_better"] = int(np.sum(d[:, 0] > 0))
                summ["seeds_worse"] = int(np.sum(d[:, 0] < 0))
                row["vs_baseline"][name] = summ
                ses.setdefault(name, []).append(summ["se"])
        out["arms"][arm] = row
    out["pairs"] = {}
    for a, b in pairs:
        if a in values and b in values:
            row = {}
            for name in (PRIMARY, "rare_f1", "accuracy", "pq"):
                d = values[a][name] - values[b][name]
                row[name] = summarise_draws(d[:, 1:], d[:, 0], draws)
                row[name]["seeds_better"] = int(np.sum(d[:, 0] > 0))
                row[name]["seeds_worse"] = int(np.sum(d[:, 0] < 0))
            out["pairs"][f"{a} vs {b}"] = row
    out["resolvable"] = {name: resolvable_difference(v) for name, v in ses.items()}
    return out
