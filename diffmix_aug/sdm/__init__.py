"""The SDM U-Net: config, blocks, presets, the encode / modulation / decode split, checkpoints."""

from .checkpoint import EXPORT_FORMAT, export_sdm, load_sdm, read_sdm_metadata
from .config import SDMConfig, load_sdm_config
from .presets import PRESETS, build_sdm, preset_config
from .registry import SHIPPED_CHECKPOINTS, resolve_checkpoint
from .unet import EncoderState, SDMUNet, SpadeModulation

__all__ = [
    "EXPORT_FORMAT",
    "PRESETS",
    "SHIPPED_CHECKPOINTS",
    "EncoderState",
    "SDMConfig",
    "SDMUNet",
    "SpadeModulation",
    "build_sdm",
    "export_sdm",
    "load_sdm",
    "load_sdm_config",
    "preset_config",
    "read_sdm_metadata",
    "resolve_checkpoint",
]
