"""Readers and writers for the nuclei formats users bring (``design/formats.md`` §1, §3).

* CoNSeP / GLySAC tiles: ``Images/*.png|tif`` (RGBA reduced to RGB) + ``Labels/*.mat`` with
  ``inst_map`` and ``type_map`` (or ``inst_type``), raw classes merged with the dataset table.
* HoVer-Net patch ``.npy``: ``[H, W, 5]`` int32 = R, G, B, inst, type (``[H, W, 4]`` without types).
* PanNuke folds: ``masks [N, H, W, 6]``, channels 0-4 per-class instance maps, 5 background.
* CoNIC / Lizard: ``labels [N, H, W, 2]`` = inst, class.

OpenCV and SciPy are imported inside the functions that use them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_save_npy
from .classes import DatasetInfo
from .remap import remap_label
from .sample import NucleiSample

__all__ = [
    "IMAGE_SUFFIXES",
    "check_array_file",
    "conic_to_maps",
    "find_consep_pairs",
    "hovernet_array_to_sample",
    "image_shape",
    "pannuke_to_maps",
    "read_consep_label",
    "read_consep_tile",
    "read_hovernet_npy",
    "read_image",
    "to_uint8_image",
    "write_hovernet_npy",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
#: formats whose every readable file Pillow's header reader opens: a header it refuses is a corrupt file
_HEADER_DECIDES = (".png", ".jpg", ".jpeg", ".bmp")
PathLike = str | os.PathLike[str]


def to_uint8_image(image: np.ndarray, source: str = "image") -> np.ndarray:
    """Return ``image [H, W, 3|4]`` as ``uint8 [H, W, 3]`` (alpha dropped; integral 0..255 values kept).

    Accepts any numeric dtype whose values are whole numbers in [0, 255] (PanNuke stores float64
    images, HoVer-Net patches int32).

    Raises:
        ValueError: wrong shape, or values outside [0, 255] / non-integral, naming ``source``.
    """
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"{source}: expected an RGB image [H, W, 3] (or RGBA [H, W, 4]), got shape {image.shape}")
    image = image[..., :3]
    if image.dtype == np.uint8:
        return image
    if image.dtype.kind not in "iuf":
        raise TypeError(f"{source}: expected a numeric image, got dtype {image.dtype}")
    arr = np.asarray(image)
    if arr.size and (arr.min() < 0 or arr.max() > 255 or (arr.dtype.kind == "f" and (arr != np.round(arr)).any())):
        raise ValueError(f"{source}: image values must be whole numbers in [0, 255] to convert to uint8, got range "
                         f"[{arr.min()}, {arr.max()}] ({arr.dtype}); rescale floats in [0, 1] by 255 first")
    return arr.astype(np.uint8)


def read_image(path: PathLike) -> np.ndarray:
    """Read a ``.png``/``.tif``/... as ``uint8 [H, W, 3]`` RGB (alpha dropped, grey replicated).

    Raises:
        FileNotFoundError: missing file. ValueError: unreadable, or not 8-bit.
    """
    import cv2

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        image_shape(path)  # the header's size, checked before any pixel is decoded
    except ValueError as exc:
        # a PNG / JPEG / BMP header Pillow cannot read is corrupt (OpenCV can spend seconds on one);
        # TIFF variants Pillow does not parse go on to OpenCV
        if "pixels" in str(exc) or path.suffix.lower() in _HEADER_DECIDES:
            raise
    try:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ValueError(f"{path}: OpenCV could not decode this image ({str(exc).strip().splitlines()[-1]})") from None
    if img is None:
        raise ValueError(f"{path}: OpenCV could not decode this image; expected one of {IMAGE_SUFFIXES}")
    if img.dtype != np.uint8:
        raise ValueError(f"{path}: expected an 8-bit image, got {img.dtype}; convert it to 8-bit RGB first")
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=-1)
    if img.shape[-1] == 4:
        return np.ascontiguousarray(img[..., 2::-1])  # BGRA -> RGB
    if img.shape[-1] == 3:
        return np.ascontiguousarray(img[..., ::-1])
    raise ValueError(f"{path}: expected 1, 3 or 4 channels, got shape {img.shape}")


#: Larger images are refused before decoding (a CoNSeP tile has 1e6 pixels; 11,585 px square fits).
MAX_IMAGE_PIXELS = 1 << 27


def image_shape(path: PathLike) -> tuple[int, int]:
    """``(H, W)`` of an image file, read from its header only (Pillow).

    Raises:
        ValueError: unreadable header, or more than :data:`MAX_IMAGE_PIXELS` pixels; naming the file.
    """
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{path}: the image header declares more than {MAX_IMAGE_PIXELS} pixels ({exc}); this "
                         "reader takes tiles, not whole slides: cut the image into tiles first") from None
    except FileNotFoundError:
        raise
    except Exception as exc:  # Pillow raises several types for corrupt or unknown files
        raise ValueError(f"{path}: cannot read the image header ({type(exc).__name__}: {exc})") from None
    if h * w > MAX_IMAGE_PIXELS:
        raise ValueError(f"{path}: the image header declares {h} x {w} = {h * w} pixels, more than the "
                         f"{MAX_IMAGE_PIXELS} this reader decodes; it takes tiles, not whole slides: cut the image "
                         "into tiles first")
    return h, w


def read_consep_label(path: PathLike, info: DatasetInfo | None = None, merge: bool = True,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Read a CoNSeP/GLySAC ``.mat``: ``(inst_map int32 [H, W], type_map int32 [H, W])``.

    ``type_map`` comes from the ``type_map`` key; without it, from ``inst_type [N, 1]`` (type of
    instance id ``k`` at row ``k - 1``, as CoNSeP stores it); without both, all zeros.

    Args:
        path: The ``.mat`` file.
        info: Dataset whose merge table to apply (when ``merge``).
        merge: Map raw classes to merged ones with ``info.merge_table`` (CoNSeP 7->4, GLySAC 10->3).

    Raises:
        ValueError: missing ``inst_map`` key, wrong shapes, unknown raw classes; naming the file.
    """
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for corrupt files
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({exc})") from exc
    keys = sorted(k for k in mat if not k.startswith("__"))
    if "inst_map" not in mat:
        raise ValueError(f"{path}: expected an `inst_map` key (CoNSeP layout), found keys {keys}")
    inst = np.asarray(mat["inst_map"])
    if inst.ndim != 2:
        raise ValueError(f"{path}: `inst_map` must be 2-D [H, W], got shape {inst.shape}")
    inst = _integral(inst, f"{path}: `inst_map`")
    if "type_map" in mat:
        typ = np.asarray(mat["type_map"])
        if typ.shape != inst.shape:
            raise ValueError(f"{path}: `type_map` shape {typ.shape} differs from `inst_map` shape {inst.shape}")
        typ = _integral(typ, f"{path}: `type_map`")
    elif "inst_type" in mat:
        typ = _types_from_inst_type(inst, np.asarray(mat["inst_type"]), path)
    else:
        typ = np.zeros_like(inst)
    if merge and info is not None and info.merge_table is not None:
        try:
            typ = info.merge(typ)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc} (dataset {info.name!r}; pass merge=False to keep raw ids)") from None
    return inst, typ


def _types_from_inst_type(inst: np.ndarray, inst_type: np.ndarray, path: Path) -> np.ndarray:
    """Type map from ``inst_type [N, 1]``: row ``k - 1`` types id ``k`` (CoNSeP) or, for
    non-contiguous ids, row ``r`` types the ``r``-th id in ascending order."""
    inst_type = _integral(inst_type.reshape(-1), f"{path}: `inst_type`")
    ids = np.unique(inst)
    ids = ids[ids > 0]
    if ids.size == 0:
        return np.zeros_like(inst)
    if ids.size != inst_type.size and int(ids.max()) != inst_type.size:
        raise ValueError(f"{path}: `inst_type` has {inst_type.size} rows but `inst_map` holds {ids.size} instances "
                         f"(max id {ids.max()}); expected one row per instance")
    lut = np.zeros(int(ids.max()) + 1, np.int32)
    if int(ids.max()) == inst_type.size:
        lut[1:] = inst_type
    else:
        lut[ids] = inst_type
    return lut[inst]


def _integral(arr: np.ndarray, source: str) -> np.ndarray:
    """Cast label values to int32 after checking they are whole, finite and in [0, 2**31 - 1]."""
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"{source} must hold finite whole numbers, got NaN/inf values ({arr.dtype}); "
                             "fix the label file")
        if (arr != np.round(arr)).any():
            raise ValueError(f"{source} must hold whole numbers, got non-integral values ({arr.dtype}); "
                             "label ids and types must be integers")
    elif arr.dtype.kind not in "iub":
        raise TypeError(f"{source} must be numeric, got dtype {arr.dtype}")
    if arr.size and arr.dtype.kind != "b":
        lo, hi = arr.min(), arr.max()
        if lo < 0:
            raise ValueError(f"{source} must be >= 0, got minimum {lo}")
        limit = np.iinfo(np.int32).max
        if (int(hi) if arr.dtype.kind in "iu" else float(hi)) > limit:
            raise ValueError(f"{source} values must fit in int32 (0..{limit}), got maximum {hi} ({arr.dtype}); "
                             "relabel the ids contiguously (e.g. remap_label) before saving")
    return arr.astype(np.int32)


def read_consep_tile(image_path: PathLike, label_path: PathLike, info: DatasetInfo | None = None,
                     merge: bool = True, strict: bool = False) -> NucleiSample:
    """Read one CoNSeP/GLySAC tile (image + ``.mat``) as a validated :class:`NucleiSample`."""
    image = read_image(image_path)
    inst, typ = read_consep_label(label_path, info, merge)
    if image.shape[:2] != inst.shape:
        raise ValueError(f"{image_path} is {image.shape[:2]} but its labels {label_path} are {inst.shape}")
    num_classes = info.num_classes if info is not None and (merge or info.merge_table is None) else None
    return NucleiSample(image, inst, typ, num_classes=num_classes, strict=strict,
                        meta={"image": str(image_path), "label": str(label_path)})


def find_consep_pairs(root: PathLike) -> list[tuple[Path, Path]]:
    """Pair ``root/Images/<name>.png|tif`` with ``root/Labels/<name>.mat``, sorted by name.

    Raises:
        FileNotFoundError: no ``Images``/``Labels`` folder, no images, or an image without labels.
    """
    root = Path(root)
    img_dir, lab_dir = root / "Images", root / "Labels"
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"expected the CoNSeP layout {root}/Images/*.png and {root}/Labels/*.mat; "
                                    f"{d} is missing")
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {img_dir}")
    pairs = []
    for p in images:
        mat = lab_dir / f"{p.stem}.mat"
        if not mat.is_file():
            raise FileNotFoundError(f"image {p} has no label file {mat}")
        pairs.append((p, mat))
    return pairs


def read_hovernet_npy(path: PathLike, mmap: bool = False, num_classes: int | None = None) -> NucleiSample:
    """Read a HoVer-Net patch ``.npy`` ``[H, W, 5]`` (R, G, B, inst, type) or ``[H, W, 4]`` (no type).

    Raises:
        ValueError: wrong shape or values, naming the file.
    """
    path = Path(path)
    try:
        data = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a readable .npy file ({exc})") from exc
    return hovernet_array_to_sample(data, str(path), num_classes)


def hovernet_array_to_sample(data: np.ndarray, source: str = "array", num_classes: int | None = None,
                             ) -> NucleiSample:
    """Split a ``[H, W, 5|4]`` HoVer-Net patch array into a validated sample (see :func:`read_hovernet_npy`)."""
    if data.ndim != 3 or data.shape[-1] not in (4, 5):
        raise ValueError(f"{source}: expected a HoVer-Net patch [H, W, 5] (R, G, B, inst, type) or [H, W, 4] "
                         f"(no type), got shape {data.shape}")
    image = to_uint8_image(np.asarray(data[..., :3]), source)
    inst = _integral(np.asarray(data[..., 3]), f"{source}: inst channel")
    if data.shape[-1] == 5:
        typ = _integral(np.asarray(data[..., 4]), f"{source}: type channel")
    else:
        typ = np.zeros_like(inst)
    return NucleiSample(image, inst, typ, num_classes=num_classes, meta={"source": source})


def write_hovernet_npy(path: PathLike, sample: NucleiSample) -> Path:
    """Write ``sample`` as HoVer-Net's patch ``.npy`` (``int32 [H, W, 5]``), atomically."""
    if not isinstance(sample, NucleiSample):
        raise TypeError(f"`sample` must be a NucleiSample, got {type(sample).__name__}")
    path = Path(path)
    atomic_save_npy(path, sample.to_hovernet())
    return path


def pannuke_to_maps(masks: np.ndarray, source: str = "masks") -> tuple[np.ndarray, np.ndarray]:
    """Convert one PanNuke mask ``[H, W, 6]`` to ``(inst_map, type_map)`` int32 ``[H, W]``.

    Channels 0-4 hold per-class instance ids (neoplastic, inflammatory, connective, dead,
    epithelial -> types 1..5); channel 5 is background and is ignored. Ids are made unique across
    channels and renumbered 1..n (channel order, then id order). Where channels overlap, the
    later channel wins.
    """
    if masks.ndim != 3 or masks.shape[-1] != 6:
        raise ValueError(f"{source}: expected a PanNuke mask [H, W, 6] (5 class channels + background), "
                         f"got shape {masks.shape}")
    m = _integral(np.asarray(masks[..., :5]), source).astype(np.int64)
    inst = np.zeros(m.shape[:2], np.int64)
    typ = np.zeros(m.shape[:2], np.int32)
    base = int(m.max()) + 1 if m.size else 1
    for c in range(5):
        sel = m[..., c] > 0
        inst[sel] = c * base + m[..., c][sel]
        typ[sel] = c + 1
    return remap_label(inst, allow_no_background=True), typ


def conic_to_maps(labels: np.ndarray, source: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Split one CoNIC/Lizard label ``[H, W, 2]`` (inst, class) into ``(inst_map, type_map)`` int32."""
    if labels.ndim != 3 or labels.shape[-1] != 2:
        raise ValueError(f"{source}: expected a CoNIC label [H, W, 2] (instance, class), got shape {labels.shape}")
    return (_integral(np.asarray(labels[..., 0]), f"{source} instance channel"),
            _integral(np.asarray(labels[..., 1]), f"{source} class channel"))


def check_array_file(path: PathLike, ndim: int, last: int | None, what: str) -> tuple[int, ...]:
    """Open an ``.npy`` header (memory map, nothing read) and check its rank / last axis; returns the shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        arr: Any = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable .npy file ({exc})") from exc
    shape = tuple(arr.shape)
    del arr
    if len(shape) != ndim or (last is not None and shape[-1] != last):
        want = f"{ndim}-D" + (f" with last axis {last}" if last is not None else "")
        raise ValueError(f"{path}: expected {what} as a {want} array, got shape {shape}")
    return shape
