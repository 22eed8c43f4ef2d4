"""Data layer: samples, validation, class tables, readers, patch extraction, datasets, toy data.

Submodules import numpy/torch only at module level; readers import scipy, scikit-image or
OpenCV inside the functions that need them.
"""

from .classes import DATASETS, DatasetInfo, get_dataset_info, merge_classes
from .dataset import NucleiDataset
from .remap import remap_label
from .sample import InstanceInfo, NucleiSample, instance_info
from .toy import make_toy_dataset

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "InstanceInfo",
    "NucleiDataset",
    "NucleiSample",
    "get_dataset_info",
    "instance_info",
    "make_toy_dataset",
    "merge_classes",
    "remap_label",
]
