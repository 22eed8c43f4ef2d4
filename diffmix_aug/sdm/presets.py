"""Named SDM configurations and :func:`build_sdm`."""

from __future__ import annotations

from typing import Any

import torch

from .._checks import check_choice, check_positive_int
from .config import SDMConfig
from .unet import SDMUNet

__all__ = ["PRESETS", "build_sdm", "preset_config"]

_PAPER: dict[str, Any] = dict(
    image_size=256, model_channels=256, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
    attention_resolutions=(32, 16, 8), num_head_channels=64, use_scale_shift_norm=True,
    resblock_updown=True, learn_sigma=True, spade_hidden=128, num_groups=32,
)

#: preset name -> SDMConfig fields (label_channels comes from the caller).
PRESETS: dict[str, dict[str, Any]] = {
    # DiffMix / SDM at 256 px: 652.3 M parameters with 6 label channels (design/method.md §1.3)
    "paper": dict(_PAPER),
    "base": {**_PAPER, "model_channels": 128},
    "small": {**_PAPER, "model_channels": 64},
    # tests and the shipped CPU demo: < 2.4 M parameters, trains on a CPU in minutes
    "tiny": dict(image_size=64, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                 attention_resolutions=(16,), num_head_channels=32, use_scale_shift_norm=True,
                 resblock_updown=True, learn_sigma=True, spade_hidden=32, num_groups=8),
    # the public SDM at width 32 on 64 px (the equal-network CPU benchmark against the public sampler):
    # 15,761,382 parameters with 6 label channels
    "w32": dict(image_size=64, model_channels=32, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
                attention_resolutions=(32, 16, 8), num_heads=4, num_head_channels=-1, use_scale_shift_norm=True,
                resblock_updown=True, learn_sigma=True, spade_hidden=128, num_groups=32),
}


def preset_config(preset: str, num_label_channels: int, image_size: int | None = None,
                  **overrides: Any) -> SDMConfig:
    """The :class:`SDMConfig` of a named preset.

    Args:
        preset: One of :data:`PRESETS` (``paper``, ``base``, ``small``, ``tiny``, ``w32``).
        num_label_channels: Channels of ``y`` (num_classes + 1; CoNSeP 6, GLySAC 5).
        image_size: Training resolution (default: the preset's, 256, or 64 for tiny and w32).
        **overrides: Any other :class:`SDMConfig` field.
    """
    check_choice("preset", preset, PRESETS)
    check_positive_int("num_label_channels", num_label_channels)
    fields = {**PRESETS[preset], "label_channels": num_label_channels}
    if image_size is not None:
        fields["image_size"] = image_size
    unknown = sorted(set(overrides) - set(SDMConfig.field_names()))
    if unknown:
        raise ValueError(f"unknown SDM config override(s) {unknown}; valid keys are {SDMConfig.field_names()}")
    fields.update(overrides)
    return SDMConfig.from_dict(fields)


def build_sdm(preset: str | SDMConfig, num_label_channels: int | None = None, image_size: int | None = None, *,
              device: torch.device | str | None = None, **overrides: Any) -> SDMUNet:
    """Build an :class:`SDMUNet` from a preset name (or a ready :class:`SDMConfig`).

    Args:
        preset: Preset name or an :class:`SDMConfig`.
        num_label_channels: Channels of ``y`` (required with a preset name).
        image_size: Training resolution (default: the preset's).
        device: Where to allocate; ``"meta"`` counts parameters without allocating them.
        **overrides: Other :class:`SDMConfig` fields.

    Example:
        >>> model = build_sdm("tiny", num_label_channels=6, image_size=64)
    """
    if isinstance(preset, SDMConfig):
        config = preset.replace(**overrides) if overrides else preset
    else:
        if num_label_channels is None:
            raise ValueError("`num_label_channels` is required with a preset name (num_classes + 1, e.g. 6 for "
                             "CoNSeP)")
        config = preset_config(preset, num_label_channels, image_size, **overrides)
    if device is None:
        return SDMUNet(config)
    with torch.device(device):
        return SDMUNet(config)
