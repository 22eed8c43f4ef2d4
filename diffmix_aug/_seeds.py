"""Seeds derived from integer keys (one function, used by the dataset, the producer and the jobs)."""

from __future__ import annotations

import numpy as np

__all__ = ["derive_seed"]


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (``numpy.random.SeedSequence``; order matters).

    The shift is done on a Python int: numpy 1.26 has no ``right_shift`` for a uint64 scalar and a
    Python int (it casts them to float64).
    """
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFF for k in keys]).generate_state(2, np.uint64)
    return int(state[0]) >> 1
