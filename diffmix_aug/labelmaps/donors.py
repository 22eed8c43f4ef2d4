"""``DonorBank``: the rare-class nuclei of a dataset, cropped once, for GradMix-style balancing.

GradMix (``design/method.md`` §6) pastes rare-class nuclei ("donors") of the whole training set
over major-class nuclei. The bank keeps each donor as a bool mask cropped to its bounding box,
with its area, class, source map index, instance id, centroid and box in the source map: a few
hundred bytes per nucleus, never whole maps or images. For the image-level GradMix baseline it can
also keep a small RGB crop around each donor (``keep_images=True``).

Donors whose centroid lies within ``border`` px of an image border are left out, as in the
reference (strict ``<`` / ``>`` comparisons). The pool order for one target map (the reference
shuffles the other images per target) is a drawn parameter: :meth:`DonorBank.pool_order`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._checks import check_array, check_positive_int
from .settings import BalanceSettings

__all__ = ["DonorBank", "border_excluded"]


def border_excluded(centroids: np.ndarray, shape: tuple[int, int], border: int) -> np.ndarray:
    """GradMix's border rule: ``bool [n]``, True where the centroid ``(x, y)`` lies within ``border``
    px of an image border (``x < b or x > W - b or y < b or y > H - b``)."""
    h, w = shape
    cx, cy = centroids[:, 0], centroids[:, 1]
    return (cx < border) | (cx > w - border) | (cy < border) | (cy > h - border)


@dataclass(eq=False)
class DonorBank:
    """Rare-class donor nuclei.

    Attributes:
        masks: ``n`` bool arrays ``[h_i, w_i]``, each donor cropped to its bounding box.
        areas: ``int64 [n]`` pixel counts.
        types: ``int32 [n]`` class of each donor.
        sources: ``int64 [n]`` index of the source map in the iterable / dataset.
        inst_ids: ``int32 [n]`` instance id in the source map.
        centroids: ``float64 [n, 2]`` ``(x, y)`` in the source map.
        bboxes: ``int64 [n, 4]`` ``(y0, x0, y1, x1)`` end-exclusive, in the source map.
        rare_classes: The classes that were collected.
        border: The border rule used.
        images: None, or ``n`` uint8 ``[h_i + 2 m, w_i + 2 m, 3]`` crops of the source image around
            each donor's box (``m = image_margin``; edge-padded where the box is near a border).
        image_margin: ``m``.
    """

    masks: tuple[np.ndarray, ...]
    areas: np.ndarray
    types: np.ndarray
    sources: np.ndarray
    inst_ids: np.ndarray
    centroids: np.ndarray
    bboxes: np.ndarray
    rare_classes: tuple[int, ...]
    border: int = BalanceSettings.border
    images: tuple[np.ndarray, ...] | None = None
    image_margin: int = 0

    def __len__(self) -> int:
        return len(self.masks)

    def __repr__(self) -> str:
        counts = {int(c): int((self.types == c).sum()) for c in self.rare_classes}
        return (f"DonorBank(donors={len(self)}, per_class={counts}, sources={np.unique(self.sources).size}, "
                f"images={self.images is not None}, nbytes={self.nbytes})")

    @property
    def nbytes(self) -> int:
        """Approximate memory held by the bank, in bytes."""
        n = sum(m.nbytes for m in self.masks) + sum(a.nbytes for a in (self.areas, self.types, self.sources,
                                                                          self.inst_ids, self.centroids, self.bboxes))
        return n + (sum(im.nbytes for im in self.images) if self.images is not None else 0)

    @classmethod
    def empty(cls, rare_classes: Iterable[int], border: int = BalanceSettings.border) -> DonorBank:
        """A bank with no donors (balancing then uses only a map's own rare nuclei)."""
        return cls((), np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int32),
                   np.zeros((0, 2)), np.zeros((0, 4), np.int64), tuple(int(c) for c in rare_classes), int(border))

    @classmethod
    def from_maps(
        cls,
        maps: Iterable[tuple[np.ndarray, ...]],
        rare_classes: Iterable[int],
        border: int = BalanceSettings.border,
        *,
        keep_images: bool = False,
        image_margin: int = 16,
    ) -> DonorBank:
        """Collect the interior rare-class nuclei of every map.

        Args:
            maps: Iterable of ``(inst_map, type_map)`` pairs (``int [H, W]``), or of
                ``(inst_map, type_map, image uint8 [H, W, 3])`` triples when ``keep_images``.
            rare_classes: Classes to collect.
            border: Donors whose centroid lies within this many px of a border are left out (the
                balancing maps' :attr:`BalanceSettings.border`: pass the same value).
            keep_images: Also keep an RGB crop around each donor (for the image-level GradMix).
            image_margin: Margin in px around the donor box for the kept crops.

        Returns:
            The bank; ``sources`` index the iterable in order.

        Raises:
            ValueError: a map is malformed or, with ``keep_images``, an item has no image.
        """
        from ..data.sample import instance_info

        rare = tuple(int(c) for c in rare_classes)
        if not rare:
            raise ValueError("`rare_classes` must name at least one class, got ()")
        check_positive_int("border", border, allow_zero=True)
        check_positive_int("image_margin", image_margin, allow_zero=True)
        masks: list[np.ndarray] = []
        images: list[np.ndarray] = []
        cols: dict[str, list[Any]] = {k: [] for k in ("areas", "types", "sources", "inst_ids", "centroids", "bboxes")}
        for src, item in enumerate(maps):
            if keep_images and len(item) < 3:
                raise ValueError(f"`maps` item {src} has no image; keep_images=True needs (inst_map, type_map, image)")
            inst, typ = item[0], item[1]
            check_array("inst_map", inst, ndim=2, dtype_kind="iu")
            check_array("type_map", typ, ndim=2, dtype_kind="iu")
            if inst.shape != typ.shape:
                raise ValueError(f"`inst_map` and `type_map` of map {src} differ in shape: {inst.shape} vs {typ.shape}")
            info = instance_info(inst, typ)
            _collect(info, inst, item[2] if keep_images else None, src, rare, border, image_margin, masks, images, cols)
        if not masks:
            bank = cls.empty(rare, border)
            if keep_images:
                bank.images, bank.image_margin = (), int(image_margin)
            return bank
        return cls(tuple(masks), np.asarray(cols["areas"], np.int64), np.asarray(cols["types"], np.int32),
                   np.asarray(cols["sources"], np.int64), np.asarray(cols["inst_ids"], np.int32),
                   np.asarray(cols["centroids"], np.float64).reshape(-1, 2),
                   np.asarray(cols["bboxes"], np.int64).reshape(-1, 4), rare, int(border),
                   tuple(images) if keep_images else None, int(image_margin) if keep_images else 0)

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        rare_classes: Iterable[int] | None = None,
        border: int = BalanceSettings.border,
        *,
        keep_images: bool = False,
        image_margin: int = 16,
        progress: bool = False,
    ) -> DonorBank:
        """Collect donors from a dataset of :class:`~diffmix_aug.data.sample.NucleiSample`.

        Args:
            dataset: Sized, indexable; ``dataset[i]`` has ``.inst_map``, ``.type_map``, ``.image``.
            rare_classes: Classes to collect; None: ``dataset.info.rare_classes`` (the dataset's
                :class:`~diffmix_aug.data.classes.DatasetInfo`), which must then name some.
            border, keep_images, image_margin: See :meth:`from_maps`.
            progress: Show a tqdm bar.

        Returns:
            The bank; ``sources`` are dataset indices.
        """
        if rare_classes is None:
            info = getattr(dataset, "info", None)
            rare_classes = tuple(getattr(info, "rare_classes", None) or ())
            if not rare_classes:
                raise ValueError(
                    f"`rare_classes` is None and the dataset ({type(dataset).__name__}) declares none in its "
                    "`info.rare_classes`: pass the classes to collect, e.g. rare_classes=(1,) for CoNSeP's "
                    "miscellaneous")

        def items():
            it = range(len(dataset))
            if progress:
                from tqdm import tqdm

                it = tqdm(it, desc="donor bank", unit="map")
            for i in it:
                s = dataset[i]
                yield (s.inst_map, s.type_map, s.image) if keep_images else (s.inst_map, s.type_map)

        return cls.from_maps(items(), rare_classes, border, keep_images=keep_images, image_margin=image_margin)

    def pool_order(self, rng: np.random.Generator, exclude_source: int | None = None) -> np.ndarray:
        """Donor indices in GradMix's pool order for one target map.

        The source maps are visited in a random order (drawn from ``rng``); within a source, donors
        keep ascending instance id. Donors of ``exclude_source`` (the target map itself, whose own
        rare nuclei come first in the pool anyway) are left out.

        Returns:
            ``int64 [n']`` indices into the bank.
        """
        cached = self.__dict__.get("_source_index")
        if cached is None or cached[0] is not self.sources:  # computed once per bank (sources never change)
            cached = (self.sources, *np.unique(self.sources, return_inverse=True))
            self.__dict__["_source_index"] = cached
        _, uniq, inverse = cached
        perm = rng.permutation(uniq.size)  # positions into uniq: the same draw as permuting uniq itself
        if exclude_source is not None:
            perm = perm[uniq[perm] != exclude_source]
        rank = np.full(uniq.size, -1, np.int64)
        rank[perm] = np.arange(perm.size)
        r = rank[inverse.ravel()] if len(self) else np.zeros(0, np.int64)
        keep = np.flatnonzero(r >= 0)
        # stable: donors were collected in source order, then ascending id
        return keep[np.argsort(r[keep], kind="stable")].astype(np.int64)

    def image_patch(self, index: int, cy: float, cx: float, h: int, w: int) -> np.ndarray:
        """An ``h x w`` RGB window of donor ``index``'s source image, in source coordinates
        ``[int(cy - h/2) : +h, int(cx - w/2) : +w]``; pixels beyond the kept crop are edge-padded.

        Raises:
            ValueError: the bank was built without ``keep_images``.
        """
        if self.images is None:
            raise ValueError("this DonorBank holds no image crops; build it with keep_images=True")
        crop = self.images[index]
        m = self.image_margin
        y0 = int(np.floor(cy - h / 2)) - (int(self.bboxes[index, 0]) - m)
        x0 = int(np.floor(cx - w / 2)) - (int(self.bboxes[index, 1]) - m)
        pad = max(0, -y0, -x0, y0 + h - crop.shape[0], x0 + w - crop.shape[1])
        if pad:
            crop = np.pad(crop, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        return crop[y0 + pad:y0 + pad + h, x0 + pad:x0 + pad + w]


def _collect(info, inst, image, src, rare, border, margin, masks, images, cols) -> None:
    """Append the interior rare nuclei of one map to the column lists."""
    if len(info) == 0:
        return
    keep = np.isin(info.types, rare) & ~border_excluded(info.centroids, inst.shape, border)
    if image is not None:
        check_array("image", image, ndim=3, channels=3)
        padded = np.pad(image, ((margin, margin), (margin, margin), (0, 0)), mode="edge")
    for k in np.flatnonzero(keep):
        y0, x0, y1, x1 = (int(v) for v in info.bboxes[k])
        masks.append(inst[y0:y1, x0:x1] == info.ids[k])
        if image is not None:
            images.append(np.ascontiguousarray(padded[y0:y1 + 2 * margin, x0:x1 + 2 * margin]))
        cols["areas"].append(int(info.areas[k]))
        cols["types"].append(int(info.types[k]))
        cols["sources"].append(src)
        cols["inst_ids"].append(int(info.ids[k]))
        cols["centroids"].append(info.centroids[k])
        cols["bboxes"].append(info.bboxes[k])
