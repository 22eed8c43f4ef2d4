"""Balancing maps: GradMix's label mixing (``design/method.md`` §6), DiffMix-B's label maps.

For one target map, exactly as the reference (``GradMix/grad_mix.py``):

1. Nuclei whose centroid lies within ``border`` (30) px of a border are neither replaced nor donors.
2. Majors = interior nuclei of every typed, non-rare class (listed class by class, then by id);
   ``int(major_fraction * n)`` of them are drawn without replacement and sorted by area,
   ascending (stable).
3. Donor pool: the map's own interior rare nuclei first (ascending id), then the bank's donors,
   source maps in a random order (:meth:`DonorBank.pool_order`).
4. For each major m: its mask is dilated twice with the 3x3 cross (``binary_dilation(iterations=2)``);
   the first unused donor d of the pool with ``|dilated m| >= size_ratio * |d|`` is taken (greedy;
   none: m is skipped). m's pixels are cleared, and d's box-cropped mask is written with m's id,
   centred at ``round(centroid(m))``: rows ``int(round(cy) - h/2) ... int(round(cy) + h/2)``,
   overwriting neighbours. m's class becomes d's class.
5. The type map is rebuilt from the per-instance classes; ids are renumbered ``1..n`` in id order.

Beyond the reference: several rare classes (each donor brings its own class), a
``target_distribution`` that converts only as many majors as needed to reach a class share, and a
report of what was converted and what was skipped and why. The options (``major_fraction``,
``size_ratio``, ``border``, ``target_distribution``, ``use_own_donors``) are owned by
:class:`~diffmix_aug.labelmaps.settings.BalanceSettings`. Parameters are drawn first
(:func:`draw_balance_params`: the random selection, the pool order and the greedy assignment) and
applied deterministically (:func:`apply_balance`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._checks import check_array
from ..data.grouping import RunGroups, group_runs
from ..data.sample import InstanceInfo, instance_info
from .donors import DonorBank, border_excluded
from .settings import BalanceSettings, check_settings

__all__ = ["BalanceParams", "apply_balance", "balance_label_map", "dilated_area", "dilated_areas",
           "draw_balance_params"]


@dataclass(frozen=True, eq=False)
class BalanceParams:
    """The drawn parameters of one balancing map.

    Donor references: ``>= 0`` indexes the :class:`DonorBank`; ``< 0`` is ``-id`` of one of the
    target map's own rare nuclei.

    Attributes:
        shape: ``(H, W)`` of the target map.
        selected: ``int32 [k]`` the drawn majors, in draw order.
        majors: ``int32 [k]`` the same, in processing order (ascending area).
        major_areas: ``int64 [k]`` their dilated areas (``size1`` of the reference); 0 where the
            area was not needed (target reached, pool exhausted, or no donor could fit its box).
        pool: ``int64 [p]`` donor references in pool order.
        assign_major: ``int32 [a]`` converted majors, in processing order.
        assign_donor: ``int64 [a]`` the donor reference used for each.
        assign_type: ``int32 [a]`` the class each becomes.
        skipped: reason -> major ids (``"no_small_enough_donor"``, ``"pool_exhausted"``,
            ``"target_reached"``).
        reason: Why nothing was done (empty map, no donors, ...), else None.
    """

    shape: tuple[int, int]
    selected: np.ndarray
    majors: np.ndarray
    major_areas: np.ndarray
    pool: np.ndarray
    assign_major: np.ndarray
    assign_donor: np.ndarray
    assign_type: np.ndarray
    skipped: dict[str, list[int]] = field(default_factory=dict)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {"shape": list(self.shape), "selected": self.selected.tolist(), "majors": self.majors.tolist(),
                "major_areas": self.major_areas.tolist(), "pool": self.pool.tolist(),
                "assign_major": self.assign_major.tolist(), "assign_donor": self.assign_donor.tolist(),
                "assign_type": self.assign_type.tolist(), "skipped": {k: list(v) for k, v in self.skipped.items()},
                "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BalanceParams:
        """Inverse of :meth:`to_dict`."""
        a = {k: np.asarray(d[k], t) for k, t in (("selected", np.int32), ("majors", np.int32),
                                                   ("major_areas", np.int64), ("pool", np.int64),
                                                   ("assign_major", np.int32), ("assign_donor", np.int64),
                                                   ("assign_type", np.int32))}
        return cls(tuple(d["shape"]), **a, skipped={k: list(v) for k, v in d["skipped"].items()}, reason=d["reason"])


def _empty_params(shape, reason: str, selected=(), pool=()) -> BalanceParams:
    z = np.zeros(0, np.int32)
    return BalanceParams(tuple(shape), np.asarray(selected, np.int32), np.asarray(selected, np.int32),
                         np.zeros(len(selected), np.int64), np.asarray(pool, np.int64), z, np.zeros(0, np.int64), z,
                         {}, reason)


def dilated_area(inst_map: np.ndarray, inst_id: int, bbox: Sequence[int]) -> int:
    """Area of ``inst_map == inst_id`` dilated twice with the 3x3 cross (an L1 ball of radius 2),
    computed in the box grown by 2 px; equal to ``binary_dilation(mask, iterations=2).sum()``."""
    import cv2

    h, w = inst_map.shape
    y0, x0, y1, x1 = max(bbox[0] - 2, 0), max(bbox[1] - 2, 0), min(bbox[2] + 2, h), min(bbox[3] + 2, w)
    m = (inst_map[y0:y1, x0:x1] == inst_id).view(np.uint8)
    # two 3x3-cross dilations == one dilation by the L1 ball of radius 2; outside the window is 0
    return int(cv2.countNonZero(cv2.dilate(m, _DIAMOND2, borderType=cv2.BORDER_CONSTANT, borderValue=0)))


_DIAMOND2 = (np.abs(np.arange(-2, 3))[:, None] + np.abs(np.arange(-2, 3))[None, :] <= 2).astype(np.uint8)


def dilated_areas(inst_map: np.ndarray, ids: np.ndarray, runs: RunGroups | None = None) -> np.ndarray:
    """:func:`dilated_area` of many instances at once, from the map's horizontal runs.

    Row ``r + dr`` of the L1-ball dilation (``|dr| <= 2``) of a run ``[x0, x1)`` in row ``r`` is
    ``[x0 - k, x1 + k)`` with ``k = 2 - |dr|``; an instance's dilated area is then the total length
    of the union of these intervals per (instance, row), clipped to the image. The unions come
    from one sort and a running maximum, with each (instance, row) group offset past the previous
    one so that the running maximum restarts there.

    Args:
        inst_map: ``int [H, W]`` instance ids.
        ids: ``int [k]`` ids present in ``inst_map`` (any order, no repeats).
        runs: ``group_runs(inst_map)`` if already at hand.

    Returns:
        ``int64 [k]``: ``binary_dilation(inst_map == ids[j], iterations=2).sum()`` for each ``j``.
    """
    ids = np.asarray(ids, np.int64)
    if ids.size == 0:
        return np.zeros(0, np.int64)
    h, w = inst_map.shape
    if runs is None:
        runs = group_runs(inst_map)
    k = np.searchsorted(runs.ids, ids)  # runs.ids ascending; every id is present
    counts = runs.count[k]
    # runs of each wanted id, tagged with its index j
    offs = np.zeros(ids.size, np.int64)
    np.cumsum(counts[:-1], out=offs[1:])
    take = np.repeat(runs.first[k] - offs, counts) + np.arange(int(counts.sum()), dtype=np.int64)
    j = np.repeat(np.arange(ids.size, dtype=np.int64), counts)
    start, length = runs.start[take], runs.length[take]
    y = start // w
    x0 = start - y * w
    x1 = x0 + length
    reach = np.array([0, 1, 2, 1, 0], np.int64)[:, None]
    rows = y[None, :] + np.arange(-2, 3, dtype=np.int64)[:, None]  # [5, n]
    s = np.maximum(x0[None, :] - reach, 0)
    e = np.minimum(x1[None, :] + reach, w)
    keep = (rows >= 0) & (rows < h)
    stride = w + 8
    group = (j[None, :] * (h + 4) + rows + 2)[keep] * stride  # one offset per (instance, row)
    s, e = group + s[keep], group + e[keep]
    # each of the 5 row shifts is already sorted (runs are grouped by id, row-major): a stable
    # sort (timsort) only merges 5 sorted stretches
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    jj = s // ((h + 4) * stride)  # the instance index back from the group offset (s - group < stride)
    reach_end = np.maximum.accumulate(e)
    prev = np.empty_like(reach_end)
    prev[0] = -1
    prev[1:] = reach_end[:-1]
    new = np.maximum(e - np.maximum(s, prev), 0)
    return np.bincount(jj, weights=new, minlength=ids.size).astype(np.int64)


def _member(values: np.ndarray, classes: Iterable[int]) -> np.ndarray:
    """``np.isin(values, classes)`` for the few classes of a class table, without its set machinery."""
    out = np.zeros(values.shape, bool)
    for c in classes:
        out |= values == c
    return out


def _quotas(shares: Mapping[int, float] | None, types: np.ndarray, rare: tuple[int, ...]) -> dict[int, int] | None:
    """Conversions needed per rare class to reach ``share * n_nuclei`` (None: no limit)."""
    if shares is None:
        return None
    n = int((types > 0).sum())
    return {c: max(0, math.ceil(shares.get(c, 0.0) * n - 1e-9) - int((types == c).sum())) for c in rare}


def draw_balance_params(
    rng: np.random.Generator,
    inst_map: np.ndarray,
    type_map: np.ndarray,
    donors: DonorBank | None,
    settings: BalanceSettings = BalanceSettings(),
    *,
    rare_classes: Iterable[int],
    exclude_source: int | None = None,
    info: InstanceInfo | None = None,
    runs: RunGroups | None = None,
) -> BalanceParams:
    """Draw the majors, the donor pool order, and run the greedy donor assignment.

    Args:
        rng: The only source of randomness (major selection, then the bank's source order).
        inst_map: ``int [H, W]`` target instance ids.
        type_map: ``int [H, W]`` target classes (0 = background / untyped).
        donors: The bank of other maps' rare nuclei, or None (own donors only).
        settings: How majors are drawn and donors fit
            (:class:`~diffmix_aug.labelmaps.settings.BalanceSettings`; the default is the reference
            code's).
        rare_classes: Classes donors may bring; every other typed class is a major class.
        exclude_source: Bank source index of this map, whose donors are then not used twice.
        info: ``instance_info(inst_map, type_map)`` if already at hand (``NucleiSample.info``).
        runs: ``group_runs(inst_map)`` if already at hand (spares one pass over the map).

    Returns:
        :class:`BalanceParams`.
    """
    _check_pair(inst_map, type_map)
    s = check_settings("settings", settings, BalanceSettings)
    rare = tuple(int(c) for c in rare_classes)
    if not rare:
        raise ValueError("`rare_classes` must name at least one class, got ()")
    major_fraction, size_ratio, border = s.major_fraction, s.size_ratio, s.border
    if donors is not None and not isinstance(donors, DonorBank):
        raise TypeError(f"`donors` must be a DonorBank or None, got {type(donors).__name__}")
    bank = donors if donors is not None else DonorBank.empty(rare, border)
    if info is None:
        info = instance_info(inst_map, type_map)
    if len(info) == 0:
        return _empty_params(inst_map.shape, "empty map: no nuclei")
    interior = ~border_excluded(info.centroids, inst_map.shape, border)
    is_rare = _member(info.types, rare)
    cand_mask = interior & (info.types > 0) & ~is_rare
    cand = np.flatnonzero(cand_mask)
    cand = cand[np.argsort(info.types[cand], kind="stable")]  # class by class, then by id (reference)
    n_pick = int(major_fraction * cand.size)
    picked = rng.choice(cand, n_pick, replace=False) if n_pick else np.zeros(0, np.int64)
    own = np.flatnonzero(interior & is_rare) if s.use_own_donors else np.zeros(0, np.int64)
    bank_order = bank.pool_order(rng, exclude_source) if len(bank) else np.zeros(0, np.int64)
    keep_bank = _member(bank.types[bank_order], rare) if len(bank) else np.zeros(0, bool)
    bank_order = bank_order[keep_bank]
    pool = np.concatenate([-info.ids[own].astype(np.int64), bank_order])
    selected = info.ids[picked]
    if cand.size == 0:
        return _empty_params(inst_map.shape, "no interior nuclei of a major (non-rare) class", pool=pool)
    if n_pick == 0:
        return _empty_params(inst_map.shape, f"no majors drawn: int({major_fraction} * {cand.size}) = 0", pool=pool)
    if pool.size == 0:
        return _empty_params(inst_map.shape, "no donors: no rare nuclei in the map or the bank", selected, pool)
    order = np.argsort(info.areas[picked], kind="stable")
    picked = picked[order]
    pool_area = np.concatenate([info.areas[own], bank.areas[bank_order]]).astype(np.float64)
    pool_type = np.concatenate([info.types[own], bank.types[bank_order]]).astype(np.int32)
    quota = _quotas(s.target_distribution, info.types, rare)
    thresh = size_ratio * pool_area
    picked_ids = info.ids[picked]
    bb = info.bboxes[picked]
    box_arr = (bb[:, 2] - bb[:, 0] + 4) * (bb[:, 3] - bb[:, 1] + 4)
    box = box_arr.tolist()
    # the dilated areas of all majors at once, from the map's runs; a major whose grown box is
    # smaller than the smallest donor's threshold is never read by the loop below, so not computed
    size_all = np.zeros(picked.size, np.int64)
    need = np.flatnonzero(box_arr >= thresh.min())
    size_all[need] = dilated_areas(inst_map, picked_ids[need], runs)
    fits = size_all[:, None] >= thresh[None, :]  # [k, p]: donor d is small enough for major j
    sizes = np.zeros(picked.size, np.int64)
    avail = np.ones(pool.size, bool)
    n_avail = int(pool.size)
    min_avail = float(thresh.min())
    pool_list, type_list, size_list = pool.tolist(), pool_type.tolist(), size_all.tolist()
    am, ad, at = [], [], []
    skipped: dict[str, list[int]] = {"no_small_enough_donor": [], "pool_exhausted": [], "target_reached": []}
    for j, mid in enumerate(picked_ids.tolist()):
        if quota is not None and not any(quota.values()):
            skipped["target_reached"].append(mid)
            continue
        if not n_avail:
            skipped["pool_exhausted"].append(mid)
            continue
        if box[j] < min_avail:
            # the dilated mask cannot exceed its grown box: no donor can fit (the reference skips the dilation)
            skipped["no_small_enough_donor"].append(mid)
            continue
        sizes[j] = size_list[j]
        ok = fits[j] & avail
        if quota is not None:
            ok &= _member(pool_type, [c for c, q in quota.items() if q > 0])
        d = int(np.argmax(ok))
        if not ok[d]:
            skipped["no_small_enough_donor"].append(mid)
            continue
        avail[d] = False
        n_avail -= 1
        if n_avail and thresh[d] == min_avail:
            min_avail = float(thresh[avail].min())
        am.append(mid)
        ad.append(pool_list[d])
        at.append(type_list[d])
        if quota is not None:
            quota[type_list[d]] -= 1
    return BalanceParams(tuple(inst_map.shape), selected.astype(np.int32), info.ids[picked].astype(np.int32), sizes,
                         pool, np.asarray(am, np.int32), np.asarray(ad, np.int64), np.asarray(at, np.int32),
                         {k: v for k, v in skipped.items() if v}, None)


def _check_pair(inst_map: np.ndarray, type_map: np.ndarray) -> None:
    check_array("inst_map", inst_map, ndim=2, dtype_kind="iu")
    check_array("type_map", type_map, ndim=2, dtype_kind="iu")
    if inst_map.shape != type_map.shape:
        raise ValueError(f"`inst_map` and `type_map` must have the same shape, got {inst_map.shape} "
                         f"and {type_map.shape}")


def paste_window(cy: float, cx: float, h: int, w: int) -> tuple[int, int]:
    """Top-left corner of an ``h x w`` paste centred at ``round(c)``, with the reference's
    ``int(round(c) - h/2)`` (floor for negative values, where the reference would wrap)."""
    # Python's round() on a float rounds half to even, exactly as np.round
    return math.floor(round(cy) - h / 2), math.floor(round(cx) - w / 2)


def apply_balance(
    inst_map: np.ndarray, type_map: np.ndarray, params: BalanceParams, donors: DonorBank | None,
    info: InstanceInfo | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Paste the assigned donors (deterministic).

    Args:
        inst_map, type_map: The target maps the parameters were drawn for.
        params: From :func:`draw_balance_params`.
        donors: The same bank.
        info: ``instance_info(inst_map, type_map)`` if already at hand (``NucleiSample.info``).

    Returns:
        ``(inst_map int32 [H, W] ids 1..n in id order, type_map int32 [H, W], report)``. The report
        holds ``converted`` (class -> count), ``converted_ids`` (original ids), ``donors``
        (references used), ``skipped`` (reason -> ids), ``reason`` (why nothing happened, or
        None), ``vanished_ids`` (nuclei fully covered by pastes) and ``kept_ids`` (new id ``i``
        is original id ``kept_ids[i - 1]``).
    """
    _check_pair(inst_map, type_map)
    if tuple(params.shape) != inst_map.shape:
        raise ValueError(f"`params` were drawn for shape {tuple(params.shape)}, got maps of shape {inst_map.shape}")
    if info is None:
        info = instance_info(inst_map, type_map)
    h, w = inst_map.shape
    out = inst_map.astype(np.int32, copy=True)
    top = int(info.ids.max()) + 1 if len(info) else 1
    type_lut = np.zeros(top, np.int32)
    type_lut[info.ids] = info.types
    row_of = np.zeros(top, np.int64)
    row_of[info.ids] = np.arange(len(info))
    row = row_of.tolist()  # id -> row of info
    bboxes, centroids = info.bboxes.tolist(), info.centroids.tolist()
    for mid, ref, new_type in zip(params.assign_major.tolist(), params.assign_donor.tolist(),
                                  params.assign_type.tolist()):
        k = row[mid]
        y0, x0, y1, x1 = bboxes[k]
        win = out[y0:y1, x0:x1]
        win[inst_map[y0:y1, x0:x1] == mid] = 0
        if ref >= 0:
            mask = donors.masks[ref]
        else:
            oy0, ox0, oy1, ox1 = bboxes[row[-ref]]
            mask = inst_map[oy0:oy1, ox0:ox1] == -ref
        mh, mw = mask.shape
        r0, c0 = paste_window(centroids[k][1], centroids[k][0], mh, mw)
        ry0, rx0, ry1, rx1 = max(r0, 0), max(c0, 0), min(r0 + mh, h), min(c0 + mw, w)
        if ry1 > ry0 and rx1 > rx0:
            sub = mask[ry0 - r0:ry1 - r0, rx0 - c0:rx1 - c0]
            out[ry0:ry1, rx0:rx1][sub] = mid
        type_lut[mid] = new_type
    # only foreground pixels carry ids or types: work on them instead of the whole map
    flat = out.ravel()
    fg = np.flatnonzero(flat != 0)
    ids_fg = flat[fg]
    present = np.bincount(ids_fg, minlength=top)[:top] > 0
    present[0] = False
    n_out = int(present.sum())
    out_type = np.zeros(out.size, np.int32)
    out_type[fg] = type_lut[ids_fg]
    out_type = out_type.reshape(out.shape)
    if n_out == top - 1:  # ids were 1..n and none vanished: already contiguous
        out_inst = out
    else:
        new_id = np.zeros(top, np.int32)
        new_id[present] = np.arange(1, n_out + 1, dtype=np.int32)
        out_inst = np.zeros(out.size, np.int32)
        out_inst[fg] = new_id[ids_fg]
        out_inst = out_inst.reshape(out.shape)
    converted: dict[int, int] = {}
    for t in params.assign_type.tolist():
        converted[t] = converted.get(t, 0) + 1
    report = {
        "converted": converted,
        "converted_total": int(params.assign_major.size),
        "converted_ids": params.assign_major.tolist(),
        "donors": params.assign_donor.tolist(),
        "skipped": {k: list(v) for k, v in params.skipped.items()},
        "reason": params.reason,
        "vanished_ids": info.ids[~present[info.ids]].tolist() if len(info) else [],
        "kept_ids": np.flatnonzero(present).tolist(),
    }
    return out_inst, out_type, report


def balance_label_map(
    inst_map: np.ndarray,
    type_map: np.ndarray,
    donors: DonorBank | None,
    rng: np.random.Generator,
    rare_classes: Iterable[int],
    settings: BalanceSettings = BalanceSettings(),
    *,
    exclude_source: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """GradMix balancing map in one call: :func:`draw_balance_params` then :func:`apply_balance`.

    An empty map, a map without majors (a 1-nucleus map draws ``int(0.8 * 1) = 0``), or no donors
    return the map unchanged with ``report["reason"]`` saying why.

    Args:
        inst_map, type_map: ``int [H, W]`` the target maps.
        donors, rng, settings, rare_classes, exclude_source: See :func:`draw_balance_params`.

    Returns:
        ``(inst_map int32 [H, W], type_map int32 [H, W], report)``; see :func:`apply_balance`.
    """
    _check_pair(inst_map, type_map)
    runs = group_runs(inst_map)  # once: for the instance info and the dilated areas
    info = instance_info(inst_map, type_map, runs=runs)
    params = draw_balance_params(rng, inst_map, type_map, donors, settings, rare_classes=rare_classes,
                                 exclude_source=exclude_source, info=info, runs=runs)
    return apply_balance(inst_map, type_map, params, donors, info)
