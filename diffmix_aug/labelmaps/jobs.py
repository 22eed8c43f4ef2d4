"""Label-map jobs: what the producer synthesises from, built in ``DataLoader`` workers.

A job ``(stream, position, source_index)`` names one custom label map: the source patch is cropped
(or reflect-padded) to the cache's patch shape, then the label sampler draws its parameters and
applies them once (:meth:`~diffmix_aug.labelmaps.sampler.LabelMapSampler.__call__`). Everything
random comes from ``numpy.random.default_rng(derive_seed(seed, rank, stream, position))``, so a
job gives the same map in any process. :class:`LabelMapJobs` is a map-style dataset over jobs;
the producer feeds it job lists through a ``DataLoader`` (``batch_sampler``) so that the maps of
the next batch are built in worker processes while the current one is synthesised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._seeds import derive_seed
from ..data.sample import NucleiSample

__all__ = ["LabelMapJobs", "collate_jobs", "fit_to_shape"]


def fit_to_shape(sample: NucleiSample, shape: tuple[int, int],
                 rng: np.random.Generator) -> tuple[NucleiSample, tuple[int, int]]:
    """Random crop (or reflect pad, then crop) ``sample`` to ``shape``; offsets drawn from ``rng``.

    Returns:
        ``(sample of shape [th, tw], (y, x) crop offset in the padded sample)``.
    """
    h, w = sample.shape
    th, tw = shape
    if h < th or w < tw:
        ph, pw = max(0, th - h), max(0, tw - w)
        pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
        mode = "reflect" if ph < h and pw < w else "symmetric"
        sample = NucleiSample.trusted(np.pad(sample.image, pad + ((0, 0),), mode=mode),
                                      np.pad(sample.inst_map, pad, mode=mode),
                                      np.pad(sample.type_map, pad, mode=mode), meta=sample.meta)
        h, w = sample.shape
    y = int(rng.integers(0, h - th + 1))
    x = int(rng.integers(0, w - tw + 1))
    return sample.crop(y, x, th, tw), (y, x)


class LabelMapJobs(torch.utils.data.Dataset):
    """Map-style dataset: job ``(stream, position, source_index)`` -> one ready label map.

    Args:
        source: Sequence of :class:`NucleiSample` (the base's raw patches).
        label_sampler: A ``LabelMapSampler`` (``sampler(sample, rng) -> LabelMapResult``) or None
            to keep the source maps.
        shape: ``(H, W)`` of the maps.
        seed, rank: Seed keys (with the job's stream and position).

    Returns (per item):
        ``{"image": uint8 [H, W, 3] (the source crop), "inst": int32 [H, W], "type": int32 [H, W],
        "meta": {"map_seed", "map_stream", "map_position", "rank", "source_index", "offset",
        "mode", "params"}}``.
    """

    def __init__(self, source: Sequence[NucleiSample], label_sampler: Any, shape: tuple[int, int],
                 seed: int = 0, rank: int = 0) -> None:
        self.source, self.label_sampler = source, label_sampler
        self.shape = (int(shape[0]), int(shape[1]))
        self.seed, self.rank = int(seed), int(rank)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, job: tuple[int, int, int]) -> dict[str, Any]:
        stream, position, src = (int(v) for v in job)
        map_seed = derive_seed(self.seed, self.rank, stream, position)
        rng = np.random.default_rng(map_seed)
        sample, offset = fit_to_shape(self.source[src], self.shape, rng)
        params, mode, kind = None, "source", "source"
        inst, typ = sample.inst_map, sample.type_map
        if self.label_sampler is not None:
            res = self.label_sampler(sample, rng)  # params drawn, then applied, in one pass
            inst, typ, mode, params = res.inst_map, res.type_map, res.mode, res.params
            kind = getattr(params, "kind", mode)
        pdict = params.to_dict() if hasattr(params, "to_dict") else params
        return {"image": np.ascontiguousarray(sample.image), "inst": np.ascontiguousarray(inst, np.int32),
                "type": np.ascontiguousarray(typ, np.int32),
                "meta": {"map_seed": map_seed, "map_stream": stream, "map_position": position, "rank": self.rank,
                         "source_index": src, "offset": offset, "mode": mode, "map_kind": kind,
                         "params": pdict}}


def collate_jobs(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``collate_fn`` of the job loader: keep the list of map dicts as it is."""
    return items
