"""HoVer-Net's evaluation metrics, vectorised: instance metrics and nucleus classification stats."""

from .classification import classification_stats, pair_coordinates
from .instance import PairTable, aji, aji_plus, dice, dice2, pair_table, panoptic_quality

__all__ = [
    "PairTable",
    "aji",
    "aji_plus",
    "classification_stats",
    "dice",
    "dice2",
    "pair_coordinates",
    "pair_table",
    "panoptic_quality",
]
