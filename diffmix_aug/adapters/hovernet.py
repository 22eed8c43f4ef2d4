"""Adapter for HoVer-Net's ``dataloader.train_loader.FileLoader`` (vqdang/hover_net).

A synthetic patch is padded (mirror, as HoVer-Net's patch extraction does) or cropped to the
loader's raw ``.npy`` patch size and then goes through the loader's *own* pipeline, in the same
order as ``FileLoader.__getitem__``: the deterministic ``shape_augs`` on image and annotation, the
``input_augs`` on the image, the centre crops to ``input_shape`` / ``mask_shape`` and
``target_gen_func(inst_map, mask_shape, **target_gen_kwargs)``. Types are kept as they are: the
``5 -> 1`` merge of early versions is commented out on HoVer-Net's master (PR #155). The item therefore
has the same keys (``img``, ``tp_map`` when ``with_type``, the target keys), dtypes and shapes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data.sample import NucleiSample
from .base import Adapter, center_crop, fit_to_shape

__all__ = ["HoVerNetAdapter", "read_npy_patch"]


def read_npy_patch(path: Any) -> NucleiSample:
    """A HoVer-Net / SONNET patch ``.npy`` (``[H, W, 4..6]`` = RGB, inst, [type], [ordinal]), validated
    by the package's one HoVer-Net patch reader (:func:`~diffmix_aug.data.readers.hovernet_array_to_sample`;
    SONNET's ordinal channel is not needed here)."""
    from ..data.readers import hovernet_array_to_sample

    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a readable .npy file ({exc})") from exc
    return hovernet_array_to_sample(data[..., :5] if data.ndim == 3 else data, str(path))


def _augs(base: Any) -> tuple[Any, Any]:
    try:
        return base.shape_augs, base.input_augs
    except AttributeError as exc:
        raise AttributeError(f"{type(base).__name__} has no augmentors yet: build it with setup_augmentor=True "
                             "or call dataset.setup_augmentor(worker_id, seed) (HoVer-Net's worker_init_fn "
                             "does this in every worker)") from exc


def run_shape_and_input_augs(base: Any, img: np.ndarray, ann: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``FileLoader``'s augmentation step: deterministic shape augs on both, input augs on the image."""
    shape_augs, input_augs = _augs(base)
    if shape_augs is not None:
        det = shape_augs.to_deterministic()
        img = det.augment_image(img)
        ann = det.augment_image(ann)
    if input_augs is not None:
        img = input_augs.to_deterministic().augment_image(img)
    return img, ann


class HoVerNetAdapter(Adapter):
    """Runs synthetic patches through a HoVer-Net ``FileLoader``'s own augmentation and targets."""

    name = "hovernet"

    @classmethod
    def matches(cls, base: Any) -> bool:
        return all(hasattr(base, a) for a in ("info_list", "input_shape", "mask_shape", "target_gen_func")) \
            and callable(getattr(base, "setup_augmentor", None))

    def read_raw(self, base, index):
        sample = read_npy_patch(base.info_list[index])
        sample.meta["index"] = int(index)
        return sample

    def raw_shape(self, base):
        return tuple(np.load(base.info_list[0], mmap_mode="r").shape[:2]) if len(base) else None

    def synthetic_item(self, base, index, image, inst_map, type_map):
        shape = self.raw_shape(base)
        img = fit_to_shape(np.asarray(image, np.uint8), shape)
        ann = fit_to_shape(np.stack([inst_map, type_map], -1).astype(np.int32), shape)
        img, ann = run_shape_and_input_augs(base, img, ann)
        img = center_crop(img, base.input_shape)
        feed: dict[str, Any] = {"img": img}
        inst = ann[..., 0]
        if base.with_type:
            feed["tp_map"] = center_crop(ann[..., 1].copy(), base.mask_shape)
        feed.update(base.target_gen_func(inst, base.mask_shape, **base.target_gen_kwargs))
        return feed
