"""``DiffMixConfig``: every option of the online pipeline, validated once, in one frozen object.

The :class:`~diffmix_aug.dataset.DiffMixDataset` constructor, the ``diffmix:`` section of a YAML
file and the ``diffmix-aug synthesize`` command all go through this class, and
:func:`~diffmix_aug.pipeline.build_pipeline` turns it into label sampler + cache + producer.
Unknown keys are rejected with the valid ones listed; each field is checked here and nowhere else.

YAML::

    diffmix:
      mode: both                 # balance (DiffMix-B) | enlarge (DiffMix-E) | both (DiffMix)
      synthetic_ratio: 0.5
      seed: 0
      rare_classes: [1]          # default: the dataset's class table (DatasetInfo.rare_classes)
      schedule: {start_epoch: 0, ramp_epochs: 0}
      cache_capacity: 256
      max_reuse: 8
      warmup: none               # none | block | an int number of patches
      batch_size: 4
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._checks import check_choice, check_positive_int, check_probability, describe
from .labelmaps.sampler import MODES, mode_balances

__all__ = ["DiffMixConfig", "MODES", "Schedule", "load_diffmix_config"]

Mode = Literal["balance", "enlarge", "both"]
WARMUPS = ("none", "block")
POLICIES = ("fifo", "reuse")
INST_DTYPES = ("int32", "int16")
CPU_PRIORITIES = ("auto", "idle", "low", "normal")
#: where the background producer runs (see :class:`~diffmix_aug.producer.Producer`)
PRODUCER_BACKENDS = ("auto", "thread", "process")


@dataclass(frozen=True)
class Schedule:
    """Synthetic-ratio schedule: nothing before ``start_epoch``, then a linear ramp to the ratio.

    ``ratio(e) = 0`` for ``e < start_epoch``, else ``ratio * min(1, (e - start_epoch + 1) / ramp_epochs)``
    (``ramp_epochs = 0``: full ratio at once).
    """

    start_epoch: int = 0
    ramp_epochs: int = 0

    def __post_init__(self) -> None:
        check_positive_int("schedule.start_epoch", self.start_epoch, allow_zero=True)
        check_positive_int("schedule.ramp_epochs", self.ramp_epochs, allow_zero=True)

    def __call__(self, epoch: int, ratio: float) -> float:
        if epoch < self.start_epoch:
            return 0.0
        if self.ramp_epochs <= 0:
            return ratio
        return ratio * min(1.0, (epoch - self.start_epoch + 1) / self.ramp_epochs)


def _int(name: str, value: Any) -> int:
    """An integer (numpy integers too; not bool, not a numeric string)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {describe(value)}")
    return int(value)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False, got {describe(value)}")
    return bool(value)


def _schedule(value: Any) -> Callable[[int, float], float]:
    if value is None:
        return Schedule()
    if isinstance(value, Schedule):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"start_epoch", "ramp_epochs"})
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in `schedule`; valid keys are ['start_epoch', 'ramp_epochs']")
        return Schedule(**dict(value))
    if callable(value):
        return value
    raise TypeError(f"`schedule` must be a Schedule, a dict(start_epoch=, ramp_epochs=) or a callable "
                    f"(epoch, ratio) -> ratio, got {describe(value)}")


@dataclass(frozen=True)
class DiffMixConfig:
    """Options of the online DiffMix pipeline (see :class:`~diffmix_aug.dataset.DiffMixDataset`).

    Attributes:
        mode: ``"balance"`` (DiffMix-B), ``"enlarge"`` (DiffMix-E) or ``"both"`` (DiffMix:
            the balanced map is enlarged).
        synthetic_ratio: Share of items replaced by synthetic ones (after the schedule).
        seed: Seed of the item decisions and of the producer (offset by the DDP rank).
        schedule: :class:`Schedule`, ``{"start_epoch": k, "ramp_epochs": r}`` or ``f(epoch, ratio)``.
        rare_classes: Minority classes balancing pastes in; None takes the base's class table
            (``DatasetInfo.rare_classes``) and is an error for balancing when the base has none.
        num_classes: Classes counting the background; None takes the base's class table, then the
            synthesizer's. Whatever the source, the synthesizer's own value must agree.
        cache_capacity: Patches in the shared replay cache.
        cache_dir: Optional on-disk store (HoVer-Net ``.npy``) that warm-starts the cache.
        patch_size: ``H`` or ``(H, W)`` of synthetic patches; None: the synthesizer's
            ``image_size``, else the base's raw patch size.
        warmup: ``"none"`` (serve originals until patches arrive), ``"block"`` (wait for
            ``warmup_items`` patches, default ``min(8, cache_capacity)``) or an int ``k``.
        warmup_items: Patches ``warmup="block"`` waits for.
        warmup_timeout: Seconds a blocking warm-up waits before ``TimeoutError``.
        cooperative: Synthesise synchronously every ``cooperative_every`` items instead of in a
            thread (bit-reproducible; needs ``num_workers=0``).
        cooperative_every: Items between two cooperative batches.
        batch_size: Synthesizer batch size.
        policy: Cache eviction, ``"fifo"`` or ``"reuse"`` (see :class:`~diffmix_aug.cache.ReplayCache`).
        max_reuse: Serves per cached patch; past it the item is served as an original.
        inst_dtype: ``"int32"`` or ``"int16"`` instance maps in the cache.
        producer_priority: ``"auto"``, ``"idle"``, ``"low"`` or ``"normal"`` (see
            :class:`~diffmix_aug.producer.Producer`).
        producer_backend: ``"auto"`` (default: the process where it can run, a CPU synthesizer on
            Linux; else the thread, which a CUDA synthesizer needs to launch kernels from the
            process holding the CUDA context), ``"thread"`` (a daemon thread of the training
            process) or ``"process"`` (CPU synthesizer on Linux only: a forked process of its own,
            with one intra-op thread, so it never holds the training process's GIL). Measured
            beside two busy processes on 2 cores (``python -m benchmarks.loader --busy 2``), the
            thread cost the loop's wait +49 % of a 100 ms step at 0 workers as root in one run (a
            SCHED_IDLE thread preempted while holding the GIL; +0.6 % in the latest), the process
            -3.7 % (-2.6 % at 2 workers; ``loader_busy.json``).
        producer_pause_on_load: With the process backend, stop the producer process while the
            training process loads a batch itself (``num_workers=0``: ``SIGSTOP`` / ``SIGCONT``
            around the batch, at most 90 % of the wall time; Linux), so on a busy host its CPU time
            comes out of the training step instead of the loop's loading (see
            :mod:`~diffmix_aug.load_pause`). Measured beside two busy processes on 2 cores
            (``python -m benchmarks.loader --busy 2``, 0 workers, extra wait of a 100 ms step
            against the bare dataset): -3.7 % with it, +3.1 % without (medians of 3 paired runs);
            -4.1 +- 1.1 % and -3.0 +- 1.2 % in 60 interleaved rounds. DataLoader workers never
            pause it. False lets it run through loads (on an idle many-core host it then also uses
            the loading time).
        label_workers: Processes that build label maps for the producer thread (a small
            ``DataLoader``); 0 builds them in the producer thread (always so in cooperative mode).
            A producer process builds its label maps itself (it is off the training process already). The default 1
            also on 2-core hosts: 0 measured no lower consumer wait there, and fewer patches/s
            (``python -m benchmarks.loader --variants``, ``benchmarks/results/loader.json``).
        adapter: Force an adapter by name (``"hovernet"``, ``"sonnet"``, ``"nuclei"``, ``"dict"``,
            ``"tuple"``) or pass an :class:`~diffmix_aug.adapters.Adapter`; None detects it.
        keys: Image / instance / type keys (dict items) or positions (tuple items).
    """

    mode: Mode = "both"
    synthetic_ratio: float = 0.5
    seed: int = 0
    schedule: Any = None
    rare_classes: tuple[int, ...] | None = None
    num_classes: int | None = None
    cache_capacity: int = 256
    cache_dir: str | None = None
    patch_size: tuple[int, int] | None = None
    warmup: str | int = "none"
    warmup_items: int | None = None
    warmup_timeout: float = 600.0
    cooperative: bool = False
    cooperative_every: int = 16
    batch_size: int = 4
    policy: str = "fifo"
    max_reuse: int = 8
    inst_dtype: str = "int32"
    producer_priority: str = "auto"
    producer_backend: str = "auto"
    producer_pause_on_load: bool = True
    label_workers: int = 1
    adapter: Any = None
    keys: tuple | None = None

    def __post_init__(self) -> None:
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass normalisation
        check_choice("mode", self.mode, MODES)
        put("synthetic_ratio", check_probability("synthetic_ratio", self.synthetic_ratio))
        put("seed", _int("seed", self.seed))
        put("schedule", _schedule(self.schedule))
        if self.rare_classes is not None:
            rc = self.rare_classes
            if isinstance(rc, (int, np.integer)) and not isinstance(rc, bool):
                rc = (rc,)
            if isinstance(rc, (str, bytes)) or not isinstance(rc, (Sequence, np.ndarray)):
                raise TypeError(f"`rare_classes` must be a sequence of class ids such as (1,), got {describe(rc)}")
            rc = tuple(_int("rare_classes[]", c) for c in rc)
            if not rc or any(c <= 0 for c in rc):
                raise ValueError(f"`rare_classes` {rc} are not foreground classes: expected non-empty class ids >= 1")
            put("rare_classes", rc)
        if self.num_classes is not None:
            put("num_classes", _int("num_classes", self.num_classes))
            if self.num_classes < 2:
                raise ValueError(f"`num_classes` counts the background and must be >= 2, got {self.num_classes}")
            bad = [c for c in (self.rare_classes or ()) if c >= self.num_classes]
            if bad:
                raise ValueError(f"`rare_classes` {bad} are not foreground classes of a {self.num_classes}-class "
                                 f"label map (1..{self.num_classes - 1})")
        put("cache_capacity", check_positive_int("cache_capacity", self.cache_capacity))
        if self.cache_dir is not None:
            if not isinstance(self.cache_dir, (str, os.PathLike)):
                raise TypeError(f"`cache_dir` must be a path, got {describe(self.cache_dir)}")
            put("cache_dir", os.fspath(self.cache_dir))
        if self.patch_size is not None:
            ps = self.patch_size
            if isinstance(ps, (int, np.integer)) and not isinstance(ps, bool):
                ps = (ps, ps)
            if not isinstance(ps, (tuple, list)) or len(ps) != 2:
                raise ValueError(f"`patch_size` must be an int or (H, W), got {describe(self.patch_size)}")
            put("patch_size", (check_positive_int("patch_size[0]", ps[0]), check_positive_int("patch_size[1]", ps[1])))
        if isinstance(self.warmup, bool) or not (self.warmup in WARMUPS or isinstance(self.warmup, (int, np.integer))):
            raise ValueError(f"`warmup` must be 'none', 'block' or an int number of patches, got {self.warmup!r}")
        if not isinstance(self.warmup, str):
            put("warmup", check_positive_int("warmup", self.warmup, allow_zero=True))
        if self.warmup_items is not None:
            put("warmup_items", check_positive_int("warmup_items", self.warmup_items))
        wt = self.warmup_timeout
        if isinstance(wt, bool) or not isinstance(wt, (int, float)) or not wt > 0 or wt != wt:
            raise ValueError(f"`warmup_timeout` must be a positive number of seconds, got {wt!r}")
        put("warmup_timeout", float(wt))
        put("cooperative", _bool("cooperative", self.cooperative))
        put("cooperative_every", check_positive_int("cooperative_every", self.cooperative_every))
        put("batch_size", check_positive_int("batch_size", self.batch_size))
        check_choice("policy", self.policy, POLICIES)
        put("max_reuse", check_positive_int("max_reuse", self.max_reuse))
        check_choice("inst_dtype", self.inst_dtype, INST_DTYPES)
        check_choice("producer_priority", self.producer_priority, CPU_PRIORITIES)
        check_choice("producer_backend", self.producer_backend, PRODUCER_BACKENDS)
        put("producer_pause_on_load", _bool("producer_pause_on_load", self.producer_pause_on_load))
        put("label_workers", check_positive_int("label_workers", self.label_workers, allow_zero=True))
        if self.keys is not None:
            if isinstance(self.keys, (str, bytes)) or not isinstance(self.keys, Sequence):
                raise TypeError(f"`keys` must be a sequence (image, inst, type) of keys or positions, got "
                                f"{describe(self.keys)}")
            put("keys", tuple(self.keys))

    @property
    def balances(self) -> bool:
        """Whether this mode pastes rare nuclei (DiffMix-B and DiffMix)."""
        return mode_balances(self.mode)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, section: str = "diffmix") -> DiffMixConfig:
        """Build from a mapping; unknown keys raise ``ValueError`` listing the valid ones."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise TypeError(f"config section `{section}` must be a mapping, got {describe(data)}")
        valid = cls.field_names()
        unknown = sorted(str(k) for k in set(data) - set(valid))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in config section `{section}`; valid keys are {valid}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> DiffMixConfig:
        """A copy with fields changed (validated again)."""
        valid = self.field_names()
        unknown = sorted(set(changes) - set(valid))
        if unknown:
            raise ValueError(f"unknown DiffMixConfig field(s) {unknown}; valid fields are {valid}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """YAML-able dict (a callable schedule or an Adapter object is left out)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        sched = out["schedule"]
        out["schedule"] = dataclasses.asdict(sched) if isinstance(sched, Schedule) else None
        if out["adapter"] is not None and not isinstance(out["adapter"], str):
            out["adapter"] = None
        for k in ("rare_classes", "patch_size", "keys"):
            if out[k] is not None:
                out[k] = list(out[k])
        return out


def load_diffmix_config(source: str | os.PathLike[str] | Mapping[str, Any] | DiffMixConfig) -> DiffMixConfig:
    """Read the ``diffmix:`` section of a YAML file (``yaml.safe_load``) or a mapping.

    A file or mapping without a ``diffmix:`` key is read whole. Errors name the file.
    """
    if isinstance(source, DiffMixConfig):
        return source
    where = None
    if isinstance(source, Mapping):
        cfg: Any = dict(source)
    else:
        import yaml

        where = os.fspath(source)
        with open(source, encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh) or {}
        if not isinstance(cfg, dict):
            raise ValueError(f"{where}: must hold a mapping, got {type(cfg).__name__}")
    if "diffmix" in cfg:
        cfg = cfg["diffmix"]
    try:
        return DiffMixConfig.from_dict(cfg)
    except (TypeError, ValueError) as exc:
        if where is None:
            raise
        raise type(exc)(f"{where}: {exc}") from exc
