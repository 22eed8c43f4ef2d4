"""The test oracle of :func:`~diffmix_aug.labelmaps.balance.draw_balance_params`: the greedy donor
assignment as it was first written (one ``cv2.dilate`` per major inside the loop, full pool scans).
Kept in the tests, never in the library (issue 30, item 5); ``tests/unit/test_fast_labelmaps.py``
checks the fast version against it, exactly."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from diffmix_aug.data.sample import InstanceInfo, instance_info
from diffmix_aug.labelmaps.balance import (
    BalanceParams,
    _check_pair,
    _empty_params,
    _quotas,
    dilated_area,
)
from diffmix_aug.labelmaps.donors import DonorBank, border_excluded
from diffmix_aug.labelmaps.settings import BalanceSettings, check_settings


def draw_balance_params_reference(
    rng: np.random.Generator,
    inst_map: np.ndarray,
    type_map: np.ndarray,
    donors: DonorBank | None,
    settings: BalanceSettings = BalanceSettings(),
    *,
    rare_classes: Iterable[int],
    exclude_source: int | None = None,
    info: InstanceInfo | None = None,
) -> BalanceParams:
    """:func:`draw_balance_params` as it was first written: one ``cv2.dilate`` per major inside
    the greedy loop, and full pool scans. Kept as the oracle of the fast version (same arguments,
    same result for the same ``rng`` state).

    Args:
        rng: The only source of randomness (major selection, then the bank's source order).
        inst_map: ``int [H, W]`` target instance ids.
        type_map: ``int [H, W]`` target classes (0 = background / untyped).
        donors: The bank of other maps' rare nuclei, or None (own donors only).
        settings: :class:`~diffmix_aug.labelmaps.settings.BalanceSettings`.
        rare_classes: Classes donors may bring; every other typed class is a major class.
        exclude_source: Bank source index of this map, whose donors are then not used twice.
        info: ``instance_info(inst_map, type_map)`` if already at hand (``NucleiSample.info``).

    Returns:
        :class:`BalanceParams`.
    """
    _check_pair(inst_map, type_map)
    rare = tuple(int(c) for c in rare_classes)
    if not rare:
        raise ValueError("`rare_classes` must name at least one class, got ()")
    s = check_settings("settings", settings, BalanceSettings)
    major_fraction, size_ratio, border, shares = s.major_fraction, s.size_ratio, s.border, s.target_distribution
    if donors is not None and not isinstance(donors, DonorBank):
        raise TypeError(f"`donors` must be a DonorBank or None, got {type(donors).__name__}")
    bank = donors if donors is not None else DonorBank.empty(rare, border)
    if info is None:
        info = instance_info(inst_map, type_map)
    if len(info) == 0:
        return _empty_params(inst_map.shape, "empty map: no nuclei")
    interior = ~border_excluded(info.centroids, inst_map.shape, border)
    is_rare = np.isin(info.types, rare)
    cand_mask = interior & (info.types > 0) & ~is_rare
    cand = np.flatnonzero(cand_mask)
    cand = cand[np.argsort(info.types[cand], kind="stable")]  # class by class, then by id (reference)
    n_pick = int(major_fraction * cand.size)
    picked = rng.choice(cand, n_pick, replace=False) if n_pick else np.zeros(0, np.int64)
    own = np.flatnonzero(interior & is_rare) if s.use_own_donors else np.zeros(0, np.int64)
    bank_order = bank.pool_order(rng, exclude_source) if len(bank) else np.zeros(0, np.int64)
    keep_bank = np.isin(bank.types[bank_order], rare) if len(bank) else np.zeros(0, bool)
    bank_order = bank_order[keep_bank]
    pool = np.r_[-info.ids[own].astype(np.int64), bank_order]
    selected = info.ids[picked]
    if cand.size == 0:
        return _empty_params(inst_map.shape, "no interior nuclei of a major (non-rare) class", pool=pool)
    if n_pick == 0:
        return _empty_params(inst_map.shape, f"no majors drawn: int({major_fraction} * {cand.size}) = 0", pool=pool)
    if pool.size == 0:
        return _empty_params(inst_map.shape, "no donors: no rare nuclei in the map or the bank", selected, pool)
    order = np.argsort(info.areas[picked], kind="stable")
    picked = picked[order]
    pool_area = np.r_[info.areas[own], bank.areas[bank_order]].astype(np.float64)
    pool_type = np.r_[info.types[own], bank.types[bank_order]].astype(np.int32)
    avail = np.ones(pool.size, bool)
    quota = _quotas(shares, info.types, rare)
    sizes = np.zeros(picked.size, np.int64)
    thresh = size_ratio * pool_area
    bboxes = info.bboxes[picked].tolist()
    am, ad, at = [], [], []
    skipped: dict[str, list[int]] = {"no_small_enough_donor": [], "pool_exhausted": [], "target_reached": []}
    for j, mid in enumerate(info.ids[picked].tolist()):
        if quota is not None and not any(quota.values()):
            skipped["target_reached"].append(mid)
            continue
        if not avail.any():
            skipped["pool_exhausted"].append(mid)
            continue
        y0, x0, y1, x1 = bboxes[j]
        if (y1 - y0 + 4) * (x1 - x0 + 4) < thresh[avail].min():
            # the dilated mask cannot exceed its grown box: no donor can fit, skip the dilation
            skipped["no_small_enough_donor"].append(mid)
            continue
        size1 = dilated_area(inst_map, mid, bboxes[j])
        sizes[j] = size1
        ok = avail & (size1 >= thresh)
        if quota is not None:
            ok &= np.isin(pool_type, [c for c, q in quota.items() if q > 0])
        d = int(np.argmax(ok))
        if not ok[d]:
            skipped["no_small_enough_donor"].append(mid)
            continue
        avail[d] = False
        am.append(mid)
        ad.append(int(pool[d]))
        at.append(int(pool_type[d]))
        if quota is not None:
            quota[int(pool_type[d])] -= 1
    return BalanceParams(tuple(inst_map.shape), selected.astype(np.int32), info.ids[picked].astype(np.int32), sizes,
                         pool, np.asarray(am, np.int32), np.asarray(ad, np.int64), np.asarray(at, np.int32),
                         {k: v for k, v in skipped.items() if v}, None)
