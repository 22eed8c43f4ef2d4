"""Fidelity of the SDM's renders on real CoNSeP, every number beside its controls.

    python benchmarks/fidelity.py --data-root ../shared/data/consep_256 --out benchmarks/results/consep

Judges are trained here on the training tiles; everything is measured on validation tiles 1-5, which
neither the SDM nor any judge saw. Validation maps: ``--n-val`` windows of the validation tiles
(uniform), their enlarged maps, and balanced maps made by GradMix's label mixing on the *whole*
validation tiles with donors from the validation tiles only, so the pasted nuclei were never seen by
the typer, the segmenter or the SDM.

Renderers compared on the same maps:

- ``sdm``: the SDM under test (the ablation's sampler settings);
- ``null``: the source image returned unchanged (what a renderer that ignores the map scores);
- ``gradmix``: GradMix's image-level paste of the same balancing draws (balanced maps only).

1. **Label fidelity.** A segmentation network (the ablation's recipe, real training patches)
   segments each render; PQ and per-class F1 against the map it was conditioned on, and the ratio
   to PQ on the *same* validation patches' real images against their real maps (numerator and
   denominator on the same patches). Label swap: image A rendered under map B, scored against B and
   (control) against A.
2. **Type fidelity.** A nucleus typer (RGB crop + nucleus mask, class-balanced) and its control, a
   typer trained on the mask alone: per class, the share of nuclei read as the class the map gives
   them, on real validation nuclei, on renders, on the pasted rare nuclei of balanced maps for each
   renderer; and the share of real nuclei of each class read as the rare class (its false alarms).
3. **Realism.** A classifier two-sample test (real training patches against the set under test,
   AUC on validation tiles): the SDM's renders, GradMix; the negative control (real against real:
   two halves of the tiles, 0.5 expected) and the positive control (real against real blurred with
   a 0.7 px Gaussian: a subtle difference the test must find).
4. **Morphology per class**, what a pathologist asks first: area, eccentricity and mean
   haematoxylin density (``skimage.color.rgb2hed``) of nuclei as the segmentation network finds them,
   real validation against SDM renders (and GradMix), each with its 1-D Wasserstein distance beside
   the real-training against real-validation distance (tile-to-tile variation); histograms per class.

Judges are trained ``--seeds`` times: every figure is mean +- sd over seeds. Writes ``fidelity.json``,
``fidelity.md`` (rendered from the JSON), ``fidelity.png`` and ``morphology.png`` to ``--out``.
Data: CoNSeP (Graham et al., "HoVer-Net", Medical Image Analysis 2019), research use.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.consep_pool import (
    ATTRIBUTION,
    RARE,
    SDM_VAL_TILES,
    WEIGHTS,
    field_of_view,
    fov_settings,
    make_synthesizer,
    sampler_settings,
)
from benchmarks.report_io import json_default, save_figure
from diffmix_aug._io import atomic_write_text

NAMES = {1: "misc", 2: "inflammatory", 3: "epithelial", 4: "spindle"}
FEATURES = ("area", "eccentricity", "haematoxylin")
LABEL_ROWS = ("real", "sdm_enlarge", "null_enlarge", "sdm_balance", "gradmix_balance", "null_balance", "swap_vs_B",
              "swap_vs_A")


# ----------------------------------------------------------------------------------- validation maps


def validation_maps(val: Any, n: int, seed: int, rare: tuple[int, ...] = RARE) -> dict[str, Any]:
    """``n`` validation windows, their enlarged and balanced maps, and GradMix's images of the balanced ones.

    Balancing runs on the whole validation tiles with a donor bank of the validation tiles only.
    """
    from diffmix_aug.baselines.gradmix import GradMix
    from diffmix_aug.data.sample import NucleiSample
    from diffmix_aug.labelmaps.balance import apply_balance, draw_balance_params
    from diffmix_aug.labelmaps.donors import DonorBank
    from diffmix_aug.labelmaps.sampler import LabelMapSampler

    fov = field_of_view(val.window, val.downsample, min(val.tiles[0].inst_map.shape))
    bank = DonorBank.from_maps(((t.inst_map, t.type_map, t.image) for t in val.tiles), rare, fov["border"],
                               keep_images=True, image_margin=8)
    gm = GradMix(bank, rare, balance=fov_settings(fov)["balance"], source_key=None)
    bal_tiles = []
    for k, tile in enumerate(val.tiles):
        params = draw_balance_params(np.random.default_rng([seed, k, 2]), tile.inst_map, tile.type_map, bank,
                                     fov_settings(fov)["balance"], rare_classes=rare, exclude_source=k,
                                     info=tile.info)
        inst, typ, _ = apply_balance(tile.inst_map, tile.type_map, params, bank, tile.info)
        g = gm.apply(NucleiSample.trusted(tile.image, tile.inst_map, tile.type_map), params)
        bal_tiles.append((inst, typ, g.image))
    enl = LabelMapSampler("enlarge", num_classes=val.info.num_classes, rare_classes=rare,
                          enlarge=fov_settings(fov)["enlarge"])
    rng = np.random.default_rng([seed, 5])
    h, w = val.tiles[0].inst_map.shape
    p = val.window
    out: dict[str, list] = {k: [] for k in ("real", "enlarge", "balance", "gradmix", "where")}
    for j in range(n):
        k = int(rng.integers(len(val.tiles)))
        y, x = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
        sl = (slice(y, y + p), slice(x, x + p))
        t = val.tiles[k]
        real = NucleiSample.trusted(t.image[sl].copy(), t.inst_map[sl].copy(), t.type_map[sl].copy())
        e = enl(real, np.random.default_rng([seed, j, 1]))
        binst, btyp, gimg = (np.ascontiguousarray(a[sl]) for a in bal_tiles[k])
        out["real"].append(real)
        out["enlarge"].append((e.inst_map, e.type_map))
        out["balance"].append((binst, btyp))
        out["gradmix"].append(gimg)
        out["where"].append((val.names[k], y, x))
    out["donors"] = len(bank)
    return out


def render(synth: Any, images: np.ndarray, maps: list[tuple[np.ndarray, np.ndarray]], seed: int,
           desc: str = "render") -> np.ndarray:
    """The SDM's renders of ``maps`` from ``images`` (batches of 8, one generator), with a progress bar."""
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(seed)
    inst = np.stack([m[0] for m in maps]).astype(np.int32)
    typ = np.stack([m[1] for m in maps]).astype(np.int32)
    out = []
    with tqdm(total=len(images), desc=desc, unit="patch") as bar:
        for i in range(0, len(images), 8):
            out.append(synth(images[i:i + 8], inst[i:i + 8], typ[i:i + 8], generator=gen))
            bar.update(len(out[-1]))
    return np.concatenate(out)


def _render_seed(args: argparse.Namespace, k: int) -> int:
    """The generator seed of render set ``k`` (1-4): ``k`` itself for ``--render-seed 0``, as every committed run."""
    return k + 100 * args.render_seed


def _items(images, maps) -> list[dict]:
    return [{"img": im, "inst_map": m[0], "type_map": m[1]} for im, m in zip(images, maps)]


# ----------------------------------------------------------------------------------- 1. label fidelity


def label_fidelity(model: Any, cfg: Any, sets: dict[str, list[dict]]) -> dict[str, Any]:
    """PQ / DQ / F1 of each set of (image, map) items; ``pq_ratio`` against ``sets["real"]`` (same patches)."""
    from benchmarks.downstream.train import evaluate

    out = {}
    for key, items in sets.items():
        m = evaluate(model, items, cfg, type_ids=[1, 2, 3, 4])
        out[key] = {"pq": m["pq"], "dq": m["dq"], "sq": m["sq"], "f1_detection": m["f1_detection"],
                    "f1_per_type": {int(k): v for k, v in m["f1_per_type"].items()}}
    for key in out:
        out[key]["pq_ratio"] = _ratio(out[key]["pq"], out["real"]["pq"])
    return out


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b and not math.isnan(b) else float("nan")


# ----------------------------------------------------------------------------------- 2. type fidelity


class CropNet(nn.Module):
    """A small CNN: ``float [N, C, S, S]`` -> ``[N, K]`` logits (global average pooled)."""

    def __init__(self, in_ch: int, n_out: int, width: int = 16):
        super().__init__()
        layers, c = [], in_ch
        for w in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def nucleus_crops(image: np.ndarray, inst_map: np.ndarray, type_map: np.ndarray, size: int = 32,
                  ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(float32 [n, 4, size, size] crops (RGB / 255 and the nucleus mask), int64 [n] types, int64 [n] ids)``."""
    from diffmix_aug.data.sample import instance_info

    info = instance_info(inst_map, type_map)
    h = size // 2
    pad_img = np.pad(image, ((h, h), (h, h), (0, 0)), mode="reflect")
    pad_inst = np.pad(inst_map, h)
    crops, types, keep = [], [], []
    wanted = None if ids is None else set(int(i) for i in ids)
    for k, (nid, t) in enumerate(zip(info.ids, info.types)):
        if t == 0 or (wanted is not None and int(nid) not in wanted):
            continue
        cx, cy = info.centroids[k]
        y, x = int(round(cy)) + h, int(round(cx)) + h
        win = pad_img[y - h:y + h, x - h:x + h].astype(np.float32) / 255.0
        mask = (pad_inst[y - h:y + h, x - h:x + h] == nid).astype(np.float32)
        crops.append(np.concatenate([win.transpose(2, 0, 1), mask[None]], 0))
        types.append(int(t))
        keep.append(int(nid))
    if not crops:
        return np.zeros((0, 4, size, size), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.stack(crops), np.asarray(types, np.int64), np.asarray(keep, np.int64)


def crops_of(items: list[tuple[np.ndarray, np.ndarray, np.ndarray]], ids: list | None = None):
    """Concatenated :func:`nucleus_crops` of ``(image, inst, type)`` triples (optionally only ``ids[i]``)."""
    parts = [nucleus_crops(*it, ids=None if ids is None else ids[i]) for i, it in enumerate(items)]
    return (np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 4, 32, 32), np.float32),
            np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64))


def train_typer(x: np.ndarray, y: np.ndarray, seed: int, steps: int, mask_only: bool = False,
                n_cls: int = 5) -> nn.Module:
    """Train on class-balanced batches (each class drawn equally often); ``mask_only``: the mask channel alone."""
    torch.manual_seed(seed)
    net = CropNet(1 if mask_only else 4, n_cls)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    rng = np.random.default_rng([seed, 3])
    by_cls = [np.flatnonzero(y == c) for c in range(n_cls)]
    present = [c for c in range(n_cls) if by_cls[c].size]
    xt = torch.from_numpy(x[:, 3:] if mask_only else x)
    net.train()
    for _ in range(steps):
        cls = rng.choice(present, 64)
        pick = np.array([by_cls[c][rng.integers(by_cls[c].size)] for c in cls])
        xb = torch.rot90(xt[pick], int(rng.integers(4)), (2, 3))
        if rng.integers(2):
            xb = xb.flip(3)
        loss = nn.functional.cross_entropy(net(xb), torch.from_numpy(y[pick]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.mask_only = mask_only
    return net.eval()


@torch.no_grad()
def predict_types(net: nn.Module, x: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return np.zeros(0, np.int64)
    if getattr(net, "mask_only", False):
        x = x[:, 3:]
    return np.concatenate([net(torch.from_numpy(np.ascontiguousarray(x[i:i + 256]))).argmax(1).numpy()
                           for i in range(0, len(x), 256)])


def pasted_ids(original_type: np.ndarray, new_inst: np.ndarray, new_type: np.ndarray,
               rare: tuple[int, ...] = RARE) -> np.ndarray:
    """Ids of rare nuclei in a balanced map whose pixels were mostly not rare in the original map (pasted)."""
    out = []
    for nid in np.unique(new_inst[np.isin(new_type, rare) & (new_inst > 0)]):
        px = new_inst == nid
        if np.mean(np.isin(original_type[px], rare)) < 0.5:
            out.append(int(nid))
    return np.asarray(out, np.int64)


def type_fidelity(typer: nn.Module, mask_typer: nn.Module, sets: dict[str, Any]) -> dict[str, Any]:
    """Per class, shares read as the map's class; pasted rare nuclei per renderer; false alarms on real nuclei."""
    def shares(net, x, y):
        p = predict_types(net, x)
        return {str(c): {"n": int((y == c).sum()), "share": float((p[y == c] == c).mean()) if (y == c).any()
                         else float("nan"), "read_as_rare": float((p[y == c] == RARE[0]).mean()) if (y == c).any()
                         else float("nan")} for c in (1, 2, 3, 4)}

    out = {}
    for key, (x, y) in sets.items():
        out[key] = shares(typer, x, y)
    out["mask_only"] = {key: shares(mask_typer, x, y) for key, (x, y) in sets.items()}
    return out


# ----------------------------------------------------------------------------------- 3. realism


def c2st(neg_train: np.ndarray, pos_train: np.ndarray, neg_val: np.ndarray, pos_val: np.ndarray, seed: int,
         steps: int, crop: int = 64) -> float:
    """Classifier two-sample test: trained on ``crop`` px crops (0 vs 1), ROC AUC on the whole validation images."""
    from benchmarks.stats import roc_auc

    torch.manual_seed(seed)
    net = CropNet(3, 1)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    rng = np.random.default_rng([seed, 9])
    net.train()
    for _ in range(steps):
        xs, ys = [], []
        for label, arr in enumerate((neg_train, pos_train)):
            for j in rng.integers(0, len(arr), 8):
                h, w = arr.shape[1:3]
                y0, x0 = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
                xs.append(np.rot90(arr[j, y0:y0 + crop, x0:x0 + crop], int(rng.integers(4))))
                ys.append(label)
        xb = torch.from_numpy(np.ascontiguousarray(np.stack(xs))).permute(0, 3, 1, 2).float() / 255.0
        loss = nn.functional.binary_cross_entropy_with_logits(net(xb)[:, 0], torch.tensor(ys, dtype=torch.float32))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        def score(arr):
            return net(torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 255.0)[:, 0].numpy()
        s0, s1 = score(neg_val), score(pos_val)
    return roc_auc(np.concatenate([s0, s1]), np.r_[np.zeros(len(s0)), np.ones(len(s1))])


def blurred(images: np.ndarray, sigma: float = 0.7) -> np.ndarray:
    """The positive control of the two-sample test: a Gaussian blur of ``sigma`` px."""
    import cv2

    return np.stack([cv2.GaussianBlur(im, (0, 0), sigma) for im in images])


# ----------------------------------------------------------------------------------- 4. morphology


def morphology(model: Any, cfg: Any, images: np.ndarray, maps: list[tuple[np.ndarray, np.ndarray]],
               ids: list[np.ndarray] | None = None) -> dict[str, dict[str, list[float]]]:
    """Per class, features of the nuclei the segmentation network finds in ``images``, paired with the map's.

    A map nucleus (class from the map; optionally only ``ids[i]``) is measured on the predicted
    instance paired with it (centroids within the pairing radius): area (px), eccentricity, mean
    haematoxylin optical density (``rgb2hed``) over the predicted pixels.
    """
    from skimage.color import rgb2hed
    from skimage.measure import regionprops

    from benchmarks.downstream.train import predict
    from diffmix_aug.data.sample import instance_info
    from diffmix_aug.metrics.classification import pair_coordinates

    preds = predict(model, list(images), cfg)
    out = {NAMES[c]: {f: [] for f in FEATURES} for c in NAMES}
    for i, (img, (inst, typ), pred) in enumerate(zip(images, maps, preds)):
        info = instance_info(inst, typ)
        if not len(info) or not len(pred["inst_centroid"]):
            continue
        ia, ib = pair_coordinates(info.centroids, np.asarray(pred["inst_centroid"]), cfg.pair_radius)
        hed = rgb2hed(img)[..., 0]
        props = {p.label: p for p in regionprops(pred["inst_map"])}
        pred_ids = np.unique(pred["inst_map"])
        pred_ids = pred_ids[pred_ids > 0]
        for a, b in zip(ia, ib):
            c = int(info.types[a])
            if c not in NAMES or (ids is not None and int(info.ids[a]) not in set(ids[i].tolist())):
                continue
            p = props.get(int(pred_ids[b]))
            if p is None:
                continue
            out[NAMES[c]]["area"].append(float(p.area))
            out[NAMES[c]]["eccentricity"].append(float(p.eccentricity))
            out[NAMES[c]]["haematoxylin"].append(float(hed[pred["inst_map"] == p.label].mean()))
    return out


def morph_distances(a: dict, b: dict) -> dict[str, dict[str, float]]:
    """1-D Wasserstein distance per class and feature (NaN with fewer than 3 nuclei on a side)."""
    from scipy.stats import wasserstein_distance

    out = {}
    for cls in a:
        out[cls] = {}
        for f in FEATURES:
            x, y = a[cls][f], b[cls][f]
            out[cls][f] = float(wasserstein_distance(x, y)) if len(x) >= 3 and len(y) >= 3 else float("nan")
    return out


def morphology_summary(values: dict[str, dict], bins: int = 20) -> dict[str, Any]:
    """Histograms on common edges per (class, feature), means, counts and W1 distances to real validation."""
    classes = list(NAMES.values())
    edges = {}
    for cls in classes:
        edges[cls] = {}
        for f in FEATURES:
            allv = np.concatenate([np.asarray(v[cls][f], np.float64) for v in values.values()])
            edges[cls][f] = (np.histogram_bin_edges(allv, bins) if allv.size else np.linspace(0, 1, bins + 1)).tolist()
    sets = {k: {cls: {f: {"n": len(v[cls][f]), "mean": float(np.mean(v[cls][f])) if v[cls][f] else float("nan"),
                          "hist": np.histogram(v[cls][f], edges[cls][f])[0].tolist()} for f in FEATURES}
                for cls in classes} for k, v in values.items()}
    w1 = {k: morph_distances(values["real_val"], v) for k, v in values.items() if k != "real_val"}
    return {"features": list(FEATURES), "classes": classes, "edges": edges, "sets": sets, "w1": w1}


# ----------------------------------------------------------------------------------- main


def _mean_sd(v: list[float]) -> list[float]:
    a = np.asarray([x for x in v if not (x is None or math.isnan(x))], np.float64)
    return [float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0] if a.size else [float("nan")] * 2


def _agg(per_seed: list[Any]) -> Any:
    """Mean and sd over seeds of every float leaf of identically shaped dicts (ints are counts: kept)."""
    first = per_seed[0]
    if isinstance(first, dict):
        return {k: _agg([p[k] for p in per_seed]) for k in first}
    if isinstance(first, (int, np.integer)) and not isinstance(first, bool):
        return int(first)
    return _mean_sd([float(p) for p in per_seed])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=None, help="../shared/data/consep_256 (or its train/)")
    ap.add_argument("--sdm", type=Path, default=WEIGHTS)
    ap.add_argument("--out", type=Path, default=Path("runs/fidelity"))
    ap.add_argument("--n-val", type=int, default=48, help="validation windows rendered (x3: enlarge, balance, swap)")
    ap.add_argument("--n-train-renders", type=int, default=48, help="training-map renders for the two-sample test")
    ap.add_argument("--seeds", type=int, default=3, help="judge seeds (typers and two-sample tests)")
    ap.add_argument("--seg-seeds", type=int, default=2, help="segmentation networks (label fidelity, morphology)")
    ap.add_argument("--seg-iterations", type=int, default=800)
    ap.add_argument("--typer-steps", type=int, default=600)
    ap.add_argument("--c2st-steps", type=int, default=300)
    ap.add_argument("--render-steps", type=int, default=11)
    ap.add_argument("--t-start", type=int, default=540)
    ap.add_argument("--solver", default="ddim", choices=("ddim", "dpmpp_2m", "dpmpp_3m", "unipc"),
                    help="solver of the renders (ddim: the reference protocol's)")
    ap.add_argument("--spacing", default="linear", choices=("linear", "logsnr", "quadratic"),
                    help="step grid of the renders ('logsnr' for the multistep solvers)")
    ap.add_argument("--guidance", type=float, default=1.5)
    ap.add_argument("--render-seed", type=int, default=0,
                    help="seed of the renders' noise draws (the maps and judges stay the same): repeat a run with "
                         "another value to measure the renderer's own seed spread")
    ap.add_argument("--val-tiles", default=",".join(map(str, SDM_VAL_TILES)))
    ap.add_argument("--train-tiles", default=None, help="read only these training tiles (smoke runs)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="smoke run: a few tiles, patches, steps and one seed")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_val, args.n_train_renders, args.seeds, args.seg_seeds, args.seg_iterations = 3, 3, 1, 1, 3
        args.typer_steps, args.c2st_steps, args.render_steps = 3, 3, 1
        args.val_tiles = "1,2" if args.val_tiles == ",".join(map(str, SDM_VAL_TILES)) else args.val_tiles
        args.train_tiles = args.train_tiles or "6,19"
        args.threads = args.threads or 1
    if args.render_seed < 0:
        ap.error(f"--render-seed must be >= 0, got {args.render_seed}")
    if args.data_root is None:
        ap.error("--data-root is required (../shared/data/consep_256)")
    args.val_tiles = tuple(int(t) for t in str(args.val_tiles).split(",") if t.strip())
    bad = [t for t in args.val_tiles if t not in SDM_VAL_TILES]
    if bad:
        ap.error(f"--val-tiles {bad} were in the SDM's training set; use tiles of {list(SDM_VAL_TILES)}")
    return args


def run(args: argparse.Namespace) -> dict:
    from benchmarks.ablation import harness_config, median_frequency_weights
    from benchmarks.downstream.train import train
    from benchmarks.tilesets import consep_tilesets

    if args.threads:
        torch.set_num_threads(args.threads)
    t_begin = time.perf_counter()
    only = None if args.train_tiles is None else [int(t) for t in str(args.train_tiles).split(",") if t.strip()]
    train_ts, val = consep_tilesets(args.data_root, args.val_tiles, only_tiles=only)
    rare = tuple(train_ts.info.rare_classes)
    print(f"fidelity: {len(train_ts)} training tiles, validation tiles {list(args.val_tiles)}", flush=True)
    vm = validation_maps(val, args.n_val, seed=0, rare=rare)
    real = vm["real"]
    src = np.stack([s.image for s in real])
    synth = make_synthesizer(Path(args.sdm), args.render_steps, args.t_start, args.guidance, solver=args.solver,
                             spacing=args.spacing)
    settings = sampler_settings(synth)
    print(f"rendering {3 * len(real) + args.n_train_renders} patches "
          f"({settings['denoising_steps']} steps from t = {settings['entry_timestep']}) ...", flush=True)
    t0 = time.perf_counter()
    sdm_e = render(synth, src, vm["enlarge"], _render_seed(args, 1), "render enlarged maps")
    sdm_b = render(synth, src, vm["balance"], _render_seed(args, 2), "render balanced maps")
    swap = np.roll(np.arange(len(real)), 1)  # image A = real[k], map B = real[k - 1]
    sdm_swap = render(synth, src, [(real[j].inst_map, real[j].type_map) for j in swap], _render_seed(args, 3),
                      "render swapped maps")
    n_val_renders = 3 * len(real)
    # training-map renders for the two-sample test: enlarged maps of uniform training windows
    rng = np.random.default_rng([0, 11])
    tr_idx = rng.integers(0, len(train_ts.patches), args.n_train_renders)
    tr_src = np.stack([train_ts.patches[int(i)].image for i in tr_idx])
    from diffmix_aug.labelmaps.sampler import LabelMapSampler

    fov = field_of_view(train_ts.window, train_ts.downsample, min(train_ts.tiles[0].inst_map.shape))
    enl = LabelMapSampler("enlarge", num_classes=5, rare_classes=rare, enlarge=fov_settings(fov)["enlarge"])
    tr_maps = [(m.inst_map, m.type_map) for m in (enl(train_ts.patches[int(i)], np.random.default_rng([0, j, 12]))
                                                  for j, i in enumerate(tr_idx))]
    sdm_train = render(synth, tr_src, tr_maps, _render_seed(args, 4), "render training maps")
    render_seconds = time.perf_counter() - t0
    # the sets scored against their maps (all on the same validation windows)
    emaps, bmaps = vm["enlarge"], vm["balance"]
    real_maps = [(s.inst_map, s.type_map) for s in real]
    gm_imgs = np.stack(vm["gradmix"])
    label_sets = {"real": _items(src, real_maps), "sdm_enlarge": _items(sdm_e, emaps),
                  "null_enlarge": _items(src, emaps), "sdm_balance": _items(sdm_b, bmaps),
                  "gradmix_balance": _items(gm_imgs, bmaps), "null_balance": _items(src, bmaps),
                  "swap_vs_B": _items(sdm_swap, [real_maps[j] for j in swap]), "swap_vs_A": _items(sdm_swap, real_maps)}
    weights = median_frequency_weights(train_ts.patches, train_ts.info.num_classes)
    args.downsample, args.lr, args.net, args.device = train_ts.downsample, 1e-3, "small", "cpu"
    args.iterations, args.batch_size, args.crop, args.width, args.depth = args.seg_iterations, 8, 64, 16, 3
    if args.quick:
        args.crop, args.width, args.depth, args.batch_size = 48, 8, 2, 4
    lf, morph_runs = [], []
    pasted = [pasted_ids(s.type_map, m[0], m[1], rare) for s, m in zip(real, bmaps)]
    for seed in range(args.seg_seeds):
        print(f"label fidelity: segmentation network {seed + 1} of {args.seg_seeds}", flush=True)
        cfg = harness_config(args, seed, weights, rare)
        model, _ = train(train_ts.patches, train_ts.info.num_classes, cfg, progress=True)
        lf.append(label_fidelity(model, cfg, label_sets))
        if seed == 0:
            ref_idx = np.random.default_rng([0, 13]).integers(0, len(train_ts.patches), len(real))
            ref = [train_ts.patches[int(i)] for i in ref_idx]
            morph_runs = {"real_val": morphology(model, cfg, src, real_maps),
                          "real_train": morphology(model, cfg, np.stack([s.image for s in ref]),
                                                   [(s.inst_map, s.type_map) for s in ref]),
                          "sdm_enlarge": morphology(model, cfg, sdm_e, emaps),
                          "sdm_balance": morphology(model, cfg, sdm_b, bmaps),
                          "sdm_balance_pasted": morphology(model, cfg, sdm_b, bmaps, pasted),
                          "gradmix_balance_pasted": morphology(model, cfg, gm_imgs, bmaps, pasted)}
    # type fidelity: typers on the training tiles' nuclei (the pasted donors come from validation tiles)
    tx, ty = crops_of([(p.image, p.inst_map, p.type_map) for p in train_ts.patches])
    type_sets = {"real_val": crops_of([(s.image, s.inst_map, s.type_map) for s in real]),
                 "sdm_enlarge": crops_of([(im, m[0], m[1]) for im, m in zip(sdm_e, emaps)]),
                 "null_enlarge": crops_of([(im, m[0], m[1]) for im, m in zip(src, emaps)]),
                 "sdm_pasted": crops_of([(im, m[0], m[1]) for im, m in zip(sdm_b, bmaps)], pasted),
                 "gradmix_pasted": crops_of([(im, m[0], m[1]) for im, m in zip(gm_imgs, bmaps)], pasted),
                 "null_pasted": crops_of([(im, m[0], m[1]) for im, m in zip(src, bmaps)], pasted)}
    print(f"type fidelity: {args.seeds} typers and their mask-only controls ({args.typer_steps} steps each)", flush=True)
    tf = [type_fidelity(train_typer(tx, ty, seed, args.typer_steps),
                        train_typer(tx, ty, seed, args.typer_steps, mask_only=True), type_sets)
          for seed in range(args.seeds)]
    # realism: two-sample tests with their controls
    real_train = np.stack([p.image for p in train_ts.patches])
    gm_train = _gradmix_train(train_ts, args.n_train_renders, rare)
    half = np.random.default_rng([0, 17]).permutation(len(real_train))
    a_half, b_half = real_train[half[: len(half) // 2]], real_train[half[len(half) // 2:]]
    vhalf = np.random.default_rng([0, 18]).permutation(len(src))
    va, vb = src[vhalf[: len(vhalf) // 2]], src[vhalf[len(vhalf) // 2:]]
    realism = []
    print(f"realism: {args.seeds} x 4 two-sample tests ({args.c2st_steps} steps each)", flush=True)
    for seed in range(args.seeds):
        realism.append({
            "sdm": c2st(real_train, sdm_train, src, np.concatenate([sdm_e, sdm_b]), seed, args.c2st_steps),
            "gradmix": c2st(real_train, gm_train, src, gm_imgs, seed, args.c2st_steps),
            "negative_control_real_vs_real": c2st(a_half, b_half, va, vb, seed, args.c2st_steps),
            "positive_control_blur": c2st(real_train, blurred(real_train), src, blurred(src), seed, args.c2st_steps)})
    morph = morphology_summary(morph_runs)
    elapsed = time.perf_counter() - t_begin
    lf_agg = _agg(lf)
    lf_agg["order"] = list(LABEL_ROWS)
    result = {
        "benchmark": "fidelity", "schema": 2, "command": " ".join(["python", "benchmarks/fidelity.py"] + (
            sys.argv[1:] if getattr(args, "argv", None) is None else args.argv)),
        "quick": bool(args.quick), "validation_tiles": list(args.val_tiles), "train_tiles": len(train_ts),
        "judge_train_patches": len(train_ts.patches), "validation_windows": len(real),
        "where": [list(w) for w in vm["where"]], "validation_donors": vm["donors"],
        "sampler": settings, "render_seed": int(args.render_seed), "render_seconds": round(render_seconds, 1),
        "s_per_render": round(render_seconds / max(1, n_val_renders + args.n_train_renders), 3),
        "field_of_view": fov, "harness": harness_config(args, 0, weights, rare).to_dict(),
        "label_fidelity": lf_agg, "type_fidelity": _agg(tf), "realism": _agg(realism), "morphology": morph,
        "per_seed": {"label_fidelity": lf, "type_fidelity": tf, "realism": realism},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 2)},
        "elapsed_seconds": round(elapsed, 1), "attribution": ATTRIBUTION,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "fidelity.json", json.dumps(result, indent=1, default=json_default) + "\n")
    from benchmarks.render_results import render_fidelity

    written = render_fidelity(args.out / "fidelity.json")
    _examples(args.out / "fidelity_examples.png", src, sdm_e, sdm_b, gm_imgs, sdm_swap, emaps, bmaps)
    print((args.out / "fidelity.md").read_text())
    print(f"wrote {', '.join(str(p) for p in written)} ({elapsed / 60:.1f} min)")
    return result


def _gradmix_train(train_ts: Any, n: int, rare: tuple[int, ...]) -> np.ndarray:
    """GradMix images of ``n`` uniform training windows (own-tile donors), for the two-sample test."""
    from diffmix_aug.baselines.gradmix import GradMix
    from diffmix_aug.labelmaps.donors import DonorBank

    fov = field_of_view(train_ts.window, train_ts.downsample, min(train_ts.tiles[0].inst_map.shape))
    bank = DonorBank.from_maps(((p.inst_map, p.type_map, p.image) for p in train_ts.patches), rare,
                               fov["border"], keep_images=True, image_margin=8)
    gm = GradMix(bank, rare, balance=fov_settings(fov)["balance"], source_key=None)
    rng = np.random.default_rng([0, 19])
    return np.stack([gm(train_ts.patches[int(i)], np.random.default_rng([0, j, 20])).image
                     for j, i in enumerate(rng.integers(0, len(train_ts.patches), n))])


def _examples(path: Path, src, sdm_e, sdm_b, gm, swap, emaps, bmaps, k: int = 4) -> None:
    """A grid of source images and their renders (titles per column)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    cols = [("real (source)", src, None), ("SDM: enlarged map", sdm_e, emaps), ("SDM: balanced map", sdm_b, bmaps),
            ("GradMix: balanced map", gm, bmaps), ("SDM: image A, map B", swap, None)]
    k = min(k, len(src))
    fig, axes = plt.subplots(k, len(cols), figsize=(2.1 * len(cols), 2.1 * k + 0.4), squeeze=False)
    for j, (title, imgs, maps) in enumerate(cols):
        for i in range(k):
            im = imgs[i].copy()
            if maps is not None:
                b = find_boundaries(maps[i][0]) & (maps[i][1] == RARE[0])
                im[b] = (255, 255, 0)
            axes[i, j].imshow(im)
            axes[i, j].axis("off")
        axes[0, j].set_title(title, fontsize=8)
    fig.suptitle("Validation windows and their renders (yellow: rare nuclei of the map)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------- rendering (from the JSON)


def _f(ms: Any) -> str:
    return "n/a" if ms is None or ms[0] is None or math.isnan(ms[0]) else f"{ms[0]:.3f} ± {ms[1]:.3f}"


def markdown(r: dict) -> str:
    """``fidelity.md`` from ``fidelity.json`` (used by :mod:`benchmarks.render_results`)."""
    lf, tf, rz, mo = r["label_fidelity"], r["type_fidelity"], r["realism"], r["morphology"]
    s = r["sampler"]
    labels = {"real": "real image vs its real map (denominator)", "sdm_enlarge": "SDM(enlarged map) vs its map",
              "null_enlarge": "null renderer (source image) vs the enlarged map",
              "sdm_balance": "SDM(balanced map) vs its map", "gradmix_balance": "GradMix vs its balanced map",
              "null_balance": "null renderer vs the balanced map", "swap_vs_B": "swap: image A under map B, vs B",
              "swap_vs_A": "swap: vs A (control)"}
    L = [f"# Fidelity of the CoNSeP CPU SDM on validation tiles {r['validation_tiles']}"
         + (" — QUICK SMOKE RUN, not evidence" if r["quick"] else ""), "",
         f"Command: `{r['command']}`  ", f"{r['validation_windows']} validation windows, each rendered under its "
         f"enlarged map, its balanced map (GradMix label mixing on the whole validation tiles, {r['validation_donors']} "
         f"donors from the validation tiles only: no judge and not the SDM saw them) and a swapped map; "
         f"{s.get('denoising_steps')} denoising steps from t = {s.get('entry_timestep')}, guidance "
         f"{s.get('guidance_scale')}, {r['s_per_render']} s per render. Judges trained on {r['judge_train_patches']} "
         f"training patches; mean ± sd over judge seeds; {r['elapsed_seconds'] / 60:.1f} min.", "",
         "## Label fidelity: each set scored against the map it was made from", "",
         "Every row is on the same validation windows, so the ratio's numerator and denominator share their patches. "
         "The null renderer returns the source image unchanged: what a renderer that ignores the map scores.", "",
         "| Images scored | PQ | PQ / real | DQ | F1 det | " + " | ".join(f"F^{NAMES[c]}" for c in (1, 2, 3, 4)) + " |",
         "|---" * 9 + "|"]
    for key in lf["order"]:
        m = lf[key]
        L.append(f"| {labels[key]} | {_f(m['pq'])} | {_f(m['pq_ratio'])} | {_f(m['dq'])} | {_f(m['f1_detection'])} | "
                 + " | ".join(_f(m["f1_per_type"][str(c)] if str(c) in m["f1_per_type"] else m["f1_per_type"].get(c))
                              for c in (1, 2, 3, 4)) + " |")
    tlabels = {"real_val": "real validation nuclei (the judge's accuracy)", "sdm_enlarge": "SDM(enlarged map)",
               "null_enlarge": "null renderer, enlarged map", "sdm_pasted": "SDM: pasted misc nuclei",
               "gradmix_pasted": "GradMix: pasted misc nuclei", "null_pasted": "null renderer: pasted misc masks"}
    L += ["", "## Type fidelity: share of nuclei read as the class their map gives them", "",
          "Judge: a typer on the RGB crop and the nucleus mask, trained class-balanced on the training tiles. "
          "Control: the same typer architecture trained on the mask alone (what the shape tells without any image).",
          "", "| Nuclei | judge: " + " | judge: ".join(NAMES[c] for c in (1, 2, 3, 4)) + " | mask-only: misc |",
          "|---" * 6 + "|"]
    for key, lab in tlabels.items():
        row, mrow = tf[key], tf["mask_only"][key]
        L.append(f"| {lab} | " + " | ".join(f"{_f(row[str(c)]['share'])} (n={row[str(c)]['n']})" for c in (1, 2, 3, 4))
                 + f" | {_f(mrow['1']['share'])} |")
    L += ["", "False alarms of the judge: share of real validation nuclei of each class read as misc: "
          + ", ".join(f"{NAMES[c]} {_f(tf['real_val'][str(c)]['read_as_rare'])}" for c in (2, 3, 4)) + ".", "",
          "## Realism: classifier two-sample tests (AUC on validation tiles; 0.5 = indistinguishable)", "",
          "| Set tested against real patches | AUC |", "|---|---|",
          f"| SDM renders | {_f(rz['sdm'])} |", f"| GradMix | {_f(rz['gradmix'])} |",
          f"| negative control: real vs real (other tiles) | {_f(rz['negative_control_real_vs_real'])} |",
          f"| positive control: real vs real blurred (0.7 px) | {_f(rz['positive_control_blur'])} |", "",
          "## Morphology per class: nuclei as the segmentation network finds them", "",
          "1-D Wasserstein distance to real validation nuclei; the real-training row is tile-to-tile variation "
          "alone. n = nuclei measured.", ""]
    heads = ["Set", "class"] + [f"W1 {f}" for f in FEATURES] + ["n"]
    L += ["| " + " | ".join(heads) + " |", "|---" * len(heads) + "|"]
    for key, dist in mo["w1"].items():
        for cls, d in dist.items():
            n = mo["sets"][key][cls]["area"]["n"]
            if n == 0:
                continue
            L.append(f"| {key} | {cls} | " + " | ".join("n/a" if math.isnan(d[f]) else f"{d[f]:.3f}" for f in FEATURES)
                     + f" | {n} |")
    L += ["", "![morphology](morphology.png)", "", "![fidelity](fidelity.png)", "",
          "## What this does not show", "",
          "- Judges are small networks trained here; a judge that cannot tell two sets apart is weak evidence that "
          "they are alike: read every row beside its control.",
          "- Renders of one CPU-sized SDM at 20x; the reference SDM at 40x is not measured here.", ""]
    return "\n".join(L)


def figures(r: dict, out: Path) -> list[Path]:
    """``fidelity.png`` (label, type and realism bars with their controls) and ``morphology.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lf, tf, rz = r["label_fidelity"], r["type_fidelity"], r["realism"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    keys = [k for k in lf["order"] if k != "real"]
    axes[0].bar(range(len(keys)), [lf[k]["pq_ratio"][0] for k in keys], yerr=[lf[k]["pq_ratio"][1] for k in keys],
                color=["C0" if k.startswith("sdm") else "C1" if k.startswith("gradmix") else "0.6" if
                       k.startswith("null") else "C2" for k in keys], capsize=3)
    axes[0].set_xticks(range(len(keys)), [k.replace("_", "\n") for k in keys], fontsize=6)
    axes[0].set_ylabel("PQ / PQ of the real images (same windows)")
    axes[0].set_title("label fidelity (grey: null renderer)", fontsize=9)
    tk = ["real_val", "sdm_pasted", "gradmix_pasted", "null_pasted"]
    judge = [tf[k]["1"]["share"][0] for k in tk]
    mask = [tf["mask_only"][k]["1"]["share"][0] for k in tk]
    x = np.arange(len(tk))
    axes[1].bar(x - 0.2, judge, 0.4, label="judge (image + mask)", color="C4")
    axes[1].bar(x + 0.2, mask, 0.4, label="mask-only control", color="0.6")
    axes[1].set_xticks(x, ["real misc", "SDM pasted", "GradMix pasted", "null pasted"], fontsize=7)
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel("read as miscellaneous")
    axes[1].set_title("type fidelity of misc nuclei", fontsize=9)
    axes[1].legend(fontsize=7)
    rk = ["sdm", "gradmix", "negative_control_real_vs_real", "positive_control_blur"]
    axes[2].bar(range(4), [rz[k][0] for k in rk], yerr=[rz[k][1] for k in rk], capsize=3,
                color=["C0", "C1", "0.6", "0.3"])
    axes[2].axhline(0.5, color="k", lw=0.8, ls="--", label="indistinguishable")
    axes[2].set_xticks(range(4), ["SDM", "GradMix", "real vs real\n(negative)", "blur\n(positive)"], fontsize=7)
    axes[2].set_ylim(0, 1)
    axes[2].set_ylabel("two-sample test AUC")
    axes[2].set_title("realism, with its controls", fontsize=9)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    paths = [save_figure(fig, out / "fidelity.png")]
    plt.close(fig)
    mo = r["morphology"]
    classes, feats = mo["classes"], mo["features"]
    fig, axes = plt.subplots(len(feats), len(classes), figsize=(3.0 * len(classes), 2.4 * len(feats)), squeeze=False)
    sets = [("real_val", "real validation", "k"), ("real_train", "real training", "0.6"),
            ("sdm_enlarge", "SDM (enlarged maps)", "C0"), ("sdm_balance", "SDM (balanced maps)", "C2"),
            ("sdm_balance_pasted", "SDM pasted misc", "C3"), ("gradmix_balance_pasted", "GradMix pasted misc", "C1")]
    for i, f in enumerate(feats):
        for j, cls in enumerate(classes):
            ax = axes[i, j]
            edges = np.asarray(mo["edges"][cls][f])
            for k, lab, col in sets:
                h = mo["sets"].get(k, {}).get(cls, {}).get(f)
                if h and h["n"]:
                    dens = np.asarray(h["hist"], float) / (h["n"] * np.diff(edges))
                    ax.stairs(dens, edges, color=col, label=f"{lab} (n={h['n']})")
            ax.set_title(f"{cls}: {f}", fontsize=8)
            ax.tick_params(labelsize=6)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=5)
            else:
                ax.text(0.5, 0.5, "no nuclei measured", ha="center", va="center", fontsize=7, transform=ax.transAxes)
    fig.suptitle("Nucleus morphology per class, real vs synthetic (density histograms)", fontsize=10)
    fig.tight_layout()
    paths.append(save_figure(fig, out / "morphology.png"))
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = argv
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
