"""Class tables as data: names, colours and raw-to-merged maps for each supported dataset.

The merge tables are exactly the ones of the DiffMix / GradMix / HoVer-Net code
(``design/method.md`` §2.5):

* CoNSeP, 7 raw types -> 4: 1 other; 2 inflammatory; {3, 4} epithelial; {5, 6, 7} spindle.
* GLySAC, 10 raw types -> 3: {1, 2, 9, 10} other/miscellaneous; {4, 5, 6, 7} -> 2; {3, 8} -> 3.
  DiffMix's reference code names 2 "epithelial" and 3 "lymphocyte"; SONNET's config names the
  same merged ids the other way round (2 lymphocyte, 3 epithelial). The ids are identical; only
  the names differ, and this table follows the DiffMix code.

In every merged table, class 1 is the rare class that balancing targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .._checks import check_array, check_choice

__all__ = ["DATASETS", "DatasetInfo", "get_dataset_info", "merge_classes"]


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset's nucleus classes.

    Attributes:
        name: Registry key, e.g. ``"consep"``.
        class_names: Names indexed by class id; index 0 is background.
        colors: RGB uint8 triples indexed by class id (background black).
        merge_table: Raw id -> merged id, or None when the raw ids are used as they are.
        rare_classes: Ids that balancing pastes in (the minority classes); ``()`` where the
            dataset names none (balancing then needs them passed).
        mpp: Microns per pixel of the images as read (CoNSeP 0.25 at 40x; 0.5 after
            ``downsampled(2)``), or None where unknown (the procedural toy set). An SDM records the
            ``mpp`` it was trained at, and :class:`~diffmix_aug.dataset.DiffMixDataset` refuses a
            base of another resolution.
    """

    name: str
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    merge_table: dict[int, int] | None = None
    rare_classes: tuple[int, ...] = ()
    mpp: float | None = None
    notes: str = field(default="", compare=False)

    @property
    def num_classes(self) -> int:
        """Number of classes counting the background (the ``num_classes`` of the SDM)."""
        return len(self.class_names)

    def merge(self, type_map: np.ndarray) -> np.ndarray:
        """Apply :attr:`merge_table` (identity when None); see :func:`merge_classes`."""
        if self.merge_table is None:
            return np.asarray(type_map, dtype=np.int32)
        return merge_classes(type_map, self.merge_table)

    def scaled(self, factor: int) -> DatasetInfo:
        """This table for images reduced ``factor`` times (``mpp`` multiplied; classes unchanged)."""
        return self if factor == 1 or self.mpp is None else replace(self, mpp=self.mpp * factor)

    def palette(self) -> np.ndarray:
        """``uint8 [num_classes, 3]`` colour table."""
        return np.asarray(self.colors, dtype=np.uint8)


def merge_classes(type_map: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """Map raw class ids to merged ids with a lookup table.

    Args:
        type_map: ``int [...]`` raw class ids (0 = background, kept as 0).
        table: Raw id -> merged id. Every non-zero id present must be a key.

    Returns:
        ``int32`` array of the same shape.

    Raises:
        ValueError: an id in ``type_map`` is not in ``table``.
    """
    check_array("type_map", type_map, dtype_kind="iu")
    if type_map.size == 0:
        return type_map.astype(np.int32)
    hi = max(int(type_map.max()), max(table))
    lut = np.full(hi + 1, -1, np.int64)
    lut[0] = 0
    for raw, merged in table.items():
        lut[raw] = merged
    if type_map.min() < 0:
        raise ValueError(f"`type_map` values must be >= 0, got minimum {type_map.min()}")
    out = lut[type_map]
    if (out < 0).any():
        bad = sorted(set(np.unique(type_map[out < 0]).tolist()))
        raise ValueError(f"`type_map` holds raw ids {bad} that the merge table does not know; "
                         f"expected ids in {sorted(table)}")
    return out.astype(np.int32)


_CYAN, _RED, _BLUE, _GREEN = (0, 255, 255), (255, 0, 0), (0, 0, 255), (0, 255, 0)
_BLACK = (0, 0, 0)

DATASETS: dict[str, DatasetInfo] = {
    "consep": DatasetInfo(
        "consep",
        ("background", "miscellaneous", "inflammatory", "epithelial", "spindle"),
        (_BLACK, _CYAN, _RED, _BLUE, _GREEN),  # colours of the HoVer-Net README
        {1: 1, 2: 2, 3: 3, 4: 3, 5: 4, 6: 4, 7: 4},
        rare_classes=(1,),
        mpp=0.25,  # 40x
    ),
    "glysac": DatasetInfo(
        "glysac",
        ("background", "miscellaneous", "epithelial", "lymphocyte"),
        (_BLACK, _CYAN, _BLUE, _RED),
        {1: 1, 2: 1, 9: 1, 10: 1, 4: 2, 5: 2, 6: 2, 7: 2, 3: 3, 8: 3},
        rare_classes=(1,),
        mpp=0.25,  # 40x
        notes="SONNET names merged 2 lymphocyte and 3 epithelial; DiffMix's code the other way round.",
    ),
    "pannuke": DatasetInfo(
        "pannuke",
        ("background", "neoplastic", "inflammatory", "connective", "dead", "epithelial"),
        (_BLACK, (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 165, 0)),
        None,
        rare_classes=(4,),
        mpp=0.25,  # 40x
    ),
    "conic": DatasetInfo(
        "conic",
        ("background", "neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective"),
        (_BLACK, (255, 165, 0), (0, 0, 255), (255, 0, 0), (0, 255, 0), (255, 0, 255), (255, 255, 0)),
        None,
        rare_classes=(1, 5),
        mpp=0.5,  # Lizard: 20x
    ),
    # The embedded procedural dataset mirrors CoNSeP's merged classes (class 1 is rare).
    "toy": DatasetInfo(
        "toy",
        ("background", "miscellaneous", "inflammatory", "epithelial", "spindle"),
        (_BLACK, _CYAN, _RED, _BLUE, _GREEN),
        None,
        rare_classes=(1,),
    ),
}


def get_dataset_info(name: str) -> DatasetInfo:
    """Return the :class:`DatasetInfo` registered under ``name``."""
    check_choice("dataset", name, DATASETS)
    return DATASETS[name]
