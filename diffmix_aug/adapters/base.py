"""The adapter protocol: how :class:`~diffmix_aug.dataset.DiffMixDataset` talks to a base dataset.

An adapter knows two things about one family of base datasets:

1. how to read the raw ``(image, inst_map, type_map)`` of item ``i`` as a
   :class:`~diffmix_aug.data.sample.NucleiSample` (the producer builds label maps from it), and
2. how to turn a synthetic ``(image, inst_map, type_map)`` into an item with exactly the
   structure, keys, dtypes and shapes of the base's own items, running the base's own
   augmentation and target generation where it has them.

It also marks items as original or synthetic (dict outputs gain ``is_synthetic``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data.sample import NucleiSample

__all__ = ["Adapter", "center_crop", "fit_to_shape", "is_albumentations"]


class Adapter:
    """Base class; subclasses override :meth:`read_raw` and :meth:`synthetic_item`."""

    #: registry name (``adapter="..."`` in :class:`DiffMixDataset`)
    name = "base"

    @classmethod
    def matches(cls, base: Any) -> bool:
        """Whether this adapter recognises ``base`` from its attributes."""
        return False

    def read_raw(self, base: Any, index: int) -> NucleiSample:
        """The raw patch of item ``index`` before any augmentation."""
        raise NotImplementedError

    def raw_shape(self, base: Any) -> tuple[int, int] | None:
        """``(H, W)`` of the raw patches, when the base has a fixed one."""
        return tuple(self.read_raw(base, 0).shape) if len(base) else None  # type: ignore[return-value]

    def synthetic_item(self, base: Any, index: int, image: np.ndarray, inst_map: np.ndarray,
                       type_map: np.ndarray) -> Any:
        """A base-structured item made from a synthetic patch (``uint8 [H,W,3]``, ``int32 [H,W]`` x2)."""
        raise NotImplementedError

    def mark(self, item: Any, is_synthetic: bool) -> Any:
        """Add the ``is_synthetic`` flag where the item's structure allows it (dicts)."""
        if isinstance(item, dict):
            item["is_synthetic"] = bool(is_synthetic)
        return item

    def apply_transform(self, transform: Any, item: Any) -> Any:
        """Apply the user's ``transform`` (any callable taking and returning an item)."""
        return transform(item)

    def setup_augmentor(self, base: Any, worker_id: int, seed: int) -> None:
        """Forward HoVer-Net's ``setup_augmentor(worker_id, seed)`` when the base has it."""
        fn = getattr(base, "setup_augmentor", None)
        if fn is not None:
            fn(worker_id, seed)


def center_crop(x: np.ndarray, shape: Any) -> np.ndarray:
    """Centre crop of the first two axes to ``shape`` (HoVer-Net's ``cropping_center``)."""
    h0 = int((x.shape[0] - shape[0]) * 0.5)
    w0 = int((x.shape[1] - shape[1]) * 0.5)
    return x[h0:h0 + shape[0], w0:w0 + shape[1], ...]


def fit_to_shape(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Mirror-pad (reflect, as HoVer-Net's patch extraction does) or centre-crop the first two axes."""
    h, w = arr.shape[:2]
    th, tw = shape
    if h < th or w < tw:
        ph, pw = max(0, th - h), max(0, tw - w)
        pad = [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)] + [(0, 0)] * (arr.ndim - 2)
        arr = np.pad(arr, pad, mode="reflect" if ph < h and pw < w else "symmetric")
    return center_crop(arr, shape) if arr.shape[:2] != (th, tw) else arr


def is_albumentations(transform: Any) -> bool:
    """True for albumentations transforms (called with keyword ``image=``, ``masks=``)."""
    return type(transform).__module__.split(".")[0] == "albumentations"
