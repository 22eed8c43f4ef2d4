"""Plain per-nucleus reference implementation of HoVer-Net's metrics (the test oracle).

A readable re-implementation of the logic of ``vqdang/hover_net`` ``metrics/stats_utils.py``
(``get_dice_1``, ``get_fast_dice_2``, ``get_fast_aji``, ``get_fast_aji_plus``, ``get_fast_pq``) and
``compute_stats.py::run_nuclei_type_stat``: one full-image boolean mask per nucleus, a Python loop
over GT instances. It keeps the reference's behaviour in degenerate cases (raises or returns NaN),
and, like the reference, expects contiguous ids 1..n with a background pixel (call
``diffmix_aug.remap_label`` first). ``diffmix_aug.metrics`` is the fast version; the tests and
``benchmarks/metrics.py`` compare the two.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ref_aji", "ref_aji_plus", "ref_classification", "ref_dice", "ref_dice2", "ref_pq"]


def _masks(label: np.ndarray) -> tuple[list[int], list[np.ndarray | None]]:
    ids = [int(i) for i in np.unique(label)][1:]  # drop the first value, assumed background
    return ids, [None] + [(label == i).astype(np.uint8) for i in ids]


def _pairwise(true: np.ndarray, pred: np.ndarray):
    true_ids, true_masks = _masks(true)
    pred_ids, pred_masks = _masks(pred)
    inter = np.zeros((len(true_ids), len(pred_ids)), np.float64)
    union = np.zeros((len(true_ids), len(pred_ids)), np.float64)
    for t in true_ids:
        t_mask = true_masks[t]
        for p in np.unique(pred[t_mask > 0]):
            if p == 0:
                continue
            p_mask = pred_masks[p]
            total = (t_mask + p_mask).sum()
            i = (t_mask * p_mask).sum()
            inter[t - 1, p - 1] = i
            union[t - 1, p - 1] = total - i
    return true_ids, pred_ids, true_masks, pred_masks, inter, union


def ref_dice(true: np.ndarray, pred: np.ndarray) -> float:
    """``get_dice_1``: Dice of the binarised maps (NaN when both are empty)."""
    t = (true > 0).astype(np.int64)
    p = (pred > 0).astype(np.int64)
    with np.errstate(invalid="ignore"):
        return float(2.0 * np.sum(t * p) / np.float64(np.sum(t + p)))


def ref_dice2(true: np.ndarray, pred: np.ndarray) -> float:
    """``get_fast_dice_2``: 2 sum I / sum (|g|+|p|) over overlapping pairs (ZeroDivisionError if none)."""
    true_ids, _, true_masks, pred_masks, inter, _ = _pairwise(true, pred)
    total = 0
    overall_inter = 0
    for t in true_ids:
        for p in np.nonzero(inter[t - 1])[0] + 1:
            total += int(true_masks[t].sum()) + int(pred_masks[p].sum())
            overall_inter += int(inter[t - 1, p - 1])
    return 2 * overall_inter / total


def _aji_from_pairs(true_ids, pred_ids, true_masks, pred_masks, inter, union, paired_t, paired_p):
    overall_inter = inter[paired_t, paired_p].sum()
    overall_union = union[paired_t, paired_p].sum()
    paired_t_ids = list(paired_t + 1)
    paired_p_ids = list(paired_p + 1)
    for t in true_ids:
        if t not in paired_t_ids:
            overall_union += true_masks[t].sum()
    for p in pred_ids:
        if p not in paired_p_ids:
            overall_union += pred_masks[p].sum()
    return float(overall_inter / overall_union)


def ref_aji(true: np.ndarray, pred: np.ndarray) -> float:
    """``get_fast_aji``: each GT takes its best-IoU prediction (reuse allowed). Raises if pred is empty."""
    true_ids, pred_ids, true_masks, pred_masks, inter, union = _pairwise(true, pred)
    iou = inter / (union + 1.0e-6)
    paired_p = np.argmax(iou, axis=1)
    best = np.max(iou, axis=1)
    paired_t = np.nonzero(best > 0.0)[0]
    paired_p = paired_p[paired_t]
    return _aji_from_pairs(true_ids, pred_ids, true_masks, pred_masks, inter, union, paired_t, paired_p)


def ref_aji_plus(true: np.ndarray, pred: np.ndarray) -> float:
    """``get_fast_aji_plus``: unique Hungarian pairing on -IoU, pairs with IoU > 0 kept."""
    from scipy.optimize import linear_sum_assignment

    true_ids, pred_ids, true_masks, pred_masks, inter, union = _pairwise(true, pred)
    iou = inter / (union + 1.0e-6)
    paired_t, paired_p = linear_sum_assignment(-iou)
    keep = iou[paired_t, paired_p] > 0.0
    with np.errstate(invalid="ignore"):
        return _aji_from_pairs(true_ids, pred_ids, true_masks, pred_masks, inter, union,
                               paired_t[keep], paired_p[keep])


def ref_pq(true: np.ndarray, pred: np.ndarray, match_iou: float = 0.5) -> tuple[float, float, float]:
    """``get_fast_pq``: (DQ, SQ, PQ). Raises ZeroDivisionError when both maps are empty."""
    from scipy.optimize import linear_sum_assignment

    true_ids, pred_ids, _, _, inter, union = _pairwise(true, pred)
    iou = np.zeros_like(inter)
    nz = union > 0
    iou[nz] = inter[nz] / union[nz]
    if match_iou >= 0.5:
        iou[iou <= match_iou] = 0.0
        paired_t, paired_p = np.nonzero(iou)
        paired_iou = iou[paired_t, paired_p]
    else:
        paired_t, paired_p = linear_sum_assignment(-iou)
        paired_iou = iou[paired_t, paired_p]
        keep = paired_iou > match_iou
        paired_t, paired_p, paired_iou = paired_t[keep], paired_p[keep], paired_iou[keep]
    tp = len(paired_t)
    fp = len([p for p in pred_ids if p - 1 not in list(paired_p)])
    fn = len([t for t in true_ids if t - 1 not in list(paired_t)])
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = paired_iou.sum() / (tp + 1.0e-6)
    return float(dq), float(sq), float(dq * sq)


def ref_classification(true_list, pred_list, radius: float = 12.0, type_ids=None) -> list[float]:
    """``run_nuclei_type_stat`` (exhaustive GT, float centroids, no dummy point for empty images).

    Returns ``[f1_detection, accuracy, f1 of each type]`` like the reference's printout.
    """
    from scipy.optimize import linear_sum_assignment

    paired_true, paired_pred, unpaired_true, unpaired_pred, all_true = [], [], [], [], []
    for t_item, p_item in zip(true_list, pred_list):
        tc = np.asarray(t_item["inst_centroid"], np.float64).reshape(-1, 2)
        tt = np.asarray(t_item["inst_type"]).reshape(-1)
        pc = np.asarray(p_item["inst_centroid"], np.float64).reshape(-1, 2)
        pt = np.asarray(p_item["inst_type"]).reshape(-1)
        all_true += list(tt)
        pairs = []
        if len(tc) and len(pc):
            dist = np.zeros((len(tc), len(pc)))
            for i in range(len(tc)):
                for j in range(len(pc)):
                    dist[i, j] = np.sqrt(((tc[i] - pc[j]) ** 2).sum())
            rows, cols = linear_sum_assignment(dist)
            pairs = [(r, c) for r, c in zip(rows, cols) if dist[r, c] <= radius]
        for r, c in pairs:
            paired_true.append(tt[r])
            paired_pred.append(pt[c])
        unpaired_true += [tt[i] for i in range(len(tt)) if i not in {r for r, _ in pairs}]
        unpaired_pred += [pt[j] for j in range(len(pt)) if j not in {c for _, c in pairs}]
    tp, fp, fn = len(paired_true), len(unpaired_pred), len(unpaired_true)
    same = sum(int(a == b) for a, b in zip(paired_true, paired_pred))
    results = [2 * tp / (2 * tp + fp + fn), same / tp if tp else float("nan")]
    if type_ids is None:
        type_ids = sorted(set(int(t) for t in all_true))
    for c in type_ids:
        sel = [(a, b) for a, b in zip(paired_true, paired_pred) if a == c or b == c]
        tp_c = sum(1 for a, b in sel if a == c and b == c)
        tn_c = sum(1 for a, b in sel if a != c and b != c)
        fp_c = sum(1 for a, b in sel if a != c and b == c)
        fn_c = sum(1 for a, b in sel if a == c and b != c)
        fp_d = sum(1 for b in unpaired_pred if b == c)
        fn_d = sum(1 for a in unpaired_true if a == c)
        den = 2 * (tp_c + tn_c) + 2 * fp_c + 2 * fn_c + fp_d + fn_d
        results.append(2 * (tp_c + tn_c) / den if den else float("nan"))
    return results
