"""``DiffMixDataset``: the one-line online DiffMix wrapper around an existing training dataset.

::

    train_set = DiffMixDataset(train_set, Synthesizer.from_checkpoint("sdm.safetensors"),
                               mode="both", synthetic_ratio=0.5, seed=0)

Item ``i`` of epoch ``e`` is synthetic with probability ``ratio(e)``, decided by a hash of
``(seed, e, i)`` alone, so the decision is the same in every process and on resume. A synthetic
item is a patch from the shared :class:`~diffmix_aug.cache.ReplayCache`, turned into the base's
own item structure by the adapter (for HoVer-Net / SONNET loaders: through the loader's own
augmentation and target generation). When the cache is still empty an original is served. The
background :class:`~diffmix_aug.producer.Producer` runs in the main process only; workers read the
shared cache. Dict items gain ``is_synthetic``; :meth:`DiffMixDataset.item_info` tells it for any
item, with the label-map parameters and seed that made it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._checks import check_choice, check_positive_int, check_probability, describe
from .adapters import Adapter, select_adapter
from .cache import ReplayCache
from .data.sample import NucleiSample
from .producer import Producer, ProducerError, derive_seed

__all__ = ["MODES", "DiffMixDataset", "Schedule", "build_label_sampler", "load_diffmix_config"]

#: DiffMix-B, DiffMix-E and DiffMix (both) of the paper's ablation
MODES = ("balance", "enlarge", "both")
_WARMUPS = ("none", "block")
_log = logging.getLogger("diffmix_aug")


@dataclass(frozen=True)
class Schedule:
    """Synthetic-ratio schedule: nothing before ``start_epoch``, then a linear ramp to the ratio.

    ``ratio(e) = 0`` for ``e < start_epoch``, else ``ratio * min(1, (e - start_epoch + 1) / ramp_epochs)``
    (``ramp_epochs = 0``: full ratio at once).
    """

    start_epoch: int = 0
    ramp_epochs: int = 0

    def __call__(self, epoch: int, ratio: float) -> float:
        if epoch < self.start_epoch:
            return 0.0
        if self.ramp_epochs <= 0:
            return ratio
        return ratio * min(1.0, (epoch - self.start_epoch + 1) / self.ramp_epochs)


def _as_schedule(schedule: Any) -> Callable[[int, float], float]:
    if schedule is None:
        return Schedule()
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, Mapping):
        unknown = set(schedule) - {"start_epoch", "ramp_epochs"}
        if unknown:
            raise ValueError(f"`schedule` keys must be start_epoch / ramp_epochs, got {sorted(unknown)}")
        return Schedule(**{k: check_positive_int(f"schedule.{k}", v, allow_zero=True) for k, v in schedule.items()})
    if callable(schedule):
        return schedule
    raise TypeError(f"`schedule` must be a Schedule, a dict(start_epoch=, ramp_epochs=) or a callable "
                    f"(epoch, ratio) -> ratio, got {describe(schedule)}")


class _RawView(Sequence):
    """The base dataset seen as raw ``NucleiSample`` patches (what label maps are built from)."""

    def __init__(self, base: Any, adapter: Adapter) -> None:
        self.base, self.adapter = base, adapter

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> NucleiSample:  # type: ignore[override]
        return self.adapter.read_raw(self.base, int(index))


def build_label_sampler(source: Sequence[NucleiSample], mode: str, num_classes: int,
                        rare_classes: Sequence[int], donors: Any = None,
                        patch_size: int | tuple[int, int] | None = None) -> Any:
    """The default ``LabelMapSampler`` for ``mode``, with a ``DonorBank`` of ``source`` when balancing.

    The border bands are the reference code's (30 px balancing, 32 px enlarging), which it sets for
    256 px patches. On smaller patches (``patch_size`` below 256) they are scaled down with
    :func:`~diffmix_aug.labelmaps.sampler.borders_for_patch`; otherwise no nucleus of a 64 px patch
    would ever be balanced or moved.
    """
    from .labelmaps.sampler import REFERENCE_PATCH, LabelMapSampler, borders_for_patch

    borders: dict[str, int] = {}
    if patch_size is not None:
        side = min(patch_size) if isinstance(patch_size, (tuple, list)) else int(patch_size)
        if side < REFERENCE_PATCH:
            borders = borders_for_patch(side)
    if donors is None and mode != "enlarge":
        from .labelmaps.donors import DonorBank

        donors = DonorBank.from_dataset(source, tuple(rare_classes), **({"border": borders["border"]} if borders else {}))
    return LabelMapSampler(mode=mode, donors=donors, num_classes=num_classes, rare_classes=tuple(rare_classes),
                           **borders)


def _check_int(name: str, value: Any) -> int:
    """An integer (numpy integers too; not bool, not a numeric string)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {describe(value)}")
    return int(value)


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return int(os.environ.get("RANK", 0))


def _in_worker() -> bool:
    return torch.utils.data.get_worker_info() is not None


class DiffMixDataset(torch.utils.data.Dataset):
    """Mix DiffMix synthetic patches into an existing map-style nuclei dataset.

    Args:
        base: The training dataset: a ``NucleiDataset``, any dataset of dicts or tuples holding
            image / instance / type maps (``keys``), HoVer-Net's ``FileLoader`` or the SONNET
            port's loader (detected from its attributes).
        synthesizer: ``synth(images, inst_maps, type_maps, generator) -> uint8 images`` (a
            :class:`~diffmix_aug.sampling.synthesizer.Synthesizer` or any such callable).
        mode: ``"balance"`` (DiffMix-B), ``"enlarge"`` (DiffMix-E) or ``"both"`` (DiffMix).
        synthetic_ratio: Share of items replaced by synthetic ones (after the schedule).
        seed: Seed of the item decisions and of the producer (offset by the DDP rank).
        schedule: :class:`Schedule`, ``{"start_epoch": k, "ramp_epochs": r}`` or ``f(epoch, ratio)``.
        transform: Applied identically to original and synthetic items (albumentations or callable).
        adapter: Force an adapter (``"hovernet"``, ``"sonnet"``, ``"nuclei"``, ``"dict"``, ``"tuple"``
            or an :class:`~diffmix_aug.adapters.Adapter`).
        keys: Image / instance / type keys (dicts) or positions (tuples).
        cache_capacity: Patches in the shared replay cache.
        cache_dir: Optional on-disk store (HoVer-Net ``.npy``) that warm-starts the cache.
        patch_size: ``(H, W)`` of synthetic patches; default: the synthesizer's ``image_size`` or the
            base's raw patch size.
        warmup: ``"none"`` (serve originals until patches arrive), ``"block"`` (wait for
            ``warmup_items`` patches when the producer starts) or an int ``k`` (block for ``k``).
        cooperative: Synthesise synchronously every ``cooperative_every`` items instead of in a
            thread (bit-reproducible; needs ``num_workers=0``).
        label_sampler: A ``LabelMapSampler``; default: one built for ``mode`` with a ``DonorBank``
            of the base (``donors``) and its rare classes.
        donors: A ``DonorBank`` for the default label sampler.
        rare_classes: Minority classes (default: ``base.info.rare_classes`` or ``(1,)``).
        num_classes: Classes counting the background (default: the synthesizer's / base's).
        batch_size: Synthesizer batch size.
        policy, max_reuse, inst_dtype: :class:`ReplayCache` options.
        producer_priority: CPU scheduling of the producer thread when it synthesises on the CPU:
            ``"auto"`` (default: only on idle cores, so workers and the training step never wait
            for it, raised to nice +10 when a batch starves on a busy host), ``"idle"`` (idle cores
            only, may starve), ``"low"`` (nice +10) or ``"normal"`` (see
            :class:`~diffmix_aug.producer.Producer`).
        warmup_timeout: Seconds ``warmup="block"`` (or an int) waits for its patches before it
            raises ``TimeoutError`` naming the cause.
        start: Start the producer now (else on the first item or :meth:`start`).
    """

    def __init__(
        self,
        base: Any,
        synthesizer: Callable[..., np.ndarray],
        mode: str = "both",
        synthetic_ratio: float = 0.5,
        seed: int = 0,
        schedule: Any = None,
        transform: Callable[[Any], Any] | None = None,
        adapter: str | Adapter | None = None,
        keys: Sequence[Any] | None = None,
        cache_capacity: int = 256,
        cache_dir: str | os.PathLike[str] | None = None,
        patch_size: int | tuple[int, int] | None = None,
        warmup: str | int = "none",
        warmup_items: int | None = None,
        cooperative: bool = False,
        cooperative_every: int = 16,
        label_sampler: Any = None,
        donors: Any = None,
        rare_classes: Sequence[int] | None = None,
        num_classes: int | None = None,
        batch_size: int = 4,
        policy: str = "fifo",
        max_reuse: int = 8,
        inst_dtype: str = "int32",
        producer_priority: str = "auto",
        warmup_timeout: float = 600.0,
        start: bool = True,
    ) -> None:
        self.base = base
        try:
            n_base = len(base)
        except TypeError as exc:
            raise TypeError(f"`base` must be a map-style dataset with __len__ and __getitem__, got "
                            f"{describe(base)}") from exc
        if n_base == 0:
            raise ValueError("`base` is empty: DiffMixDataset needs at least one training patch to draw label "
                             "maps from; check the dataset's path or filters")
        self.mode = check_choice("mode", mode, MODES)
        self.synthetic_ratio = check_probability("synthetic_ratio", synthetic_ratio)
        self.seed = _check_int("seed", seed)
        if not isinstance(cooperative, (bool, np.bool_)):
            raise TypeError(f"`cooperative` must be True or False, got {describe(cooperative)}")
        self.schedule = _as_schedule(schedule)
        self.transform = transform
        self.adapter = select_adapter(base, adapter, keys)
        self.cooperative = bool(cooperative)
        self.cooperative_every = check_positive_int("cooperative_every", cooperative_every)
        if isinstance(warmup, bool) or not (warmup in _WARMUPS or isinstance(warmup, int)):
            raise ValueError(f"`warmup` must be 'none', 'block' or an int number of patches, got {warmup!r}")
        if isinstance(warmup_timeout, bool) or not isinstance(warmup_timeout, (int, float)) \
                or not warmup_timeout > 0:
            raise ValueError(f"`warmup_timeout` must be a positive number of seconds, got {warmup_timeout!r}")
        self.warmup_timeout = float(warmup_timeout)
        self.rank = _rank()
        self._raw = _RawView(base, self.adapter)
        info = getattr(base, "info", None)
        if rare_classes is None:
            rare_classes = getattr(info, "rare_classes", (1,))
        if isinstance(rare_classes, (str, bytes)) or not isinstance(rare_classes, (Sequence, np.ndarray)):
            raise TypeError(f"`rare_classes` must be a sequence of class ids such as (1,), got {describe(rare_classes)}")
        self.rare_classes = tuple(_check_int("rare_classes[]", c) for c in rare_classes)
        synth_k = getattr(synthesizer, "num_classes", None)
        if num_classes is None:
            num_classes = synth_k or getattr(base, "num_classes", None) \
                or getattr(info, "num_classes", None) or 8
        self.num_classes = check_positive_int("num_classes", num_classes)
        if synth_k is not None and int(synth_k) != self.num_classes:
            raise ValueError(f"`num_classes`={self.num_classes} but the synthesizer was trained with "
                             f"num_classes={int(synth_k)} (background included); use the SDM trained on this "
                             "dataset's classes or drop num_classes=")
        bad = [c for c in self.rare_classes if not 0 < c < self.num_classes]
        if bad:
            raise ValueError(f"`rare_classes` {bad} are not foreground classes of a {self.num_classes}-class "
                             f"label map (1..{self.num_classes - 1})")
        shape = self._patch_shape(patch_size, synthesizer)
        self.cache = ReplayCache(cache_capacity, shape, inst_dtype=inst_dtype, policy=policy,
                                 max_reuse=max_reuse, num_classes=max(2, self.num_classes),
                                 cache_dir=cache_dir, name=f"diffmix_r{self.rank}_s{self.seed}")
        if label_sampler is None and synthesizer is not None:
            label_sampler = self._default_label_sampler(donors)
        self.synthesizer = synthesizer
        self.label_sampler = label_sampler
        self._producer: Producer | None = None
        if synthesizer is not None:
            self._producer = Producer(self.cache, synthesizer, self._raw, label_sampler, batch_size=batch_size,
                                      seed=self.seed, rank=self.rank, cpu_priority=producer_priority,
                                      rare_classes=self.rare_classes if self.mode != "enlarge" else ())
        # shared with workers: [epoch, items served in the main process (cooperative clock)]
        self._control = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._served = torch.full((len(base),), -2, dtype=torch.int64).share_memory_()
        # per index: epoch of its last serve and whether that serve asked for a synthetic item
        self._served_epoch = torch.full((len(base),), -1, dtype=torch.int64).share_memory_()
        self._asked = torch.zeros((len(base),), dtype=torch.bool).share_memory_()
        self._warned_epochs: set[int] = set()
        self._warmup = warmup
        self._warmup_items = warmup_items
        self._started = False
        self._closed = False
        if start:
            self.start()

    # ------------------------------------------------------------------ construction helpers
    def _patch_shape(self, patch_size: Any, synthesizer: Any) -> tuple[int, int]:
        if patch_size is None:
            patch_size = getattr(synthesizer, "image_size", None)
        if patch_size is None:
            patch_size = self.adapter.raw_shape(self.base)
        if isinstance(patch_size, (int, np.integer)):
            patch_size = (int(patch_size), int(patch_size))
        if patch_size is None or len(patch_size) != 2:
            raise ValueError(f"`patch_size` must be an int or (H, W), got {patch_size!r}")
        return int(patch_size[0]), int(patch_size[1])

    def _default_label_sampler(self, donors: Any) -> Any:
        return build_label_sampler(self._raw, self.mode, self.num_classes, self.rare_classes, donors,
                                   patch_size=self.cache.patch_shape)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> DiffMixDataset:
        """Start the producer thread (not in cooperative mode) and honour ``warmup``."""
        if self._started or self._producer is None:
            return self
        self._started = True
        if not self.cooperative:
            self._producer.start()
        k = self._warmup if isinstance(self._warmup, int) else (
            (self._warmup_items or min(self.cache.capacity, 8)) if self._warmup == "block" else 0)
        k = min(k, self.cache.capacity)
        if k > len(self.cache):
            if self.cooperative:
                while len(self.cache) < k:
                    self._producer.step()
            elif not self._producer.wait_for(k, timeout=self.warmup_timeout):
                self._producer.check()
                rate = self._producer.patches_per_second()
                raise TimeoutError(
                    f"warmup: waited {self.warmup_timeout:.0f} s for {k} synthetic patches, the producer made "
                    f"{len(self.cache)} (rate {'unknown' if rate is None else f'{rate:.3f}/s'}, "
                    f"producer_priority={self._producer.cpu_priority!r}); the host is too busy or the SDM "
                    "too large for this device: raise warmup_timeout, lower warmup_items, use "
                    "warmup='none' or a GPU synthesizer")
        return self

    def close(self) -> None:
        """Stop the producer and release the cache (idempotent; also run at interpreter exit).

        Returns within about 2 s even while a synthesis call runs (it stops at its next denoising
        step); no patch reaches the cache afterwards.
        """
        if self._closed:
            return
        self._closed = True
        if self._producer is not None:
            self._producer.close(timeout=2.0)
        self.cache.close()

    def __enter__(self) -> DiffMixDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # workers get the shared cache and the base, never the synthesizer or the producer
        state = self.__dict__.copy()
        state.update(_producer=None, synthesizer=None, label_sampler=None)
        return state

    def __getattr__(self, name: str) -> Any:
        # read-only pass-through to the base (e.g. HoVer-Net code reading .info_list)
        if name.startswith("__") or "base" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["base"], name)

    @property
    def producer(self) -> Producer | None:
        """The background producer (main process only; None in workers)."""
        return self._producer

    # ------------------------------------------------------------------ epochs and decisions
    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (visible to running workers, persistent ones included).

        Before moving on it checks the finished epoch's :meth:`stats` (a warning when the served
        synthetic share fell below half of what was asked).
        """
        epoch = check_positive_int("epoch", epoch, allow_zero=True)
        if epoch != self.epoch:
            self.stats(self.epoch)
        self._control[0] = epoch

    def stats(self, epoch: int | None = None) -> dict[str, Any]:
        """What the loader delivered in ``epoch`` (default: the current one), over all workers.

        Returns:
            ``{"epoch", "items", "synthetic_asked", "synthetic_served", "served_share",
            "distinct_patches", "mean_reuse", "max_reuse", "producer_patches_per_s",
            "cache_filled"}``. ``synthetic_asked`` counts items whose deterministic decision was
            synthetic; ``synthetic_served`` those that got a cached patch (the others were served
            as originals: empty cache or every patch at ``max_reuse``). ``mean_reuse`` /
            ``max_reuse`` are serves per distinct patch in this epoch. A warning is logged once per
            epoch when fewer than half of the asked items were served synthetic.
        """
        e = self.epoch if epoch is None else int(epoch)
        mask = (self._served_epoch == e).numpy()
        seqs = self._served.numpy()[mask]
        asked = int(self._asked.numpy()[mask].sum())
        syn = seqs[seqs >= 0]
        counts = np.unique(syn, return_counts=True)[1] if syn.size else np.zeros(0, np.int64)
        rate = self._producer.patches_per_second() if self._producer is not None else None
        out = {"epoch": e, "items": int(mask.sum()), "synthetic_asked": asked, "synthetic_served": int(syn.size),
               "served_share": float(syn.size / asked) if asked else None,
               "distinct_patches": int(counts.size), "mean_reuse": float(counts.mean()) if counts.size else 0.0,
               "max_reuse": int(counts.max()) if counts.size else 0, "producer_patches_per_s": rate,
               "cache_filled": len(self.cache) if not self._closed else None}
        if asked and syn.size < asked / 2 and e not in self._warned_epochs:
            self._warned_epochs.add(e)
            _log.warning("DiffMixDataset epoch %d: %d of %d items asked for a synthetic patch got one "
                         "(synthetic_ratio=%.2f; %d distinct patches, producer %s patches/s): the producer "
                         "cannot keep up; use warmup='block', a GPU synthesizer, a larger max_reuse or a "
                         "lower synthetic_ratio", e, syn.size, asked, self.ratio(e), counts.size,
                         "n/a" if rate is None else f"{rate:.3f}")
        return out

    @property
    def epoch(self) -> int:
        return int(self._control[0])

    def ratio(self, epoch: int | None = None) -> float:
        """The synthetic ratio in effect at ``epoch`` (default: the current one)."""
        return float(self.schedule(self.epoch if epoch is None else epoch, self.synthetic_ratio))

    def wants_synthetic(self, index: int, epoch: int | None = None) -> bool:
        """The deterministic per-(seed, epoch, index) decision (before cache availability)."""
        e = self.epoch if epoch is None else epoch
        r = self.ratio(e)
        if r <= 0.0:
            return False
        u = np.random.default_rng(derive_seed(self.seed, e, index, 0x5D1F)).random()
        return bool(u < r)

    def setup_augmentor(self, worker_id: int, seed: int) -> None:
        """Forwarded to the base (HoVer-Net's ``worker_init_fn`` calls it on the dataset)."""
        self.adapter.setup_augmentor(self.base, worker_id, seed)

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self.base)

    def _check_health(self) -> None:
        if self._closed:
            raise RuntimeError("DiffMixDataset is closed; build a new one")
        if self._producer is not None and not _in_worker():
            self._producer.check()
        err = self.cache.error()
        if err is not None:
            raise ProducerError(f"the DiffMix producer (main process) failed:\n{err}")

    def _cooperative_tick(self) -> None:
        if _in_worker():
            raise RuntimeError("cooperative=True synthesises in the consuming process; use num_workers=0 "
                               "(or cooperative=False for the background producer)")
        clock = int(self._control[1])
        if clock % self.cooperative_every == 0:
            self._producer.step()
        self._control[1] = clock + 1

    def __getitem__(self, index: int) -> Any:
        index = int(index)
        if not self._started and self._producer is not None and not _in_worker():
            self.start()
        self._check_health()
        if self.cooperative and self._producer is not None:
            self._cooperative_tick()
        epoch = self.epoch
        item, seq = None, -1
        asked = self.wants_synthetic(index, epoch)
        if asked:
            rng = np.random.default_rng(derive_seed(self.seed, epoch, index, 0xCAC4E))
            slot = self.cache.pick(rng)
            patch = self.cache.read(slot) if slot is not None else None
            if patch is not None:
                item = self.adapter.synthetic_item(self.base, index, patch.image, patch.inst_map, patch.type_map)
                seq = patch.seq
        if item is None:
            item = self.base[index]
        self._served[index] = seq
        self._served_epoch[index] = epoch
        self._asked[index] = asked
        if self.transform is not None:
            item = self.adapter.apply_transform(self.transform, item)
        return self.adapter.mark(item, seq >= 0)

    def item_info(self, index: int) -> dict[str, Any]:
        """What the last serve of item ``index`` was: original or synthetic, and how it was made.

        Returns:
            ``{"index", "epoch", "is_synthetic", "seq", "meta"}``; ``meta`` (label-map params,
            batch seed, position, mode, source index) is None for originals and for patches that
            have since left the cache and the producer's history.
        """
        seq = int(self._served[index])
        meta = None
        if seq >= 0:
            slot = self.cache.find_seq(seq)
            if slot is not None:
                meta = self.cache.slot_meta(slot)
            if (meta is None or meta.get("seq") != seq) and self._producer is not None:
                meta = self._producer.history.get(seq)
        return {"index": int(index), "epoch": self.epoch, "is_synthetic": seq >= 0, "served": seq != -2,
                "seq": seq if seq >= 0 else None, "meta": meta}

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self, cache_contents: bool = True) -> dict[str, Any]:
        """Epoch, cooperative clock, served records, cache state and producer state."""
        lock = self._producer._lock if self._producer is not None else None
        if lock is not None:
            lock.acquire()
        try:
            return {"seed": self.seed, "rank": self.rank, "mode": self.mode,
                    "synthetic_ratio": self.synthetic_ratio, "control": self._control.clone(),
                    "served": self._served.clone(), "served_epoch": self._served_epoch.clone(),
                    "asked": self._asked.clone(), "cache": self.cache.state_dict(cache_contents),
                    "producer": self._producer.state_dict() if self._producer is not None else None}
        finally:
            if lock is not None:
                lock.release()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (same base, seed and cache size) to resume a run."""
        need = {"seed", "control", "served", "cache"}
        if not isinstance(state, Mapping) or not need <= set(state):
            got = sorted(state) if isinstance(state, Mapping) else describe(state)
            raise ValueError(f"`state` must be the dict returned by DiffMixDataset.state_dict() with keys "
                             f"{sorted(need)} (and producer, served_epoch, asked), got {got}")
        if int(state["seed"]) != self.seed:
            raise ValueError(f"state was saved with seed={state['seed']}, this dataset has seed={self.seed}; "
                             "build it with the same seed to resume")
        if len(state["served"]) != len(self._served):
            raise ValueError(f"state covers {len(state['served'])} items, the base has {len(self._served)}")
        lock = self._producer._lock if self._producer is not None else None
        if lock is not None:
            lock.acquire()
        try:
            self._control.copy_(torch.as_tensor(state["control"]))
            self._served.copy_(torch.as_tensor(state["served"]))
            if "served_epoch" in state:
                self._served_epoch.copy_(torch.as_tensor(state["served_epoch"]))
                self._asked.copy_(torch.as_tensor(state["asked"]))
            self.cache.load_state_dict(state["cache"])
            if self._producer is not None and state.get("producer") is not None:
                self._producer.load_state_dict(state["producer"])
        finally:
            if lock is not None:
                lock.release()


_CONFIG_KEYS = {"mode", "synthetic_ratio", "seed", "schedule", "cache_capacity", "cache_dir", "patch_size",
                "warmup", "warmup_items", "cooperative", "cooperative_every", "rare_classes", "num_classes",
                "batch_size", "policy", "max_reuse", "inst_dtype", "adapter", "keys", "producer_priority",
                "warmup_timeout"}


def load_diffmix_config(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Read the ``diffmix:`` section of a YAML file (``yaml.safe_load``) or a mapping.

    Returns the keyword arguments of :class:`DiffMixDataset` it sets, validated by name (unknown
    keys raise with the list of known ones). A file without a ``diffmix:`` section is read whole.
    """
    if isinstance(source, Mapping):
        cfg = dict(source)
    else:
        import yaml

        with open(source, encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh) or {}
        if not isinstance(cfg, dict):
            raise ValueError(f"config {str(source)!r} must hold a mapping, got {type(cfg).__name__}")
    cfg = dict(cfg.get("diffmix", cfg))
    unknown = set(cfg) - _CONFIG_KEYS
    if unknown:
        raise ValueError(f"unknown diffmix config keys {sorted(unknown)}; known keys: {sorted(_CONFIG_KEYS)}")
    if "mode" in cfg:
        check_choice("mode", cfg["mode"], MODES)
    if "synthetic_ratio" in cfg:
        check_probability("synthetic_ratio", cfg["synthetic_ratio"])
    return cfg
