"""``SDMConfig``: the frozen hyper-parameters of the SDM U-Net (``design/method.md`` §1.1)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._checks import check_in_range, check_positive_int

__all__ = ["SDMConfig", "load_sdm_config"]


@dataclass(frozen=True)
class SDMConfig:
    """Hyper-parameters of :class:`~diffmix_aug.sdm.unet.SDMUNet`.

    Attributes:
        label_channels: Channels of the condition ``y`` (num_classes + 1 with the edge channel).
        image_size: Training resolution; turns ``attention_resolutions`` into downsample factors.
        in_channels: Image channels (3).
        model_channels: Base width (paper 256).
        channel_mult: Width multiplier per level; one level per entry.
        num_res_blocks: Res-blocks per encoder level (the decoder uses one more, as the reference).
        attention_resolutions: Feature-map sizes (at ``image_size``) that get self-attention.
        num_heads: Heads when ``num_head_channels == -1``.
        num_head_channels: Channels per head (paper 64); -1 uses ``num_heads``.
        dropout: Dropout inside the res-blocks.
        use_scale_shift_norm: FiLM time conditioning ``norm(h) * (1 + scale) + shift``.
        resblock_updown: Down/up-sample with res-blocks (else avg-pool / nearest + conv layers).
        learn_sigma: Output 6 channels (eps and the variance interpolation v) instead of 3.
        spade_hidden: Width of SPADE's shared hidden conv (paper 128).
        num_groups: GroupNorm groups (paper 32).
        use_checkpoint: Gradient checkpointing of every res-block and attention block.
    """

    label_channels: int = 6
    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 256
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    num_heads: int = 4
    num_head_channels: int = 64
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    learn_sigma: bool = True
    spade_hidden: int = 128
    num_groups: int = 32
    use_checkpoint: bool = False

    def __post_init__(self) -> None:
        # normalise sequences (YAML / JSON give lists) so the dataclass stays hashable and comparable
        for name in ("channel_mult", "attention_resolutions"):
            seq = getattr(self, name)
            if not isinstance(seq, (list, tuple)) or any(
                    isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0 for v in seq):
                raise TypeError(f"`{name}` must be a list of positive ints, got {type(seq).__name__} {seq!r}; "
                                "e.g. [1, 2, 4]")
            object.__setattr__(self, name, tuple(int(v) for v in seq))
        for name in ("use_scale_shift_norm", "resblock_updown", "learn_sigma", "use_checkpoint"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"`{name}` must be true or false, got {type(value).__name__} {value!r}")
            object.__setattr__(self, name, bool(value))
        if isinstance(self.num_head_channels, bool) or not isinstance(self.num_head_channels, (int, np.integer)):
            raise TypeError(f"`num_head_channels` must be an int (> 0, or -1 to use num_heads), got "
                            f"{type(self.num_head_channels).__name__} {self.num_head_channels!r}")
        for name in ("label_channels", "image_size", "in_channels", "model_channels", "num_res_blocks",
                     "spade_hidden", "num_groups", "num_heads"):
            check_positive_int(name, getattr(self, name))
        check_in_range("dropout", self.dropout, 0.0, 1.0, high_inclusive=False)
        if not self.channel_mult or any(m <= 0 for m in self.channel_mult):
            raise ValueError(f"`channel_mult` must be a non-empty tuple of positive ints, got {self.channel_mult}")
        if self.num_head_channels != -1 and self.num_head_channels <= 0:
            raise ValueError(f"`num_head_channels` must be > 0 or -1 (use num_heads), got {self.num_head_channels}")
        down = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % down:
            raise ValueError(f"`image_size`={self.image_size} must be divisible by 2**(levels-1)={down} "
                             f"for channel_mult={self.channel_mult}; pick a multiple of {down}")
        widths = {self.model_channels * m for m in self.channel_mult}
        bad = sorted(w for w in widths if w % self.num_groups)
        if bad:
            raise ValueError(f"`num_groups`={self.num_groups} must divide every level width, but {bad} are not "
                             "divisible; change num_groups or model_channels")

    @property
    def out_channels(self) -> int:
        """6 with learned sigma (eps, v), else 3."""
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Downsample factors at which attention is applied (``image_size // res``)."""
        return tuple(sorted(self.image_size // r for r in self.attention_resolutions))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field (tuples become lists)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> SDMConfig:
        """Copy with some fields changed (unknown names are rejected like :meth:`from_dict`)."""
        return SDMConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SDMConfig:
        """Build from a dict; unknown keys raise ``ValueError`` listing the valid ones."""
        if not isinstance(data, dict):
            raise TypeError(f"SDM config must be a mapping, got {type(data).__name__}")
        valid = cls.field_names()
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"unknown SDM config key(s) {unknown}; valid keys are {valid}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> SDMConfig:
        return cls.from_dict(json.loads(text))


def load_sdm_config(path: str | os.PathLike[str]) -> SDMConfig:
    """Read an :class:`SDMConfig` from a YAML or JSON file (:func:`~diffmix_aug._yaml.load_yaml`).

    The file holds either the config mapping itself or ``{"preset": name, ...overrides}``; in the
    latter case the preset is expanded with :func:`~diffmix_aug.sdm.presets.preset_config`.
    """
    from .._yaml import load_yaml

    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{os.fspath(path)}: expected a mapping of SDM config keys, got {type(data).__name__}")
    if "preset" in data:
        from .presets import preset_config

        data = dict(data)
        preset = data.pop("preset")
        label_channels = data.pop("label_channels", 6)
        return preset_config(preset, label_channels, **data)
    return SDMConfig.from_dict(data)
