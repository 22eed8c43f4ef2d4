"""The plain oracles of the run-based grouping: one stable comparison sort of every foreground pixel.

:func:`group_by_id_reference` checks :func:`~diffmix_aug.data.grouping.group_by_id`,
:func:`instance_info_reference` checks :func:`~diffmix_aug.data.sample.instance_info` and
:func:`group_pixels_reference` checks :func:`~diffmix_aug.labelmaps.enlarge.group_pixels`, exactly
(``tests/unit/test_grouping.py``, ``tests/unit/test_fast_labelmaps.py``). Kept in the tests, never
in the library (issue 30, item 5); ``benchmarks/labelmaps.py`` times the library against them.
"""

from __future__ import annotations

import numpy as np

from diffmix_aug.data.sample import InstanceInfo
from diffmix_aug.labelmaps.enlarge import PixelGroups, _groups


def group_by_id_reference(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, starts, areas, pixels)`` of the non-zero entries of ``flat`` grouped by value, by one sort.

    Args:
        flat: ``int [N]`` a raveled instance map.

    Returns:
        ``int64`` ids ascending ``[K]``, each group's start in ``pixels`` ``[K]``, its size ``[K]``, and
        the flat positions ``[sum(areas)]`` ordered by id, row-major within an id.
    """
    fg = np.flatnonzero(flat)
    if fg.size == 0:
        z = np.zeros(0, np.int64)
        return z, z, z, z
    labels = flat[fg]
    order = np.argsort(labels, kind="stable")
    labels = labels[order]
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    areas = np.diff(np.r_[starts, labels.size])
    return labels[starts].astype(np.int64), starts.astype(np.int64), areas.astype(np.int64), fg[order]


def instance_info_reference(inst_map: np.ndarray, type_map: np.ndarray | None = None) -> InstanceInfo:
    """:func:`~diffmix_aug.data.sample.instance_info` by per-id reductions over the sorted pixels."""
    ids, starts, areas, pos = group_by_id_reference(inst_map.ravel())
    if ids.size == 0:
        z = np.zeros(0, np.int64)
        return InstanceInfo(z.astype(np.int32), z.astype(np.int32), np.zeros((0, 2)), np.zeros((0, 4), np.int64), z)
    w = inst_map.shape[1]
    ys = pos // w
    xs = pos - ys * w
    cy = np.add.reduceat(ys, starts) / areas
    cx = np.add.reduceat(xs, starts) / areas
    bboxes = np.stack(
        [np.minimum.reduceat(ys, starts), np.minimum.reduceat(xs, starts),
         np.maximum.reduceat(ys, starts) + 1, np.maximum.reduceat(xs, starts) + 1],
        axis=1,
    ).astype(np.int64)
    if type_map is None:
        types = np.zeros(ids.shape, np.int32)
    else:
        types = type_map.ravel()[pos[starts]].astype(np.int32)
    return InstanceInfo(ids.astype(np.int32), types, np.stack([cx, cy], axis=1), bboxes, areas)


def group_pixels_reference(inst_map: np.ndarray, type_map: np.ndarray | None = None) -> PixelGroups:
    """:func:`~diffmix_aug.labelmaps.enlarge.group_pixels` by one comparison sort of all foreground pixels."""
    return _groups(inst_map, type_map, group_by_id_reference(inst_map.ravel()))
