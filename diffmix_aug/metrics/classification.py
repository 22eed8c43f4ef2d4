"""HoVer-Net's nucleus detection / classification statistics (``compute_stats.run_nuclei_type_stat``).

Per image, GT and predicted centroids are paired by a Hungarian assignment on Euclidean distance
(``scipy.optimize.linear_sum_assignment``), keeping pairs within ``radius`` (inclusive); pairs and
unpaired nuclei are then pooled over the whole dataset (formats.md §1d):

- ``f1_detection`` = 2 TP / (2 TP + FP + FN);
- ``accuracy`` = share of pairs whose predicted type equals the GT type;
- ``f1_per_type[c]`` = 2 TP_c / (2 TP_c + 2 FP_c + 2 FN_c + FP_d,c + FN_d,c) (weights [2, 2, 1, 1];
  TN_c inside the restricted set is always 0).

Edge cases, documented deviations from the reference:

- HoVer-Net gives an image without nuclei a dummy centroid (0, 0) of type 0. Here empty images
  contribute nothing (no dummy), so two empty images do not count as a detected nucleus and type 0
  never enters the default ``type_ids``.
- Nothing in GT and nothing predicted over the whole dataset: ``f1_detection`` = 1.0 (reference:
  0/0). A type absent from both GT and prediction gets F1 1.0 by the same rule (reference: NaN).
- No pair at all: ``accuracy`` = NaN (the reference divides 0 by 0; accuracy is undefined).
- Centroids are used as float (HoVer-Net master reads ``inst_centroid`` as float32).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._checks import check_in_range

__all__ = ["classification_stats", "pair_coordinates"]


def pair_coordinates(set_a: np.ndarray, set_b: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Unique pairing of two point sets by Hungarian assignment on Euclidean distance.

    Args:
        set_a: ``float [N, 2]`` points (x, y).
        set_b: ``float [M, 2]`` points (x, y).
        radius: pairs farther apart than this are dropped (``<= radius`` kept).

    Returns:
        ``(idx_a, idx_b)`` int64 arrays of paired indices (same length).
    """
    from scipy.optimize import linear_sum_assignment

    if set_a.shape[0] == 0 or set_b.shape[0] == 0:
        z = np.zeros(0, np.int64)
        return z, z.copy()
    dist = np.sqrt(((set_a[:, None, :] - set_b[None, :, :]) ** 2).sum(-1))
    ia, ib = linear_sum_assignment(dist)
    keep = dist[ia, ib] <= radius
    return ia[keep].astype(np.int64), ib[keep].astype(np.int64)


def _get(item: Any, key: str, i: int, which: str) -> np.ndarray:
    if isinstance(item, Mapping):
        if key not in item:
            raise ValueError(f"`{which}[{i}]` must have the key {key!r}, got keys {sorted(item)}")
        value = item[key]
    elif hasattr(item, key):
        value = getattr(item, key)
    else:
        raise TypeError(f"`{which}[{i}]` must be a mapping (or object) with `inst_centroid` and "
                        f"`inst_type`, got {type(item).__name__}")
    return np.asarray(value)


def _points(item: Any, i: int, which: str) -> tuple[np.ndarray, np.ndarray]:
    field = f"`{which}[{i}]['inst_centroid']`"
    cen = _get(item, "inst_centroid", i, which)
    if cen.dtype.kind not in "iuf":
        raise TypeError(f"{field} must be numeric (x, y) coordinates, got dtype {cen.dtype}")
    cen = cen.astype(np.float64)
    if not np.isfinite(cen).all():
        raise ValueError(f"{field} must hold finite coordinates, got {int((~np.isfinite(cen)).sum())} NaN/inf "
                         "value(s); drop or fix those nuclei")
    field = f"`{which}[{i}]['inst_type']`"
    raw = _get(item, "inst_type", i, which).reshape(-1)
    if raw.dtype.kind == "f":
        if not np.isfinite(raw).all() or (raw != np.round(raw)).any():
            raise ValueError(f"{field} must hold whole-number type ids, got non-integral or NaN values "
                             f"({raw.dtype}); pass integer types")
    elif raw.dtype.kind not in "iu":
        raise TypeError(f"{field} must hold integer type ids, got dtype {raw.dtype}")
    if raw.size and raw.min() < 0:
        raise ValueError(f"{field} type ids must be >= 0, got minimum {raw.min()}")
    typ = raw.astype(np.int64)
    if cen.size == 0:
        cen = cen.reshape(0, 2)
    if cen.ndim != 2 or cen.shape[1] != 2:
        raise ValueError(f"`{which}[{i}]['inst_centroid']` must have shape (N, 2) as (x, y), got {cen.shape}")
    if typ.shape[0] != cen.shape[0]:
        raise ValueError(f"`{which}[{i}]`: inst_type has {typ.shape[0]} entries but inst_centroid has "
                         f"{cen.shape[0]}; give one type per centroid")
    return cen, typ


def _cat(xs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(xs) if xs else np.zeros(0, np.int64)


def _ratio(num: float, den: float, both_empty: float) -> float:
    return float(num / den) if den > 0 else both_empty


def classification_stats(
    true_list: Sequence[Any],
    pred_list: Sequence[Any],
    radius: float = 12.0,
    type_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Detection F1, type accuracy and per-type F1 pooled over a dataset (HoVer-Net's definitions).

    Args:
        true_list: one item per image: a mapping (or object) with ``inst_centroid`` ``float [N, 2]``
            (x, y) and ``inst_type`` ``int [N]`` (or ``[N, 1]``).
        pred_list: same for the predictions, same length and order.
        radius: pairing radius in pixels (HoVer-Net: 12).
        type_ids: types to score; None means the sorted unique GT types.

    Returns:
        ``{"f1_detection": float, "accuracy": float, "f1_per_type": {type_id: float}}`` plus the
        pooled counts ``"tp"``, ``"fp"``, ``"fn"`` (ints).
    """
    radius = check_in_range("radius", radius, 0.0, float("inf"))
    if len(true_list) != len(pred_list):
        raise ValueError(f"`true_list` and `pred_list` must have the same length (one item per image), "
                         f"got {len(true_list)} and {len(pred_list)}")
    pt, pp, ut, up, all_true = [], [], [], [], []
    for i, (t_item, p_item) in enumerate(zip(true_list, pred_list)):
        t_cen, t_typ = _points(t_item, i, "true_list")
        p_cen, p_typ = _points(p_item, i, "pred_list")
        ia, ib = pair_coordinates(t_cen, p_cen, radius)
        t_un = np.ones(t_typ.size, bool)
        t_un[ia] = False
        p_un = np.ones(p_typ.size, bool)
        p_un[ib] = False
        pt.append(t_typ[ia])
        pp.append(p_typ[ib])
        ut.append(t_typ[t_un])
        up.append(p_typ[p_un])
        all_true.append(t_typ)
    paired_true, paired_pred, unpaired_true, unpaired_pred = _cat(pt), _cat(pp), _cat(ut), _cat(up)
    tp, fp, fn = int(paired_true.size), int(unpaired_pred.size), int(unpaired_true.size)
    f1_d = _ratio(2 * tp, 2 * tp + fp + fn, 1.0)
    acc = _ratio(int((paired_true == paired_pred).sum()), tp, float("nan"))
    if type_ids is None:
        type_ids = np.unique(_cat(all_true)).tolist()
    f1_types: dict[int, float] = {}
    for c in type_ids:
        c = int(c)
        t_is, p_is = paired_true == c, paired_pred == c
        tp_c = int((t_is & p_is).sum())
        fp_c = int((~t_is & p_is).sum())
        fn_c = int((t_is & ~p_is).sum())
        fp_dc = int((unpaired_pred == c).sum())
        fn_dc = int((unpaired_true == c).sum())
        f1_types[c] = _ratio(2 * tp_c, 2 * tp_c + 2 * fp_c + 2 * fn_c + fp_dc + fn_dc, 1.0)
    return {"f1_detection": f1_d, "accuracy": acc, "f1_per_type": f1_types, "tp": tp, "fp": fp, "fn": fn}
