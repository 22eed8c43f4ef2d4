"""GradMix (Doan et al., MICCAI 2022) as an image-level augmentation: the ablation's comparison arm.

Label mixing is :mod:`diffmix_aug.labelmaps.balance` (``design/method.md`` §6, exact). Image
mixing follows ``GradMix/grad_mix.py`` per converted major m with donor d, in processing order:

1. Optionally inpaint m's 2-px-dilated mask M in the running output (the official notebook does,
   Telea radius 5; DiffMix's copy comments it out): ``inpaint="telea"`` (OpenCV),
   ``"biharmonic"`` (scikit-image) or None.
2. Donor colours: d's pixels in its source image become ``(pixel + avg_color) / 2`` (truncated to
   uint8), ``avg_color`` being the target's mean nucleus colour per channel.
3. The ``h1 x w1`` source window centred at ``round(centroid(d))`` (``h1 x w1`` = M's box) is pasted
   into M's box of a copy of the *original* target image.
4. The weight is the distance transform of ``not P`` (P = d's mask pasted at m's centroid),
   rescaled on the ring ``R = (M | P) \\ P`` to 1 next to P, falling to 0 at the ring's outer edge,
   and 1 on P. ``scipy.ndimage.distance_transform_cdt``'s default metric is chessboard, which is what
   the reference calls (the written description says city-block): ``metric`` picks either.
5. The running output is blended with that weight twice, exactly as the reference's two lines do,
   and the ring is median-smoothed (disk 1 on R and G, disk 5 on B).

Each step works in a window around ``M | P`` (grown by the filter and inpainting radii), so the
cost is per nucleus, not per image. Donor pixels come from a :class:`DonorBank` built with
``keep_images=True`` (small crops, not whole images); the map's own rare nuclei come from the
target image itself. Where a major's box is wider than the donor's box plus twice the bank's
``image_margin``, the window is edge-padded beyond the crop instead of reading further source
pixels (the only difference from the full-image reference; raise ``image_margin`` to remove it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .._checks import check_choice, check_positive_int
from ..data.sample import NucleiSample, instance_info
from ..labelmaps.balance import BalanceParams, apply_balance, draw_balance_params, paste_window
from ..labelmaps.donors import DonorBank
from ..labelmaps.settings import BalanceSettings, check_settings, reject_loose_options

__all__ = ["GradMix", "average_nucleus_color"]

INPAINT = (None, "telea", "biharmonic")
METRICS = ("chessboard", "taxicab")


def average_nucleus_color(image: np.ndarray, inst_map: np.ndarray) -> np.ndarray:
    """GradMix's ``avg_color``: per channel, the sum over nucleus pixels divided by the number of
    nucleus pixels whose value in that channel is non-zero. ``float64 [3]`` (0 where undefined)."""
    nuc = image * (inst_map[..., None] > 0)
    s = nuc.reshape(-1, 3).sum(0, dtype=np.float64)
    n = (nuc.reshape(-1, 3) > 0).sum(0)
    return np.where(n > 0, s / np.maximum(n, 1), 0.0)


def _dilate2(m: np.ndarray) -> np.ndarray:
    for _ in range(2):
        d = m.copy()
        d[1:] |= m[:-1]
        d[:-1] |= m[1:]
        d[:, 1:] |= m[:, :-1]
        d[:, :-1] |= m[:, 1:]
        m = d
    return m


def _window(image: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """``image[y0:y0+h, x0:x0+w]`` with edge padding where it leaves the image."""
    H, W = image.shape[:2]
    pad = max(0, -y0, -x0, y0 + h - H, x0 + w - W)
    if pad:
        image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return image[y0 + pad:y0 + pad + h, x0 + pad:x0 + pad + w]


def _paste_into(canvas: np.ndarray, mask: np.ndarray, r0: int, c0: int) -> None:
    """``canvas[r0:r0+h, c0:c0+w] |= mask``, clipped to the canvas."""
    H, W = canvas.shape
    h, w = mask.shape
    y0, x0, y1, x1 = max(r0, 0), max(c0, 0), min(r0 + h, H), min(c0 + w, W)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] |= mask[y0 - r0:y1 - r0, x0 - c0:x1 - c0]


class GradMix:
    """Image-level GradMix: ``GradMix(donors)(sample, rng) -> NucleiSample``.

    Args:
        donors: A :class:`DonorBank` built with ``keep_images=True`` (or None: own donors only).
        rare_classes: Classes donors may bring (at least one); every other typed class is a major class.
        balance: Label mixing (:class:`~diffmix_aug.labelmaps.settings.BalanceSettings`; default: the
            reference code's).
        inpaint: ``"telea"`` (official GradMix, OpenCV), ``"biharmonic"`` (scikit-image) or None
            (DiffMix's copy of the script).
        inpaint_radius: Telea neighbourhood radius (the official 5).
        metric: Distance-transform metric of the blending weight: ``"chessboard"`` (what the
            reference code computes) or ``"taxicab"`` (city-block, as the method is described).
        source_key: ``sample.meta`` key of the sample's source index in the bank (see
            :class:`~diffmix_aug.labelmaps.sampler.LabelMapSampler`).

    The output's ``meta["gradmix"]`` holds the label-mixing report.
    """

    def __init__(
        self,
        donors: DonorBank | None,
        rare_classes: Iterable[int],
        *,
        balance: BalanceSettings = BalanceSettings(),
        inpaint: str | None = "telea",
        inpaint_radius: int = 5,
        metric: str = "chessboard",
        source_key: str | None = "index",
        **unexpected: Any,
    ) -> None:
        reject_loose_options(type(self).__name__, unexpected, accepts=("balance",))
        if donors is not None and not isinstance(donors, DonorBank):
            raise TypeError(f"`donors` must be a DonorBank or None, got {type(donors).__name__}")
        if donors is not None and len(donors) and donors.images is None:
            raise ValueError("`donors` holds no image crops; GradMix blends donor pixels: build the bank with "
                             "DonorBank.from_dataset(dataset, keep_images=True)")
        self.donors = donors
        self.inpaint = check_choice("inpaint", inpaint, INPAINT)
        self.inpaint_radius = check_positive_int("inpaint_radius", inpaint_radius)
        self.metric = check_choice("metric", metric, METRICS)
        self.source_key = source_key
        self.rare_classes = tuple(int(c) for c in rare_classes)
        if not self.rare_classes:
            raise ValueError("`rare_classes` must name at least one class, got (); pass the dataset's rare "
                             "classes, e.g. rare_classes=(1,)")
        self.balance = check_settings("balance", balance, BalanceSettings)

    def __repr__(self) -> str:
        return (f"GradMix(donors={None if self.donors is None else len(self.donors)}, inpaint={self.inpaint!r}, "
                f"metric={self.metric!r}, rare_classes={self.rare_classes}, balance={self.balance})")

    def get_params(self, rng: np.random.Generator, sample: NucleiSample) -> BalanceParams:
        """Draw the label-mixing parameters (majors, pool order, greedy assignment)."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"`rng` must be a numpy.random.Generator, got {type(rng).__name__}")
        meta = getattr(sample, "meta", None) or {}
        src = meta.get(self.source_key) if self.source_key is not None else None
        return draw_balance_params(rng, sample.inst_map, sample.type_map, self.donors, self.balance,
                                   rare_classes=self.rare_classes, info=sample.info,
                                   exclude_source=None if src is None else int(src))

    def apply(self, sample: NucleiSample, params: BalanceParams) -> NucleiSample:
        """Mix labels and image for drawn parameters (deterministic)."""
        inst_map, type_map, image = sample.inst_map, sample.type_map, sample.image
        out_inst, out_type, report = apply_balance(inst_map, type_map, params, self.donors, sample.info)
        final = image.copy()
        if params.assign_major.size:
            self._blend(image, inst_map, params, final, sample.info)
        return NucleiSample.trusted(final, out_inst, out_type, meta={**getattr(sample, "meta", {}), "gradmix": report})

    def __call__(self, sample: NucleiSample, rng: np.random.Generator) -> NucleiSample:
        return self.apply(sample, self.get_params(rng, sample))

    # ---------------------------------------------------------------------------------------

    def _donor_patch(self, ref: int, image, inst_map, info, row, avg, h1: int, w1: int) -> np.ndarray:
        """The donor's ``h1 x w1`` source window centred at its rounded centroid, donor pixels
        colour-averaged with ``avg``."""
        if ref >= 0:
            bank = self.donors
            cx, cy = bank.centroids[ref]
            mask, (my0, mx0) = bank.masks[ref], bank.bboxes[ref, :2]
            src = None
        else:
            k = row[-ref]
            cx, cy = info.centroids[k]
            y0, x0, y1, x1 = info.bboxes[k]
            mask, (my0, mx0), src = inst_map[y0:y1, x0:x1] == -ref, (y0, x0), image
        py0, px0 = paste_window(cy, cx, h1, w1)
        if src is None:
            patch = self.donors.image_patch(ref, round(cy), round(cx), h1, w1).copy()
        else:
            patch = _window(src, py0, px0, h1, w1).copy()
        dm = np.zeros((h1, w1), bool)
        _paste_into(dm, mask, int(my0) - py0, int(mx0) - px0)
        patch[dm] = ((patch[dm].astype(np.float64) + avg) / 2).astype(np.uint8)
        return patch

    def _blend(self, image: np.ndarray, inst_map: np.ndarray, params: BalanceParams, final: np.ndarray,
               info=None) -> None:
        from scipy.ndimage import distance_transform_cdt, median_filter
        from skimage.morphology import disk

        H, W = inst_map.shape
        info = instance_info(inst_map) if info is None else info
        row = {int(i): k for k, i in enumerate(info.ids.tolist())}
        avg = average_nucleus_color(image, inst_map)
        grow = 5 + (self.inpaint_radius + 2 if self.inpaint else 0)
        d1, d5 = disk(1).astype(bool), disk(5).astype(bool)
        for mid, ref in zip(params.assign_major.tolist(), params.assign_donor.tolist()):
            k = row[mid]
            # M: the 2-px-dilated major, in its box grown by 2
            y0, x0, y1, x1 = (int(v) for v in info.bboxes[k])
            gy0, gx0, gy1, gx1 = max(y0 - 2, 0), max(x0 - 2, 0), min(y1 + 2, H), min(x1 + 2, W)
            m_small = _dilate2(inst_map[gy0:gy1, gx0:gx1] == mid)
            rows, cols = np.flatnonzero(m_small.any(1)), np.flatnonzero(m_small.any(0))
            by0, by1, bx0, bx1 = gy0 + rows[0], gy0 + rows[-1] + 1, gx0 + cols[0], gx0 + cols[-1] + 1
            h1, w1 = by1 - by0, bx1 - bx0
            dmask = self.donors.masks[ref] if ref >= 0 else None
            if dmask is None:
                oy0, ox0, oy1, ox1 = (int(v) for v in info.bboxes[row[-ref]])
                dmask = inst_map[oy0:oy1, ox0:ox1] == -ref
            r0, c0 = paste_window(info.centroids[k, 1], info.centroids[k, 0], *dmask.shape)
            # working window: M's and P's boxes, grown by the filter / inpainting reach
            wy0 = max(min(by0, r0) - grow, 0)
            wx0 = max(min(bx0, c0) - grow, 0)
            wy1 = min(max(by1, r0 + dmask.shape[0]) + grow, H)
            wx1 = min(max(bx1, c0 + dmask.shape[1]) + grow, W)
            hh, ww = wy1 - wy0, wx1 - wx0
            M = np.zeros((hh, ww), bool)
            M[gy0 - wy0:gy1 - wy0, gx0 - wx0:gx1 - wx0] = m_small
            P = np.zeros((hh, ww), bool)
            _paste_into(P, dmask, r0 - wy0, c0 - wx0)
            f = final[wy0:wy1, wx0:wx1]
            if self.inpaint is not None:
                f = self._inpaint(f, M)
            img_copy = image[wy0:wy1, wx0:wx1].copy()
            img_copy[by0 - wy0:by1 - wy0, bx0 - wx0:bx1 - wx0] = self._donor_patch(
                ref, image, inst_map, info, row, avg, h1, w1)
            union = M | P
            ring = union & ~P
            cdt = distance_transform_cdt((~P).astype(np.uint8), metric=self.metric).astype(np.float32)
            cdt[~union] = 0
            if ring.any():
                cdt[ring] -= 1
                top = cdt[ring].max()
                cdt[ring] = 1 - cdt[ring] / top if top > 0 else 1.0
            cdt[P] = 1
            c3, r3 = cdt[..., None], ring[..., None].astype(np.float32)
            u3, p3 = union[..., None], P[..., None]
            f = (f * ~u3 + img_copy * p3 + (img_copy * (c3 * r3)).astype(np.uint8)
                 + (f * ((1 - c3) * r3)).astype(np.uint8)).astype(np.uint8)
            f = ((img_copy * c3).astype(np.uint8) + (f * (1 - c3)).astype(np.uint8)).astype(np.uint8)
            smooth = np.stack([median_filter(f[..., 0], footprint=d1, mode="nearest"),
                               median_filter(f[..., 1], footprint=d1, mode="nearest"),
                               median_filter(f[..., 2], footprint=d5, mode="nearest")], axis=2)
            f = np.where(ring[..., None], smooth, f)
            final[wy0:wy1, wx0:wx1] = f

    def _inpaint(self, f: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.inpaint == "telea":
            import cv2

            return cv2.inpaint(np.ascontiguousarray(f), mask.astype(np.uint8), self.inpaint_radius, cv2.INPAINT_TELEA)
        from skimage.restoration import inpaint_biharmonic

        out = inpaint_biharmonic(f.astype(np.float64) / 255.0, mask, channel_axis=-1)
        return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)

