"""Data layer: samples, validation, class tables, readers, patch extraction, datasets, toy data.

Submodules import numpy/torch only at module level; readers import scipy, scikit-image or
OpenCV inside the functions that need them.
"""

from .classes import DATASETS, DatasetInfo, get_dataset_info, merge_classes
from .dataset import NucleiDataset
from .patches import extract_patches, patch_origins
from .readers import (
    conic_to_maps,
    pannuke_to_maps,
    read_consep_tile,
    read_hovernet_npy,
    read_image,
    write_hovernet_npy,
)
from .remap import remap_label
from .sample import InstanceInfo, NucleiSample, instance_info
from .toy import make_toy_dataset
from .viz import colorize_types, label_overlay, save_class_histogram, save_image_grid

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "InstanceInfo",
    "NucleiDataset",
    "NucleiSample",
    "colorize_types",
    "conic_to_maps",
    "extract_patches",
    "get_dataset_info",
    "instance_info",
    "label_overlay",
    "make_toy_dataset",
    "merge_classes",
    "pannuke_to_maps",
    "patch_origins",
    "read_consep_tile",
    "read_hovernet_npy",
    "read_image",
    "remap_label",
    "save_class_histogram",
    "save_image_grid",
    "write_hovernet_npy",
]
