"""Synthetic pools of the real-tissue ablation: balancing on whole tiles, then crops, rendered once per draw.

The ablation's synthetic arms read a *rendered pool* through ``DiffMixDataset`` (producer off), the
way a user replays a store made by ``diffmix-aug synthesize``: on 2 CPU cores the SDM renders a few
hundred patches per run, so the pool is rendered once per draw and cached on disk. One draw ``d``
of the pool, from the training tiles only:

1. **Balancing as the reference does it** (``design/method.md`` §6): a :class:`DonorBank` of the
   rare nuclei of *every* training tile (border rule scaled to the field of view: 30 px at 40x,
   15 px at 20x), then GradMix's label mixing on each *whole* training tile (its own rare nuclei
   first in the donor pool, then the other tiles' in a random order, each donor at most once per
   tile). The image-level GradMix of the same draws is made on the whole tile too.
2. ``size`` crops of the patch size (128 px at 20x = 256 px at 40x), tile and position drawn
   uniformly (no bias toward rare-rich places), the same positions for every kind:

   - ``sdm_balance``: the SDM's render of the balanced map's crop (from the original image's crop);
   - ``gradmix_balance``: the GradMix image's crop with the same map (the renderer is the only
     difference between GradMix and DiffMix-B);
   - ``sdm_enlarge``: the render of the crop's enlarged map (shift 7 px: the reference's +-15 px at
     40x on 256 px, halved with the resolution);
   - ``sdm_composed``: the render of enlarge(balanced crop), the library's composition.

3. Each kind is written as a patch store (HoVer-Net ``.npy`` ``int32 [H, W, 5]`` + JSON sidecar per
   patch, in serve order) that ``DiffMixDataset(base, None, cache_dir=...)`` warm-starts from; the
   paper's union of the B and E pools is a store holding both.

The pool's ``meta`` reports what a reader of the method would ask first: the maps' rare share
(against the real crops'), pastes per donor, and the sampler settings the Synthesizer reports.

    python -m benchmarks.consep_pool --data-root ../shared/data/consep_256 --size 48 --draws 2

Data: CoNSeP (Graham et al., "HoVer-Net", Medical Image Analysis 2019), research use.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report_io import json_default  # noqa: E402

WEIGHTS = Path(__file__).parent / "weights" / "sdm_consep_cpu.safetensors"
SDM_VAL_TILES = (1, 2, 3, 4, 5)   # held out from the SDM's training (sdm_consep_cpu.yaml: holdout_tiles)
RARE = (1,)                       # CoNSeP merged: 1 = miscellaneous
SDM_KINDS = ("sdm_balance", "sdm_enlarge", "sdm_composed")
KINDS = ("sdm_balance", "gradmix_balance", "sdm_enlarge", "sdm_composed")
#: the library mode each kind's maps were made with (the store's manifest records it)
KIND_MODES = {"sdm_balance": "balance", "gradmix_balance": "balance", "sdm_enlarge": "enlarge",
              "sdm_composed": "composed"}
STORES = {"gradmix": ("gradmix_balance",), "diffmix-b": ("sdm_balance",), "diffmix-e": ("sdm_enlarge",),
          "diffmix-union": ("sdm_balance", "sdm_enlarge"), "diffmix-composed": ("sdm_composed",)}
ATTRIBUTION = "CoNSeP (Graham et al., Medical Image Analysis 2019), research use"
POOL_VERSION = 3  # bump when the pool's construction changes (part of the cache key)

__all__ = ["KINDS", "SDM_KINDS", "STORES", "WEIGHTS", "build_pool", "field_of_view", "get_pool", "make_synthesizer",
           "sampler_settings", "store_dir", "write_store"]


# ----------------------------------------------------------------------------------- the renderer


def field_of_view(patch: int, downsample: int, tile: int | None = None) -> dict[str, int]:
    """Balancing and enlarging constants scaled from the reference's settings (40x, 1000 px tiles, 256 px patches;
    the defaults of :class:`BalanceSettings` and :class:`EnlargeSettings`).

    Returns ``{"border": GradMix's 30 px / downsample (at most the 30 / 256 share of a small tile),
    "border_margin": enlarging's 32 px margin scaled to the patch, "max_shift": +-15 px / downsample
    (at most 15 / 256 of the patch)}``. CoNSeP at 20x (128 px patches, 500 px tiles): 15, 16, 7.
    :func:`fov_settings` turns it into the label-map settings.
    """
    from diffmix_aug.labelmaps.settings import (
        REFERENCE_PATCH,
        BalanceSettings,
        EnlargeSettings,
        borders_for_patch,
    )

    border = max(2, round(BalanceSettings.border / downsample))
    if tile is not None:
        border = min(border, borders_for_patch(tile)["balance"].border)
    shift = EnlargeSettings.max_shift
    return {"border": border, "border_margin": borders_for_patch(patch)["enlarge"].border_margin,
            "max_shift": max(1, min(int(shift / downsample), int(shift * patch / REFERENCE_PATCH)))}


def fov_settings(fov: dict[str, int]) -> dict[str, Any]:
    """``{"balance": BalanceSettings, "enlarge": EnlargeSettings}`` of a :func:`field_of_view`
    (``LabelMapSampler(..., **fov_settings(fov))``)."""
    from diffmix_aug.labelmaps.settings import BalanceSettings, EnlargeSettings

    return {"balance": BalanceSettings(border=fov["border"]),
            "enlarge": EnlargeSettings(max_shift=fov["max_shift"], border_margin=fov["border_margin"])}


def make_synthesizer(weights: Path, steps: int, t_start: int, guidance: float, device: str = "cpu",
                     solver: str = "ddim", spacing: str = "linear"):
    """A Synthesizer entering at ``t_start`` (an original timestep; the reference's is 540) with ``steps``
    denoising steps from there to 0, guidance ``guidance``, by ``solver`` on a ``spacing`` grid (the
    reference protocol's DDIM on a linear grid unless named: independent of the library's default preset)."""
    from diffmix_aug.sampling.synthesizer import Synthesizer

    return Synthesizer.from_checkpoint(weights, device=device, sampler="reference", steps=steps, t_start=t_start,
                                       guidance_scale=guidance, solver=solver, spacing=spacing)


def sampler_settings(synth: Any) -> dict[str, Any]:
    """The sampler settings the Synthesizer reports, with the timesteps actually visited."""
    rep = getattr(synth, "sampler_settings", None)
    out = dict(rep) if isinstance(rep, dict) else dict(synth.sampler.settings())
    steps = [int(t) for t in getattr(synth.sampler, "timesteps", [])]
    out.setdefault("timesteps", steps)
    out["entry_timestep"] = steps[0] if steps else None
    out["denoising_steps"] = len(steps)
    return out


# ----------------------------------------------------------------------------------- stores


def write_store(directory: Path, images: np.ndarray, inst: np.ndarray, types: np.ndarray,
                metas: Sequence[dict[str, Any]], *, mode: str, classes: Any, synthesizer: Any = None) -> Path:
    """Write patches as a :class:`~diffmix_aug.store.PatchStore` that ``DiffMixDataset(base, None,
    cache_dir=directory)`` warm-starts from.

    Patches are named ``pool_00000``, ... in serve order (the warm start reads file-name order). The
    manifest names the mode, the class table, the patch shape and, for renders, the checkpoint and
    sampler (:func:`~diffmix_aug.generator.synthesizer_identity`). Written into a temporary folder
    and renamed into place, so a half-written pool is never read.

    Args:
        directory: The store's folder (replaced when it exists).
        images, inst, types: ``uint8 [n, H, W, 3]``, ``int [n, H, W]`` twice.
        metas: One JSON-able dict per patch.
        mode: The library mode the maps were made with (``"balance"``, ``"enlarge"``, ``"union"``, ``"composed"``).
        classes: The :class:`~diffmix_aug.class_table.ClassTable` of the maps.
        synthesizer: The Synthesizer that rendered them (None: not rendered, e.g. GradMix).
    """
    from diffmix_aug.generator import synthesizer_identity
    from diffmix_aug.store import Patch, PatchStore, store_identity

    directory = Path(directory)
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shape = tuple(int(v) for v in np.asarray(inst).shape[1:3])
    ident = store_identity(mode, classes, shape, None if synthesizer is None else synthesizer_identity(synthesizer))
    store = PatchStore.create(tmp, ident, created_by="benchmarks.consep_pool")
    for k, (im, a, t, meta) in enumerate(zip(images, inst, types, metas)):
        store.write(f"pool_{k:05d}", Patch(np.asarray(im, np.uint8), np.asarray(a, np.int32), np.asarray(t, np.int32),
                                           dict(meta)))
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory


def _union_store(directory: Path, parts: Sequence[Path], classes: Any) -> Path:
    """The paper's union: one store (mode ``"union"``) holding every patch of ``parts``, in order."""
    from diffmix_aug.store import PatchStore

    images, inst, types, metas = [], [], [], []
    for part in parts:
        store = PatchStore.open(part)
        for name in store.names():
            p = store.read(name)
            images.append(p.image)
            inst.append(p.inst_map)
            types.append(p.type_map)
            metas.append(p.meta | {"from_store": Path(part).name})
    return write_store(directory, np.stack(images), np.stack(inst), np.stack(types), metas, mode="union",
                       classes=classes)


def store_dir(pool: dict[str, Any], draw: int, arm: str) -> Path:
    """The store an arm reads for pool draw ``draw``."""
    return Path(pool["dir"]) / f"draw{draw}" / arm


# ----------------------------------------------------------------------------------- building


def _bank(train: Any, border: int, rare: Sequence[int]):
    from diffmix_aug.labelmaps.donors import DonorBank

    return DonorBank.from_maps(((t.inst_map, t.type_map, t.image) for t in train.tiles), rare, border,
                               keep_images=True, image_margin=8)


def _own_to_bank(bank: Any, tile: int, refs: np.ndarray) -> np.ndarray:
    """Donor references of one tile (``< 0``: ``-id`` of the tile's own rare nucleus) as bank indices."""
    refs = np.asarray(refs, np.int64)
    out = refs.copy()
    own = refs < 0
    if own.any():
        lut = {int(i): k for k, i in enumerate(bank.inst_ids) if bank.sources[k] == tile}
        out[own] = [lut.get(int(-r), -1) for r in refs[own]]
    return out


def _rare_count(inst: np.ndarray, typ: np.ndarray, rare: Sequence[int]) -> tuple[int, int]:
    """(rare nuclei, all nuclei) of one map."""
    fg = inst > 0
    ids, first = np.unique(inst[fg], return_index=True)
    t = typ[fg][first]
    return int(np.isin(t, rare).sum()), int(ids.size)


def _balance_tiles(train: Any, bank: Any, draw: int, seed: int, border: int, rare: Sequence[int],
                   gradmix_images: bool, progress: bool) -> tuple[list, list, dict]:
    """Balanced maps (and GradMix images) of every whole training tile, and the paste counts."""
    from tqdm import tqdm

    from diffmix_aug.baselines.gradmix import GradMix
    from diffmix_aug.data.sample import NucleiSample
    from diffmix_aug.labelmaps.balance import apply_balance, draw_balance_params
    from diffmix_aug.labelmaps.settings import BalanceSettings

    balance = BalanceSettings(border=border)
    gm = GradMix(bank, rare, balance=balance, source_key=None)
    maps, images = [], []
    pastes = np.zeros(len(bank), np.int64)
    converted, skipped = 0, 0
    for k, tile in enumerate(tqdm(train.tiles, desc=f"balance tiles (draw {draw})", disable=not progress)):
        rng = np.random.default_rng([seed, draw, k, 2])
        params = draw_balance_params(rng, tile.inst_map, tile.type_map, bank, balance, rare_classes=rare,
                                     exclude_source=k, info=tile.info)
        inst, typ, report = apply_balance(tile.inst_map, tile.type_map, params, bank, tile.info)
        maps.append((inst, typ))
        refs = _own_to_bank(bank, k, params.assign_donor)
        np.add.at(pastes, refs[refs >= 0], 1)
        converted += int(params.assign_major.size)
        skipped += sum(len(v) for v in params.skipped.values())
        if gradmix_images:
            g = gm.apply(NucleiSample.trusted(tile.image, tile.inst_map, tile.type_map), params)
            if not (np.array_equal(g.inst_map, inst) and np.array_equal(g.type_map, typ)):
                raise AssertionError("GradMix's label mixing differs from the balancing map of the same draw")
            images.append(g.image)
    used = pastes[pastes > 0]
    stats = {"donors": len(bank), "donors_used": int(used.size), "pastes": int(pastes.sum()),
             "pastes_per_donor_mean": float(pastes.mean()) if len(bank) else 0.0,
             "pastes_per_used_donor_mean": float(used.mean()) if used.size else 0.0,
             "pastes_per_donor_max": int(pastes.max()) if len(bank) else 0,
             "majors_converted": converted, "majors_skipped": skipped}
    return maps, images, stats


def build_pool(train: Any, size: int, *, draws: int = 2, seed: int = 0, steps: int = 11, t_start: int = 540,
               guidance: float = 1.5, weights: Path = WEIGHTS, batch: int = 8, rare: Sequence[int] = RARE,
               kinds: Sequence[str] = KINDS, out_dir: Path, device: str = "cpu", solver: str = "ddim",
               spacing: str = "linear", progress: bool = True) -> dict[str, Any]:
    """Build and render ``draws`` pool draws of ``size`` crops per kind into ``out_dir``.

    Args:
        train: The training :class:`~benchmarks.tilesets.TileSet` (whole tiles).
        size: Crops per kind and draw.
        draws: Independent pool draws (balancing, positions, enlarging, SDM noise).
        seed: Seed of every draw.
        steps, t_start, guidance, solver, spacing: The SDM's sampler (denoising steps, entry timestep,
            guidance, solver and step grid: DDIM on a linear grid is the reference protocol's).
        weights: The SDM export (trained on tiles the validation never uses).
        batch: Render batch size.
        rare: Rare classes.
        kinds: Subset of :data:`KINDS` to build.
        out_dir: Where the stores go (``draw{d}/{arm}``).
        device: Where the SDM renders.

    Returns:
        ``{"dir": out_dir, "meta": {...}}`` (also written to ``out_dir/pool.json``).
    """
    from tqdm import tqdm

    from diffmix_aug.data.sample import NucleiSample
    from diffmix_aug.labelmaps.sampler import LabelMapSampler

    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"`kinds` must be a subset of {list(KINDS)}, got {bad}")
    t_begin = time.perf_counter()
    out_dir = Path(out_dir)
    patch, info = train.window, train.info
    fov = field_of_view(patch, train.downsample, min(train.tiles[0].inst_map.shape))
    bank = _bank(train, fov["border"], rare)
    enl = LabelMapSampler("enlarge", num_classes=info.num_classes, rare_classes=rare,
                          enlarge=fov_settings(fov)["enlarge"])
    from diffmix_aug.class_table import ClassTable

    classes = ClassTable(info.num_classes, tuple(int(c) for c in rare), tuple(info.class_names))
    need_sdm = any(k in SDM_KINDS for k in kinds)
    synth = (make_synthesizer(Path(weights), steps, t_start, guidance, device, solver=solver, spacing=spacing)
             if need_sdm else None)
    settings = sampler_settings(synth) if synth is not None else None
    real_share = [_rare_count(p.inst_map, p.type_map, rare) for p in train.patches]
    meta: dict[str, Any] = {
        "version": POOL_VERSION, "size": size, "draws": draws, "seed": seed, "kinds": list(kinds), "patch": patch,
        "field_of_view": fov, "weights": Path(weights).name, "sampler": settings, "rare_classes": list(rare),
        "train_tiles": list(train.names), "source_bias": "none (tile and position uniform)",
        "real_patches_rare_share": sum(r for r, _ in real_share) / max(1, sum(n for _, n in real_share)),
        "per_draw": [], "attribution": ATTRIBUTION}
    sdm_seconds, n_sdm = 0.0, 0
    for d in range(draws):
        maps, gm_images, paste_stats = _balance_tiles(train, bank, d, seed, fov["border"], rare,
                                                      "gradmix_balance" in kinds, progress)
        rng = np.random.default_rng([seed, d, 7])
        h, w = train.tiles[0].inst_map.shape
        pos = [(int(rng.integers(len(train.tiles))), int(rng.integers(0, h - patch + 1)),
                int(rng.integers(0, w - patch + 1))) for _ in range(size)]
        crops: dict[str, list] = {k: [] for k in ("real",) + tuple(kinds)}
        for j, (k, y, x) in enumerate(pos):
            sl = (slice(y, y + patch), slice(x, x + patch))
            tile = train.tiles[k]
            real = NucleiSample.trusted(tile.image[sl].copy(), tile.inst_map[sl].copy(), tile.type_map[sl].copy())
            binst, btyp = (np.ascontiguousarray(m[sl]) for m in maps[k])
            crops["real"].append((real.image, real.inst_map, real.type_map))
            if "sdm_balance" in kinds:
                crops["sdm_balance"].append((real.image, binst, btyp))
            if "gradmix_balance" in kinds:
                crops["gradmix_balance"].append((np.ascontiguousarray(gm_images[k][sl]), binst, btyp))
            if "sdm_enlarge" in kinds:
                e = enl(real, np.random.default_rng([seed, d, j, 1]))
                crops["sdm_enlarge"].append((real.image, e.inst_map, e.type_map))
            if "sdm_composed" in kinds:
                e = enl(NucleiSample.trusted(real.image, binst, btyp), np.random.default_rng([seed, d, j, 3]))
                crops["sdm_composed"].append((real.image, e.inst_map, e.type_map))
        draw_meta: dict[str, Any] = {"draw": d, "balancing": paste_stats, "rare_share": {}, "rare_per_crop": {}}
        for kind, items in crops.items():
            counts = [_rare_count(a, t, rare) for _, a, t in items]
            draw_meta["rare_share"][kind] = sum(r for r, _ in counts) / max(1, sum(n for _, n in counts))
            draw_meta["rare_per_crop"][kind] = float(np.mean([r for r, _ in counts])) if counts else 0.0
        bar = tqdm(total=sum(len(crops[k]) for k in kinds if k in SDM_KINDS), desc=f"SDM pool (draw {d})",
                   unit="patch", disable=not progress)
        for kind in kinds:
            imgs = np.stack([c[0] for c in crops[kind]])
            inst = np.stack([c[1] for c in crops[kind]]).astype(np.int32)
            typ = np.stack([c[2] for c in crops[kind]]).astype(np.int32)
            if kind in SDM_KINDS:
                gen = torch.Generator().manual_seed(seed * 100003 + d * 101 + KINDS.index(kind))
                out, t0 = [], time.perf_counter()
                for s0 in range(0, len(imgs), batch):
                    out.append(synth(imgs[s0:s0 + batch], inst[s0:s0 + batch], typ[s0:s0 + batch], generator=gen))
                    bar.update(len(out[-1]))
                sdm_seconds += time.perf_counter() - t0
                n_sdm += len(imgs)
                imgs = np.concatenate(out)
            metas = [{"kind": kind, "draw": d, "index": j, "tile": train.names[k], "origin": [y, x],
                      "rare_nuclei": _rare_count(inst[j], typ[j], rare)[0],
                      **({"sampler": settings} if kind in SDM_KINDS else {})} for j, (k, y, x) in enumerate(pos)]
            write_store(out_dir / f"draw{d}" / _arm_of(kind), imgs, inst, typ, metas, mode=KIND_MODES[kind],
                        classes=classes, synthesizer=synth if kind in SDM_KINDS else None)
        bar.close()
        if "sdm_balance" in kinds and "sdm_enlarge" in kinds:
            _union_store(out_dir / f"draw{d}" / "diffmix-union",
                         [out_dir / f"draw{d}" / "diffmix-b", out_dir / f"draw{d}" / "diffmix-e"], classes)
        meta["per_draw"].append(draw_meta)
    meta.update(sdm_patches=n_sdm, sdm_seconds=round(sdm_seconds, 1),
                s_per_render=round(sdm_seconds / n_sdm, 3) if n_sdm else None,
                build_seconds=round(time.perf_counter() - t_begin, 1))
    from diffmix_aug._io import atomic_write_text

    atomic_write_text(out_dir / "pool.json", json.dumps(meta, indent=1, default=json_default))
    return {"dir": str(out_dir), "meta": meta}


def _arm_of(kind: str) -> str:
    return {"sdm_balance": "diffmix-b", "gradmix_balance": "gradmix", "sdm_enlarge": "diffmix-e",
            "sdm_composed": "diffmix-composed"}[kind]


def pool_key(train: Any, size: int, draws: int, seed: int, steps: int, t_start: int, guidance: float,
             weights: Path, kinds: Sequence[str], rare: Sequence[int], solver: str = "ddim",
             spacing: str = "linear") -> str:
    """A short hash of everything that defines a pool (a changed split or protocol never reuses one)."""
    h = hashlib.sha256()
    weights = Path(weights)
    fields = [POOL_VERSION, list(train.names), train.window, train.downsample, size, draws, seed, steps, t_start,
              guidance, weights.name, weights.stat().st_size, sorted(kinds), list(rare)]
    if (solver, spacing) != ("ddim", "linear"):  # DDIM on a linear grid keeps the keys of earlier pools
        fields += [solver, spacing]
    h.update(json.dumps(fields).encode())
    return h.hexdigest()[:12]


def get_pool(train: Any, size: int, cache_dir: Path, **kwargs) -> dict[str, Any]:
    """The cached pool for this split and protocol, built when absent (arguments of :func:`build_pool`)."""
    key = pool_key(train, size, kwargs.get("draws", 2), kwargs.get("seed", 0), kwargs.get("steps", 11),
                   kwargs.get("t_start", 540), kwargs.get("guidance", 1.5), kwargs.get("weights", WEIGHTS),
                   kwargs.get("kinds", KINDS), kwargs.get("rare", RARE), kwargs.get("solver", "ddim"),
                   kwargs.get("spacing", "linear"))
    out_dir = Path(cache_dir) / f"pool_{key}"
    done = out_dir / "pool.json"
    if done.is_file():
        return {"dir": str(out_dir), "meta": json.loads(done.read_text()) | {"cached": True}}
    return build_pool(train, size, out_dir=out_dir, **kwargs)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.tilesets import consep_tilesets

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, required=True, help="../shared/data/consep_256")
    ap.add_argument("--val-tiles", default="1,2,3,4,5", help="tiles held out whole (comma-separated)")
    ap.add_argument("--size", type=int, default=48, help="crops per kind and draw")
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--steps", type=int, default=11, help="denoising steps")
    ap.add_argument("--t-start", type=int, default=540, help="entry timestep")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=Path("runs/pools"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train, _ = consep_tilesets(args.data_root, [int(t) for t in args.val_tiles.split(",") if t.strip()])
    pool = get_pool(train, args.size, args.cache_dir, draws=args.draws, seed=args.seed, steps=args.steps,
                    t_start=args.t_start)
    print(json.dumps(pool["meta"], indent=1, default=json_default), "->", pool["dir"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
