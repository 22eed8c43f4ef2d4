"""``diffmix-aug demo``: the end-to-end demo (currently its data part).

Builds the embedded procedural toy dataset, writes a preview grid (images above their
class-coloured label overlays) and a class histogram, and prints the class counts and shares.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "Run the demo on the embedded toy dataset (data part: preview PNG and class statistics)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    parser.add_argument("--n", type=int, default=64, help="number of toy patches (default: 64)")
    parser.add_argument("--size", type=int, default=64, help="patch side in pixels (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")


def write_data_preview(out: Path, n: int, size: int, seed: int, columns: int = 8) -> dict:
    """Build the toy dataset and write ``toy_preview.png``, ``class_histogram.png``, ``class_stats.json``.

    Returns:
        The dataset's :meth:`~diffmix_aug.data.NucleiDataset.class_stats` (JSON-able lists).
    """
    from .._io import atomic_write_text
    from ..data.toy import make_toy_dataset
    from ..data.viz import label_overlay, save_class_histogram, save_image_grid

    ds = make_toy_dataset(n, size=size, seed=seed)
    palette = ds.info.palette()
    shown = [ds[i] for i in range(min(columns, len(ds)))]
    rows = [[s.image for s in shown], [label_overlay(s.image, s.inst_map, s.type_map, palette) for s in shown]]
    scale = max(1, 192 // size)
    save_image_grid(out / "toy_preview.png", rows, row_titles=["image", "labels"], scale=scale)
    stats = ds.class_stats()
    names = list(ds.info.class_names[1:])
    save_class_histogram(out / "class_histogram.png", {"toy dataset": stats["counts"][1:]}, names,
                         title=f"nuclei per class ({len(ds)} patches of {size}x{size})")
    report = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in stats.items()}
    report.update({"n": n, "size": size, "seed": seed})
    atomic_write_text(out / "class_stats.json", json.dumps(report, indent=2) + "\n")
    return report


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    report = write_data_preview(out, args.n, args.size, args.seed)
    print(f"toy dataset: {args.n} patches of {args.size}x{args.size}, seed {args.seed}, "
          f"{report['num_nuclei']} nuclei")
    print(f"{'class':<16}{'count':>8}{'share':>9}{'mean area':>11}")
    for k, name in enumerate(report["class_names"][1:], start=1):
        count = report["counts"][k]
        area = report["areas"][k] / count if count else 0.0
        print(f"{name:<16}{count:>8}{report['count_share'][k]:>9.1%}{area:>11.1f}")
    print(f"wrote {out / 'toy_preview.png'}, {out / 'class_histogram.png'}, {out / 'class_stats.json'}")
    return 0
