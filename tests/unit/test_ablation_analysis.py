"""The ablation's analysis (``benchmarks/ablation_analysis.py``) on runs whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.ablation_analysis import analyse, metric_functions
from benchmarks.stats import average_precision

TYPES = [1, 2, 3, 4]


def _run(seed: int, shift: float, n_tiles: int = 5, per_tile: int = 60) -> dict:
    rng = np.random.default_rng([seed, 7])
    tile = np.repeat(np.arange(n_tiles), per_tile)
    typ = rng.integers(2, 5, tile.size)
    typ[rng.random(tile.size) < 0.1] = 1
    prob = rng.dirichlet(np.ones(5), tile.size)
    prob[:, 1] = np.clip(prob[:, 1] + shift * (typ == 1), 0, None)
    counts = rng.integers(0, 20, (n_tiles, 3 + 5 * len(TYPES)))
    seg = rng.random((n_tiles, 6))
    return {"seg": seg, "counts": counts, "nuc_tile": tile, "nuc_type": typ, "nuc_prob": prob, "type_ids": TYPES}


def test_identical_arm_has_zero_difference_and_a_better_one_is_resolved():
    seeds = range(5)
    runs = {"baseline": {s: _run(s, 0.0) for s in seeds},
            "same": {s: _run(s, 0.0) for s in seeds},
            "better": {s: _run(s, 0.4) for s in seeds}}
    out = analyse(runs, type_ids=TYPES, rare=1, n_boot=300)
    same = out["arms"]["same"]["vs_baseline"]["rare_ap"]
    assert same["mean"] == 0 and same["ci95"] == [0.0, 0.0] and same["seeds_better"] == 0
    better = out["arms"]["better"]["vs_baseline"]["rare_ap"]
    assert better["ci95"][0] > 0 and better["seeds_better"] == 5
    assert out["arms"]["baseline"]["metrics"]["rare_ap"]["mean"] == pytest.approx(
        np.mean([average_precision(r["nuc_prob"][:, 1], r["nuc_type"] == 1) for r in runs["baseline"].values()]))
    assert out["resolvable"]["rare_ap"] > 0 and out["n_tiles"] == 5 and out["seeds"] == list(seeds)
    out = analyse(runs, type_ids=TYPES, rare=1, n_boot=100, pairs=(("better", "same"), ("same", "missing")))
    assert list(out["pairs"]) == ["better vs same"] and out["pairs"]["better vs same"]["rare_ap"]["ci95"][0] > 0
    with pytest.raises(ValueError, match="same seeds"):
        analyse({"baseline": {0: _run(0, 0)}, "x": {1: _run(1, 0)}}, type_ids=TYPES, rare=1, n_boot=10)


def test_counts_metrics_match_classification_definitions():
    r = _run(0, 0.0)
    f = metric_functions(r, TYPES, 1)
    w = np.ones((1, 5))
    c = r["counts"].sum(0).astype(float)
    tp, fp, fn, fpd, fnd = c[3:8]
    assert f["rare_f1"](w)[0] == pytest.approx(2 * tp / (2 * tp + 2 * fp + 2 * fn + fpd + fnd))
    assert f["rare_fp"](w)[0] == fp + fpd and f["rare_fn"](w)[0] == fn + fnd
    assert f["accuracy"](w)[0] == pytest.approx(sum(c[3 + 5 * k] for k in range(4)) / c[0])
    assert f["pq"](w)[0] == pytest.approx(r["seg"][:, 5].mean())
    w2 = np.array([[2.0, 0, 1, 1, 1]])  # tile 0 twice, tile 1 left out
    assert f["pq"](w2)[0] == pytest.approx((2 * r["seg"][0, 5] + r["seg"][2:, 5].sum()) / 5)
