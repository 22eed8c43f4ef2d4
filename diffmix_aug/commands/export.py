"""``diffmix-aug export``: write a supported dataset as HoVer-Net training patches (``.npy``).

HoVer-Net's ``run_train.py`` reads ``int32 [H, W, 5]`` (RGB, instance, type) patches from the
folders in its ``train_dir_list``; its ``extract_patches.py`` makes them from CoNSeP tiles. This
command writes the same patches from any dataset this package reads, so CoNSeP, GLySAC, PanNuke,
CoNIC/Lizard or the toy data get to ``run_train.py`` with commands only::

    diffmix-aug export --dataset consep --input CoNSeP/Train --out train_540 --patch-size 540 --step 164
    diffmix-aug export --dataset pannuke --input fold1/images.npy --labels fold1/masks.npy --out pannuke_f1
    diffmix-aug export --dataset toy --num 64 --out toy_patches

Files are ``<name>.npy`` (CoNSeP: ``<tile>_<window>``; arrays: ``<dataset>_<index>``), written
atomically; ``--out`` must be new or empty unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Write a dataset (CoNSeP, GLySAC, PanNuke, CoNIC, HoVer-Net .npy, toy) as HoVer-Net .npy training patches."

DATASETS = ("consep", "glysac", "pannuke", "conic", "hovernet_npy", "toy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=DATASETS, required=True, help="what --input holds")
    parser.add_argument("--input", type=Path, default=None,
                        help="CoNSeP/GLySAC split folder (Images/, Labels/), a HoVer-Net .npy folder, or the "
                             "images .npy of PanNuke / CoNIC")
    parser.add_argument("--labels", type=Path, default=None, help="PanNuke masks.npy / CoNIC labels.npy")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--patch-size", type=int, default=None,
                        help="cut HoVer-Net windows of this side (HoVer-Net: 540 for CoNSeP); default: whole items")
    parser.add_argument("--step", type=int, default=None, help="window step (HoVer-Net: 164); default: --patch-size")
    parser.add_argument("--mode", choices=("mirror", "valid"), default="mirror", help="window mode at the border")
    parser.add_argument("--merge", choices=("auto", "yes", "no"), default="auto",
                        help="CoNSeP/GLySAC: merge raw classes (CoNSeP 7 -> 4); auto (default) merges only when the "
                             "labels hold a raw type id, so folders merged already are read as they are")
    parser.add_argument("--no-merge", action="store_const", const="no", dest="merge", help="same as --merge no")
    parser.add_argument("--downsample", type=int, default=1, help="reduce resolution by this integer factor first")
    parser.add_argument("--num", type=int, default=64, help="toy: number of patches")
    parser.add_argument("--size", type=int, default=256, help="toy: patch side")
    parser.add_argument("--seed", type=int, default=0, help="toy: seed")
    parser.add_argument("--overwrite", action="store_true", help="allow a non-empty --out (same names are replaced)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_dataset(args: argparse.Namespace):
    """The ``NucleiDataset`` the arguments describe (windows and downsampling applied)."""
    from .._checks import check_positive_int
    from ..data.classes import get_dataset_info
    from ..data.dataset import NucleiDataset
    from ..data.toy import make_toy_dataset

    name = args.dataset
    if name == "toy":
        ds = make_toy_dataset(check_positive_int("--num", args.num), check_positive_int("--size", args.size),
                              check_positive_int("--seed", args.seed, allow_zero=True))
    else:
        if args.input is None:
            raise ValueError(f"--input is required for --dataset {name}")
        if not args.input.exists():
            raise FileNotFoundError(f"--input {str(args.input)!r} does not exist")
        if name in ("consep", "glysac"):
            ds = NucleiDataset.from_consep_dir(args.input, name, merge={"auto": "auto", "yes": True, "no": False}[
                getattr(args, "merge", "auto")])
        elif name == "hovernet_npy":
            ds = NucleiDataset.from_hovernet_npy_dir(args.input, get_dataset_info("consep"))
        else:
            if args.labels is None:
                raise ValueError(f"--labels is required for --dataset {name} (the "
                                 f"{'masks' if name == 'pannuke' else 'labels'}.npy next to the images)")
            ctor = NucleiDataset.from_pannuke if name == "pannuke" else NucleiDataset.from_conic
            ds = ctor(args.input, args.labels)
    ds = ds.downsampled(check_positive_int("--downsample", args.downsample))
    if args.patch_size is not None:
        ds = ds.tiled(check_positive_int("--patch-size", args.patch_size),
                      None if args.step is None else check_positive_int("--step", args.step), args.mode)
    return ds


def _names(ds, prefix: str) -> list[str]:
    base = ds.item_names()
    if base is not None and len(base) == len(ds):
        names = list(base)
        if len(set(names)) == len(names):
            return names
    width = max(4, len(str(len(ds) - 1)))
    return [f"{prefix}_{i:0{width}d}" for i in range(len(ds))]


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..data.dataset_card import write_dataset_card
    from ..data.readers import write_hovernet_npy

    out = args.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; expected a folder")
    if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()) and not args.overwrite:
        raise ValueError(f"--out {str(out)!r} is not empty; pass --overwrite or choose a new folder")
    ds = build_dataset(args)
    tiled = args.patch_size is not None
    names = _names(ds, args.dataset) if not tiled else None
    out.mkdir(parents=True, exist_ok=True)
    counts = None
    for i in tqdm(range(len(ds)), desc=f"export {args.dataset}", unit="patch", disable=args.no_progress):
        s = ds[i]
        if tiled:
            meta = s.meta
            stem = Path(meta.get("image", f"{args.dataset}_{meta.get('item', 0):04d}")).stem
            name = f"{stem}_{int(meta.get('patch', i)):03d}"
        else:
            name = names[i]
        write_hovernet_npy(out / f"{name}.npy", s)
        c = s.class_counts(ds.num_classes)
        counts = c if counts is None else counts + c
    shape = tuple(ds[0].shape) if len(ds) else None
    per_class = {n: int(v) for n, v in zip(ds.info.class_names[1:], counts[1:])} if counts is not None else {}
    write_dataset_card(out, ds.info, per_class, len(ds))
    print(f"wrote {len(ds)} HoVer-Net patches {shape} to {out}; nuclei per class: {per_class}; "
          f"resolution: {_mpp_text(ds.info.mpp)}")
    empty = [n for n, v in per_class.items() if v == 0]
    if empty:
        print(f"note: no nucleus of class {empty} was exported; check --merge and the source labels")
    return 0


def _mpp_text(mpp: float | None) -> str:
    return "unknown" if mpp is None else f"{mpp:g} um/px"
