"""``NucleiDataset``: a lazy ``torch.utils.data.Dataset`` of :class:`NucleiSample` over any source.

A dataset is a list of cheap, picklable *sources* (``source(i) -> NucleiSample``) plus an
optional patch grid. Nothing big is read up front; array files are memory-mapped on first use in
each process (only paths travel to spawned DataLoader workers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._checks import check_choice, check_positive_int
from .classes import DatasetInfo
from .sample import NucleiSample

__all__ = ["NucleiDataset"]


class _SampleList:
    """Source over in-memory samples."""

    def __init__(self, samples: Sequence[NucleiSample], names: Sequence[str] | None = None) -> None:
        self.samples = list(samples)
        self._names = None if names is None else list(names)

    def __len__(self) -> int:
        return len(self.samples)

    def __call__(self, i: int) -> NucleiSample:
        return self.samples[i]

    def shape(self, i: int) -> tuple[int, int]:
        return self.samples[i].shape

    def names(self) -> list[str] | None:
        return self._names


class _Generated:
    """Source over a picklable ``fn(i) -> NucleiSample`` (all items assumed to share fn(0)'s shape)."""

    def __init__(self, fn: Callable[[int], NucleiSample], n: int) -> None:
        self.fn, self.n = fn, n
        self._shape: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.n

    def __call__(self, i: int) -> NucleiSample:
        return self.fn(i)

    def shape(self, i: int) -> tuple[int, int]:
        if self._shape is None:
            self._shape = self.fn(0).shape
        return self._shape


class _ConsepTiles:
    """Source over CoNSeP/GLySAC ``(image, .mat)`` pairs; reads one tile per call."""

    def __init__(self, pairs: list[tuple[Path, Path]], info: DatasetInfo, merge: bool) -> None:
        self.pairs, self.info, self.merge = pairs, info, merge

    def __len__(self) -> int:
        return len(self.pairs)

    def __call__(self, i: int) -> NucleiSample:
        from .readers import read_consep_tile

        return read_consep_tile(*self.pairs[i], info=self.info, merge=self.merge)

    def shape(self, i: int) -> tuple[int, int]:
        from .readers import image_shape

        return image_shape(self.pairs[i][0])


class _NpyFiles:
    """Source over HoVer-Net patch ``.npy`` files, memory-mapped per read."""

    def __init__(self, paths: list[Path], num_classes: int | None) -> None:
        self.paths, self.num_classes = paths, num_classes

    def __len__(self) -> int:
        return len(self.paths)

    def __call__(self, i: int) -> NucleiSample:
        from .readers import read_hovernet_npy

        return read_hovernet_npy(self.paths[i], mmap=True, num_classes=self.num_classes)

    def shape(self, i: int) -> tuple[int, int]:
        from .readers import check_array_file

        return check_array_file(self.paths[i], 3, None, "HoVer-Net patch")[:2]  # type: ignore[return-value]


class _ArrayPair:
    """Source over a pair of stacked ``.npy`` arrays (PanNuke or CoNIC), memory-mapped lazily.

    Only the paths are pickled; each process opens its own read-only memory maps on first access.
    """

    def __init__(self, images: Path, labels: Path, kind: str, n: int, hw: tuple[int, int],
                 num_classes: int) -> None:
        self.images, self.labels, self.kind, self.n, self.hw = images, labels, kind, n, hw
        self.num_classes = num_classes
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.n

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = (np.load(self.images, mmap_mode="r", allow_pickle=False),
                            np.load(self.labels, mmap_mode="r", allow_pickle=False))
        return self._arrays

    def __call__(self, i: int) -> NucleiSample:
        from .readers import conic_to_maps, pannuke_to_maps, to_uint8_image

        images, labels = self._open()
        where = f"{self.images}[{i}]"
        image = to_uint8_image(np.asarray(images[i]), where)
        convert = pannuke_to_maps if self.kind == "pannuke" else conic_to_maps
        inst, typ = convert(np.asarray(labels[i]), f"{self.labels}[{i}]")
        return NucleiSample(image, inst, typ, num_classes=self.num_classes,
                            meta={"source": self.kind, "file": str(self.images), "index": i})

    def shape(self, i: int) -> tuple[int, int]:
        return self.hw

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class _Tiled:
    """HoVer-Net windows (:func:`patch_origins`) over every item of another source.

    Mirror mode reflects the image and both maps, so a nucleus cut by the border reappears
    mirrored with the same id, as in HoVer-Net's saved patches. The last full item read is cached
    per process, so iterating in order reads each tile once.
    """

    def __init__(self, base: Any, win: tuple[int, int], step: tuple[int, int], mode: str) -> None:
        from .patches import patch_origins

        self.base, self.win, self.step, self.mode = base, win, step, mode
        by_shape: dict[tuple[int, int], np.ndarray] = {}
        counts = np.zeros(len(base), np.int64)
        self._origins: list[np.ndarray] = []
        for i in range(len(base)):
            hw = tuple(base.shape(i))
            if hw not in by_shape:
                by_shape[hw] = patch_origins(hw, win, step, mode)
            self._origins.append(by_shape[hw])
            counts[i] = len(by_shape[hw])
        self._offsets = np.r_[0, np.cumsum(counts)]
        self._cache: tuple[int, NucleiSample] | None = None

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __call__(self, i: int) -> NucleiSample:
        from .patches import crop_reflect

        item = int(np.searchsorted(self._offsets, i, side="right")) - 1
        k = i - int(self._offsets[item])
        if self._cache is None or self._cache[0] != item:
            self._cache = (item, self.base(item))
        full = self._cache[1]
        y, x = (int(v) for v in self._origins[item][k])
        h, w = self.win
        return NucleiSample.trusted(
            np.ascontiguousarray(crop_reflect(full.image, y, x, h, w)),
            np.ascontiguousarray(crop_reflect(full.inst_map, y, x, h, w)),
            np.ascontiguousarray(crop_reflect(full.type_map, y, x, h, w)),
            meta={**full.meta, "item": item, "patch": k, "origin": (y, x)},
        )

    def shape(self, i: int) -> tuple[int, int]:
        return self.win

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class _Subset:
    """Source over chosen items of another source (e.g. the training tiles of a tile split)."""

    def __init__(self, base: Any, indices: Sequence[int]) -> None:
        self.base, self.indices = base, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __call__(self, i: int) -> NucleiSample:
        return self.base(self.indices[i])

    def shape(self, i: int) -> tuple[int, int]:
        return self.base.shape(self.indices[i])

    def names(self) -> list[str] | None:
        names = _source_names(self.base)
        return None if names is None else [names[i] for i in self.indices]


class _Downsampled:
    """Source at ``1/factor`` of another's resolution (e.g. CoNSeP 40x -> 20x with factor 2).

    The image is block-averaged (exact area interpolation for an integer factor); the maps take
    the centre pixel of each block (nearest), so ids and types stay exact labels. The image is
    first cropped to a multiple of ``factor``. A nucleus smaller than a block may vanish.
    """

    def __init__(self, base: Any, factor: int) -> None:
        self.base, self.factor = base, factor

    def __len__(self) -> int:
        return len(self.base)

    def __call__(self, i: int) -> NucleiSample:
        s = self.base(i)
        f = self.factor
        h, w = (d // f * f for d in s.shape)
        img = s.image[:h, :w].reshape(h // f, f, w // f, f, -1).astype(np.float32).mean(axis=(1, 3))
        image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        c = f // 2
        inst = np.ascontiguousarray(s.inst_map[c:h:f, c:w:f])
        types = np.ascontiguousarray(s.type_map[c:h:f, c:w:f])
        return NucleiSample(image, inst, types, meta={**s.meta, "downsample": f})

    def shape(self, i: int) -> tuple[int, int]:
        h, w = self.base.shape(i)
        return h // self.factor, w // self.factor

    def names(self) -> list[str] | None:
        return _source_names(self.base)


def _source_names(source: Any) -> list[str] | None:
    """File stems of a source's items, where it knows them (else None)."""
    if isinstance(source, _ConsepTiles):
        return [img.stem for img, _ in source.pairs]
    if isinstance(source, _NpyFiles):
        return [p.stem for p in source.paths]
    names = getattr(source, "names", None)
    return names() if callable(names) else None


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

    @classmethod
    def from_consep_dir(cls, root: str | Path, dataset: str = "consep", merge: bool | str = "auto", *,
                        patch_size: int | Sequence[int] | None = None, step: int | Sequence[int] | None = None,
                        mode: str = "mirror") -> NucleiDataset:
        """CoNSeP/GLySAC split folder ``root/Images/*.png|tif`` + ``root/Labels/*.mat``.

        Args:
            root: e.g. ``CoNSeP/Train``.
            dataset: ``"consep"`` or ``"glysac"`` (class names, merge table, 40x resolution).
            merge: ``"auto"`` (default): merge raw classes (CoNSeP 7 -> 4, GLySAC 10 -> 3) only when
                the labels hold a type id above the merged range, so folders merged already
                (HoVer-Net's patches, ``consep_256``) are read as they are
                (:func:`~diffmix_aug.data.class_scan.resolve_merge`). True / False force it
                (True on labels that look merged warns; so does False on raw labels).
            patch_size, step, mode: Optional HoVer-Net tiling (:meth:`tiled`), e.g. 540 / 164.
        """
        from .class_scan import check_merge_arg, resolve_merge
        from .classes import get_dataset_info
        from .readers import find_consep_pairs

        check_choice("dataset", dataset, ("consep", "glysac"))
        merge = check_merge_arg(merge)
        info = get_dataset_info(dataset)
        pairs = find_consep_pairs(root)
        merge = resolve_merge(merge, info, [lab for _, lab in pairs], str(root))
        ds = cls(_ConsepTiles(pairs, info, merge), info)
        return ds.tiled(patch_size, step, mode) if patch_size is not None else ds

    @classmethod
    def from_hovernet_npy_dir(cls, directory: str | Path, info: DatasetInfo, pattern: str = "*.npy", *,
                              patch_size: int | Sequence[int] | None = None,
                              step: int | Sequence[int] | None = None, mode: str = "mirror") -> NucleiDataset:
        """Every HoVer-Net patch ``.npy`` (``[H, W, 5]``) in ``directory`` matching ``pattern``, sorted.

        A ``dataset.json`` written by ``diffmix-aug export`` sets the resolution (``info.mpp``) and
        must list the same classes as ``info``; without one, the patches are taken to be at
        ``info``'s native resolution (HoVer-Net's ``extract_patches.py`` does not rescale).
        """
        from .dataset_card import apply_dataset_card, read_dataset_card

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"HoVer-Net patch directory not found: {directory}")
        if not isinstance(info, DatasetInfo):
            raise TypeError(f"`info` must be a DatasetInfo (e.g. get_dataset_info('consep')), got {type(info).__name__}")
        info = apply_dataset_card(info, read_dataset_card(directory), directory)
        paths = sorted(directory.glob(pattern))
        if not paths:
            raise FileNotFoundError(f"no files matching {pattern!r} in {directory}")
        ds = cls(_NpyFiles(paths, info.num_classes), info)
        return ds.tiled(patch_size, step, mode) if patch_size is not None else ds

    @classmethod
    def from_pannuke(cls, images_npy: str | Path, masks_npy: str | Path, info: DatasetInfo | None = None, *,
                     patch_size: int | Sequence[int] | None = None, step: int | Sequence[int] | None = None,
                     mode: str = "mirror") -> NucleiDataset:
        """A PanNuke fold: ``images.npy [N, H, W, 3]`` and ``masks.npy [N, H, W, 6]`` (memory-mapped)."""
        return cls._from_array_pair(images_npy, masks_npy, "pannuke", 6, info, patch_size, step, mode)

    @classmethod
    def from_conic(cls, images_npy: str | Path, labels_npy: str | Path, info: DatasetInfo | None = None, *,
                   patch_size: int | Sequence[int] | None = None, step: int | Sequence[int] | None = None,
                   mode: str = "mirror") -> NucleiDataset:
        """CoNIC/Lizard arrays: ``images.npy [N, H, W, 3]`` and ``labels.npy [N, H, W, 2]`` (memory-mapped)."""
        return cls._from_array_pair(images_npy, labels_npy, "conic", 2, info, patch_size, step, mode)

    @classmethod
    def _from_array_pair(cls, images_npy, labels_npy, kind, channels, info, patch_size, step, mode):
        from .classes import get_dataset_info
        from .readers import check_array_file

        info = info if info is not None else get_dataset_info(kind)
        img_shape = check_array_file(images_npy, 4, None, f"{kind} images")
        if img_shape[-1] not in (3, 4):
            raise ValueError(f"{images_npy}: expected images [N, H, W, 3], got shape {img_shape}")
        lab_shape = check_array_file(labels_npy, 4, channels, f"{kind} labels")
        if lab_shape[:3] != img_shape[:3]:
            raise ValueError(f"{images_npy} has shape {img_shape} but {labels_npy} has {lab_shape}; "
                             "expected the same N, H, W")
        source = _ArrayPair(Path(images_npy), Path(labels_npy), kind, img_shape[0], img_shape[1:3], info.num_classes)
        ds = cls(source, info)
        return ds.tiled(patch_size, step, mode) if patch_size is not None else ds

    def tiled(self, patch_size: int | Sequence[int], step: int | Sequence[int] | None = None,
              mode: str = "mirror") -> NucleiDataset:
        """A dataset of HoVer-Net windows over every item (``extract_patches`` semantics).

        Args:
            patch_size: Window ``(h, w)`` or int (HoVer-Net: 540).
            step: Step ``(h, w)`` or int; default ``patch_size`` (no overlap). HoVer-Net: 164.
            mode: ``"mirror"`` or ``"valid"``.

        Note:
            Item shapes are read up front from file headers (no pixel data).
        """
        from .patches import _pair

        win = _pair("patch_size", patch_size)
        stp = _pair("step", step if step is not None else win)
        return NucleiDataset(_Tiled(self._source, win, stp, mode), self.info)

    def subset(self, indices: Sequence[int]) -> NucleiDataset:
        """A dataset of the items ``indices`` (in that order), read lazily from this one.

        Raises:
            IndexError: an index outside ``[0, len(self))``.
        """
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < len(self)]
        if bad:
            raise IndexError(f"`indices` must lie in [0, {len(self)}), got {bad[:5]}")
        return NucleiDataset(_Subset(self._source, idx), self.info)

    def downsampled(self, factor: int) -> NucleiDataset:
        """This dataset at ``1 / factor`` resolution (image block-averaged, maps nearest).

        Args:
            factor: Integer factor >= 1; 2 turns CoNSeP's 40x (0.25 um/px) into 20x (0.5 um/px).
                ``info.mpp`` of the result is multiplied by ``factor``.
        """
        factor = check_positive_int("factor", factor)
        return self if factor == 1 else NucleiDataset(_Downsampled(self._source, factor), self.info.scaled(factor))

    def item_names(self) -> list[str] | None:
        """File stems of the items (CoNSeP / HoVer-Net folders and their subsets), else None."""
        return _source_names(self._source)

    def materialised(self, progress: bool = False, desc: str = "read data") -> NucleiDataset:
        """Every item read once into memory (for small datasets re-read many times, e.g. SDM training).

        Args:
            progress: Show a progress bar (tqdm) while the items are read.
            desc: The bar's label.
        """
        from tqdm.auto import tqdm

        items = [self[i] for i in tqdm(range(len(self)), desc=desc, unit="item", disable=not progress)]
        return NucleiDataset(_SampleList(items, self.item_names()), self.info)

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
