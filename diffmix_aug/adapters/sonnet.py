"""Adapter for the SONNET PyTorch port's ``FileLoader`` (Taurusmumu/Sonnet_pytorch).

Its patches are ``int32 [H, W, 6]`` = RGB, instance, type, ordinal, the ordinal map precomputed
per tile. For a synthetic patch the ordinal map is computed the way the port computes it
(:func:`sonnet_ordinal_map`), then image and ``[inst, type, ordinal]`` go through the loader's own
shape and input augmentations and centre crops, giving ``img``, ``no_map``, ``nf_map`` and
``tp_map`` (when ``with_type``) with the loader's dtypes and shapes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import Adapter, center_crop, fit_to_shape
from .hovernet import read_npy_patch, run_shape_and_input_augs

__all__ = ["SonnetAdapter", "ordinal_thresholds", "sonnet_ordinal_map"]


def ordinal_thresholds(levels: int = 8) -> np.ndarray:
    """``t_j = 2^(1 - j/levels) - 1`` for ``j = 0..levels`` (1 down to 0), as the port computes them."""
    return np.array([math.exp(math.log(2) - math.log(2) * (j / levels)) - 1 for j in range(levels + 1)])


def sonnet_ordinal_map(inst_map: np.ndarray, levels: int = 8) -> np.ndarray:
    """SONNET's ordinal distance map, vectorised.

    Inside each instance the distance to its centre of mass is divided by the instance's maximum
    distance, ``d in [0, 1]``; ``d = 1`` gets 1, ``d in [t_k, t_{k-1})`` gets ``k`` (so the centre
    gets ``levels``). The background is 0, and so is a one-pixel instance (its ``0/0`` matches no
    bin in the port).

    Args:
        inst_map: ``int [H, W]`` instance ids, 0 = background.

    Returns:
        ``int32 [H, W]`` in ``0..levels``.
    """
    out = np.zeros(inst_map.shape, np.int32)
    ys, xs = np.nonzero(inst_map)
    if ys.size == 0:
        return out
    ids = inst_map[ys, xs]
    uniq, inv = np.unique(ids, return_inverse=True)
    cnt = np.bincount(inv).astype(np.float64)
    cy = np.bincount(inv, ys) / cnt
    cx = np.bincount(inv, xs) / cnt
    dist = np.sqrt((ys - cy[inv]) ** 2 + (xs - cx[inv]) ** 2)
    dmax = np.zeros(uniq.size)
    np.maximum.at(dmax, inv, dist)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = dist / dmax[inv]
    t = ordinal_thresholds(levels)
    lab = 1 + (t[None, 1:] > d[:, None]).sum(axis=1)
    lab[np.isnan(d)] = 0
    out[ys, xs] = lab
    return out


class SonnetAdapter(Adapter):
    """Runs synthetic patches through a SONNET-port ``FileLoader``'s own pipeline."""

    name = "sonnet"

    @classmethod
    def matches(cls, base: Any) -> bool:
        return all(hasattr(base, a) for a in ("info_list", "input_shape", "mask_shape")) \
            and callable(getattr(base, "setup_augmentor", None)) and not hasattr(base, "target_gen_func")

    def read_raw(self, base, index):
        sample = read_npy_patch(base.info_list[index])
        sample.meta["index"] = int(index)
        return sample

    def raw_shape(self, base):
        return tuple(np.load(base.info_list[0], mmap_mode="r").shape[:2]) if len(base) else None

    def synthetic_item(self, base, index, image, inst_map, type_map):
        shape = self.raw_shape(base)
        ordinal = sonnet_ordinal_map(inst_map)
        img = fit_to_shape(np.asarray(image, np.uint8), shape)
        ann = fit_to_shape(np.stack([inst_map, type_map, ordinal], -1).astype(np.int32), shape)
        img, ann = run_shape_and_input_augs(base, img, ann)
        img = center_crop(img, base.input_shape)
        od_map = center_crop(ann[..., 2].copy(), base.mask_shape)
        np_map = ann[..., 0].copy()
        np_map[np_map > 0] = 1
        np_map = center_crop(np_map, base.mask_shape)
        feed: dict[str, Any] = {"img": img, "no_map": od_map, "nf_map": np_map}
        if base.with_type:
            feed["tp_map"] = center_crop(ann[..., 1].copy(), base.mask_shape)
        return feed
