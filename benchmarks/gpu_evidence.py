"""The real-tissue design at GPU scale: 3-fold cross-validation by tile, one SDM per fold, 55-step renders.

    python benchmarks/gpu_evidence.py --data-root ../shared/data/consep_256     # one H100, under 12 min
    python benchmarks/gpu_evidence.py --data-root ../shared/data/consep_256 --dry-run   # CPU, tiny, CI

The same design as ``benchmarks/ablation.py`` (one recipe for every arm, the baseline's AUROC gate,
the seven arms, the synthetic arms read through ``DiffMixDataset``, hierarchical bootstrap over tiles
and seeds), with what a GPU allows:

1. CoNSeP's 27 training tiles in 3 folds of 9 whole tiles (a fixed permutation); every tile is
   validated once, by the fold that holds it out.
2. Per fold: an SDM trained on the fold's 18 training tiles only (``sdm_consep_cpu.yaml``'s model
   and field of view, more steps and a larger batch), so no validation tile is ever seen by the
   renderer; the fold's pool rendered with the reference protocol (55 DDIM steps from t = 540);
   then the baseline for every seed (gate), then every other arm; runs in parallel processes
   sharing the GPU.
3. The folds' evaluations are pooled per (arm, seed) (27 tiles) and analysed as one design.

Sizing (an estimate to check on the first lent H100, not a measurement): the downstream runs are
bound by their CPU-side augmentation (about 3 ms per item), so 14 runs share the GPU at a time, one
per core: 35 runs per fold of 800 steps x 16 items, about 45 s each, 3 waves, ~2.5 min per fold;
the fold's SDM (1,500 steps of the CPU SDM's model at batch 64, 64 px) ~1 min; the pool (576 renders
of 55 guided steps at batch 64, and GradMix on 18 whole tiles x 2 draws) ~0.5 min: ~4 min per fold,
~11-12 min for three. ``--budget-s`` (690 s) skips a fold that no longer fits, and says so.

Results are written as they come: after every fold, ``gpu_evidence.json`` holds the folds so far
(``status``), and the per-run cache in ``--work-dir`` lets an interrupted run resume. When the
remaining ``--budget-s`` cannot hold the next fold (estimated from the last one), it is skipped and
the reason written. Final outputs in ``--out``: ``ablation.json`` / ``ablation.md`` / figures in the
ablation's format (rendered by :mod:`benchmarks.render_results`) and ``gpu_evidence.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
SDM_CONFIG = ROOT / "diffmix_aug" / "configs" / "sdm_consep_cpu.yaml"

#: GPU scale (one H100) and the dry run's tiny sizes
SCALES = {
    "gpu": dict(tiles=tuple(range(1, 28)), sdm_steps=1500, sdm_batch=64, seeds=5, iterations=800, batch_size=16,
                crop=64, width=32, depth=3, pool_size=96, pool_draws=2, render_steps=55, render_batch=64, workers=14,
                bootstrap=2000, arms=None, device="cuda", eval_crop=0, sdm_overrides={}),
    "dry": dict(tiles=(1, 6, 19), sdm_steps=2, sdm_batch=2, seeds=2, iterations=3, batch_size=2, crop=32,
                width=4, depth=2, pool_size=2, pool_draws=1, render_steps=1, render_batch=4, workers=1, bootstrap=20,
                arms="baseline,diffmix-union", device="cpu", eval_crop=160,
                # a narrower SDM than the shipped `tiny`: the dry run checks the plumbing, not the renders
                sdm_overrides=dict(model_channels=8, spade_hidden=8, num_groups=4, num_head_channels=8)),
}


def folds_of(tiles: tuple[int, ...], k: int = 3, seed: int = 0) -> list[list[int]]:
    """``k`` folds of whole tiles: a fixed permutation cut into near-equal parts (sorted within a fold)."""
    perm = np.random.default_rng([seed, 3]).permutation(sorted(tiles))
    return [sorted(int(t) for t in perm[i::k]) for i in range(k)]


def train_fold_sdm(data_root: Path, holdout: list[int], patches: Any, out: Path, steps: int, batch: int,
                   device: str, sdm_overrides: dict[str, Any] | None = None) -> Path:
    """Train the fold's SDM on ``patches`` (the fold's training tiles at 20x) and export it; returns its path."""
    from benchmarks.tilesets import train_root
    from diffmix_aug.sdm.checkpoint import export_sdm
    from diffmix_aug.train.config import load_train_config
    from diffmix_aug.train.loop import train_sdm

    export = out / "sdm.safetensors"
    if export.is_file():
        return export
    cfg = load_train_config(SDM_CONFIG)
    if sdm_overrides:
        cfg = cfg.replace(model={"overrides": dict(sdm_overrides)})
    finetune = max(1, steps // 5)
    cfg = cfg.replace(data={"data_root": str(train_root(data_root)), "holdout_tiles": list(holdout)},
                      train={"batch_size": batch, "device": device, "sample_interval": 10**9,
                             "sample_count": 1 if steps < 10 else 8, "sample_steps": 2 if steps < 10 else 50,
                             "save_interval": 10**9, "log_interval": max(1, steps // 20),
                             "stages": [{"name": "stage1", "steps": steps - finetune, "lr": 1e-3, "drop_rate": 0.0},
                                        {"name": "finetune", "steps": finetune, "lr": 2e-4, "drop_rate": 0.2}]})
    train_sdm(cfg, out_dir=out / "train", progress=False, dataset=patches)
    return export_sdm(out / "train", export)


def _fold_args(a: argparse.Namespace, scale: dict[str, Any], fold: list[int], sdm: Path, k: int) -> argparse.Namespace:
    from benchmarks.ablation import parse_args

    argv = ["--dataset", "consep", "--data-root", str(a.data_root), "--val-tiles", ",".join(map(str, fold)),
            "--sdm-unseen-tiles", ",".join(map(str, fold)), "--sdm", str(sdm), "--seeds", str(scale["seeds"]),
            "--iterations", str(scale["iterations"]), "--batch-size", str(scale["batch_size"]),
            "--crop", str(scale["crop"]), "--width", str(scale["width"]), "--depth", str(scale["depth"]),
            "--pool-size", str(scale["pool_size"]), "--pool-draws", str(scale["pool_draws"]),
            "--render-steps", str(scale["render_steps"]),
            "--render-batch", str(scale["render_batch"]), "--render-device", scale["device"],
            "--device", scale["device"], "--jobs", str(scale["workers"]), "--threads", "1",
            "--bootstrap", str(scale["bootstrap"]), "--eval-crop", str(scale["eval_crop"]),
            "--pool-dir", str(a.work_dir / f"fold{k}" / "pools"), "--work-dir", str(a.work_dir / f"fold{k}" / "runs"),
            "--out", str(a.out / f"fold{k}")]
    if scale["arms"]:
        argv += ["--arms", scale["arms"]]
    if scale is SCALES["dry"]:
        argv += ["--min-auroc", "0", "--train-tiles", ",".join(str(t) for t in scale["tiles"] if t not in fold)]
    args = parse_args(argv)
    args.argv = argv
    return args


def pool_runs(per_fold: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One run per (arm, seed) whose evaluation holds every fold's tiles (tile indices offset per fold)."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    offset = 0
    for runs in per_fold:
        n_tiles = np.asarray(runs[0]["eval"]["counts"]).shape[0]
        for r in runs:
            key = (r["arm"], r["seed"])
            ev = r["eval"]
            if key not in out:
                out[key] = {k: v for k, v in r.items() if k != "eval"} | {
                    "eval": {"seg": [], "counts": [], "nuc_tile": [], "nuc_type": [], "nuc_prob": [],
                             "type_ids": ev["type_ids"]}, "folds": []}
            acc = out[key]["eval"]
            acc["seg"].append(np.asarray(ev["seg"]))
            acc["counts"].append(np.asarray(ev["counts"]))
            acc["nuc_tile"].append(np.asarray(ev["nuc_tile"]) + offset)
            acc["nuc_type"].append(np.asarray(ev["nuc_type"]))
            acc["nuc_prob"].append(np.asarray(ev["nuc_prob"]))
            out[key]["folds"].append({k: r.get(k) for k in ("train_seconds", "eval_seconds", "exposure")})
        offset += n_tiles
    for r in out.values():
        for k in ("seg", "counts", "nuc_tile", "nuc_type", "nuc_prob"):
            r["eval"][k] = np.concatenate(r["eval"][k])
        ex = [f["exposure"] for f in r["folds"]]
        r["exposure"] = {k: sum(e[k] for e in ex) for k in ex[0] if isinstance(ex[0][k], (int, float))
                         and not isinstance(ex[0][k], bool)} | {"folds": ex}
        if all("dataset" in e for e in ex):
            r["exposure"]["dataset"] = {k: sum(e["dataset"][k] for e in ex) for k in
                                        ("synthetic_asked", "synthetic_served")} | {
                "pool_patches_served": sum(e["dataset"]["pool_patches_served"] for e in ex),
                "pool_serves_max": max(e["dataset"]["pool_serves_max"] for e in ex)}
        r["train_seconds"] = sum(f["train_seconds"] for f in r["folds"])
        r["eval_seconds"] = sum(f["eval_seconds"] for f in r["folds"])
    return list(out.values())


def main(argv: list[str] | None = None) -> int:
    from benchmarks import ablation
    from benchmarks.render_results import render_ablation
    from benchmarks.report_io import json_default
    from benchmarks.tilesets import consep_tilesets
    from diffmix_aug._io import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data" / "consep_256")
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/gpu/evidence (a temporary "
                    "folder with --dry-run)")
    ap.add_argument("--work-dir", type=Path, default=None, help="SDMs, pools and the run cache")
    ap.add_argument("--budget-s", type=float, default=690.0, help="wall-clock budget; a fold that cannot fit is "
                    "skipped with the reason written")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: proves the script runs (CI)")
    a = ap.parse_args(argv)
    t_begin = time.monotonic()
    scale = SCALES["dry" if a.dry_run else "gpu"]
    if not a.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_evidence.py needs a CUDA device (use --dry-run for the CPU smoke run)")
    if not (train_rootish := (a.data_root / "train" / "Labels")).is_dir() and not (a.data_root / "Labels").is_dir():
        raise SystemExit(f"--data-root must be ../shared/data/consep_256 (missing {train_rootish})")
    if a.out is None:
        a.out = Path(tempfile.mkdtemp(prefix="gpu_evidence_")) if a.dry_run else ROOT / "benchmarks/results/gpu/evidence"
    if a.work_dir is None:
        a.work_dir = a.out / "work" if a.dry_run else ROOT / "runs" / "gpu_evidence"
    a.out.mkdir(parents=True, exist_ok=True)
    folds = folds_of(scale["tiles"])
    status: dict[str, Any] = {"benchmark": "gpu_evidence", "dry_run": a.dry_run, "folds": [], "scale": dict(scale),
                              "budget_s": a.budget_s, "device": torch.cuda.get_device_name(0) if
                              torch.cuda.is_available() and not a.dry_run else "cpu", "skipped": {}}

    def write_status() -> None:
        status["elapsed_s"] = round(time.monotonic() - t_begin, 1)
        atomic_write_text(a.out / "gpu_evidence.json", json.dumps(status, indent=1, default=json_default) + "\n")

    per_fold, contexts, last = [], [], None
    for k, fold in enumerate(folds):
        left = a.budget_s - (time.monotonic() - t_begin)
        if last is not None and last > left:
            status["skipped"][f"fold{k}"] = (f"the last fold took {last:.0f} s and {left:.0f} s of the budget are "
                                             "left")
            write_status()
            continue
        t0 = time.monotonic()
        print(f"fold {k}: validation tiles {fold}; training the fold's SDM ...", flush=True)
        fold_train, _ = consep_tilesets(a.data_root, fold, only_tiles=list(scale["tiles"]))
        sdm = train_fold_sdm(a.data_root, fold, fold_train.patches, a.work_dir / f"fold{k}" / "sdm",
                             scale["sdm_steps"], scale["sdm_batch"], scale["device"], scale["sdm_overrides"])
        del fold_train
        t_sdm = time.monotonic() - t0
        args = _fold_args(a, scale, fold, sdm, k)
        ctx = ablation.prepare(args)
        runs = ablation.run_design(args, ctx)
        per_fold.append(runs)
        contexts.append((args, ctx, ablation._STATE["eval"], ablation._STATE["train"]))
        last = time.monotonic() - t0
        status["folds"].append({"fold": k, "validation_tiles": fold, "sdm_seconds": round(t_sdm, 1),
                                "seconds": round(last, 1), "gate": ctx["gate"], "timing": ctx["timing"],
                                "sampler": ctx["pool_meta"]["sampler"] if ctx["pool_meta"] else None,
                                "runs": [{x: r.get(x) for x in ("arm", "seed", "train_seconds", "eval_seconds")}
                                         for r in runs]})
        write_status()
    if not per_fold:
        raise SystemExit("gpu_evidence: no fold fitted the budget")
    # the folds pooled into one design over every validated tile
    args, ctx, _, _ = contexts[0]
    combined = pool_runs(per_fold)
    tiles = [t for _, _, evl, _ in contexts for t in evl.names]
    evl = _Names(tiles, contexts[0][2])
    gate = ablation._gate(args, [r for r in combined if r["arm"] == "baseline"], args_rare(contexts))
    gate["folds"] = [c[1]["gate"] for c in contexts]
    ctx = dict(ctx, t_begin=t_begin, gate=gate)
    train_all, _ = consep_tilesets(a.data_root, (), only_tiles=list(scale["tiles"]))
    desc = {"train": f"3-fold cross-validation by tile: each fold trains on its other tiles (folds {folds})",
            "eval": f"every tile once, by the fold that holds it out ({len(tiles)} tiles); one SDM per fold",
            "eval_name": "cv"}
    result = ablation.assemble(args, ctx, combined, evl, desc, train_all)
    result["benchmark"] = "gpu_evidence"
    result["command"] = " ".join(["python", "benchmarks/gpu_evidence.py"] + (sys.argv[1:] if argv is None else argv))
    result["folds"] = status["folds"]
    result["skipped_folds"] = status["skipped"]
    result["quick"] = a.dry_run
    atomic_write_text(a.out / "ablation.json", json.dumps(result, indent=1, default=json_default) + "\n")
    render_ablation(a.out / "ablation.json")
    status["done"] = True
    write_status()
    print((a.out / "ablation.md").read_text())
    print(f"wrote {a.out} ({(time.monotonic() - t_begin) / 60:.1f} min)")
    return 0


def args_rare(contexts: list) -> int:
    """The rare class of the folds' training tiles."""
    return int(contexts[0][3].info.rare_classes[0])


class _Names:
    """The pooled evaluation set as ``assemble`` reads it (names, length, per-class counts)."""

    def __init__(self, names: list[str], first: Any):
        self.names, self._first = names, first

    def __len__(self) -> int:
        return len(self.names)

    def describe(self) -> dict[str, Any]:
        return {"nuclei_per_class": None}


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
