"""Data layer: samples, validation, class tables, readers, patch extraction, datasets, toy data.

Submodules import numpy/torch only at module level; readers import scipy, scikit-image or
OpenCV inside the functions that need them.
"""

from .classes import DATASETS, DatasetInfo, get_dataset_info, merge_classes
from .remap import remap_label
from .sample import InstanceInfo, NucleiSample, instance_info

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "InstanceInfo",
    "NucleiSample",
    "get_dataset_info",
    "instance_info",
    "merge_classes",
    "remap_label",
]
