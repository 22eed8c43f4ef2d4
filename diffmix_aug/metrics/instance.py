"""HoVer-Net's instance-segmentation metrics (Dice, DICE2, AJI, AJI+, PQ), vectorised.

Same definitions as ``vqdang/hover_net`` ``metrics/stats_utils.py`` (``get_dice_1``,
``get_fast_dice_2``, ``get_fast_aji``, ``get_fast_aji_plus``, ``get_fast_pq``; formats.md §1d),
but the pairwise intersection table is built in one pass over the pixels by counting
``(true_id, pred_id)`` pairs, instead of one full-image mask per nucleus. The IoU matrices handed to
``argmax`` / ``linear_sum_assignment`` are computed with the same floating-point operations as the
reference, so pairings (tie-breaking included) and values are the same.

Ids need not be contiguous: both maps are relabelled internally (HoVer-Net requires ``remap_label``
first). 0 is background; every other id is an instance.

Edge cases (the reference raises or returns NaN; here every case returns a float):

==========================  ===============================  =======================================
case                        HoVer-Net                        here
==========================  ===============================  =======================================
both maps empty             Dice NaN, AJI raises (argmax of  every metric 1.0 (nothing to find, nothing
                            an empty axis), AJI+ NaN, PQ     found: perfect agreement); PQ -> (1, 1, 1)
                            ZeroDivisionError, DICE2
                            ZeroDivisionError
pred empty, GT not          AJI raises ValueError; others 0  every metric 0.0
GT empty, pred not          0 (DICE2 ZeroDivisionError)      every metric 0.0
no overlapping pair         DICE2 ZeroDivisionError          DICE2 0.0
no background pixel         first id silently treated as     0 is background only; every id > 0 is an
                            background (remap_label raises)  instance, no id is dropped
==========================  ===============================  =======================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._checks import check_array, check_in_range

__all__ = ["PairTable", "aji", "aji_plus", "dice", "dice2", "pair_table", "panoptic_quality"]

_DENSE_PAIR_LIMIT = 1 << 24  # use np.bincount on (true, pred) keys below this many cells


@dataclass(frozen=True)
class PairTable:
    """Sparse table of overlapping instance pairs of two label maps.

    Attributes:
        true_area: ``int64 [n_true]`` pixel count of GT instance ``i`` (contiguous index).
        pred_area: ``int64 [n_pred]`` pixel count of predicted instance ``j``.
        true_idx: ``int64 [m]`` GT index of each overlapping pair (sorted by (true_idx, pred_idx)).
        pred_idx: ``int64 [m]`` predicted index of each pair.
        inter: ``int64 [m]`` intersection of each pair.
    """

    true_area: np.ndarray
    pred_area: np.ndarray
    true_idx: np.ndarray
    pred_idx: np.ndarray
    inter: np.ndarray

    @property
    def n_true(self) -> int:
        return int(self.true_area.shape[0])

    @property
    def n_pred(self) -> int:
        return int(self.pred_area.shape[0])

    @property
    def union(self) -> np.ndarray:
        """``int64 [m]`` union ``|g| + |p| - I`` of each pair."""
        return self.true_area[self.true_idx] + self.pred_area[self.pred_idx] - self.inter

    def dense(self, values: np.ndarray) -> np.ndarray:
        """Scatter per-pair ``values`` into a dense ``float64 [n_true, n_pred]`` matrix (0 elsewhere)."""
        out = np.zeros((self.n_true, self.n_pred), np.float64)
        out[self.true_idx, self.pred_idx] = values
        return out


def _compact(name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabel ``x`` to 0..n (0 stays background); returns the flat labels and the areas of 1..n."""
    check_array(name, x, ndim=2, dtype_kind="iu")
    flat = x.ravel()
    if flat.size == 0:
        return flat.astype(np.int64), np.zeros(0, np.int64)
    lo, hi = int(flat.min()), int(flat.max())
    if lo < 0:
        raise ValueError(f"`{name}` ids must be >= 0 (0 = background), got minimum {lo}; "
                         "pass an instance map with non-negative integer ids")
    if hi <= 4 * flat.size + 1024:
        counts = np.bincount(flat, minlength=1)
        present = np.flatnonzero(counts[1:]) + 1
        if present.size == hi:  # already contiguous
            return flat.astype(np.int64, copy=False), counts[1:].astype(np.int64)
        lut = np.zeros(hi + 1, np.int64)
        lut[present] = np.arange(1, present.size + 1)
        return lut[flat], counts[present].astype(np.int64)
    ids, inv, counts = np.unique(flat, return_inverse=True, return_counts=True)
    if ids[0] == 0:
        return inv.astype(np.int64), counts[1:].astype(np.int64)
    return inv.astype(np.int64) + 1, counts.astype(np.int64)


def pair_table(true: np.ndarray, pred: np.ndarray) -> PairTable:
    """Count every overlapping (GT, prediction) pair in one pass over the pixels.

    Args:
        true: ``int [H, W]`` GT instance map, 0 = background.
        pred: ``int [H, W]`` predicted instance map, same shape.

    Returns:
        :class:`PairTable` with contiguous indices (GT id order, then prediction id order, i.e. the
        order ``remap_label`` gives).
    """
    t, t_area = _compact("true", true)
    p, p_area = _compact("pred", pred)
    if true.shape != pred.shape:
        raise ValueError(f"`true` and `pred` must have the same shape, got {true.shape} and {pred.shape}")
    n_t, n_p = t_area.size, p_area.size
    both = (t > 0) & (p > 0)
    keys = (t[both] - 1) * n_p + (p[both] - 1)
    if n_t * n_p <= _DENSE_PAIR_LIMIT:
        counts = np.bincount(keys, minlength=n_t * n_p)
        uniq = np.flatnonzero(counts)
        inter = counts[uniq]
    else:
        uniq, inter = np.unique(keys, return_counts=True)
    if n_p == 0:
        ti = pi = np.zeros(0, np.int64)
    else:
        ti, pi = np.divmod(uniq.astype(np.int64), n_p)
    return PairTable(t_area, p_area, ti, pi, inter.astype(np.int64))


def _as_table(true: np.ndarray | PairTable, pred: np.ndarray | None) -> PairTable:
    if isinstance(true, PairTable):
        return true
    return pair_table(true, pred)


def dice(true: np.ndarray, pred: np.ndarray) -> float:
    """DICE1: Dice of the binarised maps, ``2 |T & P| / (|T| + |P|)`` (HoVer-Net ``get_dice_1``).

    Args:
        true: ``int [H, W]`` GT instance (or binary) map.
        pred: ``int [H, W]`` predicted map, same shape.

    Returns:
        Float in [0, 1]; 1.0 when both maps are empty (HoVer-Net: NaN).
    """
    for name, x in (("true", true), ("pred", pred)):
        check_array(name, x, ndim=2, dtype_kind="iub")
        if x.size and x.dtype.kind == "i" and int(x.min()) < 0:
            raise ValueError(f"`{name}` ids must be >= 0 (0 = background), got minimum {int(x.min())}; "
                             "pass an instance map with non-negative integer ids")
    if true.shape != pred.shape:
        raise ValueError(f"`true` and `pred` must have the same shape, got {true.shape} and {pred.shape}")
    t = true > 0
    p = pred > 0
    denom = int(t.sum()) + int(p.sum())
    if denom == 0:
        return 1.0
    return float(2.0 * np.count_nonzero(t & p) / denom)


def dice2(true: np.ndarray | PairTable, pred: np.ndarray | None = None) -> float:
    """DICE2 (ensemble Dice): ``2 sum I(g,p) / sum (|g| + |p|)`` over all overlapping pairs.

    Args:
        true: ``int [H, W]`` GT instance map, or a precomputed :class:`PairTable`.
        pred: ``int [H, W]`` predicted instance map (None when ``true`` is a table).

    Returns:
        Float in [0, 1]; 1.0 when both are empty, 0.0 when nothing overlaps.
    """
    tab = _as_table(true, pred)
    if tab.n_true == 0 and tab.n_pred == 0:
        return 1.0
    total = int((tab.true_area[tab.true_idx] + tab.pred_area[tab.pred_idx]).sum())
    if total == 0:
        return 0.0
    return float(2 * int(tab.inter.sum()) / total)


def _empty_case(tab: PairTable) -> float | None:
    if tab.n_true == 0 and tab.n_pred == 0:
        return 1.0
    if tab.n_true == 0 or tab.n_pred == 0:
        return 0.0
    return None


def aji(true: np.ndarray | PairTable, pred: np.ndarray | None = None) -> float:
    """Aggregated Jaccard Index, MoNuSeg version (HoVer-Net ``get_fast_aji``).

    Each GT instance takes the prediction of highest IoU (``I / (U + 1e-6)``, first index on ties;
    a prediction may be reused); C and U sum over those pairs, and U also gets the area of every
    unpaired GT instance and of every prediction that was never chosen.

    Args:
        true: ``int [H, W]`` GT instance map, or a precomputed :class:`PairTable`.
        pred: ``int [H, W]`` predicted instance map (None when ``true`` is a table).

    Returns:
        Float in [0, 1] (edge cases: module docstring).
    """
    tab = _as_table(true, pred)
    special = _empty_case(tab)
    if special is not None:
        return special
    union = tab.union
    iou = tab.inter / (union + 1.0e-6)
    # per GT row: the max IoU, first (lowest) pred index on ties == np.argmax over the dense row
    order = np.lexsort((tab.pred_idx, -iou, tab.true_idx))
    ti_sorted = tab.true_idx[order]
    first = order[np.r_[True, ti_sorted[1:] != ti_sorted[:-1]]] if order.size else order
    overall_inter = float(tab.inter[first].sum())
    overall_union = float(union[first].sum())
    paired_t = np.zeros(tab.n_true, bool)
    paired_t[tab.true_idx[first]] = True
    paired_p = np.zeros(tab.n_pred, bool)
    paired_p[tab.pred_idx[first]] = True
    overall_union += float(tab.true_area[~paired_t].sum()) + float(tab.pred_area[~paired_p].sum())
    return float(overall_inter / overall_union)


def aji_plus(true: np.ndarray | PairTable, pred: np.ndarray | None = None) -> float:
    """AJI+: AJI with a unique Hungarian pairing (HoVer-Net ``get_fast_aji_plus``).

    The pairing is ``linear_sum_assignment(-IoU)`` on the dense IoU matrix (IoU = I / (U + 1e-6)),
    keeping pairs with IoU > 0; unpaired GT and predictions are added to the union.

    Args:
        true: ``int [H, W]`` GT instance map, or a precomputed :class:`PairTable`.
        pred: ``int [H, W]`` predicted instance map (None when ``true`` is a table).

    Returns:
        Float in [0, 1] (edge cases: module docstring).
    """
    from scipy.optimize import linear_sum_assignment

    tab = _as_table(true, pred)
    special = _empty_case(tab)
    if special is not None:
        return special
    union = tab.union
    iou = tab.dense(tab.inter / (union + 1.0e-6))
    rows, cols = linear_sum_assignment(-iou)
    keep = iou[rows, cols] > 0.0
    rows, cols = rows[keep], cols[keep]
    inter_d = tab.dense(tab.inter)
    union_d = tab.dense(union)
    overall_inter = float(inter_d[rows, cols].sum())
    overall_union = float(union_d[rows, cols].sum())
    paired_t = np.zeros(tab.n_true, bool)
    paired_t[rows] = True
    paired_p = np.zeros(tab.n_pred, bool)
    paired_p[cols] = True
    overall_union += float(tab.true_area[~paired_t].sum()) + float(tab.pred_area[~paired_p].sum())
    return float(overall_inter / overall_union)


def panoptic_quality(
    true: np.ndarray | PairTable, pred: np.ndarray | None = None, match_iou: float = 0.5
) -> tuple[float, float, float]:
    """Panoptic quality ``(DQ, SQ, PQ)`` (HoVer-Net ``get_fast_pq``).

    Pairs are (g, p) with IoU = I / U > ``match_iou`` (strict). For ``match_iou >= 0.5`` these pairs
    are unique; below 0.5 a Hungarian assignment on the IoU matrix is used first.
    DQ = TP / (TP + FP/2 + FN/2), SQ = sum IoU / (TP + 1e-6), PQ = DQ * SQ.

    Args:
        true: ``int [H, W]`` GT instance map, or a precomputed :class:`PairTable`.
        pred: ``int [H, W]`` predicted instance map (None when ``true`` is a table).
        match_iou: IoU threshold in [0, 1].

    Returns:
        ``(dq, sq, pq)`` floats; ``(1, 1, 1)`` when both maps are empty, ``(0, 0, 0)`` when one is.
    """
    match_iou = check_in_range("match_iou", match_iou, 0.0, 1.0)
    tab = _as_table(true, pred)
    special = _empty_case(tab)
    if special is not None:
        return (special, special, special)
    iou = tab.inter / tab.union
    if match_iou >= 0.5:
        paired_iou = iou[iou > match_iou]
    else:
        from scipy.optimize import linear_sum_assignment

        dense = tab.dense(iou)
        rows, cols = linear_sum_assignment(-dense)
        paired_iou = dense[rows, cols]
        paired_iou = paired_iou[paired_iou > match_iou]
    tp = int(paired_iou.size)
    fp = tab.n_pred - tp
    fn = tab.n_true - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(paired_iou.sum()) / (tp + 1.0e-6)
    return (float(dq), float(sq), float(dq * sq))
