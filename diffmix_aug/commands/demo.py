"""``diffmix-aug demo``: DiffMix end to end on the embedded toy data, on a CPU, in minutes.

Stages (each with a progress bar; outputs in ``--out``):

1. Build the imbalanced toy dataset: ``toy_preview.png``, ``class_histogram.png``, ``class_stats.json``.
2. Get the tiny SDM: the shipped ``diffmix_aug/weights/sdm_tiny_toy.safetensors`` (trained by
   ``diffmix-aug train-sdm --config diffmix_aug/configs/sdm_tiny.yaml``), or train one with ``--train``.
3. Synthesise enlarging and balancing patches and write the paper's Figure 2 (``figure2.png``:
   original, enlarging map, balancing map, GradMix, each image above its label overlay), and the
   class histogram before and after balancing (``class_histogram_balanced.png``).
4. Wrap the toy dataset with ``DiffMixDataset`` and train a small segmentation net with a real
   ``DataLoader`` (``num_workers=2``); print throughput and the synthetic share.
5. Write ``report.md`` (and ``report.json``) linking the pictures, with the numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

HELP = "Run DiffMix end to end on the embedded toy data (figures, synthesis, a short downstream run, report.md)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    parser.add_argument("--n", type=int, default=64, help="number of toy patches (default: 64)")
    parser.add_argument("--size", type=int, default=64, help="patch side in pixels (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything (default: 0)")
    parser.add_argument("--sdm", type=Path, default=None,
                        help="SDM checkpoint (.safetensors export or training dir); default: the shipped one")
    parser.add_argument("--train", action="store_true", help="train a tiny SDM here instead of loading one")
    parser.add_argument("--train-steps", type=int, default=600, help="SDM steps with --train (default: 600)")
    parser.add_argument("--ddim-steps", type=int, default=27,
                        help="DDIM steps from t = 540 (the paper's 55; default 27 for CPU speed)")
    parser.add_argument("--columns", type=int, default=4, help="example patches in figure2.png (default: 4)")
    parser.add_argument("--iterations", type=int, default=150, help="downstream training iterations (default: 150)")
    parser.add_argument("--batch-size", type=int, default=8, help="downstream batch size (default: 8)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers (default: 2)")
    parser.add_argument("--warmup-patches", type=int, default=16,
                        help="patches synthesised before the downstream loop starts (default: 16; the CPU makes "
                             "~0.6/s, the loop asks ~70 synthetic items/s)")
    parser.add_argument("--max-reuse", type=int, default=40,
                        help="serves per synthetic patch in the downstream run (default: 40, as a synthetic set "
                             "made beforehand is reused every epoch; 8 is the library default)")
    parser.add_argument("--data-only", action="store_true", help="stop after stage 1 (data preview and statistics)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads of the main process (default: 1; the producer and the "
                             "DataLoader workers share the cores, and more threads oversubscribe them: measured "
                             "101 s with 1 thread against 178-211 s with the default on 2 cores)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def write_data_preview(out: Path, n: int, size: int, seed: int, columns: int = 8,
                       progress: bool = False) -> tuple[Any, dict]:
    """Build the toy dataset and write ``toy_preview.png``, ``class_histogram.png``, ``class_stats.json``.

    Returns:
        ``(dataset, stats)``: the toy ``NucleiDataset`` (materialised) and its
        :meth:`~diffmix_aug.data.NucleiDataset.class_stats` as JSON-able lists.
    """
    from tqdm.auto import tqdm

    from .._io import atomic_write_text
    from ..data.dataset import NucleiDataset
    from ..data.toy import make_toy_dataset
    from ..data.viz import class_legend, label_overlay, save_class_histogram, save_image_grid

    lazy = make_toy_dataset(n, size=size, seed=seed)
    samples = [lazy[i] for i in tqdm(range(len(lazy)), desc="toy data", unit="patch", disable=not progress)]
    ds = NucleiDataset.from_samples(samples, lazy.info)
    palette = ds.info.palette()
    shown = [ds[i] for i in range(min(columns, len(ds)))]
    rows = [[s.image for s in shown], [label_overlay(s.image, s.inst_map, s.type_map, palette) for s in shown]]
    scale = max(1, 192 // size)
    save_image_grid(out / "toy_preview.png", rows, row_titles=["image", "labels"], scale=scale,
                    legend=class_legend(ds.info))
    stats = ds.class_stats()
    names = list(ds.info.class_names[1:])
    save_class_histogram(out / "class_histogram.png", {"toy dataset": stats["counts"][1:]}, names,
                         title=f"nuclei per class ({len(ds)} patches of {size}x{size})")
    report = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in stats.items()}
    report.update({"n": n, "size": size, "seed": seed})
    atomic_write_text(out / "class_stats.json", json.dumps(report, indent=2) + "\n")
    return ds, report


def _print_stats(report: dict, args: argparse.Namespace) -> None:
    print(f"toy dataset: {args.n} patches of {args.size}x{args.size}, seed {args.seed}, "
          f"{report['num_nuclei']} nuclei")
    print(f"{'class':<16}{'count':>8}{'share':>9}{'mean area':>11}")
    for k, name in enumerate(report["class_names"][1:], start=1):
        count = report["counts"][k]
        area = report["areas"][k] / count if count else 0.0
        print(f"{name:<16}{count:>8}{report['count_share'][k]:>9.1%}{area:>11.1f}")


def _check_args(args: argparse.Namespace) -> None:
    for name in ("n", "size", "train_steps", "ddim_steps", "columns", "iterations", "batch_size", "threads",
                 "warmup_patches", "max_reuse"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"`--{name.replace('_', '-')}` must be >= 1, got {value}")
    if args.warmup_patches > 64:
        raise ValueError(f"`--warmup-patches` must be <= 64 (the downstream cache's capacity), got {args.warmup_patches}")
    if args.num_workers < 0:
        raise ValueError(f"`--num-workers` must be >= 0, got {args.num_workers}")
    if args.sdm is not None and args.train:
        raise ValueError("pass either `--sdm PATH` or `--train`, not both")


def _display_path(path: str | Path) -> str:
    """``path`` relative to the working directory or to the package's folder (never absolute)."""
    p = Path(path).resolve()
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            continue
    return p.name


def write_report(out: Path, numbers: dict[str, Any]) -> Path:
    """Write ``report.md`` and ``report.json`` from the stage results; returns the markdown path."""
    from .._io import atomic_write_text

    d, syn, hist, down = numbers["data"], numbers["synthesis"], numbers["balance"], numbers["downstream"]
    names = d["class_names"][1:]
    lines = [
        "# DiffMix demo on the embedded toy data", "",
        f"{d['n']} toy patches of {d['size']}x{d['size']} (seed {d['seed']}), {d['num_nuclei']} nuclei. "
        f"SDM: `{_display_path(numbers['sdm']['path'])}` ({numbers['sdm']['source']}). "
        f"Total time {numbers['wall_s']:.0f} s.", "",
        "## The data and its imbalance", "",
        "![toy patches](toy_preview.png)", "", "![class histogram](class_histogram.png)", "",
        "## Custom label maps and their synthesis (paper Figure 2 layout)", "",
        "![figure 2](figure2.png)", "",
        f"{syn['patches']} patches synthesised in {syn['synthesis_s']:.1f} s ({syn['s_per_patch']:.2f} s/patch, "
        f"{numbers['sdm']['ddim']}); in these {syn['patches'] // 2} Figure-2 patches balancing converted "
        f"{syn['rare_converted']} nuclei to the rare class.", "",
        "## Class counts before and after balancing", "",
        f"Scope: all {d['n']} toy patches, each counted once with its original map and once with one "
        "balancing map drawn for it (the histogram below counts the same).", "",
        "![balancing histogram](class_histogram_balanced.png)", "",
        f"| class | original maps ({d['n']} patches) | balancing maps ({d['n']} patches) |", "|---|---:|---:|",
        *[f"| {name} | {b} | {a} |" for name, b, a in zip(names, hist["before"][1:], hist["after"][1:])], "",
        "## DiffMixDataset in a plain training loop", "",
        f"{down['iterations']} iterations, batch {numbers['args']['batch_size']}, "
        f"{numbers['args']['num_workers']} DataLoader workers: {down['items_per_s']:.1f} items/s, "
        f"synthetic share {down['synthetic_share']:.1%} (asked {down['synthetic_ratio']:.0%}), "
        f"{down['patches_synthesised']} patches synthesised ({down['warmup_patches']} of them before the loop, "
        f"in {down['warmup_s']:.1f} s), data wait "
        f"{down['data_wait_share']:.1%} of the loop time, loss {down['loss_first']:.3f} -> {down['loss_last']:.3f}.",
        "",
        f"The synthetic items came from {down['distinct_patches_served']} distinct synthetic patches, each served "
        f"{down['mean_reuse']:.1f} times on average (`max_reuse` {down['max_reuse']}: a cached patch is served at most "
        f"{down['max_reuse']} times). On a CPU the producer makes about one patch for every hundred items this loop "
        "reads, so the run makes a set first and replays it, as the paper's offline set is reused every epoch; "
        "`--warmup-patches 4 --max-reuse 8` shows the library defaults' share here, and a GPU synthesizer makes "
        "patches fresh.", "",
    ]
    atomic_write_text(out / "report.json", json.dumps(numbers, indent=2, default=float) + "\n")
    atomic_write_text(out / "report.md", "\n".join(lines))
    return out / "report.md"


def run(args: argparse.Namespace) -> int:
    import torch

    from ..labelmaps.donors import DonorBank
    from ..labelmaps.sampler import borders_for_patch
    from ..sampling.synthesizer import Synthesizer
    from . import _demo_stages as stages

    _check_args(args)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    t0 = time.perf_counter()
    print("[1/5] toy dataset and its class imbalance")
    ds, data_report = write_data_preview(out, args.n, args.size, args.seed, progress=progress)
    _print_stats(data_report, args)
    if args.data_only:
        print(f"wrote {out / 'toy_preview.png'}, {out / 'class_histogram.png'}, {out / 'class_stats.json'}")
        return 0

    print("[2/5] tiny SDM")
    if args.train:
        sdm_path, source = stages.train_demo_sdm(out, args.train_steps, args.seed, progress), "trained here"
    elif args.sdm is not None:
        sdm_path, source = args.sdm, "given"
    else:
        sdm_path, source = stages.shipped_sdm_path(), stages.SHIPPED_RECIPE
    synth = Synthesizer.from_checkpoint(sdm_path, device="cpu", sampler="reference", steps=args.ddim_steps)
    if synth.num_classes != ds.num_classes:
        raise ValueError(f"the SDM `{sdm_path}` was trained for {synth.num_classes} classes, the toy data has "
                         f"{ds.num_classes}; pass a toy SDM or --train")
    print(f"loaded {sdm_path} ({sum(p.numel() for p in synth.model.parameters()) / 1e6:.2f} M parameters)")

    print("[3/5] custom label maps, synthesis, Figure 2")
    border = borders_for_patch(args.size)["balance"].border
    donors = DonorBank.from_dataset(ds, tuple(ds.info.rare_classes), border=border, keep_images=True)
    with torch.inference_mode():
        syn = stages.figure2(out, ds, synth, donors, args.columns, args.seed, progress)
    hist = stages.balance_histogram(out, ds, donors, args.seed)
    names = data_report["class_names"]
    rare = ", ".join(f"{names[c]} {hist['before'][c]} -> {hist['after'][c]}" for c in ds.info.rare_classes)
    print(f"{syn['patches']} patches in {syn['synthesis_s']:.1f} s; rare class after balancing: {rare}")

    print("[4/5] DiffMixDataset in a plain training loop")
    down = stages.downstream_run(ds, synth, donors, args.iterations, args.batch_size, args.num_workers, args.seed,
                                 progress, warmup_patches=args.warmup_patches, max_reuse=args.max_reuse)
    print(f"{down['items_per_s']:.1f} items/s, synthetic share {down['synthetic_share']:.1%} "
          f"(synthetic_ratio 0.5), data wait {down['data_wait_share']:.1%} of the loop time")

    print("[5/5] report")
    numbers = {"args": {k: _display_path(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                        if not callable(v)},
               "data": data_report, "sdm": {"path": _display_path(sdm_path), "source": source,
                                            "ddim": f"{args.ddim_steps} DDIM steps from t = 540, guidance 1.5",
                                            "sampler": synth.sampler_settings},
               "synthesis": syn, "balance": hist, "downstream": down, "wall_s": time.perf_counter() - t0}
    report = write_report(out, numbers)
    print(f"wrote {report}")
    print(f"demo finished in {numbers['wall_s']:.0f} s (torch threads {torch.get_num_threads()})")
    return 0
