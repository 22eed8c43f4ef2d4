"""``build_pipeline``: the one place a :class:`~diffmix_aug.config.DiffMixConfig` becomes label
sampler + patch generator + replay cache + patch store + producer (used by ``DiffMixDataset``).

It also settles, once, what every part must agree on: the :class:`~diffmix_aug.class_table.ClassTable`
(:func:`~diffmix_aug.class_table.resolve_classes`) and the patch shape; and it warm-starts the
cache from the patch store (``cache_dir``), refusing a store made by another configuration.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .cache import ReplayCache
from .class_table import ClassTable, resolve_classes
from .config import DiffMixConfig
from .data.sample import NucleiSample
from .generator import PatchGenerator
from .producer import Producer
from .store import REPLAY_KEYS, PatchStore, store_identity

__all__ = ["Pipeline", "build_label_sampler", "build_pipeline", "warm_start"]


@dataclass(frozen=True)
class Pipeline:
    """What :func:`build_pipeline` made.

    Attributes:
        config: The config with ``num_classes``, ``rare_classes`` and ``patch_size`` resolved.
        classes: The resolved :class:`ClassTable`.
        label_sampler: The ``LabelMapSampler`` (None without a synthesizer).
        generator: The :class:`PatchGenerator` (None without a synthesizer).
        cache: The shared :class:`ReplayCache`, warm-started from ``store``.
        store: The :class:`PatchStore` of ``cache_dir`` (None without one).
        producer: The :class:`Producer` (None without a synthesizer), not started.
    """

    config: DiffMixConfig
    classes: ClassTable
    label_sampler: Any
    generator: PatchGenerator | None
    cache: ReplayCache
    store: PatchStore | None
    producer: Producer | None


def build_label_sampler(source: Sequence[NucleiSample], mode: str, num_classes: int,
                        rare_classes: Sequence[int], donors: Any = None,
                        patch_size: int | tuple[int, int] | None = None) -> Any:
    """The default ``LabelMapSampler`` for ``mode``, with a ``DonorBank`` of ``source`` when it balances.

    The label-map settings are the reference code's (:class:`~diffmix_aug.labelmaps.settings.BalanceSettings`,
    :class:`~diffmix_aug.labelmaps.settings.EnlargeSettings`), whose border bands are set for 256 px
    patches. On smaller patches (``patch_size`` below 256) the bands are scaled down with
    :func:`~diffmix_aug.labelmaps.settings.borders_for_patch`; otherwise no nucleus of a 64 px patch
    would ever be balanced or moved.
    """
    from .labelmaps.sampler import LabelMapSampler, mode_balances
    from .labelmaps.settings import REFERENCE_PATCH, BalanceSettings, EnlargeSettings, borders_for_patch

    settings = {"balance": BalanceSettings(), "enlarge": EnlargeSettings()}
    if patch_size is not None:
        side = min(patch_size) if isinstance(patch_size, (tuple, list)) else int(patch_size)
        if side < REFERENCE_PATCH:
            settings = borders_for_patch(side)
    rare = tuple(rare_classes)
    if mode_balances(mode) and donors is None:
        from .labelmaps.donors import DonorBank

        donors = DonorBank.from_dataset(source, rare, settings["balance"].border)
    return LabelMapSampler(mode=mode, donors=donors, num_classes=num_classes, rare_classes=rare, **settings)


def warm_start(cache: ReplayCache, store: PatchStore, rank: int = 0, world: int = 1) -> int:
    """Load the store's patches into the cache; returns how many.

    Rank ``r`` of ``world`` takes every ``world``-th patch from the ``r``-th (ranks serve disjoint
    patches). Patches are taken in file-name order up to the cache's capacity; a larger pool is cut
    there, with a warning naming how many are left out. An unreadable or malformed patch is skipped
    with a warning. Each loaded patch keeps its sidecar metadata (plus ``"store"``: its name).
    """
    names = store.names()[rank::world]
    if len(names) > cache.capacity:
        warnings.warn(f"cache_dir {str(store.path)!r} holds {len(names)} patches{f' for rank {rank}' if world > 1 else ''}"
                      f", more than cache_capacity={cache.capacity}: the first {cache.capacity} in file-name order "
                      f"are loaded and the other {len(names) - cache.capacity} are never served; set "
                      f"cache_capacity={len(names)} to serve them all", RuntimeWarning, stacklevel=3)
    loaded = 0
    for name in names:
        if loaded == cache.capacity:
            break
        try:
            patch = store.read(name)
        except ValueError as exc:
            warnings.warn(f"skipping patch {name!r} of {str(store.path)!r}: {exc}", RuntimeWarning, stacklevel=3)
            continue
        cache.write(patch.image, patch.inst_map, patch.type_map, {**patch.meta, "store": name})
        cache.acquire_credit(timeout=0)  # an unread patch: the producer must not overwrite it first
        loaded += 1
    return loaded


def _patch_shape(config: DiffMixConfig, synthesizer: Any, manifest: dict | None,
                 raw_shape: Callable[[], Any] | None) -> tuple[int, int]:
    shape = config.patch_size
    if shape is None and getattr(synthesizer, "image_size", None) is not None:
        side = synthesizer.image_size
        shape = (int(side), int(side)) if not isinstance(side, (tuple, list)) else tuple(side)
    if shape is None and manifest is not None:
        shape = tuple(manifest["patch_shape"])
    if shape is None and raw_shape is not None:
        shape = raw_shape()
    if shape is None or len(shape) != 2:
        raise ValueError(f"`patch_size` could not be found (the synthesizer has no image_size and the base no fixed "
                         f"patch shape, got {shape!r}); pass patch_size=(H, W)")
    return int(shape[0]), int(shape[1])


def build_pipeline(config: DiffMixConfig, source: Sequence[NucleiSample], synthesizer: Callable[..., Any] | None,
                   *, info: Any = None, raw_shape: Callable[[], Any] | None = None, label_sampler: Any = None,
                   donors: Any = None, rank: int = 0, world: int = 1) -> Pipeline:
    """Everything the online pipeline needs for ``config`` (see the module).

    Args:
        config: The validated options.
        source: The base's raw patches (``NucleiSample`` per index), what label maps start from.
        synthesizer: ``synth(images, inst, types, generator=...) -> uint8 images``, or None: the
            cache then serves the patches of ``config.cache_dir`` only (the offline pool; no producer).
        info: The base's ``DatasetInfo`` (class table) if it has one.
        raw_shape: ``() -> (H, W)`` of the base's patches, called only when nothing else sets the
            patch size.
        label_sampler, donors: Replace the default label sampler / its donor bank.
        rank, world: Distributed rank and world size (seeds, the share of a warm-start pool).

    Raises:
        ValueError: no synthesizer and no ``cache_dir``; classes or patch shape unresolved; a
            ``cache_dir`` made by another configuration (named).
        FileNotFoundError: no synthesizer and ``cache_dir`` does not exist.
    """
    if not isinstance(config, DiffMixConfig):
        raise TypeError(f"`config` must be a DiffMixConfig, got {type(config).__name__}")
    manifest = None
    if synthesizer is None:
        if config.cache_dir is None:
            raise ValueError("synthesizer=None serves the patches of a patch store only: pass cache_dir=<a "
                             "`diffmix-aug synthesize` --out folder>, or pass a synthesizer")
        manifest = PatchStore.read_manifest(config.cache_dir)
    classes = resolve_classes(config.num_classes, config.rare_classes, info, synthesizer,
                              balances=config.balances and synthesizer is not None, mode=config.mode,
                              fallback=None if manifest is None else ClassTable.from_dict(manifest["classes"]))
    shape = _patch_shape(config, synthesizer, manifest, raw_shape)
    multiple = int(getattr(synthesizer, "size_multiple", 1) or 1)
    if multiple > 1 and (shape[0] % multiple or shape[1] % multiple):
        fit = tuple(max(multiple, s - s % multiple) for s in shape)
        raise ValueError(f"`patch_size` must be divisible by {multiple} for this SDM (its U-Net halves the size "
                         f"{multiple.bit_length() - 1} times), got {shape}; pass patch_size={fit} (a crop) or "
                         f"{tuple(s + (-s) % multiple for s in shape)} (mirror-padded)")
    if synthesizer is not None and len(source):
        from .labelmaps.sampler import check_label_maps

        first = source[0]  # the other items are checked as their label maps are drawn
        check_label_maps(first.inst_map, first.type_map, classes.num_classes, " of base item 0")
    config = config.replace(num_classes=classes.num_classes, rare_classes=classes.rare_classes or None,
                            patch_size=shape)
    cache = ReplayCache(config.cache_capacity, shape, inst_dtype=config.inst_dtype, policy=config.policy,
                        max_reuse=config.max_reuse, num_classes=classes.num_classes)
    generator = producer = store = None
    if synthesizer is not None:
        if label_sampler is None:
            label_sampler = build_label_sampler(source, config.mode, classes.num_classes, classes.rare_classes,
                                                donors, patch_size=shape)
        generator = PatchGenerator(source, label_sampler, synthesizer, mode=config.mode, classes=classes,
                                   patch_shape=shape, seed=config.seed, rank=rank)
        if config.cache_dir is not None:
            store = PatchStore.create(config.cache_dir, generator.identity, created_by="DiffMixDataset")
    elif config.cache_dir is not None:
        store = PatchStore.open(config.cache_dir, store_identity(config.mode, classes, shape), REPLAY_KEYS)
    if store is not None:
        warm_start(cache, store, rank, world)
    if generator is not None:
        producer = Producer(cache, generator, batch_size=config.batch_size,
                            label_workers=0 if config.cooperative else config.label_workers,
                            store=store if store is not None and store.writable else None,
                            store_prefix=f"online_r{rank}_{uuid.uuid4().hex[:8]}")
    return Pipeline(config, classes, label_sampler, generator, cache, store, producer)
