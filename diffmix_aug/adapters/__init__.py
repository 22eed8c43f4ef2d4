"""Base-dataset adapters: generic (NucleiDataset, dicts, tuples), HoVer-Net FileLoader, SONNET port."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..data.sample import NucleiSample
from .base import Adapter
from .generic import MappingAdapter, NucleiSampleAdapter, SequenceAdapter
from .hovernet import HoVerNetAdapter
from .sonnet import SonnetAdapter, sonnet_ordinal_map

__all__ = ["ADAPTERS", "Adapter", "HoVerNetAdapter", "MappingAdapter", "NucleiSampleAdapter",
           "SequenceAdapter", "SonnetAdapter", "select_adapter", "sonnet_ordinal_map"]

ADAPTERS: dict[str, type[Adapter]] = {
    "hovernet": HoVerNetAdapter, "sonnet": SonnetAdapter, "nuclei": NucleiSampleAdapter,
    "dict": MappingAdapter, "tuple": SequenceAdapter,
}


def select_adapter(base: Any, adapter: str | Adapter | None = None, keys: Sequence[Any] | None = None) -> Adapter:
    """The adapter for ``base``: forced by ``adapter`` (name or instance), else detected.

    Detection order: HoVer-Net ``FileLoader`` (``info_list``, ``input_shape``, ``mask_shape``,
    ``target_gen_func``, ``setup_augmentor``), the SONNET port (the same without
    ``target_gen_func``), ``NucleiDataset`` / ``NucleiSample`` items, dict items, tuple items.
    """
    if isinstance(adapter, Adapter):
        return adapter
    if adapter is not None:
        if adapter not in ADAPTERS:
            raise ValueError(f"`adapter` must be one of {sorted(ADAPTERS)} or an Adapter instance, got {adapter!r}")
        cls = ADAPTERS[adapter]
        return cls(keys) if keys is not None and cls in (MappingAdapter, SequenceAdapter) else cls()
    for cls in (HoVerNetAdapter, SonnetAdapter, NucleiSampleAdapter):
        if cls.matches(base):
            return cls()
    if len(base) == 0:
        raise ValueError("`base` is empty; DiffMixDataset needs at least one item")
    item = base[0]
    if isinstance(item, NucleiSample):
        return NucleiSampleAdapter()
    if isinstance(item, dict):
        return MappingAdapter(keys) if keys is not None else MappingAdapter()
    if isinstance(item, (tuple, list)):
        return SequenceAdapter(keys) if keys is not None else SequenceAdapter()
    raise TypeError(f"cannot adapt base items of type {type(item).__name__}; expected NucleiSample, dict or tuple, "
                    "or pass adapter=<Adapter instance>")
