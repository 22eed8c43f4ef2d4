"""Preview of the CoNSeP CPU SDM on validation tiles it never saw: maps, renders and GradMix side by side.

Run (about 2 minutes on 2 CPU cores)::

    python -m benchmarks.consep_preview --data-root ../shared/data/consep_256/train

Rows: validation patches (tiles 1-5, at 20x, 128 px). Columns: the real patch, its labels, the
enlarging map, the SDM's render of it, the balancing map, the SDM's render of it, and GradMix
(the same balancing draws pasted at the image level). Every map column is the label overlay; the
legend names the class colours. Writes ``benchmarks/results/consep/preview.png`` and ``preview.json``.

Data: CoNSeP (Graham et al., "HoVer-Net", Medical Image Analysis 2019), research use.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results" / "consep"
WEIGHTS = Path(__file__).parent / "weights" / "sdm_consep_cpu.safetensors"
VAL_TILES = (1, 2, 3, 4, 5)
DOWNSAMPLE = 2          # 40x -> 20x, as the SDM was trained
PATCH = 128             # a 256 px window at 40x
MAX_SHIFT = 7           # the reference's +-15 px at 40x on 256 px, halved with the resolution


def load_split(data_root: Path):
    """``(train, val)`` NucleiDatasets at 20x, split by tile (validation = tiles 1-5)."""
    from diffmix_aug.data.dataset import NucleiDataset
    from diffmix_aug.data.split import split_by_tile

    ds = NucleiDataset.from_consep_dir(data_root, merge=False)
    train_idx, val_idx = split_by_tile(ds, VAL_TILES)
    return ds.subset(train_idx).downsampled(DOWNSAMPLE), ds.subset(val_idx).downsampled(DOWNSAMPLE)


def main(argv: list[str] | None = None) -> int:
    from diffmix_aug.baselines.gradmix import GradMix
    from diffmix_aug.data.sample import NucleiSample
    from diffmix_aug.data.viz import class_legend, label_overlay, save_image_grid
    from diffmix_aug.labelmaps.donors import DonorBank
    from diffmix_aug.labelmaps.sampler import LabelMapSampler, borders_for_patch
    from diffmix_aug.sampling.synthesizer import Synthesizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data/consep_256/train"))
    ap.add_argument("--weights", type=Path, default=WEIGHTS)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--steps", type=int, default=55, help="guided DDIM steps from --t-start (reference: 55)")
    ap.add_argument("--t-start", type=int, default=540, help="entry timestep (reference: 540)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not args.data_root.is_dir():
        raise SystemExit(f"no CoNSeP patches at {args.data_root} (see ../shared/data/consep_256/README.md)")
    torch.manual_seed(args.seed)
    train, val = load_split(args.data_root)
    info = val.info
    borders = borders_for_patch(PATCH)
    bank = DonorBank.from_dataset(train, (1,), border=borders["border"], keep_images=True)
    enl = LabelMapSampler("enlarge", num_classes=info.num_classes, max_shift=MAX_SHIFT, **borders)
    bal = LabelMapSampler("balance", donors=bank, num_classes=info.num_classes, rare_classes=(1,), **borders)
    gm = GradMix(bank, rare_classes=(1,), border=borders["border"], source_key=None)
    # the validation patches with the most majors to convert: evenly over the validation tiles
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(val))[: args.rows * 4]
    picked = sorted(order, key=lambda i: -len(val[int(i)].info))[: args.rows]
    samples = [val[int(i)] for i in picked]
    maps_e = [enl(s, np.random.default_rng([args.seed, k, 1])) for k, s in enumerate(samples)]
    maps_b = [bal(NucleiSample.trusted(s.image, s.inst_map, s.type_map), np.random.default_rng([args.seed, k, 2]))
              for k, s in enumerate(samples)]
    gradmix = [gm(NucleiSample.trusted(s.image, s.inst_map, s.type_map), np.random.default_rng([args.seed, k, 2]))
               for k, s in enumerate(samples)]
    synth = Synthesizer.from_checkpoint(args.weights, device="cpu", sampler="reference", steps=args.steps,
                                        t_start=args.t_start, guidance_scale=1.5)
    images = np.stack([s.image for s in samples] * 2)
    inst = np.stack([m.inst_map for m in maps_e] + [m.inst_map for m in maps_b])
    types = np.stack([m.type_map for m in maps_e] + [m.type_map for m in maps_b])
    t0 = time.perf_counter()
    out = synth(images, inst, types, generator=torch.Generator().manual_seed(args.seed))
    wall = time.perf_counter() - t0
    n = len(samples)
    pal = info.palette()
    rows, titles = [], []
    for k, s in enumerate(samples):
        conv = maps_b[k].report["balance"]["converted_total"]
        rows.append([s.image, label_overlay(s.image, s.inst_map, s.type_map, pal),
                     label_overlay(out[k], maps_e[k].inst_map, maps_e[k].type_map, pal), out[k],
                     label_overlay(out[n + k], maps_b[k].inst_map, maps_b[k].type_map, pal), out[n + k],
                     gradmix[k].image])
        titles.append(f"{val.item_names()[int(picked[k])]}: {conv} to misc")
    args.out.mkdir(parents=True, exist_ok=True)
    save_image_grid(args.out / "preview.png", rows, row_titles=titles, scale=2, legend=class_legend(info),
                    col_titles=["real (val)", "real labels", "enlarge map", "SDM(enlarge)", "balance map",
                                "SDM(balance)", "GradMix"])
    report = {"benchmark": "consep_preview", "weights": str(args.weights), "data_root": str(args.data_root),
              "validation_tiles": list(VAL_TILES), "downsample": DOWNSAMPLE, "patch": PATCH,
              "max_shift": MAX_SHIFT, "borders": borders, "steps": args.steps, "t_start": args.t_start,
              "sampler": synth.sampler_settings,
              "guidance_scale": 1.5, "patches": 2 * n, "synthesis_s": round(wall, 2),
              "s_per_patch": round(wall / (2 * n), 3),
              "converted": [int(m.report["balance"]["converted_total"]) for m in maps_b],
              "names": [val.item_names()[int(i)] for i in picked],
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "load_average_1min": os.getloadavg()[0]},
              "attribution": "CoNSeP (Graham et al., Medical Image Analysis 2019), research use"}
    (args.out / "preview.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("patches", "synthesis_s", "s_per_patch", "converted")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
