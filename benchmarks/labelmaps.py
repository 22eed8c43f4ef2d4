"""Label-map throughput: enlarge, balance and encode vs the reference code's per-nucleus approach.

Run::

    python -m benchmarks.labelmaps                  # table + benchmarks/results/labelmaps.json

Everything runs on one core (``torch.set_num_threads(1)``) on 256x256 toy maps (100-250 nuclei).
The baselines below are plain, readable re-implementations of the reference code (one full-image
mask per nucleus, ``scipy.ndimage.binary_dilation`` on the whole image, as in DiffMix's
``image_datasets_pathology_paper`` and ``GradMix/grad_mix.py``); they are also the oracles the unit
tests compare the fast paths against, given the same drawn parameters.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffmix_aug.data.remap import remap_label
from diffmix_aug.labelmaps.balance import BalanceParams, apply_balance, draw_balance_params
from diffmix_aug.labelmaps.donors import DonorBank
from diffmix_aug.labelmaps.encode import encode_condition
from diffmix_aug.labelmaps.enlarge import EnlargeParams, apply_enlarge, draw_enlarge_params

RESULTS = Path(__file__).parent / "results"

# --------------------------------------------------------------------------------------------
# Plain reference implementations (per-nucleus full-image masks)
# --------------------------------------------------------------------------------------------


def reference_encode(type_map: np.ndarray, inst_map: np.ndarray, num_classes: int) -> np.ndarray:
    """One full-image mask per class and per instance id (background included)."""
    h, w = type_map.shape
    out = np.zeros((num_classes + 1, h, w), np.float32)
    for c in range(num_classes):
        out[c] = type_map == c
    edge = np.zeros((h, w), bool)
    for i in np.unique(inst_map):
        m = inst_map == i
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            nb = np.zeros((h, w), bool)  # nb[y, x] = m[y + dy, x + dx], False outside the image
            nb[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)] = \
                m[max(dy, 0):h - max(-dy, 0), max(dx, 0):w - max(-dx, 0)]
            inside = np.zeros((h, w), bool)
            inside[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)] = True
            edge |= m & inside & ~nb
    out[num_classes] = edge
    return out


def reference_enlarge(inst_map: np.ndarray, type_map: np.ndarray, params: EnlargeParams) -> np.ndarray:
    """DiffMix's enlarging loop: fixed nuclei first, then each nucleus' full mask shifted, in id order.

    Returns ``(inst_map, type_map)`` with ids remapped by ``remap_label``.
    """
    h, w = inst_map.shape
    out_i = np.zeros((h, w), np.int64)
    out_t = np.zeros((h, w), np.int64)
    avoid = params.overlap == "avoid"
    order = [k for k in range(params.ids.size) if params.fixed[k]] + \
            [k for k in range(params.ids.size) if not params.fixed[k]]
    for k in order:
        if params.dropped[k]:
            continue
        ys, xs = np.nonzero(inst_map == params.ids[k])
        t = type_map[ys[0], xs[0]]
        ys, xs = ys + params.shifts[k, 0], xs + params.shifts[k, 1]
        ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        ys, xs = ys[ok], xs[ok]
        if avoid:
            free = out_i[ys, xs] == 0
            ys, xs = ys[free], xs[free]
        out_i[ys, xs] = params.ids[k]
        out_t[ys, xs] = t
    return remap_label(out_i).astype(np.int32), out_t.astype(np.int32)


def reference_balance(inst_map: np.ndarray, type_map: np.ndarray, donors: DonorBank | None,
                      params: BalanceParams, size_ratio: float = 2.3) -> tuple[np.ndarray, np.ndarray, list]:
    """``GradMix/grad_mix.py`` label mixing with full-image masks, from the drawn selection and pool.

    Only ``params.selected`` (the random draw) and ``params.pool`` (the random pool order) are
    used; the area sort, the greedy donor walk and the pastes are recomputed here.

    Returns:
        ``(inst_map, type_map, [(major_id, donor_ref), ...])``.
    """
    from scipy.ndimage import binary_dilation, center_of_mass

    h, w = inst_map.shape
    out = inst_map.astype(np.int64).copy()
    ids = [int(i) for i in np.unique(inst_map) if i]
    cls = {i: int(type_map[inst_map == i][0]) for i in ids}
    majors = sorted(params.selected.tolist(), key=lambda m: int((inst_map == m).sum()))
    pool = params.pool.tolist()
    used = []
    for m in majors:
        mask0 = inst_map == m
        mask = binary_dilation(mask0, iterations=2)
        size1 = int(mask.sum())
        cy, cx = center_of_mass(mask0)
        pick = None
        for ref in pool:
            if ref >= 0:
                d_mask = donors.masks[ref]
                d_type = int(donors.types[ref])
            else:
                full = inst_map == -ref
                rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
                d_mask = full[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
                d_type = cls[-ref]
            if size1 >= size_ratio * int(d_mask.sum()):
                pick = (ref, d_mask, d_type)
                break
        if pick is None:
            continue
        pool.remove(pick[0])
        used.append((m, pick[0]))
        out[mask0] = 0
        h2, w2 = pick[1].shape
        r0, c0 = int(np.floor(np.round(cy) - h2 / 2)), int(np.floor(np.round(cx) - w2 / 2))
        big = np.zeros((h + 2 * max(h2, w2), w + 2 * max(h2, w2)), bool)  # room for pastes over the edge
        p = max(h2, w2)
        big[r0 + p:r0 + p + h2, c0 + p:c0 + p + w2] = pick[1]
        out[big[p:p + h, p:p + w]] = m
        cls[m] = pick[2]
    out_t = np.zeros((h, w), np.int64)
    for i in np.unique(out):
        if i:
            out_t[out == i] = cls[int(i)]
    return remap_label(out).astype(np.int32), out_t.astype(np.int32), used


def random_label_map(rng: np.random.Generator, size: int = 64, n_nuclei: int = 12, num_classes: int = 5,
                     rare_share: float = 0.2, radius: tuple[int, int] = (2, 7)) -> tuple[np.ndarray, np.ndarray]:
    """Random ellipse nuclei (later ones overwrite earlier ones), ids remapped 1..n, one type each.

    Class 1 is drawn with probability ``rare_share``, the others uniformly. Returns ``(inst, type)``.
    """
    inst = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    types = np.zeros(n_nuclei + 1, np.int32)
    for i in range(1, n_nuclei + 1):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(*radius, 2)
        inst[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = i
        types[i] = 1 if rng.random() < rare_share else int(rng.integers(2, max(num_classes, 3)))
    typ = types[inst]
    inst = remap_label(inst)
    return inst, typ * (inst > 0)


# --------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------


def _time_per_map(fn, items, repeats: int) -> list[float]:
    """Seconds per map, one value per (repeat, map)."""
    out = []
    for _ in range(repeats):
        for it in items:
            t0 = time.perf_counter()
            fn(*it)
            out.append(time.perf_counter() - t0)
    return out


def _stats(ts: list[float]) -> dict[str, float]:
    q = np.percentile(ts, [25, 75])
    med = statistics.median(ts)
    return {"median_ms": med * 1e3, "p25_ms": float(q[0]) * 1e3, "p75_ms": float(q[1]) * 1e3,
            "maps_per_s": 1.0 / med, "n": len(ts)}


def run(n_maps: int, repeats: int, size: int, seed: int) -> dict[str, Any]:
    from tqdm import tqdm

    from diffmix_aug.data.toy import make_toy_dataset

    torch.set_num_threads(1)
    ds = make_toy_dataset(n_maps, size, seed)
    samples = [ds[i] for i in range(n_maps)]
    bank = DonorBank.from_dataset(ds)
    rng = np.random.default_rng(seed)
    e_params = [draw_enlarge_params(rng, s.inst_map) for s in samples]
    b_params = [draw_balance_params(rng, s.inst_map, s.type_map, bank, exclude_source=i)
                for i, s in enumerate(samples)]
    nc = ds.info.num_classes
    cases = {
        "enlarge": (lambda i, t: apply_enlarge(i, t, draw_enlarge_params(rng, i)),
                    lambda i, t, p: reference_enlarge(i, t, p),
                    [(s.inst_map, s.type_map) for s in samples],
                    [(s.inst_map, s.type_map, p) for s, p in zip(samples, e_params)]),
        "balance": (lambda i, t, k: apply_balance(i, t, draw_balance_params(rng, i, t, bank, exclude_source=k), bank),
                    lambda i, t, p: reference_balance(i, t, bank, p),
                    [(s.inst_map, s.type_map, k) for k, s in enumerate(samples)],
                    [(s.inst_map, s.type_map, p) for s, p in zip(samples, b_params)]),
        "encode": (lambda i, t: encode_condition(t, i, nc), lambda i, t: reference_encode(t, i, nc),
                   [(s.inst_map, s.type_map) for s in samples], [(s.inst_map, s.type_map) for s in samples]),
    }
    results: dict[str, Any] = {}
    for name, (fast, ref, fast_items, ref_items) in tqdm(cases.items(), desc="labelmaps", unit="case"):
        fast(*fast_items[0])  # warm-up
        f = _stats(_time_per_map(fast, fast_items, repeats))
        r = _stats(_time_per_map(ref, ref_items, max(1, repeats // 2)))
        results[name] = {"fast": f, "baseline": r, "speedup": r["median_ms"] / f["median_ms"]}
    nuclei = [len(s.info) for s in samples]
    return {
        "benchmark": "labelmaps",
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "python": sys.version.split()[0], "cpu_count": __import__("os").cpu_count()},
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "config": {"maps": n_maps, "repeats": repeats, "size": size, "seed": seed, "threads": 1,
                   "dataset": "toy", "nuclei_per_map_mean": float(np.mean(nuclei)),
                   "nuclei_per_map_range": [int(min(nuclei)), int(max(nuclei))], "donors": len(bank),
                   "enlarge": "max_shift=15 p_shift=0.3 border_margin=32 overwrite (params drawn in the timed call)",
                   "balance": "major_fraction=0.8 size_ratio=2.3 border=30 (params drawn in the timed call; "
                              "baseline recomputes sort, greedy walk and pastes from the same draws)"},
        "goals_ms": {"enlarge": 2.0, "encode": 2.0, "balance": 5.0, "speedup": 10.0},
        "results": results,
    }


def _table(res: dict[str, Any]) -> str:
    lines = [f"{'case':<9} {'fast ms/map':>12} {'(p25-p75)':>15} {'maps/s':>9} {'baseline ms':>12} {'speedup':>8} goal"]
    for name, r in res["results"].items():
        f, b = r["fast"], r["baseline"]
        goal = res["goals_ms"][name]
        ok = f["median_ms"] < goal and r["speedup"] >= res["goals_ms"]["speedup"]
        lines.append(f"{name:<9} {f['median_ms']:>12.3f} {f['p25_ms']:>7.3f}-{f['p75_ms']:<7.3f} {f['maps_per_s']:>9.0f} "
                     f"{b['median_ms']:>12.2f} {r['speedup']:>7.1f}x {'ok' if ok else 'MISSED'} "
                     f"(<{goal} ms, >=10x)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maps", type=int, default=16, help="toy maps timed (each once per repeat)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "labelmaps.json")
    args = ap.parse_args(argv)
    from diffmix_aug._io import atomic_write_text

    res = run(args.maps, args.repeats, args.size, args.seed)
    print(_table(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
