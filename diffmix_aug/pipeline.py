"""``build_pipeline``: the one place a :class:`~diffmix_aug.config.DiffMixConfig` becomes
label sampler + replay cache + producer (used by ``DiffMixDataset`` and ``diffmix-aug synthesize``).

It also settles the two facts every part must agree on, once:

* ``num_classes`` (background included): the config's, else the base's class table, else the
  synthesizer's; a synthesizer trained on another number of classes is refused here.
* ``rare_classes``: the config's, else the base's class table (``DatasetInfo.rare_classes``);
  balancing without either is refused here (enlarging needs none).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .cache import ReplayCache
from .config import DiffMixConfig
from .data.sample import NucleiSample
from .producer import Producer

__all__ = ["Pipeline", "build_label_sampler", "build_pipeline", "resolve_classes"]


@dataclass(frozen=True)
class Pipeline:
    """What :func:`build_pipeline` made.

    Attributes:
        config: The config with ``num_classes`` and ``rare_classes`` resolved.
        label_sampler: The ``LabelMapSampler`` (None without a synthesizer).
        cache: The shared :class:`ReplayCache`.
        producer: The :class:`Producer` (None without a synthesizer), not started.
    """

    config: DiffMixConfig
    label_sampler: Any
    cache: ReplayCache
    producer: Producer | None


def resolve_classes(config: DiffMixConfig, info: Any, synthesizer: Any) -> tuple[int, tuple[int, ...]]:
    """``(num_classes, rare_classes)`` from the config, the base's class table and the synthesizer.

    Raises:
        ValueError: no source for ``num_classes``; the synthesizer's differs; a balancing mode
            without ``rare_classes``; a rare class outside ``1..num_classes-1``.
    """
    synth_k = getattr(synthesizer, "num_classes", None)
    info_k = getattr(info, "num_classes", None)
    k = config.num_classes if config.num_classes is not None else (info_k if info_k is not None else synth_k)
    if k is None:
        raise ValueError("`num_classes` is unknown: the base has no class table (`info`) and the synthesizer does "
                         "not say; pass num_classes= (classes counting the background, e.g. 5 for CoNSeP)")
    k = int(k)
    if synth_k is not None and int(synth_k) != k:
        where = "num_classes=" if config.num_classes is not None else f"the base's class table ({info.name!r})"
        raise ValueError(f"the synthesizer was trained with num_classes={int(synth_k)} (background included) but "
                         f"{where} gives {k}; use the SDM trained on this dataset's classes")
    rare = config.rare_classes
    if rare is None:
        rare = getattr(info, "rare_classes", None)
    if rare is None:
        if config.balances and synthesizer is not None:  # a replay-only cache builds no label maps
            raise ValueError(f"`rare_classes` is required for mode={config.mode!r}: the base has no class table "
                             "to take it from; pass the minority classes, e.g. rare_classes=(1,) for CoNSeP's "
                             "miscellaneous (see diffmix_aug.data.classes for the known datasets)")
        rare = ()
    rare = tuple(int(c) for c in rare)
    bad = [c for c in rare if not 0 < c < k]
    if bad:
        raise ValueError(f"`rare_classes` {bad} are not foreground classes of a {k}-class label map (1..{k - 1})")
    return k, rare


def build_label_sampler(source: Sequence[NucleiSample], mode: str, num_classes: int,
                        rare_classes: Sequence[int], donors: Any = None,
                        patch_size: int | tuple[int, int] | None = None) -> Any:
    """The default ``LabelMapSampler`` for ``mode``, with a ``DonorBank`` of ``source`` when it balances.

    The border bands are the reference code's (30 px balancing, 32 px enlarging), which it sets for
    256 px patches. On smaller patches (``patch_size`` below 256) they are scaled down with
    :func:`~diffmix_aug.labelmaps.sampler.borders_for_patch`; otherwise no nucleus of a 64 px patch
    would ever be balanced or moved.
    """
    from .labelmaps.sampler import REFERENCE_PATCH, LabelMapSampler, borders_for_patch, mode_balances

    borders: dict[str, int] = {}
    if patch_size is not None:
        side = min(patch_size) if isinstance(patch_size, (tuple, list)) else int(patch_size)
        if side < REFERENCE_PATCH:
            borders = borders_for_patch(side)
    rare = tuple(rare_classes) or (1,)  # enlarging ignores them; the sampler wants a valid tuple
    if mode_balances(mode) and donors is None:
        from .labelmaps.donors import DonorBank

        donors = DonorBank.from_dataset(source, rare, **({"border": borders["border"]} if borders else {}))
    return LabelMapSampler(mode=mode, donors=donors, num_classes=num_classes, rare_classes=rare, **borders)


def build_pipeline(config: DiffMixConfig, source: Sequence[NucleiSample], synthesizer: Callable[..., Any] | None,
                   *, info: Any = None, raw_shape: Callable[[], Any] | None = None, label_sampler: Any = None,
                   donors: Any = None, rank: int = 0, cache_name: str | None = None,
                   cache_dir: Any = None, warm_start: bool = True) -> Pipeline:
    """Label sampler + cache + producer for ``config``.

    Args:
        config: The validated options.
        source: The base's raw patches (``NucleiSample`` per index), what label maps start from.
        synthesizer: ``synth(images, inst, types, generator=...) -> uint8 images`` or None (a
            cache only, e.g. to replay a store).
        info: The base's ``DatasetInfo`` (class table) if it has one.
        raw_shape: ``() -> (H, W)`` of the base's patches, called only when neither the config
            nor the synthesizer sets the patch size.
        label_sampler, donors: Replace the default label sampler / its donor bank.
        rank: Distributed rank (cache name, producer seeds).
        cache_name: File-name prefix of the on-disk store (default ``diffmix_r{rank}_s{seed}``).
        cache_dir: Overrides ``config.cache_dir`` (``synthesize`` writes to ``--out``).
        warm_start: Read the store's patches into the cache first.
    """
    if not isinstance(config, DiffMixConfig):
        raise TypeError(f"`config` must be a DiffMixConfig, got {type(config).__name__}")
    num_classes, rare = resolve_classes(config, info, synthesizer)
    config = config.replace(num_classes=num_classes, rare_classes=rare or None)
    shape = config.patch_size
    if shape is None and synthesizer is not None and getattr(synthesizer, "image_size", None) is not None:
        side = synthesizer.image_size
        shape = (int(side), int(side)) if not isinstance(side, (tuple, list)) else tuple(side)
    if shape is None and raw_shape is not None:
        shape = raw_shape()
    if shape is None or len(shape) != 2:
        raise ValueError(f"`patch_size` could not be found (the synthesizer has no image_size and the base no fixed "
                         f"patch shape, got {shape!r}); pass patch_size=(H, W)")
    shape = (int(shape[0]), int(shape[1]))
    cache = ReplayCache(config.cache_capacity, shape, inst_dtype=config.inst_dtype, policy=config.policy,
                        max_reuse=config.max_reuse, num_classes=num_classes,
                        cache_dir=cache_dir if cache_dir is not None else config.cache_dir,
                        name=cache_name or f"diffmix_r{rank}_s{config.seed}", warm_start=warm_start)
    producer = None
    if synthesizer is not None:
        if label_sampler is None:
            label_sampler = build_label_sampler(source, config.mode, num_classes, rare, donors, patch_size=shape)
        workers = 0 if config.cooperative else config.label_workers
        # cooperative: step() in the caller, nothing to start; else the config's backend
        backend = "thread" if config.cooperative else config.producer_backend
        producer = Producer(cache, synthesizer, source, label_sampler, batch_size=config.batch_size,
                            seed=config.seed, rank=rank, cpu_priority=config.producer_priority,
                            label_workers=workers, backend=backend, pause_on_load=config.producer_pause_on_load)
    return Pipeline(config, label_sampler, cache, producer)
