"""What each arm of the real-tissue ablation feeds the training loop, slot by slot.

Every arm walks the same item plan: epochs over the training patches, each epoch a permutation
drawn from the run's seed; slot ``t`` of the run is item ``plan[t]`` of epoch ``t // n``. An arm
replaces some slots' items and serves the rest unchanged, so arms of one seed share their real
items wherever they are not replaced:

- ``baseline``: the real patch of every slot;
- ``rare-crop``: slots chosen with the same per-item rule ``DiffMixDataset`` uses (a hash of seed,
  epoch and index below the arm's ratio) serve a window of a training tile centred on a random
  rare nucleus (oversampling by crops, at a ratio chosen to match the balancing arms' rare
  exposure where it can);
- the synthetic arms (``gradmix``, ``diffmix-b``, ``diffmix-e``, ``diffmix-union``,
  ``diffmix-composed``) read every item through ``DiffMixDataset(base, None, cache_dir=<rendered
  pool>, synthetic_ratio=..., max_reuse=...)``: the product's own path, producer off, warm-started
  from the pool's store, ``max_reuse`` set to what the run asks of the pool. The dataset's
  ``stats()`` of every epoch goes into the result file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["ARMS", "DECISION_KEY", "STORE_MODES", "ArmStream", "RareCrops", "open_store_dataset", "wants_extra"]

ARMS = ("baseline", "rare-crop", "gradmix", "diffmix-b", "diffmix-e", "diffmix-union", "diffmix-composed")
#: the library mode each store's patches were made with (the label DiffMixDataset records; producer off)
STORE_MODES = {"gradmix": "balance", "diffmix-b": "balance", "diffmix-e": "enlarge", "diffmix-union": "union",
               "diffmix-composed": "composed"}
DECISION_KEY = 0x5D1F  # DiffMixDataset.wants_synthetic's last key


def wants_extra(seed: int, epoch: int, index: int, ratio: float) -> bool:
    """``DiffMixDataset.wants_synthetic`` for a constant ratio: the per-item hash decision."""
    from diffmix_aug._seeds import key_uniform

    return ratio > 0 and key_uniform(int(seed), int(epoch), int(index), DECISION_KEY) < ratio


def open_store_dataset(base: Any, store: Path, *, arm: str, ratio: float, seed: int, max_reuse: int,
                       capacity: int) -> Any:
    """The product's path for a rendered pool: ``DiffMixDataset(base, None, cache_dir=store, ...)``.

    No synthesizer (producer off): the cache warm-starts from the store and serves its patches
    under ``max_reuse``; items not chosen synthetic are the base's own.
    """
    from diffmix_aug.dataset import DiffMixDataset

    return DiffMixDataset(base, None, mode=STORE_MODES[arm], synthetic_ratio=ratio, seed=seed,
                          cache_dir=str(store), cache_capacity=capacity, max_reuse=max_reuse)


class RareCrops:
    """Windows of whole training tiles centred on a random rare nucleus (with a small jitter).

    Args:
        tiles: Whole tiles (``NucleiSample``).
        window: Window side (the patch size).
        rare: Rare classes.
        jitter: Maximum offset of the window centre from the nucleus, px.
    """

    def __init__(self, tiles: list[Any], window: int, rare: tuple[int, ...], jitter: int = 16):
        self.tiles, self.window, self.jitter = tiles, int(window), int(jitter)
        where = []
        for k, t in enumerate(tiles):
            info = t.info
            for (cx, cy), typ in zip(info.centroids, info.types):
                if int(typ) in rare:
                    where.append((k, float(cx), float(cy)))
        if not where:
            raise ValueError("rare-crop: the training tiles hold no rare nucleus to centre a crop on")
        self.where = where

    def __len__(self) -> int:
        return len(self.where)

    def __call__(self, rng: np.random.Generator) -> Any:
        from diffmix_aug.data.sample import NucleiSample

        k, cx, cy = self.where[int(rng.integers(len(self.where)))]
        dy, dx = rng.integers(-self.jitter, self.jitter + 1, 2)
        tile = self.tiles[k]
        h, w = tile.inst_map.shape
        s = self.window
        y = int(np.clip(round(cy) + dy - s // 2, 0, h - s))
        x = int(np.clip(round(cx) + dx - s // 2, 0, w - s))
        sl = (slice(y, y + s), slice(x, x + s))
        return NucleiSample.trusted(np.ascontiguousarray(tile.image[sl]), np.ascontiguousarray(tile.inst_map[sl]),
                                    np.ascontiguousarray(tile.type_map[sl]), meta={"is_synthetic": False})


class ArmStream(torch.utils.data.Dataset):
    """Slot ``t`` of one run -> the arm's item (read in slot order by the training loop).

    Args:
        arm: One of :data:`ARMS`.
        base: The training patches (``NucleiDataset``).
        seed: The run's seed (item plan, decisions, crops).
        iterations, batch_size: The run's length.
        ratio: Share of slots the arm replaces (synthetic arms: ``synthetic_ratio``).
        store: The rendered pool's store (synthetic arms).
        store_size: Patches in the store.
        rare_crops: A :class:`RareCrops` (``rare-crop``).
        rare: Rare classes (exposure).
    """

    def __init__(self, arm: str, base: Any, *, seed: int, iterations: int, batch_size: int, ratio: float,
                 store: Path | None = None, store_size: int = 0, rare_crops: RareCrops | None = None,
                 rare: tuple[int, ...] = (1,)):
        if arm not in ARMS:
            raise ValueError(f"`arm` must be one of {list(ARMS)}, got {arm!r}")
        self.arm, self.base, self.seed, self.ratio, self.rare = arm, base, int(seed), float(ratio), tuple(rare)
        self.B, self.iterations = int(batch_size), int(iterations)
        n = len(base)
        total = self.iterations * self.B
        epochs = math.ceil(total / n)
        self.plan = np.concatenate([np.random.default_rng([self.seed, 31, e]).permutation(n) for e in range(epochs)])
        self.n = n
        self.extra = np.array([wants_extra(self.seed, t // n, self.plan[t], self.ratio) if arm != "baseline" else False
                               for t in range(total)])
        self.rare_crops = rare_crops
        if arm == "rare-crop" and rare_crops is None:
            raise ValueError("arm 'rare-crop' needs `rare_crops`")
        self.dataset = None
        self.max_reuse = 0
        if arm not in ("baseline", "rare-crop"):
            if store is None or store_size < 1:
                raise ValueError(f"arm {arm!r} reads a rendered pool: pass `store` and `store_size` >= 1")
            asks = int(self.extra.sum())
            self.max_reuse = max(1, math.ceil(asks / store_size))
            self.dataset = open_store_dataset(base, Path(store), arm=arm, ratio=self.ratio, seed=self.seed,
                                              max_reuse=self.max_reuse, capacity=store_size)
            if len(self.dataset.cache) != store_size:
                raise RuntimeError(f"{arm}: the store {store} warm-started {len(self.dataset.cache)} patches, "
                                   f"expected {store_size}")
        self.epoch = 0
        self.epoch_stats: list[dict] = []
        self.pool_reuse: list[int] = []
        self.synthetic = np.zeros(total, bool)
        self.rare_item = np.zeros((total, 2), np.int64)  # rare instances, pixels of the served (uncropped) item

    def __len__(self) -> int:
        return self.iterations * self.B

    def batches(self) -> list[list[int]]:
        return [list(range(s * self.B, (s + 1) * self.B)) for s in range(self.iterations)]

    def _set_epoch(self, e: int) -> None:
        if self.dataset is not None and e != self.epoch:
            self.epoch_stats.append(self.dataset.stats(self.epoch))
            self.dataset.set_epoch(e)
        self.epoch = e

    def __getitem__(self, t: int) -> Any:
        t = int(t)
        e, index = t // self.n, int(self.plan[t])
        self._set_epoch(e)
        if self.dataset is not None:
            item = self.dataset[index]
            syn = bool(item.meta.get("is_synthetic", False))
        elif self.arm == "rare-crop" and self.extra[t]:
            item = self.rare_crops(np.random.default_rng([self.seed, t, 7]))
            syn = True
        else:
            item = self.base[index]
            syn = False
        mask = np.isin(item.type_map, self.rare) & (item.inst_map > 0)
        self.rare_item[t] = (np.unique(item.inst_map[mask]).size, int(mask.sum()))
        self.synthetic[t] = syn
        return item

    def finish(self) -> list[dict]:
        """The dataset's per-epoch ``stats()`` (the last epoch included); closes it."""
        if self.dataset is not None:
            self.epoch_stats.append(self.dataset.stats(self.epoch))
            state = self.dataset.cache.state_dict(False)
            self.pool_reuse = [int(r) for r, q in zip(state["reuse"].tolist(), state["seq"].tolist()) if q >= 0]
            self.dataset.close()
            self.dataset = None
        return self.epoch_stats

    def exposure(self, served_rare: np.ndarray | None = None) -> dict[str, Any]:
        """What the run served: items, replaced items, rare nuclei (items, and after the training crop)."""
        syn = self.synthetic
        out = {"items": int(len(syn)), "replaced_items": int(syn.sum()), "asked_items": int(self.extra.sum()),
               "rare_instances_items": int(self.rare_item[:, 0].sum()),
               "rare_instances_replaced": int(self.rare_item[syn, 0].sum()),
               "rare_pixels_items": int(self.rare_item[:, 1].sum()), "max_reuse_setting": self.max_reuse}
        if served_rare is not None:
            out["rare_instances_seen"] = int(served_rare[:, 0].sum())
            out["rare_pixels_seen"] = int(served_rare[:, 1].sum())
            out["rare_instances_seen_replaced"] = int(served_rare[syn, 0].sum())
        if self.epoch_stats:
            st = self.epoch_stats
            out["dataset"] = {"source": "DiffMixDataset(base, None, cache_dir=<pool store>)",
                              "synthetic_asked": int(sum(s["synthetic_asked"] for s in st)),
                              "synthetic_served": int(sum(s["synthetic_served"] for s in st)),
                              "distinct_patches_per_epoch_max": int(max(s["distinct_patches"] for s in st)),
                              "max_reuse_per_epoch": int(max(s["max_reuse"] for s in st)),
                              "pool_patches_served": int(sum(r > 0 for r in self.pool_reuse)),
                              "pool_serves_max": int(max(self.pool_reuse, default=0)),
                              "pool_serves_mean": float(np.mean(self.pool_reuse)) if self.pool_reuse else 0.0,
                              "epochs": st}
        return out
