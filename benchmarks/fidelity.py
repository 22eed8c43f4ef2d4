"""Fidelity of SDM synthesis on real CoNSeP, judged by networks trained here on real patches.

    python benchmarks/fidelity.py --data-root ../shared/data/consep_256 --out benchmarks/results/consep

No network access, so no Inception weights: every judge is trained here, on training tiles, and
measured on validation tiles 1-5, which neither the SDM nor any judge saw. Tile 19 (used by the
ablation's validation split) is left out of the judges' training, so the training pool of
:mod:`benchmarks.consep_pool` is shared with ``benchmarks/ablation.py``.

1. **Label fidelity.** A segmentation network (the ablation's downstream network, real training
   patches only) segments SDM renders of *enlarged* and *balanced* validation maps; PQ and per-class
   F1 against the conditioning maps, as a ratio to the same network on the real validation patches.
   **Label swap**: image A rendered under map B, scored against B and (control) against A: a
   renderer that follows its map scores high against B and low against A.
2. **Type fidelity.** A nucleus typer (a small CNN on 32 px crops with the nucleus mask as a 4th
   channel), trained on class-balanced (oversampled) real nuclei; per class, the share of nuclei it
   reads as the class they carry: on real validation nuclei (the typer's own accuracy) and on
   synthetic nuclei, with the *pasted* miscellaneous nuclei of balanced maps reported on their own.
3. **Realism.** A classifier two-sample test: a small CNN trained to tell real training patches from
   synthetic ones rendered from training maps (the offline pool), its ROC AUC on validation tiles
   (0.5 = indistinguishable), for SDM renders and for GradMix side by side; and the 1-D Wasserstein
   distances of the haematoxylin and eosin optical densities (``skimage.color.rgb2hed``) between
   real and synthetic validation pixels, next to the same distance between real training and real
   validation pixels (what tile-to-tile variation alone gives).

Judges are trained ``--seeds`` times; every figure is mean +- sd over those seeds (the renders are
drawn once). Writes ``fidelity.json``, ``fidelity.md`` and ``fidelity.png`` to ``--out``.
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
    MAX_SHIFT,
    PATCH,
    SDM_VAL_TILES,
    WEIGHTS,
    get_pool,
    load_split,
    make_samplers,
)
from benchmarks.downstream.train import HarnessConfig, evaluate, train
from diffmix_aug._io import atomic_write_text

JUDGE_TRAIN_EXCLUDE = (19,)  # the ablation's extra validation tile: never trains a judge
RARE = (1,)


# ----------------------------------------------------------------------------------- renders


def render_validation(val: Any, n: int, synth: Any, seed: int) -> dict[str, Any]:
    """SDM renders of the enlarged and balanced maps, and the label swaps, of ``n`` validation patches."""
    from diffmix_aug.data.sample import NucleiSample

    enl, bal, _, gm = _samplers
    rng = np.random.default_rng([seed, 5])
    idx = np.sort(rng.choice(len(val), min(n, len(val)), replace=False))
    samples = [val[int(i)] for i in idx]
    emaps, bmaps, gmix = [], [], []
    for k, s in enumerate(samples):
        t = NucleiSample.trusted(s.image, s.inst_map, s.type_map)
        emaps.append(enl(s, np.random.default_rng([seed, k, 1])))
        bmaps.append(bal(t, np.random.default_rng([seed, k, 2])))
        gmix.append(gm(t, np.random.default_rng([seed, k, 2])))
    imgs = np.stack([s.image for s in samples])
    swap = np.roll(np.arange(len(samples)), 1)  # image A = samples[k], map B = samples[k - 1]

    def run(images, inst, types, tag):
        gen = torch.Generator().manual_seed(seed * 100 + tag)
        out = [synth(images[i:i + 8], inst[i:i + 8], types[i:i + 8], generator=gen) for i in range(0, len(images), 8)]
        return np.concatenate(out)

    t0 = time.perf_counter()
    r_enl = run(imgs, np.stack([m.inst_map for m in emaps]), np.stack([m.type_map for m in emaps]), 1)
    r_bal = run(imgs, np.stack([m.inst_map for m in bmaps]), np.stack([m.type_map for m in bmaps]), 2)
    r_swap = run(imgs, np.stack([samples[j].inst_map for j in swap]), np.stack([samples[j].type_map for j in swap]), 3)
    seconds = time.perf_counter() - t0
    return {"idx": idx, "samples": samples, "enlarge": (r_enl, emaps), "balance": (r_bal, bmaps), "gradmix": gmix,
            "swap": (r_swap, swap), "seconds": seconds, "renders": 3 * len(samples)}


_samplers: tuple = ()


def _items(images, maps) -> list[dict]:
    return [{"img": im, "inst_map": m.inst_map, "type_map": m.type_map} for im, m in zip(images, maps)]


# ----------------------------------------------------------------------------------- label fidelity


def label_fidelity(model: Any, cfg: HarnessConfig, rendered: dict[str, Any], real_val: list[Any]) -> dict:
    type_ids = [1, 2, 3, 4]
    real = evaluate(model, real_val, cfg, type_ids=type_ids)
    out = {"real": _slim(real)}
    for kind in ("enlarge", "balance"):
        imgs, maps = rendered[kind]
        out[f"sdm_{kind}"] = _slim(evaluate(model, _items(imgs, maps), cfg, type_ids=type_ids))
    out["gradmix_balance"] = _slim(evaluate(model, [{"img": g.image, "inst_map": g.inst_map, "type_map": g.type_map}
                                                    for g in rendered["gradmix"]], cfg, type_ids=type_ids))
    imgs, swap = rendered["swap"]
    s = rendered["samples"]
    out["swap_vs_B"] = _slim(evaluate(model, [{"img": im, "inst_map": s[j].inst_map, "type_map": s[j].type_map}
                                              for im, j in zip(imgs, swap)], cfg, type_ids=type_ids))
    out["swap_vs_A"] = _slim(evaluate(model, [{"img": im, "inst_map": a.inst_map, "type_map": a.type_map}
                                              for im, a in zip(imgs, s)], cfg, type_ids=type_ids))
    for key in list(out):
        if key != "real":
            out[key]["pq_ratio"] = _ratio(out[key]["pq"], real["pq"])
    return out


def _slim(m: dict) -> dict:
    return {"pq": m["pq"], "dq": m["dq"], "sq": m["sq"], "dice": m["dice"], "f1_detection": m["f1_detection"],
            "f1_per_type": {int(k): v for k, v in m["f1_per_type"].items()}}


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b and not math.isnan(b) else float("nan")


# ----------------------------------------------------------------------------------- type fidelity


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
    for k, (nid, t) in enumerate(zip(info.ids, info.types)):
        if t == 0 or (ids is not None and nid not in ids):
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


def _crops_of(items: list[tuple[np.ndarray, np.ndarray, np.ndarray]]):
    parts = [nucleus_crops(*it) for it in items]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def train_typer(x: np.ndarray, y: np.ndarray, seed: int, steps: int, n_cls: int = 5) -> nn.Module:
    """Train on class-balanced batches (each class drawn equally often: oversampling)."""
    torch.manual_seed(seed)
    net = CropNet(4, n_cls)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    rng = np.random.default_rng([seed, 3])
    by_cls = [np.flatnonzero(y == c) for c in range(n_cls)]
    present = [c for c in range(n_cls) if by_cls[c].size]
    xt = torch.from_numpy(x)
    net.train()
    for _ in range(steps):
        cls = rng.choice(present, 64)
        pick = np.array([by_cls[c][rng.integers(by_cls[c].size)] for c in cls])
        xb = xt[pick]
        k = int(rng.integers(4))
        xb = torch.rot90(xb, k, (2, 3))
        if rng.integers(2):
            xb = xb.flip(3)
        loss = nn.functional.cross_entropy(net(xb), torch.from_numpy(y[pick]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def _predict(net: nn.Module, x: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return np.zeros(0, np.int64)
    return np.concatenate([net(torch.from_numpy(x[i:i + 256])).argmax(1).numpy() for i in range(0, len(x), 256)])


def pasted_ids(original_type: np.ndarray, new_inst: np.ndarray, new_type: np.ndarray) -> np.ndarray:
    """Ids of rare nuclei in a balanced map whose pixels were not rare in the original map (the pasted ones)."""
    out = []
    for nid in np.unique(new_inst[np.isin(new_type, RARE) & (new_inst > 0)]):
        px = new_inst == nid
        if np.mean(np.isin(original_type[px], RARE)) < 0.5:
            out.append(int(nid))
    return np.asarray(out, np.int64)


def type_fidelity(typer: nn.Module, real_val: list[Any], rendered: dict[str, Any]) -> dict:
    """Per class, the share of nuclei the typer reads as their class (real, SDM, pasted, GradMix)."""
    def shares(x, y):
        p = _predict(typer, x)
        return {int(c): {"n": int((y == c).sum()), "share": float((p[y == c] == c).mean()) if (y == c).any()
                         else float("nan")} for c in (1, 2, 3, 4)}

    out = {"real_val": shares(*_crops_of([(s.image, s.inst_map, s.type_map) for s in real_val]))}
    for kind in ("enlarge", "balance"):
        imgs, maps = rendered[kind]
        out[f"sdm_{kind}"] = shares(*_crops_of([(im, m.inst_map, m.type_map) for im, m in zip(imgs, maps)]))
    imgs, maps = rendered["balance"]
    samples = rendered["samples"]
    px, py, gx, gy = [], [], [], []
    for im, m, s, g in zip(imgs, maps, samples, rendered["gradmix"]):
        ids = pasted_ids(s.type_map, m.inst_map, m.type_map)
        if ids.size:
            c, t, _ = nucleus_crops(im, m.inst_map, m.type_map, ids=ids)
            px.append(c)
            py.append(t)
            c, t, _ = nucleus_crops(g.image, g.inst_map, g.type_map, ids=ids)
            gx.append(c)
            gy.append(t)
    if px:
        out["sdm_pasted_rare"] = shares(np.concatenate(px), np.concatenate(py))[1]
        out["gradmix_pasted_rare"] = shares(np.concatenate(gx), np.concatenate(gy))[1]
    return out


# ----------------------------------------------------------------------------------- realism


def auc(scores_neg: np.ndarray, scores_pos: np.ndarray) -> float:
    """ROC AUC by the rank statistic (Mann-Whitney U / (n_neg n_pos)), ties counted half."""
    from scipy.stats import rankdata

    r = rankdata(np.concatenate([scores_neg, scores_pos]))
    n0, n1 = len(scores_neg), len(scores_pos)
    return float((r[n0:].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def c2st(real_train: np.ndarray, syn_train: np.ndarray, real_val: np.ndarray, syn_val: np.ndarray, seed: int,
         steps: int, crop: int = 64) -> float:
    """Train real(0)-vs-synthetic(1) on 64 px crops of training images, AUC on whole validation images."""
    torch.manual_seed(seed)
    net = CropNet(3, 1)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    rng = np.random.default_rng([seed, 9])
    sets = [real_train, syn_train]
    net.train()
    for _ in range(steps):
        xs, ys = [], []
        for label, arr in enumerate(sets):
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
        return auc(score(real_val), score(syn_val))


def hed_distance(a: np.ndarray, b: np.ndarray, n: int = 20000, seed: int = 0) -> dict[str, float]:
    """1-D Wasserstein distances of the H and E optical densities of two uint8 image sets (subsampled pixels)."""
    from scipy.stats import wasserstein_distance
    from skimage.color import rgb2hed

    rng = np.random.default_rng(seed)

    def pix(x):
        flat = x.reshape(-1, 3)
        return rgb2hed(flat[rng.integers(0, len(flat), n)][None].astype(np.float64) / 255.0)[0]

    pa, pb = pix(a), pix(b)
    return {"H": float(wasserstein_distance(pa[:, 0], pb[:, 0])), "E": float(wasserstein_distance(pa[:, 1], pb[:, 1]))}


# ----------------------------------------------------------------------------------- main


def _mean_sd(v: list[float]) -> list[float]:
    a = np.asarray([x for x in v if not (x is None or math.isnan(x))], np.float64)
    return [float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0] if a.size else [float("nan")] * 2


def _agg(per_seed: list[Any]) -> Any:
    """Mean and sd over seeds of every float leaf of identically shaped dicts."""
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
    ap.add_argument("--n-val", type=int, default=24, help="validation patches rendered (x3: enlarge, balance, swap)")
    ap.add_argument("--seeds", type=int, default=3, help="judge seeds (typer and two-sample test)")
    ap.add_argument("--seg-seeds", type=int, default=2, help="segmentation networks trained for label fidelity")
    ap.add_argument("--seg-iterations", type=int, default=500)
    ap.add_argument("--typer-steps", type=int, default=600)
    ap.add_argument("--c2st-steps", type=int, default=300)
    ap.add_argument("--ddim-steps", type=int, default=11, help="guided DDIM steps from --t-start")
    ap.add_argument("--t-start", type=int, default=540, help="entry timestep (the reference's 540)")
    ap.add_argument("--pool-size", type=int, default=96, help="training-map renders per kind (shared with the ablation)")
    ap.add_argument("--pool-dir", type=Path, default=Path("runs/pools"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="smoke run: a few patches, steps and one seed")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_val, args.seeds, args.seg_seeds, args.seg_iterations = 2, 1, 1, 4
        args.typer_steps, args.c2st_steps, args.ddim_steps, args.pool_size = 4, 4, 2, 2
    if args.data_root is None:
        ap.error("--data-root is required (../shared/data/consep_256)")
    return args


def run(args: argparse.Namespace) -> dict:
    global _samplers
    from benchmarks.ablation import _consep_train_root
    from diffmix_aug.sampling.synthesizer import Synthesizer

    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    root = _consep_train_root(Path(args.data_root))
    train_ds, held = load_split(root, tuple(SDM_VAL_TILES) + JUDGE_TRAIN_EXCLUDE)
    names = held.item_names()
    val_idx = [i for i, n in enumerate(names) if int(n.split("_")[1]) in SDM_VAL_TILES]
    val = held.subset(val_idx).materialised()
    real_val = [val[i] for i in range(len(val))]
    _samplers = make_samplers(train_ds, PATCH, MAX_SHIFT, RARE)
    synth = Synthesizer.from_checkpoint(args.sdm, device="cpu", sampler="reference", steps=args.ddim_steps,
                                        t_start=args.t_start, guidance_scale=1.5)
    print(f"rendering {3 * min(args.n_val, len(val))} validation patches ...", flush=True)
    rendered = render_validation(val, args.n_val, synth, seed=0)
    pool, pool_path = get_pool(train_ds, args.pool_size, args.pool_dir,
                               kinds=("sdm_balance", "gradmix_balance", "sdm_enlarge"), steps=args.ddim_steps, t_start=args.t_start,
                               weights=args.sdm)
    # label fidelity over segmentation seeds
    lf = []
    for seed in range(args.seg_seeds):
        cfg = HarnessConfig(iterations=args.seg_iterations, batch_size=8, width=16, depth=3, seed=seed)
        model, _ = train(_CropStream(train_ds, 64, seed), 5, cfg, progress=False)
        lf.append(label_fidelity(model, cfg, rendered, real_val))
    # type fidelity over typer seeds
    tx, ty = _crops_of([(train_ds[i].image, train_ds[i].inst_map, train_ds[i].type_map) for i in range(len(train_ds))])
    tf = [type_fidelity(train_typer(tx, ty, seed, args.typer_steps), real_val, rendered) for seed in range(args.seeds)]
    # realism: two-sample tests and stain distances
    real_train = np.stack([train_ds[i].image for i in range(len(train_ds))])
    val_imgs = np.stack([s.image for s in rendered["samples"]])
    sdm_train = np.concatenate([pool["sdm_balance"]["img"], pool["sdm_enlarge"]["img"]])
    sdm_val = np.concatenate([rendered["enlarge"][0], rendered["balance"][0]])
    gm_val = np.stack([g.image for g in rendered["gradmix"]])
    real_all_val = np.stack([s.image for s in real_val])
    realism = [{"c2st_auc_sdm": c2st(real_train, sdm_train, real_all_val, sdm_val, seed, args.c2st_steps),
                "c2st_auc_gradmix": c2st(real_train, pool["gradmix_balance"]["img"], real_all_val, gm_val, seed,
                                         args.c2st_steps)} for seed in range(args.seeds)]
    stain = {"real_train_vs_real_val": hed_distance(real_train, real_all_val),
             "sdm_vs_real_val": hed_distance(sdm_val, val_imgs), "gradmix_vs_real_val": hed_distance(gm_val, val_imgs)}
    elapsed = time.perf_counter() - t_start
    result = {
        "benchmark": "fidelity", "command": " ".join(["python", "benchmarks/fidelity.py"] + sys.argv[1:]),
        "quick": args.quick, "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "validation_tiles": list(SDM_VAL_TILES), "judge_train_patches": len(train_ds),
        "rendered_validation_patches": len(rendered["samples"]), "render_seconds": round(rendered["seconds"], 1),
        "s_per_render": round(rendered["seconds"] / max(1, rendered["renders"]), 2),
        "protocol": {"ddim_steps": args.ddim_steps, "t_start": args.t_start, "guided_steps": args.ddim_steps,
                     "sampler": synth.sampler_settings,
                     "guidance_scale": 1.5, "max_shift": MAX_SHIFT, "patch": PATCH, "field_of_view": "20x"},
        "pool": pool["meta"] | {"file": pool_path.name},
        "label_fidelity": _agg(lf), "type_fidelity": _agg(tf), "realism": _agg(realism), "stain_w1": stain,
        "per_seed": {"label_fidelity": lf, "type_fidelity": tf, "realism": realism},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0]},
        "elapsed_seconds": round(elapsed, 1), "attribution": ATTRIBUTION,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "fidelity.json", json.dumps(result, indent=2, default=_json) + "\n")
    md = markdown(result)
    atomic_write_text(args.out / "fidelity.md", md)
    figure(result, rendered, args.out / "fidelity.png")
    print(md)
    print(f"wrote {args.out}/fidelity.json, fidelity.md, fidelity.png ({elapsed / 60:.1f} min)")
    return result


class _CropStream(torch.utils.data.Dataset):
    """Real training patches as random ``crop`` px windows (the ablation's baseline input)."""

    def __init__(self, base: Any, crop: int, seed: int):
        self.base, self.crop, self.seed = base, crop, seed
        self.calls = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        s = self.base[i]
        self.calls += 1
        rng = np.random.default_rng([self.seed, i, self.calls])
        h, w = s.inst_map.shape
        y, x = int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))
        sl = (slice(y, y + self.crop), slice(x, x + self.crop))
        return {"img": s.image[sl], "inst_map": s.inst_map[sl], "type_map": s.type_map[sl]}


def _f(ms: Any) -> str:
    return "n/a" if ms is None or math.isnan(ms[0]) else f"{ms[0]:.3f} ± {ms[1]:.3f}"


def markdown(r: dict) -> str:
    lf, tf, rz, st = r["label_fidelity"], r["type_fidelity"], r["realism"], r["stain_w1"]
    names = {1: "misc", 2: "inflammatory", 3: "epithelial", 4: "spindle"}
    lines = [f"# Fidelity of the CoNSeP CPU SDM on validation tiles {r['validation_tiles']}\n",
             f"Command: `{r['command']}`  \n{r['rendered_validation_patches']} validation patches rendered 3 times "
             f"(enlarged map, balanced map, label swap) with {r['protocol']['guided_steps']} guided DDIM steps from "
             f"t = {r['protocol']['t_start']}, {r['s_per_render']} s per render; judges trained on "
             f"{r['judge_train_patches']} training patches; mean ± sd over judge seeds; {r['elapsed_seconds'] / 60:.1f} min.\n",
             "## Label fidelity (segmentation network trained on real patches)\n",
             "| Images scored | PQ | PQ / real | DQ | F1 det | " + " | ".join(f"F^{names[c]}" for c in (1, 2, 3, 4)) + " |",
             "|---" * 9 + "|"]
    for key, label in (("real", "real validation patches"), ("sdm_enlarge", "SDM(enlarged map) vs its map"),
                       ("sdm_balance", "SDM(balanced map) vs its map"), ("gradmix_balance", "GradMix vs its map"),
                       ("swap_vs_B", "swap: image A under map B, vs B"), ("swap_vs_A", "swap: vs A (control)")):
        m = lf[key]
        lines.append(f"| {label} | {_f(m['pq'])} | {_f(m.get('pq_ratio'))} | {_f(m['dq'])} | {_f(m['f1_detection'])} | "
                     + " | ".join(_f(m["f1_per_type"][c]) for c in (1, 2, 3, 4)) + " |")
    lines += ["\n## Type fidelity (nucleus typer trained on class-balanced real crops)\n",
              "Share of nuclei read as the class they carry (n = nuclei).\n",
              "| Nuclei | " + " | ".join(names[c] for c in (1, 2, 3, 4)) + " |", "|---" * 5 + "|"]
    for key, label in (("real_val", "real validation (typer accuracy)"), ("sdm_enlarge", "SDM(enlarged map)"),
                       ("sdm_balance", "SDM(balanced map), all")):
        row = tf[key]
        lines.append(f"| {label} | " + " | ".join(f"{_f(row[c]['share'])} (n={row[c]['n']})" for c in row) + " |")
    for key, label in (("sdm_pasted_rare", "SDM: pasted misc nuclei only"),
                       ("gradmix_pasted_rare", "GradMix: pasted misc nuclei only")):
        if key in tf:
            lines.append(f"| {label} | {_f(tf[key]['share'])} (n={tf[key]['n']}) | | | |")
    lines += ["\n## Realism\n", "| | SDM | GradMix |", "|---|---|---|",
              f"| two-sample test AUC on validation tiles (0.5 = indistinguishable) | {_f(rz['c2st_auc_sdm'])} | "
              f"{_f(rz['c2st_auc_gradmix'])} |",
              f"| H optical density W1 to real validation | {st['sdm_vs_real_val']['H']:.4f} | "
              f"{st['gradmix_vs_real_val']['H']:.4f} |",
              f"| E optical density W1 to real validation | {st['sdm_vs_real_val']['E']:.4f} | "
              f"{st['gradmix_vs_real_val']['E']:.4f} |",
              f"\nReference: real training vs real validation tiles, H {st['real_train_vs_real_val']['H']:.4f}, "
              f"E {st['real_train_vs_real_val']['E']:.4f} (tile-to-tile variation alone).\n"]
    return "\n".join(lines) + "\n"


def figure(r: dict, rendered: dict, path: Path) -> None:
    """Bars: label-fidelity PQ ratios, type-fidelity shares for misc, two-sample AUCs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lf, tf, rz = r["label_fidelity"], r["type_fidelity"], r["realism"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    keys = ["sdm_enlarge", "sdm_balance", "gradmix_balance", "swap_vs_B", "swap_vs_A"]
    axes[0].bar(range(len(keys)), [lf[k]["pq_ratio"][0] for k in keys], yerr=[lf[k]["pq_ratio"][1] for k in keys],
                color=["C0", "C0", "C1", "C2", "C3"], capsize=3)
    axes[0].set_xticks(range(len(keys)), ["SDM enl.", "SDM bal.", "GradMix", "swap vs B", "swap vs A"], fontsize=7)
    axes[0].set_ylabel("PQ / PQ on real")
    axes[0].set_title("label fidelity", fontsize=9)
    labels, vals, errs = [], [], []
    for key, lab in (("real_val", "real"), ("sdm_enlarge", "SDM enl."), ("sdm_balance", "SDM bal.")):
        row = tf[key][1]
        labels.append(lab)
        vals.append(row["share"][0])
        errs.append(row["share"][1])
    for key, lab in (("sdm_pasted_rare", "SDM pasted"), ("gradmix_pasted_rare", "GradMix pasted")):
        if key in tf:
            labels.append(lab)
            vals.append(tf[key]["share"][0])
            errs.append(tf[key]["share"][1])
    axes[1].bar(range(len(vals)), vals, yerr=errs, capsize=3, color="C4")
    axes[1].set_xticks(range(len(vals)), labels, fontsize=7)
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel("read as miscellaneous")
    axes[1].set_title("type fidelity (misc nuclei)", fontsize=9)
    axes[2].bar([0, 1], [rz["c2st_auc_sdm"][0], rz["c2st_auc_gradmix"][0]],
                yerr=[rz["c2st_auc_sdm"][1], rz["c2st_auc_gradmix"][1]], capsize=3, color=["C0", "C1"])
    axes[2].axhline(0.5, color="k", lw=0.8, ls="--")
    axes[2].set_xticks([0, 1], ["SDM", "GradMix"])
    axes[2].set_ylim(0, 1)
    axes[2].set_ylabel("real-vs-synthetic AUC")
    axes[2].set_title("two-sample test (0.5 = indistinguishable)", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _json(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
