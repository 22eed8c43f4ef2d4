"""Tile-level splits: validation tiles are held out whole, never patch by patch.

Patches cut from one whole-slide tile are correlated (same staining, same tissue, overlapping
windows), so a split by patch leaks. Patch files named ``<tile>_<idx>`` (three digits, as in
``consep_256``: ``train_12_007``) belong to tile ``<tile>``; any other name is its own tile.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = ["split_by_tile", "tile_of", "tile_number"]

_PATCH = re.compile(r"^(?P<tile>.+)_(?P<idx>\d{3})$")
_NUMBER = re.compile(r"(\d+)$")


def tile_of(name: str) -> str:
    """The tile a patch file stem belongs to: ``"train_12_007"`` -> ``"train_12"``."""
    m = _PATCH.match(name)
    return m.group("tile") if m else name


def tile_number(name: str) -> int | None:
    """The trailing number of a patch's tile: ``"train_12_007"`` -> 12 (None when there is none)."""
    m = _NUMBER.search(tile_of(name))
    return int(m.group(1)) if m else None


def split_by_tile(dataset: Any, val_tiles: Sequence[int | str]) -> tuple[list[int], list[int]]:
    """Indices of the training and validation items, validation = every patch of ``val_tiles``.

    Args:
        dataset: A :class:`~diffmix_aug.data.dataset.NucleiDataset` whose items have file names
            (``item_names()``), e.g. from ``NucleiDataset.from_consep_dir``.
        val_tiles: Tile numbers (``[1, 2, 3, 4, 5]``) or tile names (``["train_1"]``).

    Returns:
        ``(train_indices, val_indices)``, both sorted.

    Raises:
        ValueError: the dataset has no file names, or a named tile matches no item.
    """
    names = dataset.item_names() if hasattr(dataset, "item_names") else None
    if names is None:
        raise ValueError("split_by_tile needs file names per item (a dataset from from_consep_dir or "
                         f"from_hovernet_npy_dir); got {type(dataset).__name__} without them")
    wanted = list(val_tiles)
    for t in wanted:
        if isinstance(t, bool) or not isinstance(t, (int, str)):
            raise TypeError(f"`val_tiles` entries must be tile numbers or names, got {type(t).__name__} {t!r}")
    keys = [(tile_number(n), tile_of(n)) for n in names]
    hit = {t: False for t in wanted}
    train, val = [], []
    for i, (num, tile) in enumerate(keys):
        match = [t for t in wanted if (isinstance(t, int) and t == num) or (isinstance(t, str) and t == tile)]
        for t in match:
            hit[t] = True
        (val if match else train).append(i)
    missing = [t for t, h in hit.items() if not h]
    if missing:
        known = sorted({tile for _, tile in keys})
        raise ValueError(f"`val_tiles` {missing} match no item; the tiles are {known[:10]}"
                         f"{' ...' if len(known) > 10 else ''}")
    return train, val
