"""Training configuration: frozen dataclasses read from YAML (``safe_load``), unknown keys rejected.

Layout of a config file (every section optional except ``data``)::

    model: {preset: tiny, image_size: 64, ...any SDMConfig override}
    diffusion: {beta_schedule: linear, num_timesteps: 1000}
    data: {dataset: toy, num_images: 64, image_size: 96, crop_size: 64, seed: 0}
    train:
      batch_size: 8            # per process
      stages: [{name: stage1, steps: 600, lr: 1.0e-4, drop_rate: 0.0},
               {name: finetune, steps: 200, lr: 2.0e-5, drop_rate: 0.2}]
      ema_rate: 0.9999
    out_dir: runs/sdm_tiny
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from .._checks import check_choice, check_in_range, check_positive_int, check_probability

__all__ = ["DataConfig", "DiffusionConfig", "ModelConfig", "StageConfig", "TrainConfig", "TrainLoopConfig",
           "load_train_config"]

DATASETS = ("toy", "consep", "glysac")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be true or false, got {type(value).__name__} {value!r}")


def _build(cls, data: Any, section: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TypeError(f"config section `{section}` must be a mapping, got {type(data).__name__}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in config section `{section}`; valid keys are {valid}")
    return cls(**data)


@dataclass(frozen=True)
class ModelConfig:
    """Which SDM to build: a preset plus :class:`~diffmix_aug.sdm.SDMConfig` overrides."""

    preset: str = "tiny"
    image_size: int | None = None
    overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ..sdm.config import SDMConfig
        from ..sdm.presets import PRESETS

        check_choice("model.preset", self.preset, PRESETS)
        if self.image_size is not None:
            check_positive_int("model.image_size", self.image_size)
        if self.overrides is None:
            object.__setattr__(self, "overrides", {})
        if not isinstance(self.overrides, dict):
            raise TypeError(f"`model.overrides` must be a mapping of SDMConfig fields, got "
                            f"{type(self.overrides).__name__} {self.overrides!r}")
        reserved = {"label_channels": "it is set from the dataset's classes",
                    "image_size": "set `model.image_size` instead"}
        valid = [k for k in SDMConfig.field_names() if k not in reserved]
        unknown = sorted(str(k) for k in set(self.overrides) - set(valid))
        if unknown:
            why = "; ".join(f"{k}: {reserved[k]}" for k in unknown if k in reserved)
            raise ValueError(f"unknown key(s) {unknown} in config section `model.overrides`"
                             f"{' (' + why + ')' if why else ''}; valid keys are {valid}")


@dataclass(frozen=True)
class DiffusionConfig:
    beta_schedule: str = "linear"
    num_timesteps: int = 1000

    def __post_init__(self) -> None:
        check_choice("diffusion.beta_schedule", self.beta_schedule, ("linear", "cosine"))
        check_positive_int("diffusion.num_timesteps", self.num_timesteps)


@dataclass(frozen=True)
class DataConfig:
    """Training data.

    Attributes:
        dataset: ``toy`` (procedural, :func:`~diffmix_aug.data.toy.make_toy_dataset`), ``consep`` or ``glysac``.
        data_root: Dataset directory (``consep`` / ``glysac``).
        num_images, image_size: Size of the toy dataset.
        crop_size: Side of the random training crops.
        augment: Use the 6 rotation / flip variants of the reference (each image appears 6x per epoch).
        seed: Toy-dataset seed.
        num_workers: DataLoader workers.
        merge: ``consep`` / ``glysac``: ``auto`` (default) merges the raw classes (CoNSeP 7 -> 4) only
            when the labels hold a raw type id; ``true`` / ``false`` force it (see
            :func:`~diffmix_aug.data.class_scan.resolve_merge`).
        downsample: Integer factor the images and maps are reduced by before cropping (2: CoNSeP's
            40x, 0.25 um/px, becomes 20x, 0.5 um/px, as in Lizard).
        holdout_tiles: Tiles left out of training (whole tiles, by number or name; see
            :func:`~diffmix_aug.data.split.split_by_tile`), kept for validation.
    """

    dataset: str = "toy"
    data_root: str | None = None
    num_images: int = 64
    image_size: int = 96
    crop_size: int = 64
    augment: bool = True
    seed: int = 0
    num_workers: int = 0
    merge: bool | str = "auto"
    downsample: int = 1
    holdout_tiles: tuple = ()

    def __post_init__(self) -> None:
        check_choice("data.dataset", self.dataset, DATASETS)
        from ..data.class_scan import check_merge_arg

        try:
            object.__setattr__(self, "merge", check_merge_arg(self.merge))
        except ValueError:
            raise ValueError(f"`data.merge` must be auto, true or false, got {self.merge!r}; auto merges raw "
                             "classes only when the labels hold a raw type id") from None
        check_positive_int("data.downsample", self.downsample)
        if self.holdout_tiles is None:
            object.__setattr__(self, "holdout_tiles", ())
        if not isinstance(self.holdout_tiles, (list, tuple)) or any(
                isinstance(t, bool) or not isinstance(t, (int, str)) for t in self.holdout_tiles):
            raise TypeError(f"`data.holdout_tiles` must be a list of tile numbers or names, e.g. [1, 2, 3, 4, 5], "
                            f"got {self.holdout_tiles!r}")
        object.__setattr__(self, "holdout_tiles", tuple(self.holdout_tiles))
        if self.dataset == "toy" and (self.holdout_tiles or self.downsample != 1):
            raise ValueError("`data.holdout_tiles` and `data.downsample` apply to consep / glysac folders, not to "
                             "the toy dataset; remove them")
        if self.data_root is not None and not isinstance(self.data_root, (str, os.PathLike)):
            raise TypeError(f"`data.data_root` must be a path string, got {type(self.data_root).__name__} "
                            f"{self.data_root!r}")
        check_positive_int("data.crop_size", self.crop_size)
        check_positive_int("data.num_images", self.num_images)
        check_positive_int("data.image_size", self.image_size)
        check_positive_int("data.seed", self.seed, allow_zero=True)
        _check_bool("data.augment", self.augment)
        if self.dataset == "toy" and self.crop_size > self.image_size:
            raise ValueError(f"`data.crop_size`={self.crop_size} must be <= `data.image_size`={self.image_size} "
                             "for the toy dataset; lower crop_size or raise image_size")
        check_positive_int("data.num_workers", self.num_workers, allow_zero=True)
        if self.dataset != "toy" and not self.data_root:
            raise ValueError(f"`data.data_root` is required for dataset {self.dataset!r}: set it to the dataset "
                             "directory (holding Train/Images and Train/Labels)")


@dataclass(frozen=True)
class StageConfig:
    """One training stage: ``steps`` optimizer steps at ``lr`` with label ``drop_rate``."""

    name: str
    steps: int
    lr: float
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"`train.stages[].name` must be a non-empty string, got {self.name!r}")
        check_positive_int(f"stage {self.name!r} steps", self.steps)
        check_in_range(f"stage {self.name!r} lr", self.lr, 0.0, 1.0, low_inclusive=False)
        check_probability(f"stage {self.name!r} drop_rate", self.drop_rate)


def _default_stages() -> tuple[StageConfig, ...]:
    return (StageConfig("stage1", 10000, 1e-4, 0.0), StageConfig("finetune", 5000, 2e-5, 0.2))


@dataclass(frozen=True)
class TrainLoopConfig:
    """Optimisation and bookkeeping.

    Attributes:
        batch_size: Per-process batch.
        stages: Consecutive stages (paper: stage 1 at 1e-4 / drop 0, fine-tune at 2e-5 / drop 0.2).
        ema_rate: EMA decay, updated after every successful step.
        ema_warmup: Ramp the decay as ``min(ema_rate, (1 + step) / (10 + step))`` (diffusers' convention;
            needed for short runs, see :func:`~diffmix_aug.train.loop.ema_decay`). False is the
            reference code's plain EMA.
        grad_clip: Max global grad norm, or None.
        amp: ``"auto"`` (fp16 autocast + GradScaler on CUDA, fp32 on CPU), ``"fp16"``, ``"bf16"``, ``"none"``.
        seed: Seed of data order, crops, timesteps, noise and label dropout.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        channels_last: Use the channels_last memory format.
        log_interval, sample_interval, save_interval: In steps (0 disables samples / periodic saves).
        sample_count: Images in the sample grid.
        sample_steps: DDIM steps of the sample grid.
        sample_guidance: Guidance scale ``s`` of the sample grid (``eps_u + s (eps_c - eps_u)``).
    """

    batch_size: int = 16
    stages: tuple = field(default_factory=_default_stages)
    ema_rate: float = 0.9999
    ema_warmup: bool = True
    grad_clip: float | None = None
    amp: str = "auto"
    seed: int = 0
    device: str = "auto"
    channels_last: bool = False
    log_interval: int = 10
    sample_interval: int = 500
    save_interval: int = 500
    sample_count: int = 4
    sample_steps: int = 50
    sample_guidance: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.stages, (list, tuple)):
            raise TypeError(f"`train.stages` must be a list of stages {{name, steps, lr, drop_rate}}, got "
                            f"{type(self.stages).__name__} {self.stages!r}")
        stages = tuple(s if isinstance(s, StageConfig) else _build(StageConfig, s, "train.stages[]")
                       for s in self.stages)
        if not stages:
            raise ValueError("`train.stages` must hold at least one stage {name, steps, lr, drop_rate}")
        object.__setattr__(self, "stages", stages)
        check_positive_int("train.batch_size", self.batch_size)
        check_in_range("train.ema_rate", self.ema_rate, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        _check_bool("train.ema_warmup", self.ema_warmup)
        _check_bool("train.channels_last", self.channels_last)
        check_positive_int("train.seed", self.seed, allow_zero=True)
        check_positive_int("train.sample_count", self.sample_count)
        check_positive_int("train.sample_steps", self.sample_steps)
        check_in_range("train.sample_guidance", self.sample_guidance, 0.0, float("inf"), high_inclusive=False)
        check_choice("train.amp", self.amp, ("auto", "fp16", "bf16", "none"))
        check_choice("train.device", self.device, ("auto", "cpu", "cuda"))
        for name in ("log_interval", "sample_interval", "save_interval"):
            check_positive_int(f"train.{name}", getattr(self, name), allow_zero=True)
        if self.grad_clip is not None:
            check_in_range("train.grad_clip", self.grad_clip, 0.0, float("inf"), low_inclusive=False)

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def stage_at(self, step: int) -> StageConfig:
        """The stage that optimizer step ``step`` (0-based) belongs to."""
        end = 0
        for s in self.stages:
            end += s.steps
            if step < end:
                return s
        return self.stages[-1]


@dataclass(frozen=True)
class TrainConfig:
    """The whole training configuration (see the module docstring for the YAML layout)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    out_dir: str = "runs/sdm"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a nested dict; unknown keys raise ``ValueError`` naming the valid ones."""
        if not isinstance(data, dict):
            raise TypeError(f"training config must be a mapping, got {type(data).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"unknown top-level config key(s) {unknown}; valid keys are {valid}")
        return cls(model=_build(ModelConfig, data.get("model"), "model"),
                   diffusion=_build(DiffusionConfig, data.get("diffusion"), "diffusion"),
                   data=_build(DataConfig, data.get("data"), "data"),
                   train=_build(TrainLoopConfig, data.get("train"), "train"),
                   out_dir=_out_dir(data.get("out_dir", "runs/sdm")))

    def __post_init__(self) -> None:
        _out_dir(self.out_dir)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able nested dict (round-trips through :meth:`from_dict`)."""
        out = dataclasses.asdict(self)
        out["train"]["stages"] = [dict(s) for s in out["train"]["stages"]]
        return out

    def replace(self, **sections: Any) -> TrainConfig:
        """Copy with fields of sections changed: ``cfg.replace(train={"batch_size": 4})``."""
        data = self.to_dict()
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return TrainConfig.from_dict(data)


def _out_dir(value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise TypeError(f"`out_dir` must be a non-empty path string, got {type(value).__name__} {value!r}; "
                        "e.g. out_dir: runs/sdm_tiny")
    return value


def load_train_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read a :class:`TrainConfig` from YAML (:func:`~diffmix_aug._yaml.load_yaml`: safe, no aliases);
    errors name the file."""
    from .._yaml import load_yaml

    data = load_yaml(path)
    try:
        return TrainConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{os.fspath(path)}: {exc}") from exc
