"""HoVer-Net's post-processing (``models/hovernet/post_proc.py``): np + hv maps -> instances and types.

1. foreground = ``np_prob >= 0.5``, connected components smaller than ``min_size`` removed;
2. the x and y maps are min-max normalised and differentiated with ``ksize`` Sobel filters along x
   and y respectively; ``overall = max(1 - norm(d x / dx), 1 - norm(d y / dy))``, zeroed outside
   the foreground;
3. energy = ``-GaussianBlur((1 - overall) * fg, 3x3)``; markers = ``fg - (overall >= edge_threshold)``,
   holes filled, opened with an ``open_size`` ellipse, labelled, components < ``min_size`` removed;
4. marker-controlled watershed of the energy inside the foreground.

HoVer-Net's constants (:data:`HOVERNET_POSTPROC`: ksize 21, threshold 0.4, 5x5 opening, 10 px)
are tuned for 40x nuclei of a few hundred pixels. The toy nuclei are 20-90 px, where those constants
merge or erase most nuclei even on perfect targets (PQ ~0.3); :data:`TOY_POSTPROC` (ksize 5,
threshold 0.6, 3x3 opening, 5 px, chosen by a grid search on perfect and blurred toy targets: PQ
0.96 / 0.95) is what the harness uses on small-nuclei data.

Each instance's type is the majority type of its pixels; if that is background (0) and another type
occurs, the second most frequent one is used (HoVer-Net's rule). Centroids are the centres of mass
(x, y).
"""

from __future__ import annotations

import numpy as np

__all__ = ["HOVERNET_POSTPROC", "TOY_POSTPROC", "instance_types", "process", "proc_np_hv"]

HOVERNET_POSTPROC = {"ksize": 21, "edge_threshold": 0.4, "open_size": 5, "min_size": 10}
TOY_POSTPROC = {"ksize": 5, "edge_threshold": 0.6, "open_size": 3, "min_size": 5}


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    counts = np.bincount(labels.ravel())
    small = counts < min_size
    small[0] = False
    out = labels.copy()
    out[small[labels]] = 0
    return out


def _minmax(x: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.normalize(x, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)


def proc_np_hv(np_prob: np.ndarray, hv: np.ndarray, *, ksize: int = 21, min_size: int = 10,
               edge_threshold: float = 0.4, open_size: int = 5) -> np.ndarray:
    """Instance map from the nuclei probability and the HV maps.

    Args:
        np_prob: ``float [H, W]`` foreground probability.
        hv: ``float [H, W, 2]`` predicted x / y maps.
        ksize: Sobel kernel size (odd, <= 31).
        min_size: smallest kept object / marker, pixels.
        edge_threshold: ``overall`` values at or above this are boundaries, not markers.
        open_size: side of the elliptic opening of the markers (<= 1: no opening).

    Returns:
        ``int32 [H, W]`` instance map (ids not necessarily contiguous), 0 = background.
    """
    import cv2
    from scipy import ndimage
    from skimage.segmentation import watershed

    np_prob = np.asarray(np_prob, np.float32)
    hv = np.asarray(hv, np.float32)
    if np_prob.ndim != 2 or hv.shape != np_prob.shape + (2,):
        raise ValueError(f"`np_prob` must be [H, W] and `hv` [H, W, 2], got {np_prob.shape} and {hv.shape}")
    blb = ndimage.label(np_prob >= 0.5)[0]
    blb = (_remove_small(blb, min_size) > 0).astype(np.int32)
    if not blb.any():
        return np.zeros(np_prob.shape, np.int32)
    h_dir = _minmax(hv[..., 0])
    v_dir = _minmax(hv[..., 1])
    sobel_h = cv2.Sobel(h_dir, cv2.CV_64F, 1, 0, ksize=ksize)
    sobel_v = cv2.Sobel(v_dir, cv2.CV_64F, 0, 1, ksize=ksize)
    sobel_h = 1 - _minmax(sobel_h)
    sobel_v = 1 - _minmax(sobel_v)
    overall = np.maximum(sobel_h, sobel_v) - (1 - blb)
    overall[overall < 0] = 0
    dist = (1.0 - overall) * blb
    dist = -cv2.GaussianBlur(dist, (3, 3), 0)
    edges = (overall >= edge_threshold).astype(np.int32)
    marker = blb - edges
    marker[marker < 0] = 0
    marker = ndimage.binary_fill_holes(marker).astype(np.uint8)
    if open_size > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (open_size, open_size))
        marker = cv2.morphologyEx(marker, cv2.MORPH_OPEN, kernel)
    marker = _remove_small(ndimage.label(marker)[0], min_size)
    return watershed(dist, markers=marker, mask=blb.astype(bool)).astype(np.int32)


def instance_types(inst_map: np.ndarray, type_map: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-instance type by majority vote, and centroids.

    Args:
        inst_map: ``int [H, W]`` instances, 0 = background.
        type_map: ``int [H, W]`` per-pixel type (argmax of the tp branch), 0 = background.

    Returns:
        ``(ids int64 [n], types int64 [n], centroids float64 [n, 2] as (x, y))``.
    """
    ids, inv = np.unique(inst_map.ravel(), return_inverse=True)
    fg_ids = ids > 0
    n_types = int(type_map.max()) + 1 if type_map.size else 1
    votes = np.bincount(inv * n_types + type_map.ravel().astype(np.int64),
                        minlength=ids.size * n_types).reshape(ids.size, n_types)
    ys, xs = np.indices(inst_map.shape)
    area = np.bincount(inv, minlength=ids.size).astype(np.float64)
    cx = np.bincount(inv, weights=xs.ravel(), minlength=ids.size) / np.maximum(area, 1)
    cy = np.bincount(inv, weights=ys.ravel(), minlength=ids.size) / np.maximum(area, 1)
    votes, area = votes[fg_ids], area[fg_ids]
    order = np.argsort(-votes, axis=1, kind="stable")  # ties: lower type first
    types = order[:, 0].copy()
    second_ok = (types == 0) & (votes[np.arange(len(types)), order[:, 1 if n_types > 1 else 0]] > 0)
    if n_types > 1:
        types[second_ok] = order[second_ok, 1]
    centroids = np.stack([cx[fg_ids], cy[fg_ids]], 1)
    return ids[fg_ids].astype(np.int64), types.astype(np.int64), centroids


def process(np_prob: np.ndarray, hv: np.ndarray, tp_prob: np.ndarray | None = None, **kwargs) -> dict:
    """Full post-processing of one image.

    Args:
        np_prob: ``float [H, W]`` foreground probability.
        hv: ``float [H, W, 2]`` x / y maps.
        tp_prob: ``float [H, W, T]`` type probabilities, or None.
        **kwargs: forwarded to :func:`proc_np_hv`.

    Returns:
        ``{"inst_map": int32 [H, W], "type_map": int32 [H, W], "inst_centroid": float [n, 2],
        "inst_type": int64 [n]}`` (types 0 without a tp branch).
    """
    inst = proc_np_hv(np_prob, hv, **kwargs)
    tp = np.zeros(inst.shape, np.int64) if tp_prob is None else np.argmax(tp_prob, -1)
    ids, types, centroids = instance_types(inst, tp)
    lut = np.zeros(int(inst.max()) + 1, np.int32)
    lut[ids] = types
    return {"inst_map": inst, "type_map": lut[inst], "inst_centroid": centroids, "inst_type": types}
