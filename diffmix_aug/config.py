"""``DiffMixConfig``: every option of the online pipeline, in one frozen object.

This is the only place that names, defaults, validates and documents an online option. Each field
carries its documentation and its check (``_option``); ``DiffMixDataset(base, synth, config,
**overrides)``, the ``diffmix:`` section of a YAML file and ``diffmix-aug synthesize`` all go
through it, and the options reference ``docs/configuration.md`` is generated from it
(:func:`options_reference`, ``python docs/gen_configuration.py``; a test checks they agree).
Unknown keys are refused with the valid ones listed; removed options (:data:`REMOVED`) are
refused with their replacement named.

YAML::

    diffmix:
      mode: union                # balance | enlarge | union | composed
      synthetic_ratio: 0.5
      seed: 0
      rare_classes: [1]          # default: the dataset's class table
      schedule: {start_epoch: 0, ramp_epochs: 0}
      cache_capacity: 256
      max_reuse: 8
      warmup: none               # none | block | an int number of patches
      batch_size: 4
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ._checks import check_choice, check_positive_int, check_probability, describe
from .modes import DEFAULT_MODE, MODES, Mode, check_mode, mode_balances

__all__ = ["DiffMixConfig", "MODES", "REMOVED", "Schedule", "load_diffmix_config", "options_reference"]

Warmup = Literal["none", "block"]
Policy = Literal["fifo", "reuse"]
InstDtype = Literal["int32", "int16"]

_OFFLINE = ("render the patches beforehand with `diffmix-aug synthesize` and pass its --out folder as "
            "cache_dir= (see docs/configuration.md, 'The offline pool')")
#: options that no longer exist -> what to use instead (refused with this text)
REMOVED: dict[str, str] = {
    "producer_backend": "the producer is always a daemon thread of the training process (on its own CUDA stream "
                        "on a GPU, at a lowered CPU priority on a CPU); a separate producer process measured no "
                        "benefit with DataLoader workers. On a busy CPU-only host " + _OFFLINE,
    "producer_priority": "a CPU producer thread always runs at nice +10 (its own thread only). On a busy "
                         "CPU-only host " + _OFFLINE,
    "producer_pause_on_load": "it paused the producer process, which no longer exists. With num_workers=0 on a "
                              "CPU-only host " + _OFFLINE,
}


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


# ---------------------------------------------------------------------- checks (value -> normalised value)
def _int(name: str, value: Any) -> int:
    """An integer (numpy integers too; not bool, not a numeric string)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {describe(value)}")
    return int(value)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False, got {describe(value)}")
    return bool(value)


def _positive(name: str, value: Any) -> int:
    return check_positive_int(name, value)


def _non_negative(name: str, value: Any) -> int:
    return check_positive_int(name, value, allow_zero=True)


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda name, value: None if value is None else check(name, value)


def _choice(*choices: str) -> Callable[[str, Any], str]:
    return lambda name, value: check_choice(name, value, choices)


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number of seconds, got {value!r}")
    return float(value)


def _schedule(name: str, value: Any) -> Callable[[int, float], float]:
    if value is None:
        return Schedule()
    if isinstance(value, Schedule):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"start_epoch", "ramp_epochs"})
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in `{name}`; valid keys are ['start_epoch', 'ramp_epochs']")
        return Schedule(**dict(value))
    if callable(value):
        return value
    raise TypeError(f"`{name}` must be a Schedule, a dict(start_epoch=, ramp_epochs=) or a callable "
                    f"(epoch, ratio) -> ratio, got {describe(value)}")


def _classes(name: str, value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"`{name}` must be a sequence of class ids such as (1,), got {describe(value)}")
    ids = tuple(_int(f"{name}[]", c) for c in value)
    if not ids or any(c <= 0 for c in ids):
        raise ValueError(f"`{name}` {ids} are not foreground classes: expected non-empty class ids >= 1")
    return ids


def _num_classes(name: str, value: Any) -> int | None:
    if value is None:
        return None
    k = _int(name, value)
    if k < 2:
        raise ValueError(f"`{name}` counts the background and must be >= 2, got {k}")
    return k


def _path(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"`{name}` must be a path, got {describe(value)}")
    return os.fspath(value)


def _patch_size(name: str, value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    ps = (value, value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    if not isinstance(ps, (tuple, list)) or len(ps) != 2:
        raise ValueError(f"`{name}` must be an int or (H, W), got {describe(value)}")
    return check_positive_int(f"{name}[0]", ps[0]), check_positive_int(f"{name}[1]", ps[1])


def _warmup(name: str, value: Any) -> str | int:
    if isinstance(value, str) and value in typing.get_args(Warmup):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return check_positive_int(name, value, allow_zero=True)
    raise ValueError(f"`{name}` must be 'none', 'block' or an int number of patches, got {value!r}")


def _keys(name: str, value: Any) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"`{name}` must be a sequence (image, inst, type) of keys or positions, got {describe(value)}")
    return tuple(value)


def _option(default: Any, doc: str, check: Callable[[str, Any], Any]) -> Any:
    """A config field: its default, its documentation (the options reference) and its check."""
    return field(default=default, metadata={"doc": " ".join(doc.split()), "check": check})


@dataclass(frozen=True)
class DiffMixConfig:
    """Options of the online DiffMix pipeline (see :class:`~diffmix_aug.dataset.DiffMixDataset`);
    every field is documented in ``docs/configuration.md``, generated from this class."""

    mode: Mode = _option(DEFAULT_MODE, """Which custom label maps are synthesised: ``"balance"`` (DiffMix-B:
        rare nuclei pasted over abundant ones, GradMix-style), ``"enlarge"`` (DiffMix-E: nuclei shifted),
        ``"union"`` (the paper's DiffMix: each patch from a balancing or an enlarging map, chosen per patch with
        probability 0.5) or ``"composed"`` (enlarge(balance(map))). ``"both"`` was removed: it is refused with
        these two replacements named.""", lambda n, v: check_mode(v, n))
    synthetic_ratio: float = _option(0.5, """Share of items replaced by a synthetic one (after the
        ``schedule``). Item ``i`` of epoch ``e`` asks for a synthetic patch when a hash of ``(seed, e, i)`` falls
        below it: the same decision in every worker and on resume.""", check_probability)
    seed: int = _option(0, """Seed of the per-item decisions and of the patch generator (offset by the DDP
        rank).""", _int)
    schedule: Any = _option(None, """Synthetic-ratio schedule: a ``Schedule``, ``{"start_epoch": k,
        "ramp_epochs": r}`` (nothing before epoch ``k``, then a linear ramp over ``r`` epochs) or a callable
        ``(epoch, ratio) -> ratio``. None: the full ratio from epoch 0.""", _schedule)
    rare_classes: tuple[int, ...] | None = _option(None, """Minority classes balancing pastes in. None takes the
        base's class table (``base.info.rare_classes``, e.g. CoNSeP's miscellaneous), then a patch store's
        manifest; required for the balancing modes when neither has one (a HoVer-Net loader, a dict
        dataset).""", _classes)
    num_classes: int | None = _option(None, """Classes counting the background. None takes the base's class
        table, else the synthesizer's, else a patch store's manifest; whatever the source, the synthesizer's own
        value must agree (a checkpoint trained on another class count is refused at construction).""",
                                      _num_classes)
    cache_capacity: int = _option(256, """Patches held in the shared-memory replay cache (every DataLoader
        worker reads it). Memory: about ``capacity * H * W * 8`` bytes.""", _positive)
    cache_dir: str | None = _option(None, """A patch store folder (HoVer-Net ``.npy`` + JSON sidecar per patch
        + ``manifest.json``; the format ``diffmix-aug synthesize`` writes). Its patches are loaded into the cache
        at construction; a folder made by another configuration (mode, class table, checkpoint, patch shape,
        sampler settings) is refused with the mismatch named. With a synthesizer the producer also adds its
        patches to the folder; with ``synthesizer=None`` the folder must exist and exactly its patches are
        served (see 'The offline pool').""", _path)
    patch_size: tuple[int, int] | None = _option(None, """``H`` or ``(H, W)`` of the synthetic patches. None:
        a patch store's (``cache_dir``), else the base's raw patch size (a HoVer-Net loader: its ``.npy`` side),
        unless the synthesizer object has an ``image_size`` (a ``Synthesizer`` has none).""", _patch_size)
    warmup: Warmup | int = _option("none", """``"none"``: serve originals until patches arrive;
        ``"block"``: the constructor waits for ``warmup_items`` patches; an int ``k``: waits for ``k``
        patches.""", _warmup)
    warmup_items: int | None = _option(None, """Patches ``warmup="block"`` waits for; None:
        ``min(8, cache_capacity)``.""", _optional(_positive))
    warmup_timeout: float = _option(600.0, """Seconds a blocking warm-up waits before ``TimeoutError`` (which
        names the producer's rate).""", _seconds)
    cooperative: bool = _option(False, """Synthesise synchronously in the consuming process every
        ``cooperative_every`` items instead of in the producer thread: bit-reproducible runs; needs
        ``num_workers=0``.""", _bool)
    cooperative_every: int = _option(16, "Items between two cooperative synthesis batches.", _positive)
    batch_size: int = _option(4, "Patches per synthesizer call.", _positive)
    policy: Policy = _option("fifo", """Which cached patch a new one replaces: ``"fifo"`` the oldest,
        ``"reuse"`` the most served (oldest among equals), so fresh patches are not evicted before they are
        read.""", _choice(*typing.get_args(Policy)))
    max_reuse: int = _option(8, """Serves per cached patch over the whole run, across all workers (a patch
        at the limit is never served again; the item is then an original). The producer never overwrites a
        patch before its first serve.""", _positive)
    inst_dtype: InstDtype = _option("int32", """Instance maps in the cache: ``"int32"``, or ``"int16"`` (half
        the memory; ids must stay below 32768).""", _choice(*typing.get_args(InstDtype)))
    label_workers: int = _option(1, """Processes that build the producer's label maps (a small
        ``DataLoader``) while it synthesises; 0 builds them in the producer thread (always so in cooperative
        mode).""", _non_negative)
    adapter: Any = _option(None, """Force the base-dataset adapter by name (``"hovernet"``, ``"sonnet"``,
        ``"nuclei"``, ``"dict"``, ``"tuple"``) or pass an ``Adapter``; None detects it.""", lambda n, v: v)
    keys: tuple | None = _option(None, """Image / instance / type keys (dict items) or positions (tuple
        items); None: ``("image", "inst_map", "type_map")`` / ``(0, 1, 2)``.""", _keys)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, f.metadata["check"](f.name, getattr(self, f.name)))

    @property
    def balances(self) -> bool:
        """Whether this mode pastes rare nuclei (``"balance"``, ``"union"``, ``"composed"``)."""
        return mode_balances(self.mode)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def check_keys(cls, keys: Any, where: str = "config section `diffmix`") -> None:
        """Refuse removed options (with their replacement) and unknown ones (with the valid ones listed)."""
        removed = [k for k in keys if k in REMOVED]
        if removed:
            raise ValueError("; ".join(f"`{k}` was removed: {REMOVED[k]}" for k in removed))
        valid = cls.field_names()
        unknown = sorted(str(k) for k in set(keys) - set(valid))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in {where}; valid keys are {valid}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, section: str = "diffmix") -> DiffMixConfig:
        """Build from a mapping; unknown or removed keys raise ``ValueError``."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise TypeError(f"config section `{section}` must be a mapping, got {describe(data)}")
        cls.check_keys(data, f"config section `{section}`")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> DiffMixConfig:
        """A copy with fields changed (validated again)."""
        self.check_keys(changes, "DiffMixConfig options")
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


def load_diffmix_config(source: str | os.PathLike[str] | Mapping[str, Any] | DiffMixConfig | None
                        ) -> DiffMixConfig:
    """A :class:`DiffMixConfig` from itself, a mapping or a YAML file (:func:`~diffmix_aug._yaml.load_yaml`:
    safe, no aliases); None: the defaults.

    A file or mapping with a ``diffmix:`` key is read from that section, else whole. Errors name the file.
    """
    if source is None:
        return DiffMixConfig()
    if isinstance(source, DiffMixConfig):
        return source
    where = None
    if isinstance(source, Mapping):
        cfg: Any = dict(source)
    elif isinstance(source, (str, os.PathLike)):
        where = os.fspath(source)
        if where in MODES or where == "both":
            raise TypeError(f"`config` is a DiffMixConfig, a mapping or a YAML path, got the mode {where!r}; "
                            f"pass it by name: mode={where!r}")
        from ._yaml import load_yaml

        cfg = load_yaml(source) or {}
        if not isinstance(cfg, dict):
            raise ValueError(f"{where}: must hold a mapping, got {type(cfg).__name__}")
    else:
        raise TypeError(f"`config` must be a DiffMixConfig, a mapping, a YAML path or None, got {describe(source)}")
    if "diffmix" in cfg:
        cfg = cfg["diffmix"]
    try:
        return DiffMixConfig.from_dict(cfg)
    except (TypeError, ValueError) as exc:
        if where is None:
            raise
        raise type(exc)(f"{where}: {exc}") from exc


# ---------------------------------------------------------------------- the options reference
_OFFLINE_SECTION = """\
## The offline pool: `cache_dir=` with `synthesizer=None`

`diffmix-aug synthesize --config C --out POOL` renders patches beforehand into a patch store (the
paper's offline mode; on a CPU-only host with a busy training loop this is what to do). Reading
it back:

```python
train_set = DiffMixDataset(base, None, cache_dir="POOL", mode="balance", cache_capacity=P, max_reuse=R)
```

No producer runs: exactly the pool's patches are served, with the usual accounting (`stats()`,
`item_info()`, `state_dict()`), in every DataLoader worker.

- The folder must exist and hold a `manifest.json`; a mode, class table or patch shape other than
  this dataset's is refused with the mismatch named. Without a synthesizer the checkpoint and the
  sampler settings are not compared (nothing is rendered); `patch_size`, `num_classes` and
  `rare_classes` default to the manifest's when the base has no class table.
- A pool larger than `cache_capacity`: the first `cache_capacity` patches in file-name order are
  loaded and a warning says how many are left out; those are never served. Set `cache_capacity` to
  the pool size to serve all of them (memory: about `P * H * W * 8` bytes).
- `max_reuse` is a limit over the whole run, not per epoch: with `S` items asking for a synthetic
  patch over the run (about `synthetic_ratio * len(base) * epochs`; `stats()` counts them), every
  ask is served only when `P * max_reuse >= S`, so set `max_reuse >= ceil(S / P)`. Past that, items
  are served as originals and `stats()` warns once per epoch.
- Under DDP, rank `r` of `W` loads every `W`-th patch from the `r`-th, so ranks serve disjoint
  patches (`P` above is then the rank's share).
"""


def options_reference() -> str:
    """The options reference (``docs/configuration.md``), rendered from :class:`DiffMixConfig`."""
    hints = typing.get_type_hints(DiffMixConfig)
    lines = ["# Configuration reference", "",
             "<!-- generated by `python docs/gen_configuration.py` from diffmix_aug/config.py; do not edit -->", "",
             "Every option of `DiffMixDataset(base, synthesizer, config=None, *, transform=None, **overrides)`, "
             "of the `diffmix:` section of a YAML config (`DiffMixDataset(base, synth, \"train.yaml\")`) and of "
             "`diffmix-aug synthesize`. Pass them by name (`DiffMixDataset(base, synth, mode=\"balance\")`) "
             "or in a `DiffMixConfig`; `dataset.config` holds the resolved values.", "",
             "| option | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(DiffMixConfig):
        kind = _type_name(hints[f.name])
        lines.append(f"| `{f.name}` | {kind} | `{f.default!r}` | {f.metadata['doc']} |")
    lines += ["", "## Removed options", "", "Passing one raises `ValueError` with this text.", "",
              "| option | instead |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in REMOVED.items()]
    lines += ["| `mode=\"both\"` | `\"union\"` (the paper's DiffMix) or `\"composed\"` (enlarge(balance(map)), "
              "the former `\"both\"`) |", "", _OFFLINE_SECTION]
    return "\n".join(lines)


def _type_name(hint: Any) -> str:
    """A readable type for the reference table: the choices of a ``Literal``, else the type's name."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " \\| ".join(f"`{a!r}`" for a in args)
    if args and origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if hint is type(None):
        return "None"
    if hint is Any:
        return "any"
    return f"`{getattr(hint, '__name__', str(hint)).replace('typing.', '')}`" if not args else \
        f"`{str(hint).replace('typing.', '')}`"
