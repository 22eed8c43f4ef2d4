"""The DiffMix ablation (paper Table 1 layout), with matched controls: one downstream network per arm and seed.

    # real CoNSeP (the 27 training tiles; validation = whole held-out tiles)
    python benchmarks/ablation.py --dataset consep --data-root ../shared/data/consep_256 --seeds 3 \\
        --out benchmarks/results/consep/ablation
    # ... and a model trained on all 27 tiles, scored on a separate CoNSeP-layout test folder
    python benchmarks/ablation.py --dataset consep --data-root ../shared/data/consep_256 --test-root CoNSeP/Test
    # the procedural toy set
    python benchmarks/ablation.py --dataset toy --seeds 3 --out benchmarks/results/ablation_toy

**Arms.** Every arm trains the same :mod:`benchmarks.downstream` network with the same loop, the same
gradient steps and batch size, and the same *real* items at every step: each batch is
``--real-per-step`` real patches drawn uniformly (the same draws in every arm of one seed) plus the
arm's own items:

- ``baseline``: more real patches, drawn uniformly;
- ``oversample``: real patches drawn with a weight ``sum_c n_c(patch) / N_c`` (inverse class
  frequency, as CellViT's sampler), so patches holding rare nuclei come more often;
- ``weighted-loss``: uniform real patches, and the type branch's cross-entropy weighted by median
  frequency balancing (``w_c = median_f / f_c`` over pixel frequencies, clipped to [0.05, 50]);
- ``gradmix``: GradMix patches from the offline pool (the *same* balancing draws as DiffMix-B,
  pasted at the image level: the two arms differ in the renderer only);
- ``diffmix-b`` / ``diffmix-e``: SDM renders of balancing / enlarging maps from the pool;
- ``diffmix``: the paper's composition, the union of the balancing and enlarging pools;
- ``diffmix-composed`` (optional): this project's ``mode="composed"`` (formerly "both"), enlarge(balance(map));
- ``gradmix-fresh`` (optional): a new GradMix draw for every item (no replay), to show what replay costs.

**Pools.** Synthetic arms draw from an *offline pool* rendered once per split
(:mod:`benchmarks.consep_pool`; the paper also trains on an offline pool). Pool entries come from
training patches drawn uniformly: no arm gets a bias toward rare-rich sources. The pool has
``--pool-size`` entries per kind; the JSON reports how often each distinct patch was served.
Rendering: ``--ddim-steps`` guided DDIM steps from ``--t-start`` (default 540, guidance 1.5). The
reference runs 55 steps (33 s per 128 px patch on 2 CPU cores); the CPU run uses 11 steps (about
4 s per patch), and ``benchmarks/fidelity.py`` measures the renders it gets.

**Evaluation.** Dice, AJI, DQ, SQ, PQ (mean over images), AJI+, and the pooled detection F1, type
accuracy and per-type F1 (HoVer-Net's definitions, :mod:`diffmix_aug.metrics`); mean +- sd over seeds;
a 95 % bootstrap interval over evaluation images (the seed-averaged metric); per arm a paired
comparison with the baseline (same seeds, same real items, same bootstrap resamples). CoNSeP:
validation tiles ``--val-tiles`` (default 1-5 and 19, which hold 170 of the 432 miscellaneous nuclei;
tile 19 was in the SDM's training set, so the table is also given on tiles 1-5, which the SDM never
saw). With ``--test-root``, every training tile trains and the folder is the evaluation set.

Outputs in ``--out``: ``ablation.json``, ``ablation.md``, ``f1_per_type.png``.
"""

from __future__ import annotations

import argparse
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

from benchmarks.downstream.train import HarnessConfig, evaluate, raw_maps, train
from diffmix_aug._io import atomic_write_text

ARMS = ("baseline", "oversample", "weighted-loss", "gradmix", "diffmix-b", "diffmix-e", "diffmix",
        "diffmix-composed", "gradmix-fresh")
DEFAULT_ARMS = ARMS[:7]
POOL_KINDS = {"gradmix": ("gradmix_balance",), "diffmix-b": ("sdm_balance",), "diffmix-e": ("sdm_enlarge",),
              "diffmix": ("sdm_balance", "sdm_enlarge"), "diffmix-composed": ("sdm_both",)}
SEG_COLS = ("dice", "aji", "dq", "sq", "pq")
EXTRA_COLS = ("aji_plus", "f1_detection", "accuracy")
CONSEP_VAL_TILES = (1, 2, 3, 4, 5, 19)

PRESETS = {
    "toy": {"quick": dict(n_train=16, n_test=8, iterations=8, batch_size=4, width=8, depth=2, ddim_steps=2,
                          pool_size=4, crop=0),
            "full": dict(n_train=96, n_test=560, iterations=600, batch_size=8, width=16, depth=2, ddim_steps=11,
                         pool_size=96, crop=0)},
    "consep": {"quick": dict(n_train=0, n_test=8, iterations=8, batch_size=4, width=8, depth=2, ddim_steps=2,
                             pool_size=2, crop=64),
               "full": dict(n_train=0, n_test=0, iterations=600, batch_size=8, width=16, depth=3, ddim_steps=11,
                            pool_size=96, crop=64)},
}


# ----------------------------------------------------------------------------------- data


def _consep_train_root(root: Path) -> Path:
    for cand in (root / "Train", root / "train", root):
        if (cand / "Images").is_dir() and (cand / "Labels").is_dir():
            return cand
    raise FileNotFoundError(f"`--data-root` must hold CoNSeP-layout Images/ and Labels/ (or Train/ or train/ with "
                            f"them), got {root}")


def _test_merge(root: Path, choice: str) -> bool:
    """Whether the test folder's types need CoNSeP's 7 -> 4 merge (``auto``: any type above 4)."""
    if choice != "auto":
        return choice == "yes"
    import scipy.io as sio

    top = 0
    for f in sorted((root / "Labels").glob("*.mat")):
        top = max(top, int(np.max(sio.loadmat(f)["type_map"])))
    return top > 4


def load_splits(args: argparse.Namespace) -> tuple[Any, dict[str, list[Any]], Any, dict[str, Any]]:
    """``(train dataset, {eval name: items}, DatasetInfo, split description)`` for ``--dataset``."""
    from diffmix_aug.data.dataset import NucleiDataset
    from diffmix_aug.data.toy import make_toy_dataset

    if args.dataset == "toy":
        train_ds = make_toy_dataset(args.n_train, 64, seed=1000)
        test_ds = make_toy_dataset(args.n_test, 64, seed=2000)
        train_ds = NucleiDataset.from_samples([train_ds[i] for i in range(len(train_ds))], train_ds.info)
        return (train_ds, {"test": [test_ds[i] for i in range(len(test_ds))]}, train_ds.info,
                {"train": f"toy seed 1000, {args.n_train} patches", "eval": f"toy seed 2000, {args.n_test} patches"})
    from benchmarks.consep_pool import DOWNSAMPLE, SDM_VAL_TILES, load_split

    if args.data_root is None:
        raise SystemExit("`--data-root` is required for --dataset consep (e.g. ../shared/data/consep_256)")
    root = _consep_train_root(Path(args.data_root))
    if args.test_root is None:
        train_ds, val = load_split(root, args.val_tiles)
        items = [val[i] for i in range(len(val))]
        names = val.item_names()
        evals = {"val": items}
        unseen = [it for it, n in zip(items, names) if int(n.split("_")[1]) in SDM_VAL_TILES]
        if 0 < len(unseen) < len(items):
            evals["val_sdm_unseen"] = unseen
        desc = {"train": f"{root}: tiles not in {list(args.val_tiles)}", "eval": f"tiles {list(args.val_tiles)}",
                "sdm_unseen_tiles": list(SDM_VAL_TILES)}
    else:
        train_ds, _ = load_split(root, ())
        test_root = Path(args.test_root)
        if not (test_root / "Images").is_dir() or not (test_root / "Labels").is_dir():
            raise SystemExit(f"`--test-root` must be a CoNSeP-layout folder with Images/ and Labels/, got {test_root}")
        merge = _test_merge(test_root, args.test_merge)
        test = NucleiDataset.from_consep_dir(test_root, merge=merge, patch_size=256, step=256).downsampled(DOWNSAMPLE)
        evals = {"test": [test[i] for i in range(len(test))]}
        desc = {"train": f"{root}: all tiles", "eval": f"{test_root} (merge 7->4: {merge}), 256 px windows at 40x"}
    if args.n_test:
        evals = {k: v[: args.n_test] for k, v in evals.items()}
    if args.n_train:
        train_ds = train_ds.subset(range(min(args.n_train, len(train_ds)))).materialised()
    return train_ds, evals, train_ds.info, desc


def rare_content(items: list[Any], rare: tuple[int, ...]) -> dict[str, int]:
    """Rare instances and pixels in ``items`` (the evaluation set's size in rare nuclei)."""
    inst = px = 0
    for it in items:
        _, im, tm = raw_maps(it)
        mask = np.isin(tm, rare) & (im > 0)
        inst += int(np.unique(im[mask]).size)
        px += int(mask.sum())
    return {"instances": inst, "pixels": px}


def median_frequency_weights(train_ds: Any, num_types: int) -> list[float]:
    """Median frequency balancing of the type branch: ``w_c = median(f) / f_c`` over pixel frequencies."""
    counts = np.zeros(num_types, np.float64)
    for i in range(len(train_ds)):
        counts += np.bincount(np.asarray(train_ds[i].type_map).ravel(), minlength=num_types)[:num_types]
    freq = counts / counts.sum()
    w = np.where(freq > 0, np.median(freq[freq > 0]) / np.maximum(freq, 1e-12), 1.0)
    return [float(v) for v in np.clip(w, 0.05, 50.0)]


def oversample_weights(train_ds: Any, num_types: int) -> np.ndarray:
    """Per-patch draw weights ``sum_c n_c(patch) / N_c`` (inverse class frequency), normalised; ``float64 [N]``."""
    per = np.zeros((len(train_ds), num_types), np.float64)
    for i in range(len(train_ds)):
        s = train_ds[i]
        per[i] = np.bincount(np.asarray(s.info.types, np.int64), minlength=num_types)[:num_types]
    total = per.sum(0)
    w = (per[:, 1:] / np.maximum(total[1:], 1)).sum(1) + 1e-6
    return w / w.sum()


# ----------------------------------------------------------------------------------- the arm's stream


class ArmStream(torch.utils.data.Dataset):
    """Slot ``t`` of a run (step ``t // B``, position ``t % B``) -> one training item, planned up front.

    Positions ``< real_per_step`` are the seed's uniform real draws (identical in every arm);
    the rest are the arm's items. Every served item is recorded (rare instances and pixels after the
    crop, synthetic or not, which pool entry) for the exposure report.
    """

    def __init__(self, arm: str, base: Any, info: Any, *, seed: int, iterations: int, batch_size: int,
                 real_per_step: int, crop: int, pool: dict[str, Any] | None, oversample_p: np.ndarray | None,
                 gradmix: Any = None):
        self.arm, self.base, self.info, self.seed, self.crop = arm, base, info, int(seed), int(crop)
        self.B, self.R, self.iterations = int(batch_size), int(real_per_step), int(iterations)
        n = len(base)
        self.real_plan = np.random.default_rng([self.seed, 31]).integers(0, n, (self.iterations, self.R))
        n_extra = self.iterations * (self.B - self.R)
        rng = np.random.default_rng([self.seed, 32])
        self.pool_items: list[dict] = []
        if arm in POOL_KINDS:
            for kind in POOL_KINDS[arm]:
                p = pool[kind]
                self.pool_items += [{"img": p["img"][k], "inst_map": p["inst_map"][k], "type_map": p["type_map"][k]}
                                    for k in range(len(p["img"]))]
            self.extra_plan = rng.integers(0, len(self.pool_items), n_extra)
        elif arm == "oversample":
            self.extra_plan = rng.choice(n, n_extra, p=oversample_p)
        else:  # baseline, weighted-loss, gradmix-fresh: uniform real patches
            self.extra_plan = rng.integers(0, n, n_extra)
        self.gradmix = gradmix
        self.rare = tuple(info.rare_classes)
        self.exposure = np.zeros((self.iterations * self.B, 3), np.int64)  # rare inst, rare px, synthetic
        self.served_entry = np.full(self.iterations * self.B, -1, np.int64)

    def __len__(self) -> int:
        return self.iterations * self.B

    def batches(self) -> list[list[int]]:
        return [list(range(s * self.B, (s + 1) * self.B)) for s in range(self.iterations)]

    def _item(self, t: int) -> tuple[dict, bool, int]:
        s, pos = divmod(int(t), self.B)
        if pos < self.R:
            smp = self.base[int(self.real_plan[s, pos])]
            return {"img": smp.image, "inst_map": smp.inst_map, "type_map": smp.type_map}, False, -1
        q = s * (self.B - self.R) + pos - self.R
        e = int(self.extra_plan[q])
        if self.pool_items:
            return self.pool_items[e], True, e
        smp = self.base[e]
        if self.arm == "gradmix-fresh":
            from diffmix_aug.data.sample import NucleiSample

            g = self.gradmix(NucleiSample.trusted(smp.image, smp.inst_map, smp.type_map),
                             np.random.default_rng([self.seed, q, 13]))
            return {"img": g.image, "inst_map": g.inst_map, "type_map": g.type_map}, True, -1
        return {"img": smp.image, "inst_map": smp.inst_map, "type_map": smp.type_map}, False, -1

    def __getitem__(self, t: int) -> dict:
        item, synthetic, entry = self._item(t)
        h, w = item["inst_map"].shape
        if self.crop and self.crop < min(h, w):
            rng = np.random.default_rng([self.seed, int(t), 5])
            y, x = int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))
            item = {k: np.ascontiguousarray(v[y:y + self.crop, x:x + self.crop]) for k, v in item.items()}
        mask = np.isin(item["type_map"], self.rare) & (item["inst_map"] > 0)
        self.exposure[t] = (np.unique(item["inst_map"][mask]).size, int(mask.sum()), int(synthetic))
        self.served_entry[t] = entry
        return item

    def exposure_report(self) -> dict[str, Any]:
        """Rare instances and pixels served (all and synthetic items), distinct synthetic patches, reuse."""
        ex = self.exposure
        syn = ex[:, 2] == 1
        entries = self.served_entry[self.served_entry >= 0]
        distinct = int(np.unique(entries).size) if entries.size else (int(syn.sum()) if self.arm == "gradmix-fresh"
                                                                       else 0)
        return {"items": int(len(ex)), "synthetic_items": int(syn.sum()),
                "rare_instances": int(ex[:, 0].sum()), "rare_pixels": int(ex[:, 1].sum()),
                "rare_instances_synthetic": int(ex[syn, 0].sum()), "rare_pixels_synthetic": int(ex[syn, 1].sum()),
                "distinct_synthetic_patches": distinct,
                "mean_reuse": float(syn.sum() / distinct) if distinct else 0.0,
                "max_reuse": int(np.bincount(entries).max()) if entries.size else (1 if syn.any() else 0)}


# ----------------------------------------------------------------------------------- per-image counts


def type_counts(true_pts: list[dict], pred_pts: list[dict], type_ids: list[int], radius: float = 12.0) -> np.ndarray:
    """Per image, HoVer-Net's additive classification counts; ``int64 [n_images, 3 + 5 * len(type_ids)]``.

    Columns: detection tp, fp, fn, then per type ``(tp_c, fp_c, fn_c, fp_dc, fn_dc)`` (the terms of
    ``diffmix_aug.metrics.classification_stats``), so pooled F1 over any resample of images is a sum.
    """
    from diffmix_aug.metrics.classification import pair_coordinates

    out = np.zeros((len(true_pts), 3 + 5 * len(type_ids)), np.int64)
    for i, (t, p) in enumerate(zip(true_pts, pred_pts)):
        tc = np.asarray(t["inst_centroid"], np.float64).reshape(-1, 2)
        pc = np.asarray(p["inst_centroid"], np.float64).reshape(-1, 2)
        tt = np.asarray(t["inst_type"]).reshape(-1)
        pt = np.asarray(p["inst_type"]).reshape(-1)
        ia, ib = pair_coordinates(tc, pc, radius)
        t_un = np.ones(tt.size, bool)
        t_un[ia] = False
        p_un = np.ones(pt.size, bool)
        p_un[ib] = False
        out[i, :3] = (len(ia), p_un.sum(), t_un.sum())
        ptt, ppt = tt[ia], pt[ib]
        for k, c in enumerate(type_ids):
            ti, pi = ptt == c, ppt == c
            out[i, 3 + 5 * k: 8 + 5 * k] = ((ti & pi).sum(), (~ti & pi).sum(), (ti & ~pi).sum(),
                                            (pt[p_un] == c).sum(), (tt[t_un] == c).sum())
    return out


def f1_from_counts(counts: np.ndarray, k: int) -> np.ndarray:
    """Per-type F1 of type column ``k`` from summed counts ``[..., 3 + 5 T]`` (1.0 where undefined, as HoVer-Net)."""
    tp, fp, fn, fpd, fnd = (counts[..., 3 + 5 * k + j].astype(np.float64) for j in range(5))
    den = 2 * tp + 2 * fp + 2 * fn + fpd + fnd
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), 1.0)


def bootstrap(per_seed: list[dict], type_ids: list[int], n_boot: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seed-averaged PQ and per-type F1 over ``n_boot`` resamples of the evaluation images (same resamples
    for every arm when ``seed`` is shared). Returns ``{"pq": float [n_boot], "f1_<c>": float [n_boot]}``."""
    n_img = per_seed[0]["seg"].shape[0]
    idx = np.random.default_rng([seed, 77]).integers(0, n_img, (n_boot, n_img))
    out: dict[str, np.ndarray] = {"pq": np.zeros(n_boot)}
    for c in type_ids:
        out[f"f1_{c}"] = np.zeros(n_boot)
    for run in per_seed:
        out["pq"] += np.nanmean(run["seg"][idx, 5], 1) / len(per_seed)
        sums = run["counts"][idx].sum(1)
        for k, c in enumerate(type_ids):
            out[f"f1_{c}"] += f1_from_counts(sums, k) / len(per_seed)
    return out


# ----------------------------------------------------------------------------------- one run (a worker)

_STATE: dict[str, Any] = {}


def _setup(args: argparse.Namespace) -> None:
    """Load the split and the pool once per worker process."""
    torch.set_num_threads(max(1, args.threads))
    train_ds, evals, info, desc = load_splits(args)
    _STATE.update(args=args, train=train_ds, evals=evals, info=info, desc=desc, pool=None, gradmix=None,
                  weights=None, oversample=None)
    needs_pool = any(a in POOL_KINDS for a in args.arm_list)
    if needs_pool:
        _STATE["pool"] = get_arm_pool(args, train_ds, info, progress=False)[0]
    if "gradmix-fresh" in args.arm_list:
        from benchmarks.consep_pool import make_samplers

        _STATE["gradmix"] = make_samplers(train_ds, args.patch, args.max_shift, tuple(info.rare_classes))[3]
    if "weighted-loss" in args.arm_list:
        _STATE["weights"] = median_frequency_weights(train_ds, info.num_classes)
    if "oversample" in args.arm_list:
        _STATE["oversample"] = oversample_weights(train_ds, info.num_classes)


def get_arm_pool(args: argparse.Namespace, train_ds: Any, info: Any, progress: bool = True):
    from benchmarks.consep_pool import KINDS, get_pool

    kinds = sorted({k for a in args.arm_list for k in POOL_KINDS.get(a, ())}, key=KINDS.index)
    return get_pool(train_ds, args.pool_size, args.pool_dir, kinds=kinds, seed=0, steps=args.ddim_steps,
                    t_start=args.t_start, guidance=args.guidance, weights=Path(args.sdm), patch=args.patch,
                    max_shift=args.max_shift, rare=tuple(info.rare_classes), progress=progress)


def run_one(job: tuple[str, int]) -> dict[str, Any]:
    """Train and evaluate one (arm, seed)."""
    arm, seed = job
    args, train_ds, info = _STATE["args"], _STATE["train"], _STATE["info"]
    type_ids = list(range(1, info.num_classes))
    cfg = HarnessConfig(iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, width=args.width,
                        depth=args.depth, net=args.net, seed=seed, device=args.device,
                        type_weights=_STATE["weights"] if arm == "weighted-loss" else None)
    stream = ArmStream(arm, train_ds, info, seed=seed, iterations=args.iterations, batch_size=args.batch_size,
                       real_per_step=args.real_per_step, crop=args.crop, pool=_STATE["pool"],
                       oversample_p=_STATE["oversample"], gradmix=_STATE["gradmix"])
    model, hist = train(stream, info.num_classes, cfg, progress=False, desc=f"{arm} s{seed}",
                        batch_sampler=stream.batches())
    out = {"arm": arm, "seed": seed, "train_seconds": hist["seconds"],
           "final_loss": float(np.mean(hist["loss"][-5:])), "exposure": stream.exposure_report(), "evals": {}}
    for name, items in _STATE["evals"].items():
        m = evaluate(model, items, cfg, type_ids=type_ids, per_image=True)
        per = m.pop("per_image")
        m["_seg"] = per["seg"]
        m["_counts"] = type_counts(per["true"], per["pred"], type_ids)
        out["evals"][name] = m
    return out


# ----------------------------------------------------------------------------------- reporting


def _mean_sd(values: list[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarise(runs: dict[str, list[dict]], type_ids: list[int]) -> dict[str, dict]:
    """Mean and sd over seeds of every metric, per arm (``runs[arm]`` = per-seed metric dicts)."""
    out = {}
    for arm, seeds in runs.items():
        row = {k: _mean_sd([r[k] for r in seeds]) for k in SEG_COLS + EXTRA_COLS}
        row["f1_per_type"] = {c: _mean_sd([r["f1_per_type"].get(c, float("nan")) for r in seeds]) for c in type_ids}
        out[arm] = row
    return out


def compare(runs: dict[str, list[dict]], type_ids: list[int], n_boot: int, rare: tuple[int, ...]) -> dict[str, dict]:
    """Per arm: bootstrap 95 % intervals (PQ, per-type F1) and the paired comparison with the baseline."""
    boots = {arm: bootstrap([{"seg": r["_seg"], "counts": r["_counts"]} for r in seeds], type_ids, n_boot)
             for arm, seeds in runs.items()}
    keys = ["pq"] + [f"f1_{c}" for c in type_ids]
    out: dict[str, dict] = {}
    for arm, b in boots.items():
        row: dict[str, Any] = {"ci95": {k: [float(np.percentile(b[k], 2.5)), float(np.percentile(b[k], 97.5))]
                                        for k in keys}}
        if arm != "baseline" and "baseline" in boots:
            base = {r_seed: r for r_seed, r in zip([r["seed"] for r in runs["baseline"]], runs["baseline"])}
            paired = {}
            for k in keys:
                def metric(r: dict, k: str = k) -> float:
                    return r["pq"] if k == "pq" else r["f1_per_type"].get(int(k[3:]), float("nan"))

                diffs = [metric(r) - metric(base[r["seed"]]) for r in runs[arm] if r["seed"] in base]
                d = b[k] - boots["baseline"][k]
                paired[k] = {"per_seed": diffs, "mean": float(np.mean(diffs)) if diffs else float("nan"),
                             "sd": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0,
                             "seeds_better": int(sum(x > 0 for x in diffs)), "seeds": len(diffs),
                             "ci95_images": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))],
                             "p_boot_le_0": float((d <= 0).mean())}
            row["vs_baseline"] = paired
        out[arm] = row
    return out


def markdown_table(summary: dict[str, dict], type_ids: list[int], names: list[str]) -> str:
    """The paper's Table 1 layout: Dice AJI DQ SQ PQ | Acc F per type (+ AJI+ and F1_det)."""
    def fmt(ms: tuple[float, float]) -> str:
        m, s = ms
        return "n/a" if math.isnan(m) else f"{m:.3f} ± {s:.3f}"

    heads = ["Dice", "AJI", "DQ", "SQ", "PQ", "Acc"] + [f"F^{names[c]}" for c in type_ids] + ["AJI+", "F1_det"]
    lines = ["| Method | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for arm, row in summary.items():
        cells = [fmt(row[k]) for k in SEG_COLS] + [fmt(row["accuracy"])]
        cells += [fmt(row["f1_per_type"][c]) for c in type_ids] + [fmt(row["aji_plus"]), fmt(row["f1_detection"])]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_table(comp: dict[str, dict], rare: tuple[int, ...], names: list[str]) -> str:
    keys = ["pq"] + [f"f1_{c}" for c in rare]
    labels = ["PQ"] + [f"F^{names[c]}" for c in rare]
    heads = [f"{lab} 95% CI (images)" for lab in labels] + [f"Δ{lab} vs baseline: seeds (mean ± sd, better/seeds), "
                                                          f"95% CI (images)" for lab in labels]
    lines = ["| Method | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for arm, row in comp.items():
        cells = [f"[{row['ci95'][k][0]:.3f}, {row['ci95'][k][1]:.3f}]" for k in keys]
        for k in keys:
            p = row.get("vs_baseline", {}).get(k)
            cells.append("—" if p is None else f"{p['mean']:+.3f} ± {p['sd']:.3f} ({p['seeds_better']}/{p['seeds']}), "
                                               f"[{p['ci95_images'][0]:+.3f}, {p['ci95_images'][1]:+.3f}]")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def exposure_table(exposure: dict[str, list[dict]]) -> str:
    heads = ["items/run", "synthetic items", "rare instances served", "rare pixels served",
             "rare instances in synthetic items", "distinct synthetic patches", "mean reuse", "max reuse"]
    lines = ["| Method | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for arm, reps in exposure.items():
        def m(k: str, reps: list[dict] = reps) -> str:
            v = float(np.mean([r[k] for r in reps]))
            return f"{v:.1f}" if k == "mean_reuse" else f"{v:.0f}"

        lines.append(f"| {arm} | " + " | ".join(m(k) for k in ("items", "synthetic_items", "rare_instances",
                                                               "rare_pixels", "rare_instances_synthetic",
                                                               "distinct_synthetic_patches", "mean_reuse",
                                                               "max_reuse")) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(summary: dict[str, dict], type_ids: list[int], names: list[str], path: Path, title: str = "") -> None:
    """Grouped bars of per-type F1 (mean, sd error bars) by arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(summary)
    width = 0.8 / max(1, len(arms))
    fig, ax = plt.subplots(figsize=(1.6 + 1.6 * len(type_ids), 3.6))
    x = np.arange(len(type_ids))
    for i, arm in enumerate(arms):
        ms = [summary[arm]["f1_per_type"][c] for c in type_ids]
        ax.bar(x + i * width - 0.4 + width / 2, [m for m, _ in ms], width, yerr=[s for _, s in ms], label=arm,
               capsize=2)
    ax.set_xticks(x, [names[c] for c in type_ids])
    ax.set_ylabel("F1 per type (mean ± sd over seeds)")
    ax.set_ylim(0, 1)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=min(4, len(arms)))
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


# ----------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("toy", "consep"), default="toy")
    ap.add_argument("--data-root", default=None, help="CoNSeP: a CoNSeP-layout folder (Images/, Labels/) or one "
                    "holding Train/ or train/ (../shared/data/consep_256)")
    ap.add_argument("--val-tiles", default=",".join(map(str, CONSEP_VAL_TILES)),
                    help="CoNSeP tiles held out whole for validation (never split by patch)")
    ap.add_argument("--test-root", default=None, help="a separate CoNSeP-layout test folder: train on every "
                    "training tile and evaluate there")
    ap.add_argument("--test-merge", choices=("auto", "yes", "no"), default="auto",
                    help="merge the test folder's classes 7 -> 4 (auto: when a type above 4 occurs)")
    ap.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sdm", default=None, help="SDM export for the diffmix arms (default: the dataset's shipped one)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, few patches, steps and pool entries")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--real-per-step", type=int, default=None, help="real items per batch in every arm (default: half)")
    ap.add_argument("--crop", type=int, default=None, help="random training crop side (0: whole patches)")
    ap.add_argument("--n-train", type=int, default=None, help="toy: training patches; CoNSeP: cap (0 = all)")
    ap.add_argument("--n-test", type=int, default=None, help="toy: test patches; CoNSeP: cap (0 = all)")
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--ddim-steps", type=int, default=None, help="guided DDIM steps from --t-start")
    ap.add_argument("--t-start", type=int, default=540, help="entry timestep (the reference's 540)")
    ap.add_argument("--guidance", type=float, default=1.5)
    ap.add_argument("--pool-size", type=int, default=None, help="offline pool entries per kind")
    ap.add_argument("--pool-dir", type=Path, default=Path("runs/pools"))
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--net", choices=("small", "monai"), default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes, one thread each by default)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    args = ap.parse_args(argv)
    preset = PRESETS[args.dataset]["quick" if args.quick else "full"]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.seeds = 1
        args.bootstrap = min(args.bootstrap, 50)
    args.arm_list = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in args.arm_list if a not in ARMS]
    if bad or not args.arm_list:
        ap.error(f"--arms must be a comma-separated subset of {list(ARMS)}, got {args.arms!r}")
    for name in ("seeds", "iterations", "batch_size", "pool_size", "jobs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.real_per_step is None:
        args.real_per_step = args.batch_size // 2
    if not 0 <= args.real_per_step <= args.batch_size:
        ap.error(f"--real-per-step must be in [0, --batch-size={args.batch_size}], got {args.real_per_step}")
    try:
        args.val_tiles = tuple(int(t) for t in str(args.val_tiles).split(",") if t.strip())
    except ValueError:
        ap.error(f"--val-tiles must be comma-separated tile numbers, got {args.val_tiles!r}")
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    root = Path(__file__).resolve().parents[1]
    if args.sdm is None:
        args.sdm = str(root / ("diffmix_aug/weights/sdm_tiny_toy.safetensors" if args.dataset == "toy"
                               else "benchmarks/weights/sdm_consep_cpu.safetensors"))
    # field of view: the reference shifts +-15 px on 256 px at 40x; scaled to the patch and resolution
    args.patch = 64 if args.dataset == "toy" else 128
    args.max_shift = 4 if args.dataset == "toy" else 7
    if args.out is None:
        args.out = Path("runs/ablation") / args.dataset
    return args


def run(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    t_start = time.perf_counter()
    _setup(args)
    train_ds, evals, info, desc = _STATE["train"], _STATE["evals"], _STATE["info"], _STATE["desc"]
    names = list(info.class_names)
    rare = tuple(info.rare_classes)
    type_ids = list(range(1, info.num_classes))
    pool_meta = None
    if any(a in POOL_KINDS for a in args.arm_list):
        pool, path = get_arm_pool(args, train_ds, info)
        _STATE["pool"] = pool
        pool_meta = pool["meta"] | {"file": path.name}
    jobs = [(arm, s) for s in range(args.seeds) for arm in args.arm_list]
    results = []
    if args.jobs > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), initializer=_setup,
                                 initargs=(args,)) as ex:
            for r in tqdm(ex.map(run_one, jobs), total=len(jobs), desc="ablation", unit="run"):
                results.append(r)
    else:
        for job in tqdm(jobs, desc="ablation", unit="run"):
            results.append(run_one(job))
    elapsed = time.perf_counter() - t_start
    report: dict[str, Any] = {}
    for name, items in evals.items():
        runs = {arm: [r["evals"][name] | {"seed": r["seed"]} for r in results if r["arm"] == arm]
                for arm in args.arm_list}
        report[name] = {"n_images": len(items), "rare_content": rare_content(items, rare),
                        "summary": summarise(runs, type_ids),
                        "comparison": compare(runs, type_ids, args.bootstrap, rare)}
    exposure = {arm: [r["exposure"] for r in results if r["arm"] == arm] for arm in args.arm_list}
    per_run = [{k: v for k, v in r.items() if k != "evals"} |
               {"metrics": {n: {k: v for k, v in m.items() if not k.startswith("_")} for n, m in r["evals"].items()}}
               for r in results]
    result = {
        "benchmark": "ablation", "command": " ".join(["python", "benchmarks/ablation.py"] + sys.argv[1:]),
        "dataset": args.dataset, "arms": args.arm_list, "seeds": args.seeds, "quick": args.quick, "split": desc,
        "config": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                   for k, v in vars(args).items() if k != "arm_list"},
        "harness": HarnessConfig(iterations=args.iterations, batch_size=args.batch_size, lr=args.lr,
                                 width=args.width, depth=args.depth, net=args.net).to_dict(),
        "composition": {"diffmix": "union of the balancing and enlarging pools (the paper's)",
                        "diffmix-composed": "enlarge(balance(map)) (this project's mode='composed', formerly 'both')",
                        "synthetic": "offline pool, fixed share of every batch (1 - real_per_step / batch_size)"},
        "pool": pool_meta, "class_names": names, "type_ids": type_ids, "rare_classes": list(rare),
        "n_train": len(train_ds), "weighted_loss_weights": _STATE["weights"],
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
                    "numpy": np.__version__, "cpu_count": os.cpu_count(), "jobs": args.jobs,
                    "threads_per_job": args.threads, "load_average_1min": os.getloadavg()[0]},
        "elapsed_seconds": elapsed, "exposure": exposure, "eval": report, "runs": per_run,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "ablation.json", json.dumps(result, indent=2, default=_json_default) + "\n")
    md = [f"# Ablation: {args.dataset}, arms {', '.join(args.arm_list)}, {args.seeds} seed(s)\n",
          f"Command: `{result['command']}`\n",
          f"{len(train_ds)} training patches ({desc['train']}); evaluation: {desc['eval']}. "
          f"{args.iterations} steps x batch {args.batch_size} ({args.real_per_step} real items per step in every arm"
          f"{f', {args.crop} px crops' if args.crop else ''}); {elapsed / 60:.1f} min on {os.cpu_count()} cores "
          f"({args.jobs} jobs).\n"]
    if pool_meta:
        md.append(f"Offline pool: {pool_meta['size']} entries per kind ({', '.join(pool_meta['kinds'])}), sources "
                  f"drawn uniformly; SDM renders with {pool_meta['steps']} guided DDIM steps from "
                  f"t = {pool_meta['t_start']} (guidance {pool_meta['guidance_scale']}), "
                  f"{pool_meta['s_per_patch']} s per patch. DiffMix = union of the balancing and enlarging pools "
                  f"(the paper's composition).\n")
    for name, rep in report.items():
        rc = rep["rare_content"]
        md += [f"\n## {name}: {rep['n_images']} images, {rc['instances']} {names[rare[0]]} nuclei\n",
               "Mean ± sd over seeds (pooled F1 per type, HoVer-Net's definitions).\n",
               markdown_table(rep["summary"], type_ids, names),
               "\nBootstrap over images (seed-averaged) and the paired comparison with the baseline (same seeds, "
               "same real items, same resamples):\n", comparison_table(rep["comparison"], rare, names)]
    md += ["\n## Exposure (mean per run)\n", exposure_table(exposure)]
    atomic_write_text(args.out / "ablation.md", "\n".join(md))
    first = next(iter(report))
    bar_chart(report[first]["summary"], type_ids, names, args.out / "f1_per_type.png",
              title=f"{args.dataset} {first}: {report[first]['n_images']} images, "
                    f"{report[first]['rare_content']['instances']} rare nuclei")
    print("\n".join(md[-2 - 5 * len(report):]))
    print(f"wrote {args.out}/ablation.json, ablation.md, f1_per_type.png ({elapsed / 60:.1f} min)")
    return result


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, Path)):
        return list(obj) if isinstance(obj, tuple) else str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
