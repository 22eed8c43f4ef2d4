"""SDM training data: random crops, the reference's 6 rotation/flip variants, ``(x, y)`` tensors.

One item is ``(image index, variant)``: every image appears 6 times per epoch (identity, rot90 x1,
x2, x3, flip W, flip H), each time with a fresh random crop (``design/method.md`` §4.2). The crop
offset of item ``i`` in epoch ``e`` comes from ``numpy.random.default_rng([seed, e, i])``, so the
data do not depend on worker count or on interruption.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._checks import check_positive_int
from ..labelmaps.encode import encode_condition

__all__ = ["NUM_VARIANTS", "SDMTrainData", "apply_variant", "build_dataset", "data_fingerprint", "epoch_indices"]

NUM_VARIANTS = 6


def apply_variant(array: np.ndarray, variant: int) -> np.ndarray:
    """Variant ``0..5`` of an ``[H, W, ...]`` array: identity, rot90 k=1,2,3, flip W, flip H."""
    if variant == 0:
        return array
    if variant <= 3:
        return np.rot90(array, k=variant, axes=(0, 1))
    if variant == 4:
        return array[:, ::-1]
    if variant == 5:
        return array[::-1]
    raise ValueError(f"`variant` must be in 0..5, got {variant}")


class SDMTrainData(torch.utils.data.Dataset):
    """``(x float32 [3, c, c] in [-1, 1], y float32 [K+1, c, c])`` items from a ``NucleiDataset``.

    Args:
        dataset: Any map-style dataset of :class:`~diffmix_aug.data.sample.NucleiSample` with
            ``num_classes`` (counting the background).
        crop_size: Crop side ``c``; images smaller than ``c`` are rejected when read.
        augment: Expose the 6 variants (length ``6 * len(dataset)``); else identity only.
        seed: Crop seed.
    """

    def __init__(self, dataset: Any, crop_size: int, *, augment: bool = True, seed: int = 0):
        self.dataset = dataset
        self.crop_size = check_positive_int("crop_size", crop_size)
        self.variants = NUM_VARIANTS if augment else 1
        self.seed = int(seed)
        self.epoch = 0
        self.num_classes = int(dataset.num_classes)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops are drawn (call before iterating an epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset) * self.variants

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_index, variant = divmod(int(index), self.variants)
        sample = self.dataset[image_index]
        image, inst, types = sample.image, sample.inst_map, sample.type_map
        h, w = image.shape[:2]
        c = self.crop_size
        if h < c or w < c:
            raise ValueError(f"image {image_index} is {h}x{w}, smaller than data.crop_size={c}; lower crop_size")
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        y0 = int(rng.integers(0, h - c + 1))
        x0 = int(rng.integers(0, w - c + 1))
        sl = (slice(y0, y0 + c), slice(x0, x0 + c))
        image = np.ascontiguousarray(apply_variant(image[sl], variant))
        inst = np.ascontiguousarray(apply_variant(inst[sl], variant))
        types = np.ascontiguousarray(apply_variant(types[sl], variant))
        x = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0
        y = torch.from_numpy(encode_condition(types, inst, self.num_classes))
        return x, y


def epoch_indices(n: int, epoch: int, seed: int, *, rank: int = 0, world_size: int = 1,
                  batch_size: int = 1) -> list[int]:
    """This rank's item order for ``epoch``: a seeded permutation, split across ranks, whole batches.

    Same rule as ``DistributedSampler(shuffle=True, drop_last=True)``: rank ``r`` takes every
    ``world_size``-th index starting at ``r``; then the tail that does not fill a batch is dropped.
    """
    g = torch.Generator().manual_seed(int(seed) + int(epoch))
    perm = torch.randperm(n, generator=g).tolist()
    per_rank = n // world_size
    mine = perm[: per_rank * world_size][rank::world_size]
    return mine[: (len(mine) // batch_size) * batch_size]


def build_dataset(data_cfg) -> Any:
    """The ``NucleiDataset`` a :class:`~diffmix_aug.train.config.DataConfig` names."""
    if data_cfg.dataset == "toy":
        from ..data.toy import make_toy_dataset

        return make_toy_dataset(data_cfg.num_images, size=data_cfg.image_size, seed=data_cfg.seed)
    from ..data.dataset import NucleiDataset
    from ..data.split import split_by_tile

    ds = NucleiDataset.from_consep_dir(data_cfg.data_root, dataset=data_cfg.dataset, merge=data_cfg.merge)
    if data_cfg.holdout_tiles:
        train_idx, _ = split_by_tile(ds, data_cfg.holdout_tiles)
        ds = ds.subset(train_idx)
    return ds.downsampled(data_cfg.downsample)


def data_fingerprint(dataset: Any) -> str:
    """SHA-256 (first 16 hex digits) of the training item list: file names where known, else the
    dataset's length and class counts. Stored in checkpoints and exports as provenance."""
    import hashlib

    names = dataset.item_names() if hasattr(dataset, "item_names") else None
    if names is not None:
        text = "\n".join(names)
    else:
        stats = dataset.class_stats() if hasattr(dataset, "class_stats") else {}
        text = f"{len(dataset)}|{list(map(int, stats.get('counts', [])))}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
