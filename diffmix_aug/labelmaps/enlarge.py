"""Enlarging maps: shift interior nuclei of a label map by small random offsets (DiffMix-E).

Reference semantics (``design/method.md`` §5.5(a), DiffMix's ``image_datasets_pathology_paper``):

1. A nucleus with any pixel in the ``border_margin`` band (outside ``[m, H-m) x [m, W-m)``) stays fixed.
2. Every other nucleus draws ``dy`` and ``dx`` independently from ``randint(-max_shift, max_shift)``
   (i.e. ``-15..14`` for the default 15); each is kept with probability ``p_shift`` (0.3), else 0.
3. Fixed nuclei are painted first, then the interior ones in increasing id order; later nuclei
   overwrite earlier ones (``overlap="overwrite"``). Ids are remapped to ``1..n`` afterwards.

The maintainers' description ("shift by 0-3 px in x and y") is reachable with
``max_shift=3, symmetric=True`` (each axis drawn from ``-3..3``, still kept with ``p_shift``).

Beyond the reference, ``overlap="avoid"`` paints first-writer-wins and re-draws (up to
``max_tries`` times) a shift whose nucleus would lose more than ``max_overlap`` of its area to
nuclei already placed; if no draw fits, the nucleus goes back to its original place, and if even
that is covered it is dropped. :func:`draw_enlarge_params` records what was reverted or dropped.

The options (``max_shift``, ``p_shift``, ``border_margin``, ``symmetric``, ``overlap``,
``max_overlap``, ``max_tries``) are owned by :class:`~diffmix_aug.labelmaps.settings.EnlargeSettings`.
Parameters are drawn first (:func:`draw_enlarge_params`) and applied deterministically
(:func:`apply_enlarge`), so any enlarged map can be replayed from its parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._checks import check_array
from ..data.grouping import group_runs, run_pixels
from .settings import EnlargeSettings, check_settings

__all__ = ["EnlargeParams", "apply_enlarge", "draw_enlarge_params", "enlarge_label_map", "group_pixels"]


@dataclass(frozen=True, eq=False)
class EnlargeParams:
    """The drawn parameters of one enlarging map.

    Attributes:
        shape: ``(H, W)`` of the map the parameters were drawn for.
        ids: ``int32 [n]`` instance ids of that map, ascending.
        shifts: ``int32 [n, 2]`` final ``(dy, dx)`` per instance (0 for fixed / unmoved ones).
        fixed: ``bool [n]`` border-band nuclei that never move.
        dropped: ``bool [n]`` nuclei removed by ``overlap="avoid"``.
        reverted: ``bool [n]`` nuclei put back at their original place by ``overlap="avoid"``.
        overlap: ``"overwrite"`` (later nuclei win) or ``"avoid"`` (earlier nuclei win).
    """

    shape: tuple[int, int]
    ids: np.ndarray
    shifts: np.ndarray
    fixed: np.ndarray
    dropped: np.ndarray
    reverted: np.ndarray
    overlap: str = "overwrite"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (lists of ints / bools)."""
        return {
            "shape": list(self.shape), "ids": self.ids.tolist(), "shifts": self.shifts.tolist(),
            "fixed": self.fixed.tolist(), "dropped": self.dropped.tolist(), "reverted": self.reverted.tolist(),
            "overlap": self.overlap,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnlargeParams:
        """Inverse of :meth:`to_dict`."""
        n = len(d["ids"])
        return cls(tuple(d["shape"]), np.asarray(d["ids"], np.int32),
                   np.asarray(d["shifts"], np.int32).reshape(n, 2), np.asarray(d["fixed"], bool).reshape(n),
                   np.asarray(d["dropped"], bool).reshape(n), np.asarray(d["reverted"], bool).reshape(n),
                   d["overlap"])


@dataclass(frozen=True)
class PixelGroups:
    """Pixels of every instance, grouped: ``pos[starts[k]:starts[k] + areas[k]]`` are the flat
    (row-major) positions of instance ``ids[k]``; ``types[k]`` is its type at its first pixel."""

    ids: np.ndarray
    starts: np.ndarray
    areas: np.ndarray
    pos: np.ndarray
    bboxes: np.ndarray
    types: np.ndarray


def group_pixels(inst_map: np.ndarray, type_map: np.ndarray | None = None) -> PixelGroups:
    """Group the foreground pixels of ``inst_map`` by instance, in linear time: the map's
    horizontal runs (:func:`~diffmix_aug.data.grouping.group_runs`) grouped by id, then expanded
    to pixels; equal to the plain sort in ``tests/unit/grouping_reference.py``.

    Args:
        inst_map: ``int [H, W]``.
        type_map: ``int [H, W]`` or None (types 0).

    Returns:
        :class:`PixelGroups` with ids ascending, ``bboxes`` as ``(y0, x0, y1, x1)`` end-exclusive.
    """
    runs = group_runs(inst_map)
    if runs.ids.size == 0:
        return _groups(inst_map, type_map, (runs.ids,) * 4)
    bboxes, first = runs.boxes()
    starts = np.zeros(runs.ids.size, np.int64)
    np.cumsum(runs.areas[:-1], out=starts[1:])
    types = np.zeros(starts.size, np.int32) if type_map is None else type_map.ravel()[first].astype(np.int32)
    return PixelGroups(runs.ids.astype(np.int32), starts, runs.areas, run_pixels(runs), bboxes, types)


def _groups(inst_map, type_map, grouped) -> PixelGroups:
    ids, starts, areas, pos = grouped
    if ids.size == 0:
        z = np.zeros(0, np.int64)
        return PixelGroups(z.astype(np.int32), z, z, z, np.zeros((0, 4), np.int64), z.astype(np.int32))
    w = inst_map.shape[1]
    ys = pos // w
    xs = pos - ys * w
    bboxes = np.stack([np.minimum.reduceat(ys, starts), np.minimum.reduceat(xs, starts),
                       np.maximum.reduceat(ys, starts) + 1, np.maximum.reduceat(xs, starts) + 1], axis=1)
    types = np.zeros(starts.size, np.int32) if type_map is None else type_map.ravel()[pos[starts]].astype(np.int32)
    return PixelGroups(ids.astype(np.int32), starts, areas, pos, bboxes, types)


def _check_maps(inst_map: np.ndarray, type_map: np.ndarray | None) -> None:
    check_array("inst_map", inst_map, ndim=2, dtype_kind="iu")
    if type_map is not None:
        check_array("type_map", type_map, ndim=2, dtype_kind="iu")
        if type_map.shape != inst_map.shape:
            raise ValueError(f"`type_map` and `inst_map` must have the same shape, got {type_map.shape} "
                             f"and {inst_map.shape}")


def _draw_shifts(rng: np.random.Generator, n: int, max_shift: int, p_shift: float, symmetric: bool) -> np.ndarray:
    high = max_shift + 1 if symmetric else max_shift
    if high <= -max_shift:  # max_shift == 0 without symmetric: randint(0, 0) is empty; no shift
        rng.random((n, 2))
        return np.zeros((n, 2), np.int32)
    d = rng.integers(-max_shift, high, size=(n, 2))
    keep = rng.random((n, 2)) < p_shift
    return np.where(keep, d, 0).astype(np.int32)


def draw_enlarge_params(
    rng: np.random.Generator,
    inst_map: np.ndarray,
    settings: EnlargeSettings = EnlargeSettings(),
    *,
    info: Any = None,
) -> EnlargeParams:
    """Draw the per-nucleus shifts of an enlarging map.

    Args:
        rng: The only source of randomness.
        inst_map: ``int [H, W]`` instance ids (0 = background, need not be contiguous).
        settings: How nuclei are shifted (:class:`~diffmix_aug.labelmaps.settings.EnlargeSettings`;
            the default is the reference code's).
        info: ``inst_map``'s :class:`PixelGroups` (any mode) or
            :class:`~diffmix_aug.data.sample.InstanceInfo` (``NucleiSample.info``; ``"overwrite"``
            only) if already at hand: spares the pixel grouping.

    Returns:
        :class:`EnlargeParams`.
    """
    _check_maps(inst_map, None)
    s = check_settings("settings", settings, EnlargeSettings)
    max_shift, p_shift, symmetric, overlap = s.max_shift, s.p_shift, s.symmetric, s.overlap
    max_overlap, max_tries = s.max_overlap, s.max_tries
    h, w = inst_map.shape
    g = info if isinstance(info, PixelGroups) else (
        group_pixels(inst_map) if info is None or overlap == "avoid" else info)
    n = g.ids.size
    m = s.border_margin
    bb = g.bboxes
    fixed = ~((bb[:, 0] >= m) & (bb[:, 1] >= m) & (bb[:, 2] <= h - m) & (bb[:, 3] <= w - m))
    shifts = _draw_shifts(rng, n, max_shift, p_shift, symmetric)
    shifts[fixed] = 0
    dropped = np.zeros(n, bool)
    reverted = np.zeros(n, bool)
    if overlap == "avoid" and n:
        occ = np.zeros(h * w, bool)
        for k in np.flatnonzero(fixed):
            occ[g.pos[g.starts[k]:g.starts[k] + g.areas[k]]] = True
        for k in np.flatnonzero(~fixed):
            pix = g.pos[g.starts[k]:g.starts[k] + g.areas[k]]
            ys, xs = np.divmod(pix, w)
            placed = None
            for t in range(max_tries + 1):
                if t == max_tries:  # out of draws: back to the original place
                    dy, dx = 0, 0
                elif t == 0:
                    dy, dx = int(shifts[k, 0]), int(shifts[k, 1])
                else:
                    dy, dx = (int(v) for v in _draw_shifts(rng, 1, max_shift, p_shift, symmetric)[0])
                ny, nx = ys + dy, xs + dx
                inb = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
                target = ny[inb] * w + nx[inb]
                lost = int(pix.size - target.size) + int(occ[target].sum())
                if lost <= max_overlap * pix.size:
                    placed = (dy, dx, target)
                    break
            if placed is None:
                dropped[k] = True
                shifts[k] = 0
                continue
            shifts[k] = placed[:2]
            reverted[k] = t == max_tries
            occ[placed[2]] = True
    return EnlargeParams((h, w), g.ids.astype(np.int32), shifts, fixed, dropped, reverted, overlap)


def apply_enlarge(
    inst_map: np.ndarray, type_map: np.ndarray, params: EnlargeParams, groups: PixelGroups | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Paint the shifted nuclei (deterministic).

    Args:
        inst_map: ``int [H, W]`` the map the parameters were drawn for.
        type_map: ``int [H, W]``; each instance takes the type at its first (row-major) pixel.
        params: From :func:`draw_enlarge_params`.
        groups: ``group_pixels(inst_map, type_map)`` if already at hand (the draw computed it):
            spares the second pixel grouping.

    Returns:
        ``(inst_map int32 [H, W] with ids 1..n in original-id order, type_map int32 [H, W], report)``;
        ``report`` has ``moved``, ``fixed``, ``dropped_ids``, ``reverted_ids``, ``vanished_ids``
        (fully overwritten) and ``overwritten_pixels`` (original ids).

    Raises:
        ValueError: the parameters were drawn for another map.
    """
    _check_maps(inst_map, type_map)
    g = group_pixels(inst_map, type_map) if groups is None else groups
    h, w = inst_map.shape
    if tuple(params.shape) != (h, w) or not np.array_equal(params.ids, g.ids):
        raise ValueError(f"`params` were drawn for a map of shape {tuple(params.shape)} with {params.ids.size} "
                         f"instances, got shape {(h, w)} with {g.ids.size}; draw them for this map "
                         "with draw_enlarge_params")
    n = g.ids.size
    if n == 0:
        return (np.zeros((h, w), np.int32), np.zeros((h, w), np.int32),
                {"moved": 0, "fixed": 0, "dropped_ids": [], "reverted_ids": [], "vanished_ids": [],
                 "overwritten_pixels": 0})
    # paint order: fixed nuclei first, then the others, each group by increasing id
    order = np.lexsort((g.ids, ~params.fixed))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    kept = ~params.dropped
    areas = np.where(kept, g.areas, 0)
    pix = g.pos if kept.all() else g.pos[np.repeat(kept, g.areas)]
    dy, dx = params.shifts[:, 0].astype(np.int64), params.shifts[:, 1].astype(np.int64)
    bb = g.bboxes
    clips = kept & ((bb[:, 0] + dy < 0) | (bb[:, 2] + dy > h) | (bb[:, 1] + dx < 0) | (bb[:, 3] + dx > w))
    # value painted = paint priority + 1; "overwrite": last painted wins, "avoid": first wins
    prio = rank if params.overlap == "overwrite" else (n - 1 - rank)
    val = np.repeat(prio + 1, areas)
    if clips.any():  # some nucleus leaves the image: drop its outside pixels
        ys = pix // w
        xs = pix - ys * w + np.repeat(dx, areas)
        ys = ys + np.repeat(dy, areas)
        inb = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        target, val = ys[inb] * w + xs[inb], val[inb]
    else:
        target = pix + np.repeat(dy * w + dx, areas)
    canvas = np.zeros(h * w, np.int32)
    np.maximum.at(canvas, target, val.astype(np.int32))
    # painted value -> instance index -> new contiguous id (original-id order) and type
    present_val = np.zeros(n + 1, bool)
    present_val[canvas[target]] = True  # every winning value sits on some painted pixel
    present = present_val[prio + 1]  # per instance index
    new_id = np.zeros(n, np.int32)
    new_id[present] = np.arange(1, int(present.sum()) + 1, dtype=np.int32)
    lut_id = np.zeros(n + 1, np.int32)
    lut_type = np.zeros(n + 1, np.int32)
    lut_id[prio + 1] = new_id
    lut_type[prio + 1] = g.types
    # only painted pixels can be non-zero: gather there instead of over the whole canvas
    painted = canvas[target]
    out_inst = np.zeros(h * w, np.int32)
    out_type = np.zeros(h * w, np.int32)
    out_inst[target] = lut_id[painted]
    out_type[target] = lut_type[painted]
    out_inst, out_type = out_inst.reshape(h, w), out_type.reshape(h, w)
    n_fg = int(np.count_nonzero(canvas))
    moved = (params.shifts != 0).any(axis=1)
    report = {
        "moved": int(moved.sum()),
        "fixed": int(params.fixed.sum()),
        "dropped_ids": g.ids[params.dropped].tolist(),
        "reverted_ids": g.ids[params.reverted].tolist(),
        "vanished_ids": g.ids[kept & ~present].tolist(),
        "overwritten_pixels": int(target.size - n_fg),
    }
    return out_inst, out_type, report


def enlarge_label_map(
    inst_map: np.ndarray,
    type_map: np.ndarray,
    rng: np.random.Generator,
    settings: EnlargeSettings = EnlargeSettings(),
) -> tuple[np.ndarray, np.ndarray]:
    """Enlarging map in one call: :func:`draw_enlarge_params` then :func:`apply_enlarge`.

    Args:
        inst_map: ``int [H, W]`` instance ids.
        type_map: ``int [H, W]`` classes (0 = background).
        rng: Source of randomness.
        settings: See :func:`draw_enlarge_params` (default: the reference code's).

    Returns:
        ``(inst_map int32 [H, W], type_map int32 [H, W])`` with ids ``1..n``, one type per instance.
        Use the two-step form to get the report (what ``"avoid"`` dropped or reverted).

    Examples:
        >>> import numpy as np
        >>> inst = np.zeros((96, 96), np.int32); inst[40:50, 40:50] = 7
        >>> i2, t2 = enlarge_label_map(inst, (inst > 0).astype(np.int32) * 2, np.random.default_rng(0))
        >>> int(i2.max()), int((i2 > 0).sum()), sorted(np.unique(t2).tolist())
        (1, 100, [0, 2])
    """
    _check_maps(inst_map, type_map)
    groups = group_pixels(inst_map, type_map)  # once, for the draw and the paint
    params = draw_enlarge_params(rng, inst_map, settings, info=groups)
    out_inst, out_type, _ = apply_enlarge(inst_map, type_map, params, groups)
    return out_inst, out_type
