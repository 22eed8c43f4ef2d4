"""``DiffMixDataset``: the one-line online DiffMix wrapper around an existing training dataset.

::

    train_set = DiffMixDataset(train_set, Synthesizer.from_checkpoint("sdm.safetensors"),
                               mode="union", synthetic_ratio=0.5, seed=0)
    train_set = DiffMixDataset(train_set, None, cache_dir="pool/")   # a pool rendered beforehand

Item ``i`` of epoch ``e`` is synthetic with probability ``ratio(e)``, decided by a hash of
``(seed, e, i)`` alone, so the decision is the same in every process and on resume. A synthetic
item is a patch from the shared :class:`~diffmix_aug.cache.ReplayCache`, turned into the base's
own item structure by the adapter (for HoVer-Net / SONNET loaders: through the loader's own
augmentation and target generation). When no cached patch can be served (the cache is still
empty, or every patch reached ``max_reuse``) the item is the original. The background
:class:`~diffmix_aug.producer.Producer` runs in the main process only; workers read the shared
cache. Dict items gain ``is_synthetic``; :meth:`DiffMixDataset.item_info` tells it for any item,
with the label-map parameters and seeds that made it. Every option is a
:class:`~diffmix_aug.config.DiffMixConfig` field (``docs/configuration.md``).
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ._checks import check_positive_int, describe
from ._seeds import key_uniform
from .adapters import Adapter, select_adapter
from .cache import CachedPatch
from .config import MODES, DiffMixConfig, Schedule, load_diffmix_config
from .data.sample import NucleiSample
from .pipeline import build_label_sampler, build_pipeline
from .producer import Producer, ProducerError

__all__ = ["MODES", "DiffMixConfig", "DiffMixDataset", "Schedule", "build_label_sampler", "load_diffmix_config"]

_log = logging.getLogger("diffmix_aug")


class _RawView(Sequence):
    """The base dataset seen as raw ``NucleiSample`` patches (what label maps are built from)."""

    def __init__(self, base: Any, adapter: Adapter) -> None:
        self.base, self.adapter = base, adapter

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> NucleiSample:  # type: ignore[override]
        return self.adapter.read_raw(self.base, int(index))


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank()), int(torch.distributed.get_world_size())
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _in_worker() -> bool:
    return torch.utils.data.get_worker_info() is not None


class DiffMixDataset(torch.utils.data.Dataset):
    """Mix DiffMix synthetic patches into an existing map-style nuclei dataset.

    Args:
        base: The training dataset: a ``NucleiDataset``, any dataset of dicts or tuples holding
            image / instance / type maps (``keys``), HoVer-Net's ``FileLoader`` or the SONNET
            port's loader (detected from its attributes).
        synthesizer: ``synth(images, inst_maps, type_maps, generator) -> uint8 images`` (a
            :class:`~diffmix_aug.sampling.synthesizer.Synthesizer` or any such callable), or None
            to serve the patches of ``cache_dir`` only (the offline pool: no producer).
        config: A :class:`DiffMixConfig`, a mapping or a YAML file (its ``diffmix:`` section);
            None: the defaults.
        transform: Applied identically to original and synthetic items (albumentations or callable).
        label_sampler: A ``LabelMapSampler`` replacing the default one (built for ``mode`` with a
            ``DonorBank`` of the base and its rare classes).
        donors: A ``DonorBank`` for the default label sampler.
        start: Start the producer now (else on the first item or :meth:`start`).
        **overrides: Any :class:`DiffMixConfig` option by name (``mode="balance"``,
            ``synthetic_ratio=0.3``, ...), applied over ``config`` and validated there; an unknown
            or removed option is refused with the valid ones / the replacement named.

    ``dataset.config`` holds the resolved options (``num_classes``, ``rare_classes`` and
    ``patch_size`` filled in) and ``dataset.classes`` the :class:`~diffmix_aug.class_table.ClassTable`.
    """

    def __init__(self, base: Any, synthesizer: Callable[..., np.ndarray] | None,
                 config: DiffMixConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None, *,
                 transform: Callable[[Any], Any] | None = None, label_sampler: Any = None, donors: Any = None,
                 start: bool = True, **overrides: Any) -> None:
        cfg = load_diffmix_config(config)
        if overrides:
            DiffMixConfig.check_keys(overrides, "DiffMixDataset options")
            cfg = cfg.replace(**overrides)
        self._setup(base, synthesizer, cfg, transform, label_sampler, donors, start)

    @classmethod
    def from_config(cls, base: Any, synthesizer: Callable[..., np.ndarray] | None,
                    config: DiffMixConfig | Mapping[str, Any] | str | os.PathLike[str], **kwargs: Any
                    ) -> DiffMixDataset:
        """The same as ``DiffMixDataset(base, synthesizer, config, **kwargs)``."""
        return cls(base, synthesizer, config, **kwargs)

    def _setup(self, base: Any, synthesizer: Any, config: DiffMixConfig, transform: Any, label_sampler: Any,
               donors: Any, start: bool) -> None:
        self.base = base
        try:
            n_base = len(base)
        except TypeError as exc:
            raise TypeError(f"`base` must be a map-style dataset with __len__ and __getitem__, got "
                            f"{describe(base)}") from exc
        if n_base == 0:
            raise ValueError("`base` is empty: DiffMixDataset needs at least one training patch to draw label "
                             "maps from; check the dataset's path or filters")
        if synthesizer is not None and not callable(synthesizer):
            raise TypeError(f"`synthesizer` must be callable (images, inst_maps, type_maps, generator=) or None, "
                            f"got {describe(synthesizer)}")
        self.transform = transform
        self.adapter = select_adapter(base, config.adapter, config.keys)
        self.rank, world = _rank_world()
        self._raw = _RawView(base, self.adapter)
        self._raw[0]  # validate one item here, in the caller's process (NaN / negative ids, size mismatch)
        pipe = build_pipeline(config, self._raw, synthesizer, info=getattr(base, "info", None),
                              raw_shape=lambda: self.adapter.raw_shape(base), label_sampler=label_sampler,
                              donors=donors, rank=self.rank, world=world)
        #: the resolved options (num_classes, rare_classes and patch_size filled in)
        self.config = pipe.config
        #: the resolved class table
        self.classes = pipe.classes
        self.cache = pipe.cache
        self.store = pipe.store
        self.synthesizer = synthesizer
        self.label_sampler = pipe.label_sampler
        self._producer: Producer | None = pipe.producer
        # shared with workers: [epoch, items served in the main process (cooperative clock)]
        self._control = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._served = torch.full((n_base,), -2, dtype=torch.int64).share_memory_()
        # per index: epoch of its last serve and whether that serve asked for a synthetic item
        self._served_epoch = torch.full((n_base,), -1, dtype=torch.int64).share_memory_()
        self._asked = torch.zeros((n_base,), dtype=torch.bool).share_memory_()
        self._warned_epochs: set[int] = set()
        self._started = False
        self._closed = False
        if self._producer is not None:  # a dataset dropped without close() stops its producer thread
            self._finalizer = weakref.finalize(self, self._producer.stop)
        if start:
            self.start()

    # read-only views of the config (one owner: self.config)
    mode = property(lambda self: self.config.mode)
    synthetic_ratio = property(lambda self: self.config.synthetic_ratio)
    seed = property(lambda self: self.config.seed)
    schedule = property(lambda self: self.config.schedule)
    cooperative = property(lambda self: self.config.cooperative)
    cooperative_every = property(lambda self: self.config.cooperative_every)
    warmup_timeout = property(lambda self: self.config.warmup_timeout)
    rare_classes = property(lambda self: self.classes.rare_classes)
    num_classes = property(lambda self: self.classes.num_classes)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> DiffMixDataset:
        """Start the producer thread (not in cooperative mode) and honour ``warmup`` (no-op without a producer)."""
        if self._started or self._producer is None:
            return self
        warmup = self.config.warmup
        k = warmup if isinstance(warmup, int) else (
            (self.config.warmup_items or min(self.cache.capacity, 8)) if warmup == "block" else 0)
        k = min(k, self.cache.capacity)
        if not self.cooperative:
            self._producer.start(warmup=k)  # the k patches the caller waits for are made at its priority
        if k > len(self.cache):
            if self.cooperative:
                while len(self.cache) < k:
                    self._cooperative_step()
            elif not self._wait_warmup(k):
                self._producer.check()
                rate = self._producer.patches_per_second()
                self._started = True  # the thread runs; later items do not wait again
                raise TimeoutError(
                    f"warmup: waited {self.warmup_timeout:.0f} s for {k} synthetic patches, the producer made "
                    f"{len(self.cache)} (rate {'unknown' if rate is None else f'{rate:.3f}/s'}); the host is "
                    "too busy or the SDM too large for this device: raise warmup_timeout, lower warmup_items, "
                    "use warmup='none', a GPU synthesizer, or render the patches beforehand (`diffmix-aug "
                    "synthesize`, then cache_dir=)")
        self._started = True  # only now: a Ctrl-C above leaves it unset, so the next item starts again
        return self

    def _wait_warmup(self, k: int) -> bool:
        """Wait up to ``warmup_timeout`` for ``k`` cached patches, showing a progress bar (stderr) with
        the producer's rate from the first second; True when they are there."""
        from tqdm import tqdm

        deadline = time.monotonic() + self.warmup_timeout
        with tqdm(total=k, desc="DiffMix warm-up", unit="patch", mininterval=1.0, leave=False) as bar:
            while True:
                left = deadline - time.monotonic()
                done = self._producer.wait_for(k, timeout=max(0.0, min(1.0, left)))
                bar.update(min(len(self.cache), k) - bar.n)
                rate = self._producer.patches_per_second()
                bar.set_postfix_str("rate " + ("measuring" if rate is None else f"{rate:.3g} patches/s"), refresh=False)
                if done or left <= 0 or self._producer.stopped:
                    return done

    def close(self) -> None:
        """Stop the producer and release the cache (idempotent; also run at interpreter exit).

        Returns within about 2 s even while a synthesis call runs (it stops at its next denoising
        step); no patch reaches the cache afterwards.
        """
        if self._closed:
            return
        self._closed = True
        if self._producer is not None:
            self._producer.close(timeout=1.5)  # leaves time for the label workers' shutdown within 2 s
        self.cache.close()

    def __enter__(self) -> DiffMixDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # workers get the shared cache and the base, never the synthesizer or the producer
        state = self.__dict__.copy()
        state.update(_producer=None, synthesizer=None, label_sampler=None)
        state.pop("_rec_np", None)  # numpy views: rebuilt on the tensors the worker receives
        state.pop("_finalizer", None)
        return state

    def _records(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """numpy views of ``(control, served, served_epoch, asked)`` (the same shared memory).

        Indexing a numpy array costs ~0.05 us against ~1.5 us for a tensor; the per-item path
        touches these five times. Built once per process (a spawned worker gets tensors, not views).
        """
        rec = self.__dict__.get("_rec_np")
        if rec is None:
            rec = (self._control.numpy(), self._served.numpy(), self._served_epoch.numpy(), self._asked.numpy())
            self.__dict__["_rec_np"] = rec
        return rec

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
        running = self._producer is not None and (self._producer.alive or self.cooperative)
        rate = self._producer.patches_per_second() if running else None  # none for a stopped or dead producer
        out = {"epoch": e, "items": int(mask.sum()), "synthetic_asked": asked, "synthetic_served": int(syn.size),
               "served_share": float(syn.size / asked) if asked else None,
               "distinct_patches": int(counts.size), "mean_reuse": float(counts.mean()) if counts.size else 0.0,
               "max_reuse": int(counts.max()) if counts.size else 0, "producer_patches_per_s": rate,
               "cache_filled": len(self.cache) if not self._closed else None}
        if asked and syn.size < asked / 2 and e not in self._warned_epochs:
            self._warned_epochs.add(e)
            if self._producer is None:
                why = (f"the patch store's {len(self.cache) if not self._closed else '?'} patches reached "
                       f"max_reuse={self.config.max_reuse} (a limit over the whole run); raise max_reuse to at least "
                       "the synthetic items asked over the run divided by the pool size, or cache_capacity")
            else:
                why = (f"the producer cannot keep up ({'n/a' if rate is None else f'{rate:.3f}'} patches/s); use "
                       "warmup='block', a GPU synthesizer, a pool rendered beforehand (cache_dir=), a larger "
                       "max_reuse or a lower synthetic_ratio")
            _log.warning("DiffMixDataset epoch %d: %d of %d items asked for a synthetic patch got one "
                         "(synthetic_ratio=%.2f; %d distinct patches): %s", e, syn.size, asked, self.ratio(e),
                         counts.size, why)
        return out

    @property
    def epoch(self) -> int:
        return int(self._records()[0][0])

    def ratio(self, epoch: int | None = None) -> float:
        """The synthetic ratio in effect at ``epoch`` (default: the current one)."""
        return float(self.schedule(self.epoch if epoch is None else epoch, self.synthetic_ratio))

    def wants_synthetic(self, index: int, epoch: int | None = None) -> bool:
        """The deterministic per-(seed, epoch, index) decision (before cache availability)."""
        e = self.epoch if epoch is None else epoch
        r = self.ratio(e)
        if r <= 0.0:
            return False
        return key_uniform(self.seed, e, index, 0x5D1F) < r

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
            self._cooperative_step()
        self._control[1] = clock + 1

    def _cooperative_step(self) -> None:
        """One synthesis batch in this thread; a failure is raised as the thread's would be."""
        try:
            self._producer.step()
        except Exception as exc:
            raise ProducerError(f"the DiffMix producer (cooperative step) failed: {exc!r}") from exc

    def _pick(self, index: int) -> CachedPatch | None:
        """First half of an item: the decision for ``index`` and, when synthetic, the cache read.

        Also starts the producer on the first item and re-raises its failure. Recorded in the
        served records; the item itself is built by :meth:`_build`.
        """
        if not self._started and self._producer is not None and not _in_worker():
            self.start()
        self._check_health()
        if self.cooperative and self._producer is not None:
            self._cooperative_tick()
        control, served, served_epoch, asked_rec = self._records()
        epoch = int(control[0])
        patch = None
        asked = self.wants_synthetic(index, epoch)
        if asked:
            patch = self.cache.serve((self.seed, epoch, index, 0xCAC4E))
        served[index] = patch.seq if patch is not None else -1
        served_epoch[index] = epoch
        asked_rec[index] = asked
        return patch

    def _build(self, index: int, patch: CachedPatch | None) -> Any:
        """Second half: the synthetic item of ``patch`` in the base's own structure, else the base's
        item ``index``; then the transform and ``is_synthetic``. Reads nothing from the cache."""
        if patch is not None:
            item = self.adapter.synthetic_item(self.base, index, patch.image, patch.inst_map, patch.type_map)
        else:
            item = self.base[index]
        if self.transform is not None:
            item = self.adapter.apply_transform(self.transform, item)
        return self.adapter.mark(item, patch is not None)

    def __getitem__(self, index: int) -> Any:
        try:
            index = operator.index(index)
        except TypeError:
            raise TypeError(f"DiffMixDataset index must be an int (0..{len(self) - 1}), got {describe(index)}; "
                            "index it like the base dataset") from None
        return self._build(index, self._pick(index))

    def item_info(self, index: int) -> dict[str, Any]:
        """What the last serve of item ``index`` was: original or synthetic, and how it was made.

        Returns:
            ``{"index", "epoch", "is_synthetic", "served", "seq", "meta"}``; ``meta`` (the patch's
            whole metadata: label-map parameters, seeds, position, mode, source index, checkpoint
            hash, sampler settings; ``"store"``: its name when it came from ``cache_dir``) is None
            for originals, in DataLoader workers, and for patches written more than
            ``4 * cache_capacity`` patches ago that have left the cache.
        """
        seq = int(self._served[index])
        meta = self.cache.meta(seq) if seq >= 0 else None
        return {"index": int(index), "epoch": self.epoch, "is_synthetic": seq >= 0, "served": seq != -2,
                "seq": seq if seq >= 0 else None, "meta": meta}

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self, cache_contents: bool = True) -> dict[str, Any]:
        """Epoch, cooperative clock, served records, cache state and producer state."""
        with self._paused():
            return {"seed": self.seed, "rank": self.rank, "mode": self.mode,
                    "synthetic_ratio": self.synthetic_ratio, "control": self._control.clone(),
                    "served": self._served.clone(), "served_epoch": self._served_epoch.clone(),
                    "asked": self._asked.clone(), "cache": self.cache.state_dict(cache_contents),
                    "producer": self._producer.state_dict() if self._producer is not None else None}

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
        with self._paused():
            self._control.copy_(torch.as_tensor(state["control"]))
            self._served.copy_(torch.as_tensor(state["served"]))
            if "served_epoch" in state:
                self._served_epoch.copy_(torch.as_tensor(state["served_epoch"]))
                self._asked.copy_(torch.as_tensor(state["asked"]))
            self.cache.load_state_dict(state["cache"])
            if self._producer is not None and state.get("producer") is not None:
                self._producer.load_state_dict(state["producer"])

    def _paused(self):
        """The producer held between batches (or nothing to hold)."""
        return self._producer.paused() if self._producer is not None else contextlib.nullcontext()
