"""diffmix_aug: DiffMix (Oh & Jeong, MICCAI 2023) as an online augmentation dataloader plugin.

Importing the package imports nothing heavy: public names are resolved lazily on first access
(PEP 562), which imports torch and numpy; optional or heavy dependencies (albumentations, OpenCV,
scikit-image, PyYAML, tqdm, matplotlib, scipy) are imported only where they are used, and nothing
touches the network. So ``diffmix-aug --help`` starts without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "NucleiSample": "diffmix_aug.data.sample",
    "remap_label": "diffmix_aug.data.remap",
    "DatasetInfo": "diffmix_aug.data.classes",
    "get_dataset_info": "diffmix_aug.data.classes",
    "NucleiDataset": "diffmix_aug.data.dataset",
    "make_toy_dataset": "diffmix_aug.data.toy",
    "encode_condition": "diffmix_aug.labelmaps.encode",
    "enlarge_label_map": "diffmix_aug.labelmaps.enlarge",
    "balance_label_map": "diffmix_aug.labelmaps.balance",
    "DonorBank": "diffmix_aug.labelmaps.donors",
    "LabelMapSampler": "diffmix_aug.labelmaps.sampler",
    "EnlargeSettings": "diffmix_aug.labelmaps.settings",
    "BalanceSettings": "diffmix_aug.labelmaps.settings",
    "dice": "diffmix_aug.metrics",
    "dice2": "diffmix_aug.metrics",
    "aji": "diffmix_aug.metrics",
    "aji_plus": "diffmix_aug.metrics",
    "panoptic_quality": "diffmix_aug.metrics",
    "classification_stats": "diffmix_aug.metrics",
    "build_sdm": "diffmix_aug.sdm.presets",
    "ReferenceDDIMSampler": "diffmix_aug.sampling.reference",
    "DDIMSampler": "diffmix_aug.sampling.ddim",
    "Synthesizer": "diffmix_aug.sampling.synthesizer",
    "ReplayCache": "diffmix_aug.cache",
    "PatchStore": "diffmix_aug.store",
    "PatchGenerator": "diffmix_aug.generator",
    "ClassTable": "diffmix_aug.class_table",
    "DiffMixDataset": "diffmix_aug.dataset",
    "DiffMixConfig": "diffmix_aug.config",
    "load_diffmix_config": "diffmix_aug.config",
    "build_pipeline": "diffmix_aug.pipeline",
    "split_by_tile": "diffmix_aug.data.split",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'diffmix_aug' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

