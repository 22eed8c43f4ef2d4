"""``NucleiDataset``: a lazy ``torch.utils.data.Dataset`` of :class:`NucleiSample` over any source.

A dataset is a list of cheap, picklable *sources* (``source(i) -> NucleiSample``) plus an
optional patch grid. Nothing big is read up front; array files are memory-mapped on first use in
each process (only paths travel to spawned DataLoader workers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .._checks import check_positive_int
from .classes import DatasetInfo
from .sample import NucleiSample

__all__ = ["NucleiDataset"]


class _SampleList:
    """Source over in-memory samples."""

    def __init__(self, samples: Sequence[NucleiSample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __call__(self, i: int) -> NucleiSample:
        return self.samples[i]


class _Generated:
    """Source over a picklable ``fn(i) -> NucleiSample``."""

    def __init__(self, fn: Callable[[int], NucleiSample], n: int) -> None:
        self.fn, self.n = fn, n

    def __len__(self) -> int:
        return self.n

    def __call__(self, i: int) -> NucleiSample:
        return self.fn(i)


class NucleiDataset(torch.utils.data.Dataset):
    """A map-style dataset of nuclei samples, read lazily.

    Build it with one of the ``from_*`` constructors. ``dataset[i]`` returns a
    :class:`NucleiSample` (``image uint8 [H,W,3]``, ``inst_map int32 [H,W]``, ``type_map int32``).

    Args:
        source: Picklable object with ``len(source)`` and ``source(i) -> NucleiSample``.
        info: Class names / colours of the dataset.

    Attributes:
        info: The :class:`DatasetInfo`.
    """

    def __init__(self, source: Any, info: DatasetInfo) -> None:
        if not isinstance(info, DatasetInfo):
            raise TypeError(f"`info` must be a DatasetInfo (see get_dataset_info), got {type(info).__name__}")
        self._source = source
        self.info = info
        self._stats: dict[str, Any] | None = None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_samples(cls, samples: Sequence[NucleiSample], info: DatasetInfo) -> NucleiDataset:
        """Wrap samples already in memory."""
        samples = list(samples)
        for k, s in enumerate(samples):
            if not isinstance(s, NucleiSample):
                raise TypeError(f"`samples[{k}]` must be a NucleiSample, got {type(s).__name__}")
        return cls(_SampleList(samples), info)

    @classmethod
    def from_generator(cls, fn: Callable[[int], NucleiSample], n: int, info: DatasetInfo) -> NucleiDataset:
        """Items ``fn(0) .. fn(n-1)``, generated on access. ``fn`` must be picklable for workers."""
        if not callable(fn):
            raise TypeError(f"`fn` must be callable index -> NucleiSample, got {type(fn).__name__}")
        return cls(_Generated(fn, check_positive_int("n", n)), info)

    # ------------------------------------------------------------------ protocol
    @property
    def num_classes(self) -> int:
        """Number of classes counting the background."""
        return self.info.num_classes

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> NucleiSample:
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"`index` must be an int, got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} items")
        return self._source(int(index) % n)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def class_stats(self) -> dict[str, Any]:
        """Per-class nucleus counts and areas over the whole dataset (computed once, cached).

        Returns:
            ``{"class_names": list[str], "counts": int64 [K], "areas": int64 [K],
            "count_share": float64 [K], "num_samples": int, "num_nuclei": int}`` where index 0
            counts nuclei without a type; shares are over typed nuclei (index 0 share = 0).
        """
        if self._stats is None:
            k = self.num_classes
            counts = np.zeros(k, np.int64)
            areas = np.zeros(k, np.int64)
            for s in self:
                types = np.clip(s.info.types, 0, k - 1)
                counts += np.bincount(types, minlength=k)[:k]
                areas += np.bincount(types, weights=s.info.areas, minlength=k)[:k].astype(np.int64)
            typed = counts[1:].sum()
            share = np.zeros(k)
            if typed:
                share[1:] = counts[1:] / typed
            self._stats = {"class_names": list(self.info.class_names), "counts": counts, "areas": areas,
                           "count_share": share, "num_samples": len(self), "num_nuclei": int(counts.sum())}
        return self._stats

    def __getstate__(self) -> dict[str, Any]:
        return {"_source": self._source, "info": self.info, "_stats": self._stats}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"NucleiDataset(name={self.info.name!r}, len={len(self)}, source={type(self._source).__name__})"
