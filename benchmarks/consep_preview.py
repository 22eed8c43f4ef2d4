"""Preview of the CoNSeP CPU SDM on validation tiles it never saw: maps, renders and GradMix side by side.

Run (about 2 minutes on 2 CPU cores)::

    python -m benchmarks.consep_preview --data-root ../shared/data/consep_256

Rows: validation windows (tiles 1-5, at 20x, 128 px; the fullest of 4 x rows drawn uniformly). Columns: the real patch, its
labels, the enlarging map, the SDM's render of it, the balancing map (GradMix's label mixing on the
whole validation tile, then cropped, as ``benchmarks/fidelity.py`` draws them), the SDM's render of
it, and GradMix (the same balancing draws pasted at the image level). Every map column is the label overlay; the
legend names the class colours. Writes ``benchmarks/results/consep/preview.png`` and ``preview.json``.

Data: CoNSeP (Graham et al., "HoVer-Net", Medical Image Analysis 2019), research use.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report_io import json_default  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "consep"
WEIGHTS = Path(__file__).parent / "weights" / "sdm_consep_cpu.safetensors"
VAL_TILES = (1, 2, 3, 4, 5)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.consep_pool import field_of_view, make_synthesizer, sampler_settings
    from benchmarks.fidelity import validation_maps
    from benchmarks.tilesets import consep_tilesets
    from diffmix_aug.data.viz import class_legend, label_overlay, save_image_grid

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data/consep_256"))
    ap.add_argument("--weights", type=Path, default=WEIGHTS)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--steps", type=int, default=55, help="guided DDIM steps from --t-start (reference: 55)")
    ap.add_argument("--t-start", type=int, default=540, help="entry timestep (reference: 540)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    _, val = consep_tilesets(args.data_root, VAL_TILES, only_tiles=())
    info = val.info
    vm = validation_maps(val, 4 * args.rows, args.seed)
    keep = sorted(range(len(vm["real"])), key=lambda j: -len(vm["real"][j].info))[: args.rows]  # the fullest
    vm = {k: [v[j] for j in keep] if isinstance(v, list) else v for k, v in vm.items()}
    samples = vm["real"]
    synth = make_synthesizer(args.weights, args.steps, args.t_start, 1.5)
    images = np.stack([s.image for s in samples] * 2)
    inst = np.stack([m[0] for m in vm["enlarge"]] + [m[0] for m in vm["balance"]])
    types = np.stack([m[1] for m in vm["enlarge"]] + [m[1] for m in vm["balance"]])
    t0 = time.perf_counter()
    out = synth(images, inst, types, generator=torch.Generator().manual_seed(args.seed))
    wall = time.perf_counter() - t0
    n = len(samples)
    pal = info.palette()
    rows, titles, converted = [], [], []
    for k, s in enumerate(samples):
        (ei, et), (bi, bt) = vm["enlarge"][k], vm["balance"][k]
        conv = int(len(np.unique(bi[bt == 1])) - len(np.unique(s.inst_map[s.type_map == 1])))
        converted.append(conv)
        rows.append([s.image, label_overlay(s.image, s.inst_map, s.type_map, pal), label_overlay(out[k], ei, et, pal),
                     out[k], label_overlay(out[n + k], bi, bt, pal), out[n + k], vm["gradmix"][k]])
        name, y, x = vm["where"][k]
        titles.append(f"{name} ({y}, {x}): +{conv} misc")
    args.out.mkdir(parents=True, exist_ok=True)
    save_image_grid(args.out / "preview.png", rows, row_titles=titles, scale=2, legend=class_legend(info),
                    col_titles=["real (val)", "real labels", "enlarge map", "SDM(enlarge)", "balance map",
                                "SDM(balance)", "GradMix"])
    report = {"benchmark": "consep_preview", "weights": Path(args.weights).name, "validation_tiles": list(VAL_TILES),
              "downsample": val.downsample, "patch": val.window,
              "field_of_view": field_of_view(val.window, val.downsample, min(val.tiles[0].inst_map.shape)),
              "balancing": "GradMix label mixing on the whole validation tiles, donors from the validation tiles",
              "sampler": sampler_settings(synth), "patches": 2 * n, "synthesis_s": round(wall, 2),
              "s_per_patch": round(wall / (2 * n), 3), "misc_added": converted,
              "windows": [list(w) for w in vm["where"]],
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "load_average_1min": os.getloadavg()[0]},
              "attribution": "CoNSeP (Graham et al., Medical Image Analysis 2019), research use"}
    (args.out / "preview.json").write_text(json.dumps(report, indent=2, default=json_default) + "\n")
    print(json.dumps({k: report[k] for k in ("patches", "synthesis_s", "s_per_patch", "misc_added")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
