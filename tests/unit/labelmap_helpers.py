"""Shared inputs of the label-map tests: random maps and the real H&E patches (PanNuke classes)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from benchmarks.labelmaps import random_label_map

HE_DIR = Path(__file__).resolve().parents[1] / "data" / "he_patches"
# PanNuke ids in the real patches: 1 neoplastic, 2 inflammatory, 3 connective, 4 dead, 5 epithelial.
# Inflammatory nuclei are the small ones, so they play the rare class here.
HE_NUM_CLASSES = 6
HE_RARE = (2,)


@lru_cache(maxsize=1)
def load_he_patches() -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
    """``((image uint8 [256, 256, 3], inst int32, type int32), ...)`` of the three real patches
    (cached: do not modify the arrays)."""
    import scipy.io as sio
    from PIL import Image

    out = []
    for k in (1, 2, 3):
        mat = sio.loadmat(HE_DIR / f"patch{k}.mat")
        image = np.asarray(Image.open(HE_DIR / f"patch{k}.png").convert("RGB"))
        out.append((image, mat["inst_map"].astype(np.int32), mat["type_map"].astype(np.int32)))
    return tuple(out)


def maps_from_seed(seed: int, size: int = 64, n_nuclei: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A random map whose nucleus count is also drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 30)) if n_nuclei is None else n_nuclei
    return random_label_map(rng, size=size, n_nuclei=n, rare_share=0.25)
