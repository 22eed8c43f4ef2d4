"""``dataset.json``: what a folder of HoVer-Net ``.npy`` patches holds (class table, resolution, counts).

``diffmix-aug export`` writes it next to the patches, and
:meth:`~diffmix_aug.data.dataset.NucleiDataset.from_hovernet_npy_dir` reads it back, so a folder
exported at 20x (``--downsample 2``) is known to be at 0.5 um/px, and a folder of another class
table is refused instead of being read under the wrong names.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from .._io import atomic_write_text
from .classes import DatasetInfo

__all__ = ["CARD_FORMAT", "CARD_NAME", "apply_dataset_card", "read_dataset_card", "write_dataset_card"]

CARD_NAME = "dataset.json"
CARD_FORMAT = "diffmix_aug.dataset/1"


def write_dataset_card(folder: str | os.PathLike[str], info: DatasetInfo, nuclei_per_class: dict[str, int],
                       num_patches: int) -> Path:
    """Write ``folder/dataset.json`` atomically and return its path."""
    card = {"format": CARD_FORMAT, "dataset": info.name, "class_names": list(info.class_names),
            "rare_classes": list(info.rare_classes), "mpp": info.mpp, "num_patches": int(num_patches),
            "nuclei_per_class": {str(k): int(v) for k, v in nuclei_per_class.items()}}
    path = Path(folder) / CARD_NAME
    atomic_write_text(path, json.dumps(card, indent=2) + "\n")
    return path


def read_dataset_card(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The card of ``folder``, or None when it has none.

    Raises:
        ValueError: the card is not valid JSON or lacks ``class_names``; naming the file.
    """
    path = Path(folder) / CARD_NAME
    if not path.is_file():
        return None
    if path.stat().st_size > 1 << 20:
        raise ValueError(f"{path}: larger than 1 MiB; not a dataset card")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); re-run diffmix-aug export or delete the file") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT or not isinstance(card.get("class_names"), list):
        raise ValueError(f"{path}: expected a {CARD_FORMAT!r} card with `class_names`; re-run diffmix-aug export "
                         "or delete the file")
    mpp = card.get("mpp")
    if mpp is not None and (isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or not mpp > 0):
        raise ValueError(f"{path}: `mpp` must be a positive number of microns per pixel or null, got {mpp!r}")
    return card


def apply_dataset_card(info: DatasetInfo, card: dict[str, Any] | None, folder: str | os.PathLike[str]) -> DatasetInfo:
    """``info`` at the card's resolution, after checking that the class tables agree.

    Raises:
        ValueError: the card's class names differ from ``info``'s, with both listed.
    """
    if card is None:
        return info
    names = tuple(str(n) for n in card["class_names"])
    if names != tuple(info.class_names):
        raise ValueError(f"{Path(folder) / CARD_NAME} lists classes {list(names)}, but `info` ({info.name!r}) has "
                         f"{list(info.class_names)}; pass the matching DatasetInfo (get_dataset_info("
                         f"{card.get('dataset')!r})) or re-export the folder")
    mpp = card.get("mpp")
    return info if mpp is None else replace(info, mpp=float(mpp))
