"""Adapters for plain datasets: ``NucleiDataset`` (items are ``NucleiSample``), dicts and tuples.

Dict and tuple items are described by ``keys``: the dict keys (or tuple positions) of the image,
the instance map and the type map. A synthetic item replacing item ``i`` is built on the base's own
item ``i``: it keeps that item's container, key order, array library (numpy / torch), layout
(HWC / CHW), dtype and, for float images, value range ([0, 1] or [0, 255]), and height and width
(a synthetic patch of another size is mirror-padded or centre-cropped). Its three map entries are
the synthetic patch's; every other entry (a name, an index, a weight) is item ``i``'s own, so
batches collate and an ``"index"`` field still says which dataset index was served; and
``is_synthetic`` (added to every dict item) says the image and maps are synthetic. Nothing is
copied from any other item. When items hold only the three maps, item ``i`` is not read again:
the first item's layout is all there is to take.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.sample import NucleiSample, as_int_map
from .base import Adapter, fit_to_shape, is_albumentations

__all__ = ["MappingAdapter", "NucleiSampleAdapter", "SequenceAdapter"]


class NucleiSampleAdapter(Adapter):
    """Items are :class:`NucleiSample`; the flag goes into ``sample.meta["is_synthetic"]``."""

    name = "nuclei"

    @classmethod
    def matches(cls, base: Any) -> bool:
        return hasattr(base, "class_stats") or type(base).__name__ == "NucleiDataset"

    def read_raw(self, base: Any, index: int) -> NucleiSample:
        item = base[index]
        if not isinstance(item, NucleiSample):
            raise TypeError(f"adapter 'nuclei' expects base[i] to be a NucleiSample, got {type(item).__name__}; "
                            "pass keys=(...) or adapter='dict'/'tuple'")
        return item

    def synthetic_item(self, base, index, image, inst_map, type_map):
        return NucleiSample.trusted(image, inst_map, type_map, meta={"index": index})

    def mark(self, item, is_synthetic):
        if isinstance(item, NucleiSample):
            item = NucleiSample.trusted(item.image, item.inst_map, item.type_map,
                                        meta={**item.meta, "is_synthetic": bool(is_synthetic)})
            return item
        return super().mark(item, is_synthetic)

    def apply_transform(self, transform, item):
        if is_albumentations(transform) and isinstance(item, NucleiSample):
            out = transform(image=item.image, masks=[item.inst_map, item.type_map])
            inst, typ = out["masks"]
            return NucleiSample.trusted(out["image"], np.asarray(inst), np.asarray(typ), meta=item.meta)
        return transform(item)


def _to_numpy_image(x: Any) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.dtype.kind == "f":
        a = a * 255.0 if a.size and float(a.max()) <= 1.0 else a
        a = np.clip(np.rint(a), 0, 255)
    return a.astype(np.uint8)


def _to_numpy_map(x: Any, what: str = "map") -> np.ndarray:
    """A label map as C-contiguous int32, validated by the one map check (:func:`~diffmix_aug.data.sample.as_int_map`):
    NaN, fractions, negatives and ids beyond int32 are refused, not cast."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    return as_int_map(what, a[..., 0] if a.ndim == 3 else a)


def _like(value: np.ndarray, template: Any, *, image: bool) -> Any:
    """Convert a numpy HWC / HW array to the template's library, layout and dtype."""
    t_np = template.detach().cpu().numpy() if isinstance(template, torch.Tensor) else np.asarray(template)
    out = value
    if image:
        if t_np.ndim == 3 and t_np.shape[0] in (1, 3) and t_np.shape[-1] not in (1, 3):
            out = np.moveaxis(out, -1, 0)
        if t_np.dtype.kind == "f":
            out = out.astype(t_np.dtype)
            if t_np.size and float(t_np.max()) <= 1.0:
                out = out / np.asarray(255.0, t_np.dtype)
    elif t_np.ndim == 3:
        out = out[None] if t_np.shape[0] == 1 else out[..., None]
    out = np.ascontiguousarray(out.astype(t_np.dtype, copy=False))
    return torch.from_numpy(out) if isinstance(template, torch.Tensor) else out


class _KeyedAdapter(Adapter):
    def __init__(self, keys: Sequence[Any]) -> None:
        if len(keys) != 3:
            raise ValueError(f"`keys` must name (image, inst_map, type_map), got {keys!r}")
        self.keys = tuple(keys)
        # the first item, kept only while items hold nothing but the three maps: its layout (library,
        # HWC/CHW, dtype, range) is all a synthetic item takes from it, so no base read is needed
        self._layout: Any = None
        self._maps_only: bool | None = None

    def _get(self, item: Any) -> tuple[Any, Any, Any]:
        try:
            return tuple(item[k] for k in self.keys)  # type: ignore[return-value]
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"base item of type {type(item).__name__} has no entries {self.keys!r} ({exc!r}); "
                             "pass keys=(image_key, inst_key, type_key)") from exc

    def _own(self, base, index) -> Any:
        """The item a synthetic one at ``index`` is built on: ``base[index]`` when items carry other
        fields (their values must be item ``index``'s), else a cached layout template."""
        if self._maps_only and self._layout is not None:
            return self._layout
        item = base[index]
        self._note(item)
        return item

    def _note(self, item: Any) -> None:
        if self._maps_only is None:
            n = len(item) - (1 if isinstance(item, dict) and "is_synthetic" in item else 0)
            self._maps_only = n == len(self.keys)
            self._layout = item if self._maps_only else None

    def read_raw(self, base, index):
        item = base[index]
        self._note(item)
        img, inst, typ = self._get(item)
        k_img, k_inst, k_typ = self.keys
        image = _to_numpy_image(img)
        inst = _to_numpy_map(inst, f"base[{index}][{k_inst!r}]")
        typ = _to_numpy_map(typ, f"base[{index}][{k_typ!r}]")
        if image.ndim != 3 or image.shape[:2] != inst.shape or typ.shape != inst.shape:
            raise ValueError(f"base[{index}]: image {k_img!r} is {image.shape[:2]} but the maps {k_inst!r} / {k_typ!r} "
                             f"are {inst.shape} / {typ.shape}; expected one H x W for all three (check keys=, or "
                             "crop the image and maps together)")
        return NucleiSample.trusted(image, inst, typ, meta={"index": index})

    def _fill(self, template, image, inst_map, type_map) -> dict[Any, Any]:
        t_img, t_inst, t_typ = self._get(template)
        hw = _to_numpy_map(t_inst, "template map").shape
        if image.shape[:2] != hw:  # synthetic patch size differs from the base's: mirror-pad / crop
            image, inst_map, type_map = (fit_to_shape(a, hw) for a in (image, inst_map, type_map))
        return {self.keys[0]: _like(image, t_img, image=True), self.keys[1]: _like(inst_map, t_inst, image=False),
                self.keys[2]: _like(type_map, t_typ, image=False)}

    def apply_transform(self, transform, item):
        if not is_albumentations(transform):
            return transform(item)
        img, inst, typ = self._get(item)
        out = transform(image=img, masks=[inst, typ])
        new = dict(item) if isinstance(item, dict) else list(item)
        new[self.keys[0]] = out["image"]
        new[self.keys[1]], new[self.keys[2]] = out["masks"]
        return new if isinstance(item, dict) else type(item)(new)


class MappingAdapter(_KeyedAdapter):
    """Items are dicts; ``keys`` are the image / instance / type keys."""

    name = "dict"

    def __init__(self, keys: Sequence[Any] = ("image", "inst_map", "type_map")) -> None:
        super().__init__(keys)

    def synthetic_item(self, base, index, image, inst_map, type_map):
        own = self._own(base, index)  # the item this synthetic one replaces: its other fields stay
        fill = self._fill(own, image, inst_map, type_map)
        return {k: fill.get(k, v) for k, v in own.items() if k != "is_synthetic"}


class SequenceAdapter(_KeyedAdapter):
    """Items are tuples or lists; ``keys`` are the positions of image / instance / type."""

    name = "tuple"

    def __init__(self, keys: Sequence[int] = (0, 1, 2)) -> None:
        super().__init__(keys)

    def synthetic_item(self, base, index, image, inst_map, type_map):
        own = self._own(base, index)  # the item this synthetic one replaces: its other fields stay
        fill = self._fill(own, image, inst_map, type_map)
        out = [fill.get(i, v) for i, v in enumerate(own)]
        return type(own)(out)
