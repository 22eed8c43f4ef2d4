"""The benchmarks' unit of data: whole tiles, and the patches cut from them.

A :class:`TileSet` holds whole tiles at the working resolution (CoNSeP: 1000 px at 40x, halved to
500 px at 20x, as the CPU SDM was trained) and their windows as a patch dataset (128 px at 20x,
the 256 px windows of ``consep_256``), with each patch's tile and origin. Balancing maps are drawn
on whole tiles (as the reference draws them) and validation is scored per whole tile (a nucleus
counted once, the bootstrap resampling tiles); training items are the patches.

- :func:`consep_tilesets`: ``consep_256`` reassembled (:func:`diffmix_aug.data.tiles.tiles_from_patches`),
  split by tile number;
- :func:`folder_tileset`: a CoNSeP-layout folder of whole images (``--test-root``, e.g. CoNSeP's
  test split), classes merged 7 -> 4 when asked;
- :func:`toy_tileset`: the procedural toy set, one image per tile.

Data: CoNSeP (Graham et al., "HoVer-Net", Medical Image Analysis 2019), research use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CONSEP_DOWNSAMPLE", "CONSEP_TILE", "TileSet", "consep_tilesets", "folder_tileset", "toy_tileset",
           "train_root"]

CONSEP_TILE = 1000       # CoNSeP tiles at 40x
CONSEP_WINDOW = 256      # consep_256 windows at 40x
CONSEP_DOWNSAMPLE = 2    # 40x -> 20x, as the CPU SDM was trained


@dataclass
class TileSet:
    """Whole tiles and their patches.

    Attributes:
        tiles: Whole tiles (``NucleiSample``), at the working resolution.
        names: Tile names (``"train_12"``).
        numbers: Tile numbers (12), or the position for names without one.
        patches: ``NucleiDataset`` of the windows, item names ``<tile>_<idx>``.
        patch_tile: ``int64 [n_patches]`` index into ``tiles`` of each patch.
        patch_origin: ``int64 [n_patches, 2]`` ``(y, x)`` of each patch in its tile.
        window: Patch side.
        info: The class table (``DatasetInfo``).
        downsample: Factor from the data's native resolution (CoNSeP 40x).
    """

    tiles: list[Any]
    names: list[str]
    numbers: list[int]
    patches: Any
    patch_tile: np.ndarray
    patch_origin: np.ndarray
    window: int
    info: Any
    downsample: int = 1

    def __len__(self) -> int:
        return len(self.tiles)

    def describe(self) -> dict[str, Any]:
        """Counts for the result files: tiles, patches, nuclei per class."""
        counts = np.zeros(self.info.num_classes, np.int64)
        for t in self.tiles:
            counts += np.bincount(np.asarray(t.info.types, np.int64), minlength=self.info.num_classes)
        return {"tiles": list(self.names), "n_tiles": len(self.tiles), "n_patches": len(self.patches),
                "tile_shape": list(self.tiles[0].inst_map.shape) if self.tiles else None, "window": self.window,
                "nuclei_per_class": {self.info.class_names[c]: int(counts[c]) for c in range(1, len(counts))}}


def _windows(tiles: list[Any], names: list[str], window: int, info: Any):
    """Patches of every tile (HoVer-Net valid-mode windows, step = window)."""
    from diffmix_aug.data.dataset import NucleiDataset, _SampleList
    from diffmix_aug.data.patches import patch_origins
    from diffmix_aug.data.sample import NucleiSample

    samples, pnames, ptile, porig = [], [], [], []
    for k, (tile, name) in enumerate(zip(tiles, names)):
        h, w = tile.inst_map.shape
        win = min(window, h, w)
        for j, (y, x) in enumerate(patch_origins((h, w), win, win, mode="valid").tolist()):
            sl = (slice(y, y + win), slice(x, x + win))
            samples.append(NucleiSample.trusted(np.ascontiguousarray(tile.image[sl]),
                                                np.ascontiguousarray(tile.inst_map[sl]),
                                                np.ascontiguousarray(tile.type_map[sl])))
            pnames.append(f"{name}_{j:03d}")
            ptile.append(k)
            porig.append((y, x))
    ds = NucleiDataset(_SampleList(samples, pnames), info)
    return ds, np.asarray(ptile, np.int64), np.asarray(porig, np.int64).reshape(-1, 2)


def _number(name: str, fallback: int) -> int:
    from diffmix_aug.data.split import tile_number

    n = tile_number(name)
    return fallback if n is None else int(n)


def _make(tiles: list[Any], names: list[str], window: int, info: Any, downsample: int) -> TileSet:
    patches, ptile, porig = _windows(tiles, names, window, info)
    return TileSet(tiles, names, [_number(n, i) for i, n in enumerate(names)], patches, ptile, porig,
                   min(window, *tiles[0].inst_map.shape) if tiles else window, info, downsample)


def train_root(root: str | Path) -> Path:
    """The CoNSeP-layout folder under ``root`` (``root``, ``root/Train`` or ``root/train``)."""
    root = Path(root)
    for cand in (root / "Train", root / "train", root):
        if (cand / "Images").is_dir() and (cand / "Labels").is_dir():
            return cand
    raise FileNotFoundError(f"`--data-root` must hold CoNSeP-layout Images/ and Labels/ (or Train/ or train/ with "
                            f"them), got {root} (the patches are in ../shared/data/consep_256)")


def consep_tilesets(root: str | Path, val_tiles: Sequence[int], downsample: int = CONSEP_DOWNSAMPLE,
                    only_tiles: Sequence[int] | None = None) -> tuple[TileSet, TileSet | None]:
    """``(train, val)`` tile sets of ``consep_256`` (patches reassembled into 1000 px tiles).

    Args:
        root: ``consep_256`` or its ``train/`` folder.
        val_tiles: Tile numbers held out whole (empty: every tile trains, ``val`` is None).
        downsample: 2 -> 20x (500 px tiles, 128 px patches).
        only_tiles: Read only these tile numbers (tests and dry runs); default all.
    """
    from diffmix_aug.data.dataset import NucleiDataset
    from diffmix_aug.data.split import split_by_tile, tile_number
    from diffmix_aug.data.tiles import tiles_from_patches

    ds = NucleiDataset.from_consep_dir(train_root(root), merge=False)
    if only_tiles is not None:
        keep = set(int(t) for t in only_tiles) | set(int(t) for t in val_tiles)
        ds = ds.subset([i for i, n in enumerate(ds.item_names()) if tile_number(n) in keep])
    train_idx, val_idx = split_by_tile(ds, list(val_tiles)) if val_tiles else (list(range(len(ds))), [])
    out = []
    for idx in (train_idx, val_idx):
        if not idx:
            out.append(None)
            continue
        tiles, names = tiles_from_patches(ds.subset(idx), (CONSEP_TILE, CONSEP_TILE))
        tiles = list(NucleiDataset.from_samples(tiles, ds.info).downsampled(downsample))
        out.append(_make(tiles, names, CONSEP_WINDOW // downsample, ds.info, downsample))
    return out[0], out[1]


def folder_tileset(root: str | Path, merge: bool, downsample: int = CONSEP_DOWNSAMPLE) -> TileSet:
    """Whole images of a CoNSeP-layout folder (``Images/``, ``Labels/*.mat``) as tiles."""
    from diffmix_aug.data.dataset import NucleiDataset

    root = Path(root)
    if not (root / "Images").is_dir() or not (root / "Labels").is_dir():
        raise FileNotFoundError(f"`--test-root` must be a CoNSeP-layout folder with Images/ and Labels/, got {root}")
    ds = NucleiDataset.from_consep_dir(root, merge=merge).downsampled(downsample)
    names = ds.item_names() or [f"image_{i}" for i in range(len(ds))]
    return _make(list(ds), list(names), CONSEP_WINDOW // downsample, ds.info, downsample)


def toy_tileset(n: int, seed: int, size: int = 64) -> TileSet:
    """``n`` procedural toy images, each its own tile and its only window."""
    from diffmix_aug.data.toy import make_toy_dataset

    ds = make_toy_dataset(n, size, seed=seed)
    tiles = [ds[i] for i in range(len(ds))]
    return _make(tiles, [f"toy{seed}_{i}" for i in range(n)], size, ds.info, 1)
