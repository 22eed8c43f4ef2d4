"""Decide from the labels themselves whether a CoNSeP/GLySAC folder still holds raw classes.

HoVer-Net's exported patches, ``consep_256`` and many shared copies of CoNSeP are merged already
(7 -> 4); merging them again silently turns every spindle nucleus (4) into epithelial (3). So the
readers default to ``merge="auto"``: the type ids of every label file are scanned once (the small
``inst_type`` table where the file has one) and the raw table is applied only when an id above
the merged range is present. An explicit ``merge=True`` on labels that look merged warns, and so does
``merge=False`` on raw labels (their ids have no names in the merged table).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .classes import DatasetInfo

__all__ = ["MERGE_CHOICES", "check_merge_arg", "resolve_merge", "scan_type_counts"]

MERGE_CHOICES = ("auto", True, False)

_log = logging.getLogger("diffmix_aug")


def check_merge_arg(merge: Any) -> bool | str:
    """``merge`` as given: ``"auto"``, True or False (numpy bools accepted)."""
    if isinstance(merge, (bool, np.bool_)):
        return bool(merge)
    if merge == "auto":
        return "auto"
    raise ValueError(f"`merge` must be 'auto', True or False, got {merge!r}; 'auto' merges raw classes only when "
                     "the labels hold a type id above the merged range")


def _label_types(path: Path) -> np.ndarray:
    """Type id of every nucleus of one ``.mat`` (``inst_type`` rows, else one per instance of the maps)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), variable_names=["inst_type"])
    except Exception as exc:  # scipy raises several types for corrupt files
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({exc})") from exc
    if "inst_type" in mat:
        return np.asarray(mat["inst_type"]).reshape(-1)
    mat = loadmat(str(path), variable_names=["inst_map", "type_map"])
    if "inst_map" not in mat or "type_map" not in mat:
        return np.zeros(0, np.int64)
    inst = np.asarray(mat["inst_map"]).reshape(-1)
    typ = np.asarray(mat["type_map"]).reshape(-1)
    fg = inst > 0
    if not fg.any():
        return np.zeros(0, np.int64)
    _, first = np.unique(inst[fg], return_index=True)
    return typ[fg][first]


def scan_type_counts(label_paths: Sequence[str | Path]) -> np.ndarray:
    """``int64 [max_id + 1]``: nuclei per type id over every label file (index 0: untyped).

    Raises:
        ValueError: a file is unreadable, or holds negative or non-integral type ids; naming it.
    """
    counts = np.zeros(1, np.int64)
    for path in label_paths:
        types = _label_types(Path(path))
        if types.size == 0:
            continue
        if types.dtype.kind == "f" and (~np.isfinite(types) | (types != np.round(types))).any():
            raise ValueError(f"{path}: `inst_type` must hold whole numbers, got {types.dtype} values")
        types = types.astype(np.int64)
        if types.min() < 0:
            raise ValueError(f"{path}: type ids must be >= 0, got {types.min()}")
        c = np.bincount(types)
        if c.size > counts.size:
            counts = np.pad(counts, (0, c.size - counts.size))
        counts[: c.size] += c
    return counts


def resolve_merge(merge: Any, info: DatasetInfo, label_paths: Sequence[str | Path], where: str = "") -> bool:
    """Whether the raw-to-merged table of ``info`` applies to these labels.

    Args:
        merge: ``"auto"`` (decide from the labels), True or False.
        info: The dataset's class table (``merge_table`` None: never merge).
        label_paths: Every label file of the folder.
        where: The folder, for messages.

    Returns:
        True to merge. The decision and the nuclei per class are logged (``diffmix_aug`` logger, INFO).
    """
    merge = check_merge_arg(merge)
    if info.merge_table is None:
        return False
    counts = scan_type_counts(label_paths)
    top = int(np.flatnonzero(counts).max()) if counts.any() else 0
    merged_max = info.num_classes - 1
    raw = top > merged_max
    decision = raw if merge == "auto" else merge
    names = info.class_names
    if decision:
        table = np.zeros(max(counts.size, max(info.merge_table) + 1), np.int64)
        for r, m in info.merge_table.items():
            table[r] = m
        per_class = np.bincount(table[: counts.size], weights=counts, minlength=info.num_classes).astype(np.int64)
    else:
        per_class = counts
    shown = {(names[i] if i < len(names) else f"type {i}"): int(per_class[i]) for i in range(1, per_class.size)}
    _log.info("%s labels in %s: type ids up to %d, %s; nuclei per class: %s", info.name, where or "the folder", top,
              f"merging {len(info.merge_table)} -> {merged_max} classes" if decision else "used as they are", shown)
    if merge is True and not raw and counts[1:].any():
        warnings.warn(f"merge=True on {where or 'labels'} whose type ids stop at {top} (the merged range is "
                      f"1..{merged_max}): they look merged already, and merging again changes classes "
                      f"({info.name}: {_remaps(info)}). Pass merge='auto' (the default) or merge=False.",
                      UserWarning, stacklevel=3)
    if merge is False and raw:
        warnings.warn(f"merge=False keeps raw type ids up to {top} in {where or 'the labels'}, but the class table "
                      f"of {info.name!r} names only 1..{merged_max} ({', '.join(names[1:])}): names, counts and "
                      "num_classes of this dataset do not describe these ids. Pass merge='auto' (the default) to "
                      "merge them.", UserWarning, stacklevel=3)
    return bool(decision)


def _remaps(info: DatasetInfo) -> str:
    moved = [f"{r} -> {m}" for r, m in sorted(info.merge_table.items()) if r != m and r < info.num_classes]
    return ", ".join(moved) or "none"
