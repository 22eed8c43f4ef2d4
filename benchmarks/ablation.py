"""The DiffMix ablation on real tissue: can the evidence tell the arms apart?

    # the design (CoNSeP's 27 training tiles; validation = whole tiles 1-5, which the SDM never saw)
    python benchmarks/ablation.py --dataset consep --data-root ../shared/data/consep_256 --jobs 2 \\
        --out benchmarks/results/consep/ablation --results-page docs/results.md
    # every training tile trains; a separate CoNSeP-layout folder (e.g. CoNSeP/Test) is scored, same tables
    python benchmarks/ablation.py --dataset consep --data-root ../shared/data/consep_256 --test-root CoNSeP/Test
    # smoke runs: --quick (a few tiles and steps; what CI runs), or the toy set
    python benchmarks/ablation.py --dataset toy --quick

**One recipe for every arm** (:mod:`benchmarks.downstream`): the class-weighted type loss (median
frequency balancing), HoVer-Net's affine + photometric augmentation with a random training window,
HoVer-Net's HV-target size rule and pairing radius scaled to the field of view (8 px and 6 px at
20x for 30 px and 12 px at 40x); the same network, steps, batch, and the same item plan per seed.
Before any other arm runs, the baseline's rare-class AUROC on the evaluation tiles' ground-truth
nuclei (mean over seeds) must reach ``--min-auroc`` (0.75): otherwise the harness stops, saying so.

**Arms** (:mod:`benchmarks.arm_streams`): ``baseline``; ``rare-crop`` (windows centred on rare
nuclei replace a share of items chosen to match the balancing arms' rare exposure after the
training crop, as far as a share of 1 allows); ``gradmix``, ``diffmix-b``, ``diffmix-e``,
``diffmix-union`` (the paper's DiffMix: each synthetic patch from a balancing or an enlarging map)
and ``diffmix-composed`` (the library's enlarge(balance(map))). The synthetic arms read their items
through ``DiffMixDataset(base, None, cache_dir=<rendered pool>, ...)`` (the product's path, producer
off) at ``--ratio``; the pool (:mod:`benchmarks.consep_pool`) balances whole tiles with donors from
the whole training split, then crops, and is drawn ``--pool-draws`` times (seed s uses draw
s mod draws).

**Evaluation** on whole tiles (:mod:`benchmarks.downstream.evaluate`); primary endpoint: rare-class
average precision on ground-truth nuclei (threshold-free); beside it rare F1 with its TP / FP / FN,
AUROC, PQ, type accuracy, per-class F1. Intervals: hierarchical bootstrap over tiles and seeds,
paired differences with the baseline per seed (:mod:`benchmarks.ablation_analysis`); the smallest
difference the design resolves is stated before any difference.

Outputs in ``--out``: ``ablation.json``, ``ablation.md``, ``rare_ap.png``, ``f1_per_type.png`` (all
rendered from the JSON by :mod:`benchmarks.render_results`), and with ``--results-page`` the
results page. Runs are cached in ``--work-dir`` (an interrupted design resumes where it stopped).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.arm_streams import ARMS, ArmStream, RareCrops
from benchmarks.consep_pool import SDM_VAL_TILES, STORES, WEIGHTS, get_pool, store_dir
from benchmarks.report_io import json_default
from diffmix_aug._io import atomic_write_text

SYNTHETIC_ARMS = tuple(a for a in ARMS if a in STORES)
DEFAULT_ARMS = ARMS

PRESETS = {
    "consep": {"quick": dict(iterations=4, batch_size=4, crop=48, width=8, depth=2, render_steps=1, pool_size=2,
                             seeds=2, pool_draws=2, bootstrap=50, min_auroc=0.0, train_tiles="6,19",
                             val_tiles="1,2", eval_crop=192),
               "full": dict(iterations=1200, batch_size=8, crop=64, width=16, depth=3, render_steps=11,
                            pool_size=48, seeds=5, pool_draws=2, bootstrap=2000, min_auroc=0.75, train_tiles=None,
                            val_tiles=",".join(map(str, SDM_VAL_TILES)), eval_crop=0)},
    "toy": {"quick": dict(iterations=4, batch_size=4, crop=48, width=8, depth=2, render_steps=1, pool_size=2, seeds=2,
                          pool_draws=2, bootstrap=50, min_auroc=0.0, n_train=12, n_test=4, eval_crop=0),
            "full": dict(iterations=600, batch_size=8, crop=48, width=16, depth=2, render_steps=11, pool_size=48,
                         seeds=5, pool_draws=2, bootstrap=2000, min_auroc=0.75, n_train=96, n_test=96, eval_crop=0)},
}


# ----------------------------------------------------------------------------------- data


def _test_merge(root: Path, choice: str) -> bool:
    """Whether the test folder's types need CoNSeP's 7 -> 4 merge (``auto``: any type above 4)."""
    if choice != "auto":
        return choice == "yes"
    import scipy.io as sio

    top = 0
    for f in sorted((Path(root) / "Labels").glob("*.mat")):
        top = max(top, int(np.max(sio.loadmat(f)["type_map"])))
    return top > 4


def load_data(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """``(train TileSet, eval TileSet, split description)`` for ``--dataset``."""
    from benchmarks.tilesets import consep_tilesets, folder_tileset, toy_tileset

    if args.dataset == "toy":
        train, evl = toy_tileset(args.n_train, 1000), toy_tileset(args.n_test, 2000)
        return train, evl, {"train": f"toy seed 1000, {args.n_train} images", "eval": f"toy seed 2000, "
                            f"{args.n_test} images", "eval_name": "test"}
    if args.data_root is None:
        raise SystemExit("`--data-root` is required for --dataset consep (e.g. ../shared/data/consep_256)")
    only = None if args.train_tiles is None else [int(t) for t in str(args.train_tiles).split(",") if t.strip()]
    if args.test_root is None:
        unseen = set(args.sdm_unseen_tiles)
        leaked = [t for t in args.val_tiles if t not in unseen]
        if leaked:
            raise SystemExit(f"--val-tiles {leaked} were in the SDM's training set (it never saw only "
                             f"{sorted(unseen)}): validating there leaks; use tiles of --sdm-unseen-tiles")
        train, evl = consep_tilesets(args.data_root, args.val_tiles, only_tiles=only)
        desc = {"train": f"{len(train)} tiles ({', '.join(train.names)})",
                "eval": f"whole tiles {list(args.val_tiles)}, never seen by the SDM", "eval_name": "val"}
    else:
        train, _ = consep_tilesets(args.data_root, (), only_tiles=only)
        merge = _test_merge(Path(args.test_root), args.test_merge)
        evl = folder_tileset(args.test_root, merge)
        desc = {"train": f"all {len(train)} training tiles", "eval": f"{args.test_root} (merge 7->4: {merge}), "
                f"whole images at 20x", "eval_name": "test"}
    return train, evl, desc


def median_frequency_weights(patches: Any, num_types: int) -> list[float]:
    """Median frequency balancing of the type branch: ``w_c = median(f) / f_c`` over pixel frequencies."""
    counts = np.zeros(num_types, np.float64)
    for i in range(len(patches)):
        counts += np.bincount(np.asarray(patches[i].type_map).ravel(), minlength=num_types)[:num_types]
    freq = counts / counts.sum()
    w = np.where(freq > 0, np.median(freq[freq > 0]) / np.maximum(freq, 1e-12), 1.0)
    return [float(v) for v in np.clip(w, 0.05, 50.0)]


# ----------------------------------------------------------------------------------- one run (a worker)

_STATE: dict[str, Any] = {}


def _setup(args: argparse.Namespace) -> None:
    """Load the tiles once per worker process."""
    torch.set_num_threads(max(1, args.threads))
    train, evl, desc = load_data(args)
    if args.eval_crop:
        from diffmix_aug.data.sample import NucleiSample

        c = args.eval_crop
        evl.tiles = [NucleiSample.trusted(t.image[:c, :c].copy(), t.inst_map[:c, :c].copy(), t.type_map[:c, :c].copy())
                     for t in evl.tiles]
        desc = desc | {"eval": desc["eval"] + f", top-left {c} px only (smoke run)"}
    rare = tuple(train.info.rare_classes)
    _STATE.update(args=args, train=train, eval=evl, desc=desc, rare=rare,
                  rare_crops=RareCrops(train.tiles, train.window, rare),
                  weights=median_frequency_weights(train.patches, train.info.num_classes))


def harness_config(args: argparse.Namespace, seed: int, weights: list[float], rare: tuple[int, ...]):
    """The one recipe every arm trains with."""
    from benchmarks.downstream.postproc import TOY_POSTPROC
    from benchmarks.downstream.targets import min_hv_area
    from benchmarks.downstream.train import HarnessConfig

    return HarnessConfig(iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, width=args.width,
                         depth=args.depth, net=args.net, seed=seed, device=args.device, type_weights=weights,
                         augment="hovernet", crop=args.crop, min_hv_area=min_hv_area(args.downsample),
                         pair_radius=12.0 / args.downsample, rare_classes=rare, postproc=dict(TOY_POSTPROC))


def run_one(job: tuple[str, int]) -> dict[str, Any]:
    """Train and evaluate one (arm, seed); the result holds the arrays the analysis needs."""
    from benchmarks.downstream.evaluate import evaluate_tiles
    from benchmarks.downstream.train import train

    arm, seed = job
    args, tr, rare = _STATE["args"], _STATE["train"], _STATE["rare"]
    cfg = harness_config(args, seed, _STATE["weights"], rare)
    draw = seed % args.pool_draws
    store = store_dir(args.pool, draw, arm) if arm in STORES else None
    ratio = args.rare_crop_ratio if arm == "rare-crop" else args.ratio
    c0 = time.process_time()
    stream = ArmStream(arm, tr.patches, seed=seed, iterations=args.iterations, batch_size=args.batch_size,
                       ratio=ratio, store=store, store_size=args.pool_size * len(STORES.get(arm, ())),
                       rare_crops=_STATE["rare_crops"], rare=rare)
    t0 = time.perf_counter()
    model, hist = train(stream, tr.info.num_classes, cfg, progress=False, desc=f"{arm} s{seed}",
                        batch_sampler=stream.batches())
    stream.finish()
    t1 = time.perf_counter()
    ev = evaluate_tiles(model, _STATE["eval"].tiles, type_ids=list(range(1, tr.info.num_classes)),
                        radius=cfg.pair_radius, postproc=cfg.postproc, device=cfg.device)
    t2 = time.perf_counter()
    return {"arm": arm, "seed": seed, "pool_draw": draw if store is not None else None,
            "train_seconds": round(t1 - t0, 1), "eval_seconds": round(t2 - t1, 1),
            "cpu_seconds": round(time.process_time() - c0, 1),
            "final_loss": float(np.mean(hist["loss"][-20:])), "exposure": stream.exposure(hist["served_rare"]),
            "eval": dict(ev)}


# ----------------------------------------------------------------------------------- the run cache


def _config_key(args: argparse.Namespace) -> str:
    keep = ("dataset", "val_tiles", "test_root", "train_tiles", "eval_crop", "iterations", "batch_size", "crop", "width", "depth",
            "lr", "net", "ratio", "pool_size", "pool_draws", "render_steps", "t_start", "guidance", "sdm", "n_train",
            "n_test", "rare_crop_spec")
    key = {k: str(getattr(args, k, None)) for k in keep}
    for k, default in (("render_solver", "ddim"), ("render_spacing", "linear")):  # keys of earlier runs kept
        if getattr(args, k, default) != default:
            key[k] = str(getattr(args, k))
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _run_path(args: argparse.Namespace, arm: str, seed: int) -> Path:
    return Path(args.work_dir) / _config_key(args) / f"{arm}_s{seed}.npz"


def _save_run(path: Path, result: dict[str, Any]) -> None:
    ev = result["eval"]
    meta = {k: v for k, v in result.items() if k != "eval"} | {"type_ids": ev["type_ids"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, seg=ev["seg"], counts=ev["counts"], nuc_tile=ev["nuc_tile"], nuc_type=ev["nuc_type"],
                        nuc_prob=ev["nuc_prob"], meta=np.frombuffer(json.dumps(meta, default=json_default).encode(), np.uint8))
    tmp.replace(path)


def _load_run(path: Path) -> dict[str, Any]:
    with np.load(path) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        ev = {k: z[k] for k in ("seg", "counts", "nuc_tile", "nuc_type", "nuc_prob")} | {"type_ids": meta["type_ids"]}
    meta.pop("type_ids")
    return meta | {"eval": ev}


def _run_jobs(args: argparse.Namespace, jobs: list[tuple[str, int]], desc: str) -> list[dict[str, Any]]:
    """Run (or load from the run cache) every job; in parallel processes with ``--jobs``."""
    from tqdm import tqdm

    results, todo = [], []
    for job in jobs:
        path = _run_path(args, *job)
        if path.is_file() and not args.no_resume:
            results.append(_load_run(path))
        else:
            todo.append(job)
    if todo:
        bar = tqdm(total=len(todo), desc=desc, unit="run")
        if args.jobs > 1 and len(todo) > 1:
            import multiprocessing as mp

            with ProcessPoolExecutor(min(args.jobs, len(todo)), mp_context=mp.get_context("spawn"),
                                     initializer=_setup, initargs=(args,)) as ex:
                for r in ex.map(run_one, todo):
                    _save_run(_run_path(args, r["arm"], r["seed"]), r)
                    results.append(r)
                    bar.update(1)
                    bar.set_postfix_str(f"{r['arm']} s{r['seed']}: {r['train_seconds']:.0f} s")
        else:
            for job in todo:
                r = run_one(job)
                _save_run(_run_path(args, *job), r)
                results.append(r)
                bar.update(1)
                bar.set_postfix_str(f"{r['arm']} s{r['seed']}: {r['train_seconds']:.0f} s")
        bar.close()
    return results


# ----------------------------------------------------------------------------------- rare-crop matching


def rare_crop_ratio(args: argparse.Namespace, train: Any, rare: tuple[int, ...]) -> dict[str, Any]:
    """The rare-crop share that matches the balancing pool's rare exposure after the training crop.

    Expected rare instances per training window (HoVer-Net augmentation, ``--crop``) are estimated
    on 300 draws each of real patches, rare-centred crops and the balancing store's patches;
    ``ratio_rc = ratio * (m_bal - m_real) / (m_rc - m_real)``, capped at 1.
    """
    from benchmarks.downstream import augment as aug
    from diffmix_aug.store import PatchStore

    def seen(items):
        out = []
        for j, (inst, typ) in enumerate(items):
            p = aug.draw_params(np.random.default_rng([77, j]), inst.shape, args.crop or inst.shape[0], True)
            rows, cols = aug.source_indices(p, inst.shape)
            a, t = inst[rows, cols], typ[rows, cols]
            out.append(np.unique(a[np.isin(t, rare) & (a > 0)]).size)
        return float(np.mean(out)) if out else 0.0

    rng = np.random.default_rng([args.seed_base, 5])
    real = [train.patches[int(i)] for i in rng.integers(0, len(train.patches), 300)]
    crops = RareCrops(train.tiles, train.window, rare)
    rc = [crops(np.random.default_rng([args.seed_base, j, 8])) for j in range(300)]
    m_real, m_rc = seen([(s.inst_map, s.type_map) for s in real]), seen([(s.inst_map, s.type_map) for s in rc])
    out = {"m_real": m_real, "m_rare_crop": m_rc, "ratio_synthetic": args.ratio}
    store = store_dir(args.pool, 0, "gradmix")  # the balancing maps (DiffMix-B renders the same maps)
    if store.is_dir():
        ps = PatchStore.open(store)
        bal = [ps.read(name) for name in ps.names()]
        pick = rng.integers(0, len(bal), 300)
        m_bal = seen([(bal[i].inst_map, bal[i].type_map) for i in pick])
        want = args.ratio * (m_bal - m_real) / max(1e-9, m_rc - m_real)
        out.update(m_balance=m_bal, ratio_matched=want, ratio=float(min(1.0, max(0.0, want))),
                   matched=bool(0.0 <= want <= 1.0))
    else:
        out.update(m_balance=None, ratio_matched=None, ratio=args.ratio, matched=False)
    return out


# ----------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("toy", "consep"), default="consep")
    ap.add_argument("--data-root", default=None, help="CoNSeP: ../shared/data/consep_256 (or its train/)")
    ap.add_argument("--val-tiles", default=None, help="tiles held out whole for validation (default 1-5)")
    ap.add_argument("--sdm-unseen-tiles", default=",".join(map(str, SDM_VAL_TILES)),
                    help="tiles the SDM never saw (validation must use only these)")
    ap.add_argument("--train-tiles", default=None, help="read only these training tiles (smoke runs; 'all': every one)")
    ap.add_argument("--eval-crop", type=int, default=None, help="score only the top-left N px of each evaluation "
                    "tile (smoke runs; 0: whole tiles)")
    ap.add_argument("--test-root", default=None, help="a CoNSeP-layout test folder: every training tile trains "
                    "and the folder is scored")
    ap.add_argument("--test-merge", choices=("auto", "yes", "no"), default="auto",
                    help="merge the test folder's classes 7 -> 4 (auto: when a type above 4 occurs)")
    ap.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma-separated subset of {','.join(ARMS)} "
                    "(baseline always runs)")
    ap.add_argument("--seeds", type=int, default=None, help="training seeds (>= 5 for the design)")
    ap.add_argument("--pool-draws", type=int, default=None, help="independent pool draws (seed s uses s mod draws)")
    ap.add_argument("--pool-size", type=int, default=None, help="crops per pool kind and draw")
    ap.add_argument("--ratio", type=float, default=0.5, help="synthetic_ratio of the synthetic arms")
    ap.add_argument("--rare-crop-ratio", default="auto", help="share of rare-centred crops ('auto': matched)")
    ap.add_argument("--sdm", default=None, help="SDM export (default: the dataset's shipped one)")
    ap.add_argument("--render-steps", type=int, default=None, help="denoising steps of the pool's renders")
    ap.add_argument("--t-start", type=int, default=540, help="entry timestep of the renders (the reference's)")
    ap.add_argument("--render-solver", default="ddim", choices=("ddim", "dpmpp_2m", "dpmpp_3m", "unipc"),
                    help="solver of the pool's renders (ddim: the reference protocol's)")
    ap.add_argument("--render-spacing", default="linear", choices=("linear", "logsnr", "quadratic"),
                    help="step grid of the pool's renders ('logsnr' for the multistep solvers)")
    ap.add_argument("--guidance", type=float, default=1.5)
    ap.add_argument("--quick", action="store_true", help="smoke run: a few tiles, steps, pool entries, 2 seeds")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--results-page", type=Path, default=None, help="also render the results page here")
    ap.add_argument("--work-dir", type=Path, default=Path("runs/ablation_work"), help="run cache")
    ap.add_argument("--no-resume", action="store_true", help="ignore cached runs")
    ap.add_argument("--pool-dir", type=Path, default=Path("runs/pools"))
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--crop", type=int, default=None, help="training window side (HoVer-Net augmentation)")
    ap.add_argument("--n-train", type=int, default=None, help="toy: training images")
    ap.add_argument("--n-test", type=int, default=None, help="toy: test images")
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--net", choices=("small",), default="small")
    ap.add_argument("--bootstrap", type=int, default=None)
    ap.add_argument("--min-auroc", type=float, default=None, help="the baseline's rare AUROC gate")
    ap.add_argument("--device", default="cpu", help="device of the downstream networks")
    ap.add_argument("--render-device", default="cpu", help="device of the pool's renders")
    ap.add_argument("--render-batch", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    args = ap.parse_args(argv)
    preset = PRESETS[args.dataset]["quick" if args.quick else "full"]
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key in ("n_train", "n_test", "train_tiles"):
        if not hasattr(args, key) or getattr(args, key) is None:
            setattr(args, key, preset.get(key))
    if args.train_tiles == "all":
        args.train_tiles = None
    args.arm_list = ["baseline"] + [a.strip() for a in args.arms.split(",") if a.strip() and a.strip() != "baseline"]
    bad = [a for a in args.arm_list if a not in ARMS]
    if bad:
        ap.error(f"--arms must be a comma-separated subset of {list(ARMS)}, got {bad}")
    for name in ("seeds", "iterations", "batch_size", "pool_size", "pool_draws", "jobs", "bootstrap"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 <= args.ratio <= 1.0:
        ap.error(f"--ratio must be in [0, 1], got {args.ratio}")
    args.rare_crop_spec = str(args.rare_crop_ratio)
    if args.rare_crop_ratio != "auto":
        try:
            args.rare_crop_ratio = float(args.rare_crop_ratio)
        except ValueError:
            ap.error(f"--rare-crop-ratio must be 'auto' or a share in [0, 1], got {args.rare_crop_ratio!r}")
    try:
        args.val_tiles = tuple(int(t) for t in str(args.val_tiles or "").split(",") if t.strip())
        args.sdm_unseen_tiles = tuple(int(t) for t in str(args.sdm_unseen_tiles).split(",") if t.strip())
    except ValueError:
        ap.error("--val-tiles / --sdm-unseen-tiles must be comma-separated tile numbers")
    if args.threads is None:  # on a shared machine one thread per job: spinning OpenMP threads stall under load
        args.threads = 1 if args.quick else max(1, (os.cpu_count() or 1) // args.jobs)
    root = Path(__file__).resolve().parents[1]
    if args.sdm is None:
        args.sdm = str(root / "diffmix_aug/weights/sdm_tiny_toy.safetensors" if args.dataset == "toy" else WEIGHTS)
    args.downsample = 1 if args.dataset == "toy" else 2
    args.seed_base = 0
    if args.out is None:
        args.out = Path("runs/ablation") / args.dataset
    return args


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Load the tiles; returns the run's context (the pool comes after the baseline's gate)."""
    t_begin = time.perf_counter()
    print(f"ablation: loading {args.dataset} tiles ...", flush=True)
    _setup(args)
    args.pool = None
    _STATE["args"] = args
    return {"t_begin": t_begin, "timing": {"load": round(time.perf_counter() - t_begin, 1)}, "pool_meta": None,
            "rare_crop": None}


def build_pools(args: argparse.Namespace, ctx: dict[str, Any]) -> None:
    """Build (or load) the pool the arms need and settle the rare-crop share."""
    train, rare = _STATE["train"], _STATE["rare"]
    kinds = {k for a in args.arm_list for k in STORES.get(a, ())}
    if "rare-crop" in args.arm_list:
        kinds.add("gradmix_balance")  # the balancing maps the rare-crop share is matched to (no render needed)
    if kinds:
        from benchmarks.consep_pool import KINDS

        t0 = time.perf_counter()
        torch.set_num_threads(max(1, args.threads) if args.quick else (os.cpu_count() or 1))  # renders: every core
        pool = get_pool(train, args.pool_size, args.pool_dir, draws=args.pool_draws, seed=args.seed_base,
                        steps=args.render_steps, t_start=args.t_start, guidance=args.guidance,
                        solver=args.render_solver, spacing=args.render_spacing,
                        weights=Path(args.sdm), kinds=[k for k in KINDS if k in kinds], rare=rare,
                        device=args.render_device, batch=args.render_batch)
        args.pool, ctx["pool_meta"] = pool, pool["meta"]
        torch.set_num_threads(max(1, args.threads))
        ctx["timing"]["pool"] = round(time.perf_counter() - t0, 1)
    if "rare-crop" in args.arm_list:
        if args.rare_crop_ratio == "auto":
            ctx["rare_crop"] = rare_crop_ratio(args, train, rare)
            args.rare_crop_ratio = ctx["rare_crop"]["ratio"]
        else:
            ctx["rare_crop"] = {"ratio": args.rare_crop_ratio, "matched": None}
        print(f"rare-crop share {args.rare_crop_ratio:.3f}", flush=True)
    _STATE["args"] = args


def run_design(args: argparse.Namespace, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """The baseline for every seed and its gate, then the pool, then every other arm; returns every run."""
    seeds = list(range(args.seeds))
    t0 = time.perf_counter()
    base_runs = _run_jobs(args, [("baseline", s) for s in seeds], "baseline")
    ctx["timing"]["baseline_runs"] = round(time.perf_counter() - t0, 1)
    rare = _STATE["rare"]
    gate = _gate(args, base_runs, rare[0])
    ctx["gate"] = gate
    print(gate["message"], flush=True)
    if not gate["passed"]:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "gate_failed.json", json.dumps(gate, indent=2, default=json_default) + "\n")
        raise SystemExit(gate["message"])
    build_pools(args, ctx)
    t0 = time.perf_counter()
    others = _run_jobs(args, [(a, s) for s in seeds for a in args.arm_list if a != "baseline"], "arms")
    ctx["timing"]["arm_runs"] = round(time.perf_counter() - t0, 1)
    return base_runs + others


def assemble(args: argparse.Namespace, ctx: dict[str, Any], results: list[dict[str, Any]], evl: Any,
             desc: dict[str, Any], train: Any) -> dict[str, Any]:
    """The result file of a design: analysis (hierarchical bootstrap), exposure, pool, gate, timing, machine."""
    from benchmarks.ablation_analysis import PRIMARY, analyse

    rare = tuple(train.info.rare_classes)
    names = list(train.info.class_names)
    type_ids = list(range(1, train.info.num_classes))
    t0 = time.perf_counter()
    runs = {arm: {r["seed"]: r["eval"] for r in results if r["arm"] == arm} for arm in args.arm_list}
    analysis = analyse(runs, type_ids=type_ids, rare=rare[0], n_boot=args.bootstrap)
    timing = ctx["timing"]
    timing["analysis"] = round(time.perf_counter() - t0, 1)
    timing["total"] = round(time.perf_counter() - ctx["t_begin"], 1)
    labels = np.asarray(results[0]["eval"]["nuc_type"])
    eval_info = {"name": desc["eval_name"], "tiles": list(evl.names), "n_tiles": len(evl),
                 "nuclei": int(labels.size), "rare_nuclei": int((labels == rare[0]).sum()),
                 "rare_prevalence": float((labels == rare[0]).mean()) if labels.size else float("nan"),
                 "nuclei_per_class": evl.describe()["nuclei_per_class"]}
    sample_cfg = harness_config(args, 0, _STATE["weights"], rare).to_dict()
    sample_cfg.pop("seed")
    pool_meta = ctx["pool_meta"]
    cmd = sys.argv[1:] if getattr(args, "argv", None) is None else args.argv
    return {
        "benchmark": "ablation", "schema": 2, "command": " ".join(["python", "benchmarks/ablation.py"] + list(cmd)),
        "dataset": args.dataset, "quick": bool(args.quick), "arms": args.arm_list, "seeds": list(range(args.seeds)),
        "primary": PRIMARY, "rare_class": {"id": rare[0], "name": names[rare[0]]}, "class_names": names,
        "type_ids": type_ids,
        "design": {"pool_draws": args.pool_draws, "seed_to_pool_draw": "seed mod pool_draws",
                   "synthetic_ratio": args.ratio, "rare_crop": ctx["rare_crop"], "pool_size_per_kind": args.pool_size,
                   "iterations": args.iterations, "batch_size": args.batch_size, "bootstrap": args.bootstrap,
                   "min_auroc": args.min_auroc, "items_source": {
                       a: ("DiffMixDataset(base, None, cache_dir=<pool store>)" if a in STORES else
                           "the training patches" if a == "baseline" else "training patches and rare-centred crops")
                       for a in args.arm_list}},
        "split": {k: v for k, v in desc.items() if k != "eval_name"}, "eval": eval_info,
        "train": train.describe() | {"sdm_unseen_tiles": list(args.sdm_unseen_tiles)},
        "harness": sample_cfg, "sampler": pool_meta["sampler"] if pool_meta else None, "pool": pool_meta,
        "gate": ctx["gate"], "analysis": analysis,
        "exposure": {arm: [r["exposure"] for r in sorted(results, key=lambda r: r["seed"]) if r["arm"] == arm]
                     for arm in args.arm_list},
        "runs": [{k: r.get(k) for k in ("arm", "seed", "pool_draw", "train_seconds", "eval_seconds", "cpu_seconds",
                                        "final_loss")}
                 for r in sorted(results, key=lambda r: (args.arm_list.index(r["arm"]), r["seed"]))],
        "timing_seconds": timing,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
                    "numpy": np.__version__, "cpu_count": os.cpu_count(), "jobs": args.jobs,
                    "threads_per_job": args.threads, "load_average_1min": round(os.getloadavg()[0], 2),
                    "device": args.device},
        "attribution": "CoNSeP (Graham et al., Medical Image Analysis 2019), research use" if args.dataset == "consep"
        else "procedural toy data",
    }


def run(args: argparse.Namespace) -> dict:
    """The whole design: prepare, baseline and gate, arms, analysis; writes JSON, markdown, figures."""
    from benchmarks.render_results import render_ablation

    ctx = prepare(args)
    results = run_design(args, ctx)
    result = assemble(args, ctx, results, _STATE["eval"], _STATE["desc"], _STATE["train"])
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "ablation.json", json.dumps(result, indent=1, default=json_default) + "\n")
    written = render_ablation(args.out / "ablation.json", page=args.results_page)
    print((args.out / "ablation.md").read_text())
    print(f"wrote {', '.join(str(p) for p in written)} ({result['timing_seconds']['total'] / 60:.1f} min)")
    return result


def _gate(args: argparse.Namespace, base_runs: list[dict], rare: int) -> dict[str, Any]:
    from benchmarks.stats import average_precision, roc_auc

    per_seed = []
    for r in sorted(base_runs, key=lambda r: r["seed"]):
        ev = r["eval"]
        y = np.asarray(ev["nuc_type"]) == rare
        s = np.asarray(ev["nuc_prob"])[:, rare]
        per_seed.append({"seed": r["seed"], "auroc": roc_auc(s, y), "ap": average_precision(s, y)})
    aurocs = [p["auroc"] for p in per_seed]
    defined = [a for a in aurocs if not math.isnan(a)]
    mean = float(np.mean(defined)) if defined else float("nan")
    passed = bool(args.min_auroc <= 0 or mean >= args.min_auroc)  # --min-auroc 0: smoke runs, not checked
    msg = (f"gate: the baseline's rare-class AUROC on the evaluation tiles' ground-truth nuclei is {mean:.3f} "
           f"(per seed {', '.join(f'{a:.3f}' for a in aurocs)}; required >= {args.min_auroc})")
    if not defined and args.min_auroc > 0:
        msg += (": the evaluation tiles hold no nucleus of the rare class (or only it), so no arm can be scored on "
                "it; choose other tiles")
    elif not passed:
        msg += (": the baseline does not learn the rare class, so no arm can be told apart from it; no other arm "
                "was run. Train longer (--iterations), use a larger network (--width / --depth) or check the data.")
    return {"min_auroc": args.min_auroc, "per_seed": per_seed, "mean_auroc": mean, "passed": passed, "message": msg}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = argv
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
