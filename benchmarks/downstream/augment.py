"""HoVer-Net's training augmentation (``dataloader/train_loader.py`` + ``dataloader/augs.py``), numpy / OpenCV.

Shape (image and maps alike, nearest neighbour, as HoVer-Net's ``order=0``):

- affine: scale x and y each in U(0.8, 1.2), translation +-1 % of the side, shear U(-5, 5) deg,
  rotation U(-179, 179) deg, about the output window's centre;
- left-right and up-down flips, each with probability 0.5.

The output is an ``out_size`` window (HoVer-Net augments its 540 px patch and crops the network's
input from the centre). Here the window's centre is drawn uniformly so that the unrotated window
lies inside the patch, which also makes the random crop of a patch; pixels the transform brings
in from outside the patch are reflected (labels too: a reflected nucleus is a separate piece that
``fix_mirror_padding`` gives its own id, as in HoVer-Net's mirror-padded patches).

Photometric (image only), HoVer-Net's ``input_augs``: one of {Gaussian blur with kernel sides in
{1, 3, 5}, median blur with kernel in {1, 3, 5}, additive Gaussian noise with sd U(0, 0.05 * 255),
per channel with probability 0.5}; then, in random order, hue + U{-8..7} (OpenCV's 0-180 hue),
saturation x (1 + U(-0.2, 0.2)) around the grey value, brightness + U(-26, 26), contrast
x U(0.75, 1.25) around the mean.

Every parameter is drawn first (:func:`draw_params`) and applied deterministically (:func:`apply`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["AugParams", "apply", "draw_params", "source_indices"]

PHOTO_ORDER = ("hue", "saturation", "brightness", "contrast")


@dataclass(frozen=True)
class AugParams:
    """Drawn parameters of one item.

    Attributes:
        matrix: ``float64 [2, 3]`` forward affine (patch pixel (x, y) -> output pixel).
        out_size: Side of the output window.
        flip_lr, flip_ud: Flips after the affine.
        blur: ``("gaussian", kx, ky)``, ``("median", k)`` or ``("noise", sd, per_channel)``.
        noise_seed: Seed of the noise field (when ``blur[0] == "noise"``).
        hue, saturation, brightness, contrast: The colour changes.
        photo_order: Order of the four colour changes.
    """

    matrix: np.ndarray
    out_size: int
    flip_lr: bool
    flip_ud: bool
    blur: tuple
    noise_seed: int
    hue: int
    saturation: float
    brightness: float
    contrast: float
    photo_order: tuple[str, ...]


def _affine(rng: np.random.Generator, centre: tuple[float, float], out_size: int) -> np.ndarray:
    sx, sy = rng.uniform(0.8, 1.2, 2)
    tx, ty = rng.uniform(-0.01, 0.01, 2) * out_size
    shear = math.radians(rng.uniform(-5, 5))
    rot = math.radians(rng.uniform(-179, 179))
    scale = np.diag([sx, sy])
    sh = np.array([[1.0, math.tan(shear)], [0.0, 1.0]])
    c, s = math.cos(rot), math.sin(rot)
    r = np.array([[c, -s], [s, c]])
    a = r @ sh @ scale
    half = (out_size - 1) / 2.0
    src_c = np.asarray(centre, np.float64)  # (x, y) in the patch
    b = np.array([half + tx, half + ty]) - a @ src_c
    return np.concatenate([a, b[:, None]], 1)


def draw_params(rng: np.random.Generator, in_shape: tuple[int, int], out_size: int,
                shape_only: bool = False) -> AugParams:
    """Draw one item's augmentation.

    Args:
        rng: The only source of randomness.
        in_shape: ``(H, W)`` of the patch.
        out_size: Output side (at most ``min(H, W)``).
        shape_only: Skip the photometric part (identity colour parameters).
    """
    h, w = (int(v) for v in in_shape)
    if not 0 < out_size <= min(h, w):
        raise ValueError(f"`out_size` must be in (0, {min(h, w)}] for a {(h, w)} patch, got {out_size}")
    half = (out_size - 1) / 2.0
    cy = rng.uniform(half, h - 1 - half)
    cx = rng.uniform(half, w - 1 - half)
    matrix = _affine(rng, (cx, cy), out_size)
    flip_lr, flip_ud = (bool(v) for v in rng.integers(0, 2, 2))
    if shape_only:
        return AugParams(matrix, out_size, flip_lr, flip_ud, ("none",), 0, 0, 0.0, 0.0, 1.0, PHOTO_ORDER)
    kind = int(rng.integers(0, 3))
    if kind == 0:
        kx, ky = (int(v) * 2 + 1 for v in rng.integers(0, 3, 2))
        blur: tuple = ("gaussian", kx, ky)
    elif kind == 1:
        blur = ("median", int(rng.integers(0, 3)) * 2 + 1)
    else:
        blur = ("noise", float(rng.uniform(0.0, 0.05 * 255)), bool(rng.random() < 0.5))
    noise_seed = int(rng.integers(0, 2**31 - 1))
    hue = int(rng.integers(-8, 8))
    sat = float(rng.uniform(-0.2, 0.2))
    bright = float(rng.uniform(-26, 26))
    contrast = float(rng.uniform(0.75, 1.25))
    order = tuple(PHOTO_ORDER[i] for i in rng.permutation(4))
    return AugParams(matrix, out_size, flip_lr, flip_ud, blur, noise_seed, hue, sat, bright, contrast, order)


def _colour(img: np.ndarray, p: AugParams) -> np.ndarray:
    import cv2

    b = p.blur
    if b[0] == "gaussian":
        img = cv2.GaussianBlur(img, (b[1], b[2]), sigmaX=0, sigmaY=0, borderType=cv2.BORDER_REPLICATE)
    elif b[0] == "median":
        img = cv2.medianBlur(img, b[1])
    elif b[0] == "noise":
        g = np.random.default_rng(p.noise_seed)
        shape = img.shape if b[2] else img.shape[:2] + (1,)
        img = np.clip(img + g.normal(0.0, b[1], shape), 0, 255).astype(np.uint8)
    for step in p.photo_order:
        if step == "hue" and p.hue:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[..., 0] = (hsv[..., 0].astype(np.int32) + p.hue) % 180
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        elif step == "saturation" and p.saturation:
            v = 1 + p.saturation
            grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
            img = np.clip(img * v + (grey * (1 - v))[..., None], 0, 255).astype(np.uint8)
        elif step == "brightness" and p.brightness:
            img = np.clip(img.astype(np.float32) + p.brightness, 0, 255).astype(np.uint8)
        elif step == "contrast" and p.contrast != 1.0:
            mean = img.reshape(-1, 3).mean(0, dtype=np.float64)
            img = np.clip(img * p.contrast + mean * (1 - p.contrast), 0, 255).astype(np.uint8)
    return img


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """Reflect-101 indices into ``[0, n)`` (``dcb|abcd|cba``), any distance."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * n - 2
    idx = np.abs(idx) % period
    return np.where(idx >= n, period - idx, idx)


def source_indices(p: AugParams, in_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)``, each ``int64 [s, s]``: the patch pixel every output pixel takes (nearest,
    reflected at the borders), flips included."""
    s = p.out_size
    a, b = p.matrix[:, :2], p.matrix[:, 2]
    inv = np.linalg.inv(a)
    v, u = np.mgrid[0:s, 0:s].astype(np.float64)
    if p.flip_lr:
        u = u[:, ::-1]
    if p.flip_ud:
        v = v[::-1]
    du, dv = u - b[0], v - b[1]
    x = inv[0, 0] * du + inv[0, 1] * dv
    y = inv[1, 0] * du + inv[1, 1] * dv
    rows = _reflect(np.floor(y + 0.5).astype(np.int64), in_shape[0])
    cols = _reflect(np.floor(x + 0.5).astype(np.int64), in_shape[1])
    return rows, cols


def apply(image: np.ndarray, inst_map: np.ndarray, type_map: np.ndarray,
          p: AugParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply drawn parameters: ``(image uint8 [s, s, 3], inst_map int32 [s, s], type_map int32 [s, s])``."""
    rows, cols = source_indices(p, inst_map.shape)
    img = np.ascontiguousarray(image[rows, cols])
    inst = np.ascontiguousarray(inst_map[rows, cols], np.int32)
    typ = np.ascontiguousarray(type_map[rows, cols], np.int32)
    return _colour(img, p), inst, typ
