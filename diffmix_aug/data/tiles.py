"""Whole tiles back from their patches: the inverse of HoVer-Net's valid-mode window extraction.

GradMix balances whole training images (``design/method.md`` §6: 1000 x 1000 CoNSeP tiles, donors
from the whole split) and validation is scored per tile, so patch datasets such as
``consep_256`` (each tile cut into 256 px windows, :func:`~diffmix_aug.data.patches.patch_origins`
order in valid mode: the regular grid row-major, then the row flush with the bottom edge, then
the column flush with the right edge) have to be put back together. Overlapping windows must agree
exactly on the labels (the same tile's instance ids); images may differ by lossy compression, and
the window read last wins there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._checks import describe
from .patches import patch_origins
from .sample import NucleiSample
from .split import tile_of

__all__ = ["reassemble", "tiles_from_patches"]


def reassemble(patches: Sequence[NucleiSample], origins: np.ndarray | Sequence[Sequence[int]],
               shape: tuple[int, int], *, check_overlaps: bool = True) -> NucleiSample:
    """Paste windows back into one image of ``shape``.

    Args:
        patches: ``n`` samples (``image uint8 [h, w, 3]``, ``inst_map`` / ``type_map`` ``int [h, w]``).
        origins: ``int [n, 2]`` top-left ``(y, x)`` of each window in the tile.
        shape: ``(H, W)`` of the tile.
        check_overlaps: Raise when two windows disagree on a label pixel they share.

    Returns:
        The tile as a ``NucleiSample`` (``int32`` maps).

    Raises:
        ValueError: a window leaves the tile, a pixel is covered by no window, or two windows
            disagree on the labels of a shared pixel (the windows are not of one tile, or the
            origins are in the wrong order).
    """
    origins = np.asarray(origins, np.int64).reshape(-1, 2)
    if len(patches) != len(origins):
        raise ValueError(f"`origins` must hold one (y, x) per patch: {len(patches)} patches, {len(origins)} origins")
    if len(patches) == 0:
        raise ValueError("`patches` is empty: nothing to reassemble")
    H, W = (int(v) for v in shape)
    image = np.zeros((H, W, 3), np.uint8)
    inst = np.zeros((H, W), np.int32)
    typ = np.zeros((H, W), np.int32)
    seen = np.zeros((H, W), bool)
    for k, (p, (y, x)) in enumerate(zip(patches, origins.tolist())):
        h, w = p.inst_map.shape
        if y < 0 or x < 0 or y + h > H or x + w > W:
            raise ValueError(f"window {k} at (y={y}, x={x}) of size {(h, w)} leaves the tile of shape {(H, W)}; "
                             "pass the tile's real shape or the windows' real origins")
        sl = (slice(y, y + h), slice(x, x + w))
        if check_overlaps:
            old = seen[sl]
            if old.any() and (np.any(inst[sl][old] != p.inst_map[old]) or np.any(typ[sl][old] != p.type_map[old])):
                raise ValueError(f"window {k} at (y={y}, x={x}) disagrees with an earlier window on the labels of "
                                 "their shared pixels: the windows are not of one tile or the origins are not in "
                                 "the windows' order")
        image[sl] = p.image
        inst[sl] = p.inst_map
        typ[sl] = p.type_map
        seen[sl] = True
    if not seen.all():
        raise ValueError(f"{int((~seen).sum())} pixels of the {(H, W)} tile are covered by no window; "
                         "check `shape` and `origins`")
    return NucleiSample(image, inst, typ)


def tiles_from_patches(dataset: Any, tile_shape: tuple[int, int], step: int | None = None,
                       *, check_overlaps: bool = True) -> tuple[list[NucleiSample], list[str]]:
    """Group a patch dataset's items by tile (``tile_of(name)``) and reassemble each tile.

    The items of one tile must be its windows in :func:`~diffmix_aug.data.patches.patch_origins`
    order (valid mode, window = the patch size, ``step`` = the window unless given), with names
    ``<tile>_<idx>`` (``train_12_007``); ``consep_256`` is laid out so (1000 px tiles, 256 px
    windows with step 256: ``idx`` 0-8 the 3 x 3 grid, 9-11 the bottom row at y = 744, 12-15 the
    right column at x = 744).

    Args:
        dataset: Items with ``image`` / ``inst_map`` / ``type_map`` and ``item_names()``.
        tile_shape: ``(H, W)`` of a whole tile at the dataset's resolution.
        step: Window step (default: the window size).
        check_overlaps: See :func:`reassemble`.

    Returns:
        ``(tiles, tile_names)`` in order of first appearance.

    Raises:
        ValueError: no item names, or a tile with the wrong number of windows.
    """
    names = dataset.item_names() if hasattr(dataset, "item_names") else None
    if not names:
        raise ValueError(f"tiles_from_patches needs item names (<tile>_<idx>); got {describe(dataset)} without them")
    groups: dict[str, list[tuple[int, int]]] = {}
    for i, name in enumerate(names):
        tile = tile_of(name)
        idx = int(name[len(tile) + 1:]) if tile != name else 0
        groups.setdefault(tile, []).append((idx, i))
    tiles, out_names = [], []
    for tile, members in groups.items():
        members.sort()
        first = dataset[members[0][1]]
        win = first.inst_map.shape
        origins = patch_origins(tuple(tile_shape), win, step or win, mode="valid")
        if len(origins) != len(members) or [m[0] for m in members] != list(range(len(members))):
            raise ValueError(f"tile {tile!r} has windows {[m[0] for m in members]}, expected 0..{len(origins) - 1} "
                             f"for a {tuple(tile_shape)} tile cut into {win} windows with step {step or win}")
        tiles.append(reassemble([dataset[i] for _, i in members], origins, tile_shape, check_overlaps=check_overlaps))
        out_names.append(tile)
    return tiles, out_names
