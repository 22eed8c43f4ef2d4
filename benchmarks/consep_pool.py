"""Real CoNSeP for the benchmarks: the tile split at 20x, and the offline synthetic pools of the ablation.

The SDM of ``diffmix_aug/configs/sdm_consep_cpu.yaml`` renders a 128 px patch (20x, a 256 px window
at 40x) in about 33 s on 2 CPU cores with the reference protocol (55 guided DDIM steps from t = 540). An online producer at that speed would serve each patch hundreds of
times, so the real-data ablation uses what the paper uses: an **offline pool**, rendered once per
split and cached on disk, then drawn from by every seed. The pool is built from the *training*
tiles only, one entry per draw ``k``:

- ``source[k]``: a training patch drawn uniformly (no bias toward rare-rich sources, for every
  arm alike: the toy review found the producer's bias gave DiffMix-B 15-22 % more rare pixels
  than GradMix);
- ``balance``: the balancing map drawn from ``rng(seed, k, 2)``; ``sdm_balance`` is the SDM's
  render of it and ``gradmix_balance`` GradMix's image-level paste of *the same draws* (GradMix and
  the balancing sampler draw identical parameters from one generator), so the two arms differ in
  the renderer only, and replay the same number of distinct patches;
- ``enlarge``: the enlarging map drawn from ``rng(seed, k, 1)`` (shift ``max_shift`` = 7 px at 20x:
  the reference's +-15 px at 40x on 256 px, halved with the resolution) and ``sdm_enlarge`` its
  render;
- ``both`` (only with ``kinds`` including it): enlarge(balance(map)), this project's composition.

    python -m benchmarks.consep_pool --data-root ../shared/data/consep_256/train --size 64

Data: CoNSeP (Graham et al., "HoVer-Net", Medical Image Analysis 2019), research use.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WEIGHTS = Path(__file__).parent / "weights" / "sdm_consep_cpu.safetensors"
DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "consep_256" / "train"
SDM_VAL_TILES = (1, 2, 3, 4, 5)   # held out from the SDM's training (sdm_consep_cpu.yaml)
DOWNSAMPLE = 2                    # 40x -> 20x, as the SDM was trained
PATCH = 128                       # a 256 px window at 40x
MAX_SHIFT = 7                     # the reference's +-15 px at 40x on 256 px, halved with the resolution
RARE = (1,)                       # CoNSeP merged: 1 = miscellaneous
KINDS = ("sdm_balance", "gradmix_balance", "sdm_enlarge", "sdm_both")
ATTRIBUTION = "CoNSeP (Graham et al., Medical Image Analysis 2019), research use"

__all__ = ["DATA_ROOT", "KINDS", "WEIGHTS", "build_pool", "get_pool", "load_pool", "load_split", "make_samplers",
           "pool_key", "save_pool"]


def load_split(data_root: str | Path, val_tiles: Sequence[int], downsample: int = DOWNSAMPLE):
    """``(train, val)`` materialised NucleiDatasets at ``40x / downsample``, split by tile.

    Args:
        data_root: a CoNSeP-layout folder of 256 px patches (``Images/``, ``Labels/``), classes merged.
        val_tiles: tile numbers held out whole (never split by patch).
        downsample: 2 -> 20x, 128 px patches.
    """
    from diffmix_aug.data.dataset import NucleiDataset
    from diffmix_aug.data.split import split_by_tile

    root = Path(data_root)
    if not (root / "Images").is_dir() or not (root / "Labels").is_dir():
        raise FileNotFoundError(f"`data_root` must be a CoNSeP-layout folder with Images/ and Labels/, got {root} "
                                f"(the patches are in ../shared/data/consep_256/train)")
    ds = NucleiDataset.from_consep_dir(root, merge=False)
    train_idx, val_idx = split_by_tile(ds, list(val_tiles)) if val_tiles else (list(range(len(ds))), [])
    train = ds.subset(train_idx).downsampled(downsample).materialised()
    val = ds.subset(val_idx).downsampled(downsample).materialised() if val_idx else None
    return train, val


def pool_key(names: Sequence[str], size: int, seed: int, steps: int, t_start: int, guidance: float,
             weights: Path, patch: int = PATCH, max_shift: int = MAX_SHIFT, rare: Sequence[int] = RARE) -> str:
    """A short hash of everything that defines a pool (so a changed split or protocol never reuses one)."""
    h = hashlib.sha256()
    h.update(json.dumps([list(names), size, seed, steps, t_start, guidance, weights.name,
                         weights.stat().st_size, patch, max_shift, list(rare)]).encode())
    return h.hexdigest()[:12]


def make_samplers(train: Any, patch: int = PATCH, max_shift: int = MAX_SHIFT, rare: Sequence[int] = RARE):
    """``(enlarge, balance, both, GradMix)`` over ``train``'s donors, borders scaled to ``patch``."""
    from diffmix_aug.baselines.gradmix import GradMix
    from diffmix_aug.labelmaps.donors import DonorBank
    from diffmix_aug.labelmaps.sampler import LabelMapSampler, borders_for_patch

    info = train.info
    rare = tuple(rare)
    borders = borders_for_patch(patch)
    bank = DonorBank.from_dataset(train, rare, border=borders["border"], keep_images=True)
    enl = LabelMapSampler("enlarge", num_classes=info.num_classes, max_shift=max_shift, **borders)
    bal = LabelMapSampler("balance", donors=bank, num_classes=info.num_classes, rare_classes=rare, **borders)
    both = LabelMapSampler("composed", donors=bank, num_classes=info.num_classes, rare_classes=rare,
                           max_shift=max_shift, **borders)
    gm = GradMix(bank, rare_classes=rare, border=borders["border"], source_key=None)
    return enl, bal, both, gm


def build_pool(train: Any, size: int, *, kinds: Sequence[str] = KINDS[:3], seed: int = 0, steps: int = 11,
               t_start: int = 540, guidance: float = 1.5, weights: Path = WEIGHTS, batch: int = 8,
               patch: int = PATCH, max_shift: int = MAX_SHIFT, rare: Sequence[int] = RARE,
               progress: bool = True) -> dict[str, Any]:
    """Draw ``size`` label maps per kind from the training patches and render them.

    Returns:
        ``{"source": int64 [size], "<kind>": {"img": uint8 [size, H, W, 3], "inst_map": int32 [size, H, W],
        "type_map": int32 [size, H, W]}, "meta": {...}}``.
    """
    from tqdm import tqdm

    from diffmix_aug.data.sample import NucleiSample
    from diffmix_aug.sampling.synthesizer import Synthesizer

    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"`kinds` must be a subset of {list(KINDS)}, got {bad}")
    enl, bal, both, gm = make_samplers(train, patch, max_shift, rare)
    rng = np.random.default_rng([seed, 99])
    source = rng.integers(0, len(train), size)
    maps: dict[str, list] = {k: [] for k in kinds}
    for k, j in enumerate(source):
        s = train[int(j)]
        trusted = NucleiSample.trusted(s.image, s.inst_map, s.type_map)
        if "sdm_balance" in kinds:
            m = bal(trusted, np.random.default_rng([seed, k, 2]))
            maps["sdm_balance"].append((s.image, m.inst_map, m.type_map))
        if "gradmix_balance" in kinds:
            g = gm(trusted, np.random.default_rng([seed, k, 2]))
            maps["gradmix_balance"].append((g.image, g.inst_map, g.type_map))
        if "sdm_enlarge" in kinds:
            m = enl(s, np.random.default_rng([seed, k, 1]))
            maps["sdm_enlarge"].append((s.image, m.inst_map, m.type_map))
        if "sdm_both" in kinds:
            m = both(trusted, np.random.default_rng([seed, k, 3]))
            maps["sdm_both"].append((s.image, m.inst_map, m.type_map))
    if "sdm_balance" in kinds and "gradmix_balance" in kinds:  # the matched control: same maps
        for a, b in zip(maps["sdm_balance"], maps["gradmix_balance"]):
            if not (np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])):
                raise AssertionError("GradMix and the balancing sampler drew different maps from one generator")
    synth = None
    out: dict[str, Any] = {"source": source}
    seconds = 0.0
    n_sdm = sum(len(v) for k, v in maps.items() if k.startswith("sdm_"))
    bar = tqdm(total=n_sdm, desc="SDM pool", unit="patch", disable=not progress)
    for kind in kinds:
        imgs = np.stack([m[0] for m in maps[kind]])
        inst = np.stack([m[1] for m in maps[kind]]).astype(np.int32)
        typ = np.stack([m[2] for m in maps[kind]]).astype(np.int32)
        if kind.startswith("sdm_"):
            if synth is None:
                synth = Synthesizer.from_checkpoint(weights, device="cpu", sampler="reference", steps=steps,
                                                    t_start=t_start, guidance_scale=guidance)
            gen = torch.Generator().manual_seed(seed * 1000 + KINDS.index(kind))
            rendered = []
            t0 = time.perf_counter()
            for s0 in range(0, len(imgs), batch):
                rendered.append(synth(imgs[s0:s0 + batch], inst[s0:s0 + batch], typ[s0:s0 + batch], generator=gen))
                bar.update(len(rendered[-1]))
            seconds += time.perf_counter() - t0
            imgs = np.concatenate(rendered)
        out[kind] = {"img": imgs, "inst_map": inst, "type_map": typ}
    bar.close()
    out["meta"] = {"size": size, "seed": seed, "steps": steps, "t_start": t_start, "guidance_scale": guidance,
                   "guided_steps": steps, "sampler": synth.sampler_settings if synth is not None else None,
                   "weights": weights.name, "kinds": list(kinds),
                   "sdm_seconds": round(seconds, 1), "sdm_patches": n_sdm,
                   "s_per_patch": round(seconds / max(1, n_sdm), 2), "max_shift": max_shift, "patch": patch,
                   "rare_classes": list(rare),
                   "source_bias": "none (uniform over training patches)", "attribution": ATTRIBUTION}
    return out


def save_pool(pool: dict[str, Any], path: Path) -> None:
    """Write a pool as one ``.npz`` (atomically: a temporary file, then a rename)."""
    arrays = {"source": pool["source"], "meta": np.frombuffer(json.dumps(pool["meta"]).encode(), np.uint8)}
    for kind in pool["meta"]["kinds"]:
        for field, arr in pool[kind].items():
            arrays[f"{kind}/{field}"] = arr
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def load_pool(path: Path) -> dict[str, Any]:
    """Read a pool written by :func:`save_pool`."""
    with np.load(path) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        pool: dict[str, Any] = {"source": z["source"], "meta": meta}
        for kind in meta["kinds"]:
            pool[kind] = {f: z[f"{kind}/{f}"] for f in ("img", "inst_map", "type_map")}
    return pool


def get_pool(train: Any, size: int, cache_dir: Path, *, kinds: Sequence[str] = KINDS[:3], seed: int = 0,
             steps: int = 11, t_start: int = 540, guidance: float = 1.5, weights: Path = WEIGHTS,
             patch: int = PATCH, max_shift: int = MAX_SHIFT, rare: Sequence[int] = RARE,
             progress: bool = True) -> tuple[dict[str, Any], Path]:
    """The cached pool for this split and protocol (any cached one holding ``kinds``), built when absent."""
    names = train.item_names() or [f"{len(train)} items"]
    key = pool_key(names, size, seed, steps, t_start, guidance, Path(weights), patch, max_shift, rare)
    for cached in sorted(Path(cache_dir).glob(f"pool_{key}_*.npz")):
        if set(kinds) <= set(cached.stem.split("_", 2)[2].split("-")):
            return load_pool(cached), cached
    path = Path(cache_dir) / f"pool_{key}_{'-'.join(sorted(kinds))}.npz"
    pool = build_pool(train, size, kinds=kinds, seed=seed, steps=steps, t_start=t_start, guidance=guidance,
                      weights=Path(weights), patch=patch, max_shift=max_shift, rare=rare, progress=progress)
    save_pool(pool, path)
    return pool, path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=DATA_ROOT)
    ap.add_argument("--val-tiles", default="1,2,3,4,5,19", help="tiles held out whole (comma-separated)")
    ap.add_argument("--size", type=int, default=64, help="draws per kind")
    ap.add_argument("--kinds", default=",".join(KINDS[:3]))
    ap.add_argument("--steps", type=int, default=11, help="guided DDIM steps from --t-start")
    ap.add_argument("--t-start", type=int, default=540, help="entry timestep (the reference's 540)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=Path("runs/pools"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tiles = [int(t) for t in args.val_tiles.split(",") if t.strip()]
    train, _ = load_split(args.data_root, tiles)
    pool, path = get_pool(train, args.size, args.cache_dir, kinds=args.kinds.split(","), seed=args.seed,
                          steps=args.steps, t_start=args.t_start)
    print(json.dumps(pool["meta"]), "->", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
