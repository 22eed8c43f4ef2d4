"""HoVer-Net's training targets: ``np_map`` and ``hv_map`` from an instance map.

A re-implementation of ``vqdang/hover_net`` ``models/hovernet/targets.py::gen_targets`` (and the
``fix_mirror_padding`` / ``cropping_center`` helpers it uses), following the rules of
``formats.md`` §1b exactly:

1. ids that occur as several 4-connected pieces (mirror padding duplicates) are split: the first
   piece in raster order keeps its id, the others get ``current_max + k``;
2. the fixed map is centre-cropped to ``crop_shape`` and instances with fewer than ``min_area``
   pixels *inside the crop* get no HV target (they keep ``np = 1``). HoVer-Net's 30 px is set for
   40x (0.25 um/px); at 20x the same nucleus covers a quarter of the pixels, so the harness passes
   :func:`min_hv_area` of its resolution (8 px at 20x);
3. each remaining instance takes its bounding box on the full-size map, grown by 2 px, its centre
   of mass rounded to the nearest pixel (``int(c + 0.5)``), and 1-based x / y ranges minus the
   centre; negative offsets are divided by ``|min|`` and positive ones by ``max``, so each side
   spans [-1, 1] separately; offsets are 0 outside the nucleus;
4. ``hv_map = dstack([x, y])`` (channel 0 horizontal), centre-cropped like ``np_map``.

One deliberate deviation: HoVer-Net slices the grown box with negative starts when an instance lies
within 2 px of the top/left edge of the *full-size* map, which yields an empty box and silently
drops the instance's HV target. Here the box is clipped to the map instead; for every instance that
HoVer-Net handles the result is identical (the rounded centre of mass is shift-invariant by whole
pixels). The two only differ when the crop reaches the map border (``crop_shape`` == map shape),
a case HoVer-Net's own configurations never hit.
"""

from __future__ import annotations

import numpy as np

from diffmix_aug._checks import check_array

__all__ = ["MIN_HV_AREA", "crop_to_shape", "fix_mirror_padding", "gen_instance_hv_map", "gen_targets",
           "min_hv_area"]

MIN_HV_AREA = 30  # HoVer-Net: morph.remove_small_objects(crop_ann, min_size=30), at 40x (0.25 um/px)


def min_hv_area(downsample: int = 1) -> int:
    """HoVer-Net's 30 px HV-target rule at ``40x / downsample`` (areas scale with the square): 8 at 20x."""
    if isinstance(downsample, bool) or not isinstance(downsample, (int, np.integer)) or downsample < 1:
        raise ValueError(f"`downsample` must be an int >= 1 (1 = 40x, 2 = 20x), got {downsample!r}")
    return max(1, round(MIN_HV_AREA / downsample ** 2))


def _check_shape(name: str, crop_shape, full_shape) -> tuple[int, int]:
    if not isinstance(crop_shape, (tuple, list)) or len(crop_shape) != 2:
        raise TypeError(f"`{name}` must be a (height, width) pair, got {crop_shape!r}")
    h, w = int(crop_shape[0]), int(crop_shape[1])
    if h <= 0 or w <= 0 or h > full_shape[0] or w > full_shape[1]:
        raise ValueError(f"`{name}` must be positive and at most the map shape {tuple(full_shape[:2])}, "
                         f"got {(h, w)}; pad the map (mirror) first or ask for a smaller crop")
    return h, w


def crop_to_shape(x: np.ndarray, crop_shape: tuple[int, int]) -> np.ndarray:
    """Centre crop of the first two axes (HoVer-Net's ``cropping_center``).

    The offset is ``int((H - h) * 0.5)``, so an odd margin leaves the extra pixel at the bottom/right.

    Args:
        x: ``[H, W, ...]`` array of any dtype.
        crop_shape: ``(h, w)`` with ``h <= H`` and ``w <= W``.

    Returns:
        A view ``x[h0:h0+h, w0:w0+w]``.
    """
    if not isinstance(x, np.ndarray) or x.ndim < 2:
        raise TypeError(f"`x` must be a numpy array with at least 2 dimensions, got {type(x).__name__}")
    h, w = _check_shape("crop_shape", crop_shape, x.shape)
    h0 = int((x.shape[0] - h) * 0.5)
    w0 = int((x.shape[1] - w) * 0.5)
    return x[h0:h0 + h, w0:w0 + w]


def fix_mirror_padding(inst_map: np.ndarray) -> np.ndarray:
    """Split ids that occur as several 4-connected pieces into new ids.

    Ids are visited in ascending order; within an id the pieces are numbered in raster order of
    their first pixel (``scipy.ndimage.label``), piece 1 keeps the id and piece ``k > 1`` becomes
    ``k + current_max``; ``current_max`` is updated after each id. Same ids as HoVer-Net's
    ``fix_mirror_padding``. Labelling works on each instance's bounding box only.

    Args:
        inst_map: ``int [H, W]``, 0 = background.

    Returns:
        ``int32 [H, W]`` (a new array).
    """
    from scipy import ndimage

    check_array("inst_map", inst_map, ndim=2, dtype_kind="iu")
    out = inst_map.astype(np.int32, copy=True)
    if out.size == 0:
        return out
    current_max = int(out.max())
    slices = ndimage.find_objects(out)
    for idx, sl in enumerate(slices):
        if sl is None:
            continue
        inst_id = idx + 1
        sub = out[sl]
        pieces, n = ndimage.label(sub == inst_id)
        if n > 1:
            extra = pieces > 1
            sub[extra] = pieces[extra] + current_max
            current_max = int(out.max())
    return out


def gen_instance_hv_map(inst_map: np.ndarray, crop_shape: tuple[int, int], min_area: int = MIN_HV_AREA) -> np.ndarray:
    """Horizontal/vertical distance maps of the full-size map (not cropped yet).

    Args:
        inst_map: ``int [H, W]`` instance map, 0 = background.
        crop_shape: ``(h, w)`` of the crop that decides which instances get a target.
        min_area: Instances with fewer pixels inside the crop get no target (HoVer-Net: 30 at 40x).

    Returns:
        ``float32 [H, W, 2]``: channel 0 = x (horizontal), channel 1 = y (vertical), in [-1, 1].
    """
    from scipy import ndimage

    check_array("inst_map", inst_map, ndim=2, dtype_kind="iu")
    _check_shape("crop_shape", crop_shape, inst_map.shape)
    fixed = fix_mirror_padding(inst_map)
    hv = np.zeros(inst_map.shape + (2,), np.float32)
    crop = crop_to_shape(fixed, crop_shape)
    counts = np.bincount(crop.ravel())
    keep = np.flatnonzero(counts >= min_area)
    keep = keep[keep > 0]
    if keep.size == 0:
        return hv
    slices = ndimage.find_objects(fixed)
    height, width = inst_map.shape
    for inst_id in keep:
        sl = slices[inst_id - 1]
        y0 = max(sl[0].start - 2, 0)
        y1 = min(sl[0].stop + 2, height)
        x0 = max(sl[1].start - 2, 0)
        x1 = min(sl[1].stop + 2, width)
        mask = fixed[y0:y1, x0:x1] == inst_id
        ys, xs = np.nonzero(mask)
        com_y = int(ys.mean() + 0.5)
        com_x = int(xs.mean() + 0.5)
        # 1-based ranges minus the rounded centre of mass (HoVer-Net's convention)
        off_x = (xs + 1 - com_x).astype(np.float32)
        off_y = (ys + 1 - com_y).astype(np.float32)
        for off in (off_x, off_y):
            neg = off < 0
            if neg.any():
                off[neg] /= -off[neg].min()
            pos = off > 0
            if pos.any():
                off[pos] /= off[pos].max()
        box = hv[y0:y1, x0:x1]
        box[ys, xs, 0] = off_x
        box[ys, xs, 1] = off_y
    return hv


def gen_targets(inst_map: np.ndarray, crop_shape: tuple[int, int], min_area: int = MIN_HV_AREA) -> dict[str, np.ndarray]:
    """HoVer-Net's ``gen_targets``: binary nuclei map and HV map, centre-cropped.

    Args:
        inst_map: ``int [H, W]`` instance map of the full (input-size) patch, 0 = background.
        crop_shape: ``(h, w)`` output (mask) shape, at most ``(H, W)``.
        min_area: See :func:`gen_instance_hv_map` (:func:`min_hv_area` of the resolution).

    Returns:
        ``{"np_map": int32 [h, w] in {0, 1}, "hv_map": float32 [h, w, 2] (x, then y) in [-1, 1]}``.
    """
    hv = gen_instance_hv_map(inst_map, crop_shape, min_area)
    np_map = (inst_map > 0).astype(np.int32)
    return {
        "hv_map": np.ascontiguousarray(crop_to_shape(hv, crop_shape)),
        "np_map": np.ascontiguousarray(crop_to_shape(np_map, crop_shape)),
    }
