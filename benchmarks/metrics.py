"""Benchmark: vectorised HoVer-Net metrics vs the plain per-nucleus reference, same run.

Builds a 1000x1000 GT map with ~1,000 nuclei and a perturbed prediction (shifted, resized, missed
and spurious nuclei), checks that both implementations give the same values, and times PQ, AJI and
AJI+ (median and spread over repeats). Prints a table and writes JSON.

    python benchmarks/metrics.py --out benchmarks/results/metrics.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.metrics_reference import ref_aji, ref_aji_plus, ref_pq
from diffmix_aug._io import atomic_write_text
from diffmix_aug.data.remap import remap_label
from diffmix_aug.metrics import aji, aji_plus, panoptic_quality


def make_maps(size: int, n_nuclei: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """GT: ``n_nuclei`` discs (radius 4-9) on a jittered grid; pred: 90% of them perturbed + 5% spurious."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_nuclei)))
    step = size / side
    grid = (np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:n_nuclei] + 0.5) * step
    centres = grid + rng.uniform(-step / 4, step / 4, grid.shape)
    radii = rng.integers(4, 10, n_nuclei)
    detected = rng.random(n_nuclei) < 0.9
    shift = rng.integers(-3, 4, (n_nuclei, 2))
    dr = rng.integers(-2, 3, n_nuclei)
    n_fp = n_nuclei // 20
    fp_centres = rng.uniform(0, size, (n_fp, 2))
    fp_radii = rng.integers(3, 8, n_fp)
    true = np.zeros((size, size), np.int32)
    pred = np.zeros((size, size), np.int32)
    for k in range(n_nuclei):
        _disc(true, centres[k], radii[k], k + 1)
        if detected[k]:
            _disc(pred, centres[k] + shift[k], max(2, radii[k] + dr[k]), k + 1)
    for k in range(n_fp):
        _disc(pred, fp_centres[k], fp_radii[k], n_nuclei + k + 1)
    return remap_label(true), remap_label(pred)


def _disc(canvas: np.ndarray, centre: np.ndarray, r: int, value: int) -> None:
    cx, cy = float(centre[0]), float(centre[1])
    y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, canvas.shape[0])
    x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, canvas.shape[1])
    yy, xx = np.mgrid[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = value


def _time(fn, repeats: int) -> tuple[list[float], object]:
    times, value = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return times, value


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--nuclei", type=int, default=1000)
    ap.add_argument("--repeats-ref", type=int, default=3, help="repeats of the slow reference")
    ap.add_argument("--repeats", type=int, default=15, help="repeats of the vectorised version")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/metrics.json"))
    args = ap.parse_args(argv)

    true, pred = make_maps(args.size, args.nuclei, args.seed)
    cases = {
        "PQ": (lambda: panoptic_quality(true, pred), lambda: ref_pq(true, pred)),
        "AJI": (lambda: aji(true, pred), lambda: ref_aji(true, pred)),
        "AJI+": (lambda: aji_plus(true, pred), lambda: ref_aji_plus(true, pred)),
    }
    rows = {}
    for name, (fast, ref) in tqdm(cases.items(), desc="metrics", unit="metric"):
        t_fast, v_fast = _time(fast, args.repeats)
        t_ref, v_ref = _time(ref, args.repeats_ref)
        same = bool(np.allclose(np.asarray(v_fast, float), np.asarray(v_ref, float), rtol=0, atol=1e-12))
        med_f, med_r = statistics.median(t_fast), statistics.median(t_ref)
        rows[name] = {
            "value": v_fast, "reference_value": v_ref, "same_values": same,
            "vectorised_s": {"median": med_f, "min": min(t_fast), "max": max(t_fast), "n": len(t_fast)},
            "reference_s": {"median": med_r, "min": min(t_ref), "max": max(t_ref), "n": len(t_ref)},
            "speedup": med_r / med_f,
        }
    print(f"\n{args.size}x{args.size} map, {int(true.max())} GT / {int(pred.max())} predicted nuclei")
    print(f"{'metric':<6} {'reference s':>12} {'vectorised s':>13} {'spread (min-max) s':>22} {'speedup':>8}  same")
    for name, r in rows.items():
        v = r["vectorised_s"]
        print(f"{name:<6} {r['reference_s']['median']:>12.3f} {v['median']:>13.4f} "
              f"{v['min']:>10.4f}-{v['max']:<10.4f} {r['speedup']:>8.1f}x {r['same_values']}")
    result = {
        "benchmark": "metrics", "machine": {
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0], "numpy": np.__version__, "torch": torch.__version__,
            "scipy": __import__("scipy").__version__,
        },
        "config": {"size": args.size, "nuclei": args.nuclei, "gt_instances": int(true.max()),
                   "pred_instances": int(pred.max()), "seed": args.seed},
        "baseline": "benchmarks/metrics_reference.py (per-nucleus full-image masks, HoVer-Net logic)",
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["same_values"] for r in rows.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
