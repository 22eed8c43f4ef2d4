"""The DiffMix ablation (paper Table 1 layout): one downstream network per arm and seed.

    python benchmarks/ablation.py --dataset toy --arms baseline,gradmix,diffmix-b,diffmix-e,diffmix \\
        --seeds 3 --sdm sdm.safetensors --out runs/ablation

Every arm trains the same :mod:`benchmarks.downstream` network with the same loop, iteration budget,
batch size and seeds; only the training dataset differs:

- ``baseline``: the real training patches;
- ``gradmix``: each item replaced, with probability ``--synthetic-ratio``, by its image-level
  GradMix (``diffmix_aug.baselines.gradmix``), decided and drawn from ``(seed, epoch, index)``;
- ``diffmix-b`` / ``diffmix-e`` / ``diffmix``: ``DiffMixDataset(base, Synthesizer.from_checkpoint(sdm),
  mode="balance" / "enlarge" / "both", synthetic_ratio=...)`` (cooperative producer: synchronous,
  reproducible, single process). About ``--fresh-patches`` SDM patches (default: as many as there are
  training patches, the size of the paper's offline pool) are synthesised per run, evenly over the
  run; the replay cache serves them in between, so a CPU run stays within minutes.

Evaluation is on the held-out split (toy: a differently seeded toy set; CoNSeP/GLySAC: ``Test``,
tiled into non-overlapping ``--patch-size`` windows; PanNuke: the ``test`` fold). Results are the
mean +- sd over seeds of Dice, AJI, DQ, SQ, PQ (mean over images), AJI+, detection F1, type
accuracy and per-type F1 (pooled). With ``--sdm`` the label fidelity of synthesis is also measured:
the baseline network (real data only) segments SDM patches synthesised from the held-out label
maps, scored against those maps, and reported as a ratio to the same network on the real patches.

Outputs in ``--out``: ``ablation.json``, ``ablation.md`` (the table), ``f1_per_type.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.downstream.train import HarnessConfig, evaluate, raw_maps, train
from diffmix_aug._io import atomic_write_text

ARMS = ("baseline", "gradmix", "diffmix-b", "diffmix-e", "diffmix")
DIFFMIX_MODES = {"diffmix-b": "balance", "diffmix-e": "enlarge", "diffmix": "both"}
SEG_COLS = ("dice", "aji", "dq", "sq", "pq")
EXTRA_COLS = ("aji_plus", "f1_detection", "accuracy")

PRESETS = {  # (n_train, n_test, size, iterations, batch, width, depth, ddim steps)
    "quick": dict(n_train=24, n_test=8, size=64, iterations=30, batch_size=4, width=8, depth=2, ddim_steps=5),
    "full": dict(n_train=96, n_test=64, size=64, iterations=600, batch_size=8, width=16, depth=2, ddim_steps=20),
}


# ----------------------------------------------------------------------------------- data


def load_splits(args: argparse.Namespace) -> tuple[Any, list[Any], Any]:
    """``(train dataset, held-out items, DatasetInfo)`` for ``--dataset``."""
    from diffmix_aug.data.dataset import NucleiDataset
    from diffmix_aug.data.toy import make_toy_dataset

    if args.dataset == "toy":
        train_ds = make_toy_dataset(args.n_train, args.size, seed=1000)
        test_ds = make_toy_dataset(args.n_test, args.size, seed=2000)
        # materialise once: every arm and seed reads the same patches
        train_ds = NucleiDataset.from_samples([train_ds[i] for i in range(len(train_ds))], train_ds.info)
        return train_ds, [test_ds[i] for i in range(len(test_ds))], train_ds.info
    if args.data_root is None:
        raise ValueError(f"`--data-root` is required for --dataset {args.dataset}")
    root = Path(args.data_root)
    p = args.size
    if args.dataset in ("consep", "glysac"):
        train_ds = NucleiDataset.from_consep_dir(root / "Train", args.dataset, patch_size=p, step=p)
        test_ds = NucleiDataset.from_consep_dir(root / "Test", args.dataset, patch_size=p, step=p)
    else:  # pannuke: root/{train,test}/{images,masks}.npy
        train_ds = NucleiDataset.from_pannuke(root / "train" / "images.npy", root / "train" / "masks.npy",
                                              patch_size=p, step=p)
        test_ds = NucleiDataset.from_pannuke(root / "test" / "images.npy", root / "test" / "masks.npy",
                                             patch_size=p, step=p)
    n_test = min(len(test_ds), args.n_test) if args.n_test else len(test_ds)
    return train_ds, [test_ds[i] for i in range(n_test)], train_ds.info


class GradMixDataset(torch.utils.data.Dataset):
    """Replace item ``i`` of epoch ``e`` by its GradMix with probability ``ratio`` (seeded by (seed, e, i))."""

    def __init__(self, base: Any, gradmix: Any, ratio: float, seed: int):
        self.base, self.gradmix, self.ratio, self.seed = base, gradmix, float(ratio), int(seed)
        self.epoch = 0
        self.info = getattr(base, "info", None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Any:
        sample = self.base[index]
        rng = np.random.default_rng((self.seed, self.epoch, int(index), 7))
        if rng.random() >= self.ratio:
            return sample
        return self.gradmix(sample, rng)


def build_arm(arm: str, train_ds: Any, info: Any, seed: int, args: argparse.Namespace, synth: Any) -> Any:
    """The training dataset of ``arm`` (same base patches for every arm)."""
    if arm == "baseline":
        return train_ds
    if arm == "gradmix":
        from diffmix_aug.baselines.gradmix import GradMix
        from diffmix_aug.labelmaps.donors import DonorBank
        from diffmix_aug.labelmaps.sampler import borders_for_patch

        border = min(30, borders_for_patch(args.size)["border"])  # the reference 30 px at >= 256 px

        donors = DonorBank.from_dataset(train_ds, info.rare_classes, border=border, keep_images=True)
        return GradMixDataset(train_ds, GradMix(donors, info.rare_classes, border=border), args.synthetic_ratio, seed)
    if synth is None:
        raise ValueError(f"arm {arm!r} needs an SDM checkpoint: pass --sdm PATH (a diffmix_aug.sdm export)")
    from diffmix_aug.dataset import DiffMixDataset

    # the default label sampler scales the reference border bands (set for 256 px) to the patch size
    return DiffMixDataset(train_ds, synth, mode=DIFFMIX_MODES[arm], synthetic_ratio=args.synthetic_ratio,
                          seed=seed, cooperative=True, batch_size=args.batch_size,
                          cooperative_every=synthesis_interval(args.iterations, args.batch_size, args.fresh_patches),
                          cache_capacity=max(args.fresh_patches, args.batch_size))


# ----------------------------------------------------------------------------------- label fidelity


def synthesize_items(synth: Any, items: list[Any], seed: int, batch: int) -> list[dict]:
    """SDM patches conditioned on the label maps of ``items`` (image, inst_map, type_map dicts)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for s in range(0, len(items), batch):
        maps = [raw_maps(it) for it in items[s:s + batch]]
        imgs = synth(np.stack([m[0] for m in maps]), np.stack([m[1] for m in maps]), np.stack([m[2] for m in maps]),
                     generator=gen)
        out += [{"img": im, "inst_map": m[1], "type_map": m[2]} for im, m in zip(imgs, maps)]
    return out


def label_fidelity(real: dict, synthetic: dict) -> dict:
    """PQ and per-type F1 on synthetic patches, and their ratios to the real held-out scores."""
    def ratio(a: float, b: float) -> float:
        return float(a / b) if b and not math.isnan(b) else float("nan")

    return {
        "pq_synthetic": synthetic["pq"], "pq_real": real["pq"], "pq_ratio": ratio(synthetic["pq"], real["pq"]),
        "f1_per_type_synthetic": synthetic["f1_per_type"], "f1_per_type_real": real["f1_per_type"],
        "f1_per_type_ratio": {c: ratio(synthetic["f1_per_type"].get(c, float("nan")), v)
                              for c, v in real["f1_per_type"].items()},
    }


# ----------------------------------------------------------------------------------- reporting


def _mean_sd(values: list[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarise(runs: dict[str, list[dict]], type_ids: list[int]) -> dict[str, dict]:
    """Mean and sd over seeds of every metric, per arm."""
    out = {}
    for arm, seeds in runs.items():
        row = {k: _mean_sd([r["metrics"][k] for r in seeds]) for k in SEG_COLS + EXTRA_COLS}
        row["f1_per_type"] = {c: _mean_sd([r["metrics"]["f1_per_type"].get(c, float("nan")) for r in seeds])
                              for c in type_ids}
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


def bar_chart(summary: dict[str, dict], type_ids: list[int], names: list[str], path: Path) -> None:
    """Grouped bars of per-type F1 (mean, sd error bars) by arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(summary)
    width = 0.8 / max(1, len(arms))
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(type_ids), 3.4))
    x = np.arange(len(type_ids))
    for i, arm in enumerate(arms):
        ms = [summary[arm]["f1_per_type"][c] for c in type_ids]
        ax.bar(x + i * width - 0.4 + width / 2, [m for m, _ in ms], width, yerr=[s for _, s in ms], label=arm,
               capsize=2)
    ax.set_xticks(x, [names[c] for c in type_ids])
    ax.set_ylabel("F1 (per type)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=min(5, len(arms)))
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


# ----------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("toy", "consep", "glysac", "pannuke"), default="toy")
    ap.add_argument("--data-root", default=None, help="CoNSeP/GLySAC: folder with Train/ and Test/; "
                    "PanNuke: folder with train/ and test/ each holding images.npy and masks.npy")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sdm", default=None, help="SDM checkpoint (export or training dir) for the diffmix arms")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run: 1 seed, few patches and steps")
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--size", type=int, default=None, help="patch side (toy patch size / tiling window)")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--ddim-steps", type=int, default=None)
    ap.add_argument("--synthetic-ratio", type=float, default=0.5)
    ap.add_argument("--fresh-patches", type=int, default=None,
                    help="SDM patches synthesised per diffmix run (default: one per training patch, like the "
                         "paper's offline pool); the replay cache serves them again in between")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--net", choices=("small", "monai"), default="small")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "full"]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.seeds = 1
    args.arm_list = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in args.arm_list if a not in ARMS]
    if bad or not args.arm_list:
        ap.error(f"--arms must be a comma-separated subset of {list(ARMS)}, got {args.arms!r}")
    if args.seeds < 1:
        ap.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.fresh_patches is None:
        args.fresh_patches = args.n_train
    if args.fresh_patches < 1:
        ap.error(f"--fresh-patches must be >= 1, got {args.fresh_patches}")
    return args


def synthesis_interval(iterations: int, batch_size: int, fresh_patches: int) -> int:
    """Items served between two synthesis batches so that a run synthesises about ``fresh_patches``."""
    batches = max(1, math.ceil(fresh_patches / batch_size))
    return max(1, (iterations * batch_size) // batches)


def run(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    t_start = time.perf_counter()
    train_ds, test_items, info = load_splits(args)
    names = list(info.class_names)
    synth = None
    if args.sdm:
        from diffmix_aug.sampling.synthesizer import Synthesizer

        synth = Synthesizer.from_checkpoint(args.sdm, device=args.device, num_steps=args.ddim_steps)
    needs_sdm = [a for a in args.arm_list if a in DIFFMIX_MODES]
    if needs_sdm and synth is None:
        raise SystemExit(f"arms {needs_sdm} need --sdm CKPT (an SDM trained with `diffmix-aug train`)")
    type_ids = list(range(1, info.num_classes))
    runs: dict[str, list[dict]] = {arm: [] for arm in args.arm_list}
    fidelity: list[dict] = []
    jobs = [(arm, s) for s in range(args.seeds) for arm in args.arm_list]
    for arm, seed in tqdm(jobs, desc="ablation", unit="run"):
        cfg = HarnessConfig(iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, width=args.width,
                            depth=args.depth, net=args.net, seed=seed, device=args.device)
        ds = build_arm(arm, train_ds, info, seed, args, synth)
        try:
            model, hist = train(ds, info.num_classes, cfg, desc=f"{arm} s{seed}")
        finally:
            if hasattr(ds, "close"):
                ds.close()
        metrics = evaluate(model, test_items, cfg, type_ids=type_ids)
        runs[arm].append({"seed": seed, "metrics": metrics, "train_seconds": hist["seconds"],
                          "final_loss": float(np.mean(hist["loss"][-5:]))})
        if arm == "baseline" and synth is not None:
            syn_items = synthesize_items(synth, test_items, seed, args.batch_size)
            fidelity.append({"seed": seed, **label_fidelity(metrics, evaluate(model, syn_items, cfg,
                                                                                type_ids=type_ids))})
    summary = summarise(runs, type_ids)
    table = markdown_table(summary, type_ids, names)
    elapsed = time.perf_counter() - t_start
    result = {
        "benchmark": "ablation", "command": " ".join(sys.argv), "dataset": args.dataset,
        "arms": args.arm_list, "seeds": args.seeds, "quick": args.quick,
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "arm_list")} | {"out": str(args.out)},
        "harness": HarnessConfig(iterations=args.iterations, batch_size=args.batch_size, lr=args.lr,
                                 width=args.width, depth=args.depth, net=args.net).to_dict(),
        "class_names": names, "type_ids": type_ids, "n_train": len(train_ds), "n_test": len(test_items),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
                    "numpy": np.__version__, "threads": torch.get_num_threads()},
        "elapsed_seconds": elapsed, "runs": runs, "summary": summary, "label_fidelity": fidelity,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "ablation.json", json.dumps(result, indent=2, default=_json_default) + "\n")
    md = [f"# Ablation: {args.dataset}, arms {', '.join(args.arm_list)}, {args.seeds} seed(s)\n",
          f"Command: `{result['command']}`\n", f"Mean ± sd over seeds; {len(train_ds)} training / "
          f"{len(test_items)} held-out patches, {args.iterations} iterations x batch {args.batch_size}; "
          f"{elapsed / 60:.1f} min.\n", table]
    if fidelity:
        pq_ratio = _mean_sd([f["pq_ratio"] for f in fidelity])
        md.append(f"\nLabel fidelity (baseline network on SDM patches / on real patches): PQ ratio "
                  f"{pq_ratio[0]:.3f} ± {pq_ratio[1]:.3f}\n")
    atomic_write_text(args.out / "ablation.md", "\n".join(md))
    bar_chart(summary, type_ids, names, args.out / "f1_per_type.png")
    print("\n" + table)
    if fidelity:
        print(md[-1])
    print(f"wrote {args.out}/ablation.json, ablation.md, f1_per_type.png ({elapsed / 60:.1f} min)")
    return result


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def main(argv: list[str] | None = None) -> int:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
