"""Faithful minimal replicas of HoVer-Net's and the SONNET port's ``FileLoader`` contracts.

Same constructor signatures, ``setup_augmentor(worker_id, seed)`` creating ``shape_augs`` /
``input_augs`` (absent until it is called), the same ``__getitem__`` steps and output keys, dtypes
and shapes as ``vqdang/hover_net`` ``dataloader/train_loader.py`` (master, PyTorch) and
``Taurusmumu/Sonnet_pytorch`` ``dataloader/train_loader.py``. imgaug is not installed: imgaug 0.4.0
fails to import on numpy >= 2 (``np.sctypes``, ``imgaug/imgaug.py``) and its ``iaa.OneOf``, which
HoVer-Net's train-mode input augs use, fails on numpy >= 1.24 (``np.bool``,
``imgaug/augmenters/meta.py``). So the augmenters are small numpy objects with imgaug's
``to_deterministic().augment_image(x)`` API, in HoVer-Net's order: for the shape augs an
order-0 stand-in for ``iaa.Affine`` (90-degree rotations), the centre ``CropToFixedSize``, then
``Fliplr`` / ``Flipud``; for the input augs a brightness shift. HoVer-Net's ``gen_targets``
(``models/hovernet/targets.py``) is the project's re-implementation in
``benchmarks/downstream/targets.py``.

Adapted from vqdang/hover_net (``dataloader/train_loader.py``, ``dataloader/augs.py``,
``misc/utils.py::cropping_center``, ``models/hovernet/targets.py``), MIT License,
Copyright (c) 2018 vqdang.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks.downstream.targets import gen_targets  # noqa: F401  (re-exported for the tests)


def cropping_center(x, crop_shape):
    orig_shape = x.shape
    h0 = int((orig_shape[0] - crop_shape[0]) * 0.5)
    w0 = int((orig_shape[1] - crop_shape[1]) * 0.5)
    return x[h0:h0 + crop_shape[0], w0:w0 + crop_shape[1]]


class _Det:
    def __init__(self, ops):
        self.ops = ops

    def augment_image(self, x):
        for op in self.ops:
            x = op(x)
        return np.ascontiguousarray(x)


class _Rot90:
    """Stand-in for HoVer-Net's ``iaa.Affine(..., order=0)``: random 90-degree rotations (label safe)."""

    def __init__(self, rng):
        self.rng = rng

    def draw(self):
        k = int(self.rng.integers(0, 4))
        return lambda x: np.rot90(x, k, axes=(0, 1))


class _Flip:
    """``iaa.Fliplr(0.5)`` (axis 1) / ``iaa.Flipud(0.5)`` (axis 0)."""

    def __init__(self, rng, axis):
        self.rng, self.axis = rng, axis

    def draw(self):
        flip = self.rng.random() < 0.5
        return lambda x: np.flip(x, self.axis) if flip else x


class _CropToFixedSize:
    def __init__(self, h, w):
        self.h, self.w = h, w

    def draw(self):
        return lambda x: cropping_center(x, (self.h, self.w)) if x.shape[0] >= self.h else x


class _Brightness:
    def __init__(self, rng, limit=26):
        self.rng, self.limit = rng, limit

    def draw(self):
        delta = int(self.rng.integers(-self.limit, self.limit + 1))
        return lambda x: np.clip(x.astype(np.int16) + delta, 0, 255).astype(np.uint8)


class Sequential:
    """imgaug.augmenters.Sequential stand-in: ``to_deterministic()`` freezes one draw."""

    def __init__(self, augs):
        self.augs = list(augs)

    def to_deterministic(self):
        return _Det([a.draw() for a in self.augs])


class FileLoader(torch.utils.data.Dataset):
    """HoVer-Net ``dataloader.train_loader.FileLoader`` (same constructor and item contract)."""

    def __init__(self, file_list, with_type=False, input_shape=None, mask_shape=None, mode="train",
                 setup_augmentor=True, target_gen=None):
        assert input_shape is not None and mask_shape is not None
        self.mode = mode
        self.info_list = file_list
        self.with_type = with_type
        self.mask_shape = mask_shape
        self.input_shape = input_shape
        self.id = 0
        self.target_gen_func = target_gen[0]
        self.target_gen_kwargs = target_gen[1]
        if setup_augmentor:
            self.setup_augmentor(0, 0)

    def setup_augmentor(self, worker_id, seed):
        self.augmentor = self._get_augmentation(self.mode, seed)
        self.shape_augs = Sequential(self.augmentor[0])
        self.input_augs = Sequential(self.augmentor[1])
        self.id = self.id + worker_id

    def __len__(self):
        return len(self.info_list)

    def _load(self, idx):
        data = np.load(self.info_list[idx])
        img = (data[..., :3]).astype("uint8")
        ann = (data[..., 3:]).astype("int32")
        if self.shape_augs is not None:
            shape_augs = self.shape_augs.to_deterministic()
            img = shape_augs.augment_image(img)
            ann = shape_augs.augment_image(ann)
        if self.input_augs is not None:
            input_augs = self.input_augs.to_deterministic()
            img = input_augs.augment_image(img)
        return cropping_center(img, self.input_shape), ann

    def __getitem__(self, idx):
        img, ann = self._load(idx)
        feed_dict = {"img": img}
        inst_map = ann[..., 0]
        if self.with_type:
            type_map = (ann[..., 1]).copy()
            type_map = cropping_center(type_map, self.mask_shape)
            # type_map[type_map == 5] = 1  # commented out upstream (vqdang/hover_net PR #155)
            feed_dict["tp_map"] = type_map
        feed_dict.update(self.target_gen_func(inst_map, self.mask_shape, **self.target_gen_kwargs))
        return feed_dict

    def _get_augmentation(self, mode, seed):
        rng = np.random.default_rng(seed)
        if mode == "train":
            return ([_Rot90(rng), _CropToFixedSize(*self.input_shape), _Flip(rng, 1), _Flip(rng, 0)],
                    [_Brightness(rng)])
        return ([_CropToFixedSize(*self.input_shape)], [])


class SonnetFileLoader(FileLoader):
    """The SONNET port's ``FileLoader``: no ``target_gen``; keys img, no_map, nf_map, tp_map."""

    def __init__(self, file_list, with_type=False, input_shape=None, mask_shape=None, mode="train",
                 setup_augmentor=True):
        assert input_shape is not None and mask_shape is not None
        self.mode = mode
        self.info_list = file_list
        self.with_type = with_type
        self.mask_shape = mask_shape
        self.input_shape = input_shape
        self.id = 0
        if setup_augmentor:
            self.setup_augmentor(0, 0)

    def __getitem__(self, idx):
        img, ann = self._load(idx)
        od_map = (ann[..., 2]).copy()
        np_map = (ann[..., 0]).copy()
        np_map[np_map > 0] = 1
        od_map = cropping_center(od_map, self.mask_shape)
        np_map = cropping_center(np_map, self.mask_shape)
        feed_dict = {"img": img, "no_map": od_map, "nf_map": np_map}
        if self.with_type:
            type_map = (ann[..., 1]).copy()
            feed_dict["tp_map"] = cropping_center(type_map, self.mask_shape)
        return feed_dict


def write_patches(samples, out_dir, sonnet=False):
    """Save NucleiSamples as HoVer-Net ([H,W,5]) or SONNET-port ([H,W,6]) int32 .npy patches."""
    from diffmix_aug.adapters.sonnet import sonnet_ordinal_map

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, s in enumerate(samples):
        arr = s.to_hovernet()
        if sonnet:
            arr = np.concatenate([arr, sonnet_ordinal_map(s.inst_map)[..., None]], -1)
        path = out_dir / f"patch_{i:03d}.npy"
        np.save(path, arr)
        paths.append(str(path))
    return paths
