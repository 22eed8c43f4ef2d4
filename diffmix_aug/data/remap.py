"""Instance-id relabelling with HoVer-Net's ``remap_label`` contract (vectorised)."""

from __future__ import annotations

import numpy as np

from .._checks import check_array

__all__ = ["remap_label"]


def remap_label(inst_map: np.ndarray, by_size: bool = False, *, allow_no_background: bool = False) -> np.ndarray:
    """Relabel instance ids to the contiguous range 1..n; 0 stays background.

    Same contract as ``hover_net/misc/utils.py::remap_label``: without ``by_size`` ids keep
    their relative order (ascending original id, i.e. ``np.unique`` order); with ``by_size`` the
    largest instance becomes 1 (ties keep ascending id order, as Python's stable sort does).
    HoVer-Net raises ``ValueError`` when the map has no 0 (``list.remove(0)``); so does this
    function unless ``allow_no_background=True``.

    Args:
        inst_map: ``int [H, W]`` (any integer dtype, ids >= 0).
        by_size: Number instances by descending pixel area instead of by id.
        allow_no_background: Accept maps in which every pixel belongs to an instance.

    Returns:
        ``int32 [H, W]`` with ids 1..n (a new array).

    Raises:
        TypeError: not an integer array.
        ValueError: negative ids, or no background pixel (see ``allow_no_background``).
    """
    check_array("inst_map", inst_map, dtype_kind="iu")
    if inst_map.size == 0:
        return np.zeros(inst_map.shape, np.int32)
    ids, inverse, counts = np.unique(inst_map, return_inverse=True, return_counts=True)
    if ids[0] < 0:
        raise ValueError(f"`inst_map` ids must be >= 0, got minimum {ids[0]}")
    has_bg = ids[0] == 0
    if not has_bg and not allow_no_background:
        raise ValueError("`inst_map` has no background pixel (id 0); HoVer-Net's remap_label raises here. "
                         "Pass allow_no_background=True if the map is fully covered by nuclei.")
    n_fg = len(ids) - int(has_bg)
    lut = np.zeros(len(ids), np.int32)
    fg = slice(1, None) if has_bg else slice(None)
    if by_size:
        fg_counts = counts[fg]
        order = np.argsort(-fg_counts, kind="stable")  # rank -> position among fg ids
        new_ids = np.empty(n_fg, np.int32)
        new_ids[order] = np.arange(1, n_fg + 1, dtype=np.int32)
        lut[fg] = new_ids
    else:
        lut[fg] = np.arange(1, n_fg + 1, dtype=np.int32)
    return lut[inverse.reshape(inst_map.shape)]
