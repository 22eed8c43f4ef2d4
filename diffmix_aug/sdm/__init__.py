"""The SDM U-Net: config, blocks, presets, the encode / modulation / decode split, checkpoints."""

from .config import SDMConfig, load_sdm_config
from .presets import PRESETS, build_sdm, preset_config
from .unet import EncoderState, SDMUNet, SpadeModulation

__all__ = [
    "PRESETS",
    "EncoderState",
    "SDMConfig",
    "SDMUNet",
    "SpadeModulation",
    "build_sdm",
    "load_sdm_config",
    "preset_config",
]
