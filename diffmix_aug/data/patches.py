"""HoVer-Net's patch extraction (``misc/patch_extractor.py``): window, step, mirror or valid mode.

The window positions follow HoVer-Net exactly, in the same order:

1. a regular grid with ``floor((L - win) / step) + 1`` positions per axis (row-major);
2. if the step does not divide ``L - win``, one extra row flush with the bottom edge (for every
   grid column), then one extra column flush with the right edge (for every grid row), then the
   bottom-right corner window.

``"mirror"`` first reflect-pads (``np.pad(mode="reflect")``) by ``(win - step) // 2`` on the
top/left and the rest on the bottom/right, so the central ``step``-sized parts of the windows
tile the original image. For a 1000x1000 tile: win 540 / step 164 -> 49 patches, step 80 ->
169, step 76 -> 196 (``design/formats.md`` §1a).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._checks import check_choice

__all__ = ["crop_reflect", "extract_patches", "patch_origins"]


def _pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    try:
        h, w = (int(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be an int or an (h, w) pair of ints, got {value!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"`{name}` must be positive, got {(h, w)}")
    return h, w


def _axis_starts(length: int, win: int, step: int) -> list[int]:
    """Window starts along one axis: the regular grid, plus the flush-edge start if needed."""
    n = (length - win) // step + 1
    starts = [k * step for k in range(n)]
    if (length - win) % step != 0:
        starts.append(length - win)
    return starts


def patch_origins(
    shape: tuple[int, int],
    win_size: int | Sequence[int],
    step_size: int | Sequence[int],
    mode: str = "mirror",
) -> np.ndarray:
    """Top-left corners of HoVer-Net's windows, in HoVer-Net's order.

    Args:
        shape: ``(H, W)`` of the image.
        win_size: Window ``(h, w)`` or an int.
        step_size: Step ``(h, w)`` or an int.
        mode: ``"mirror"`` (reflect padding, see module doc) or ``"valid"`` (no padding).

    Returns:
        ``int64 [N, 2]`` rows of ``(y, x)`` in the coordinates of the *unpadded* image; in mirror
        mode they can be negative or run past the far edge (those pixels are reflections).

    Raises:
        ValueError: unknown mode, a (padded) image smaller than the window, or in mirror mode a
            step larger than the window or padding wider than the image (reflection undefined).
    """
    check_choice("mode", mode, ("mirror", "valid"))
    win = _pair("win_size", win_size)
    step = _pair("step_size", step_size)
    h, w = (int(s) for s in shape)
    offset = [0, 0]
    length = [h, w]
    if mode == "mirror":
        for ax in range(2):
            diff = win[ax] - step[ax]
            if diff < 0:
                raise ValueError(f"mirror mode needs step_size <= win_size, got step {step} for window {win}; "
                                 "use mode='valid' for non-overlapping gaps")
            pad_lo, pad_hi = diff // 2, diff - diff // 2
            if max(pad_lo, pad_hi) >= length[ax]:
                raise ValueError(f"mirror padding of {max(pad_lo, pad_hi)} px needs an image longer than that; "
                                 f"got shape {(h, w)} for window {win} and step {step}")
            offset[ax] = pad_lo
            length[ax] += diff
    for ax in range(2):
        if length[ax] < win[ax]:
            raise ValueError(f"image of shape {(h, w)} (padded: {tuple(length)}) is smaller than the window {win}; "
                             "pad it first or use a smaller win_size")
    ys = _axis_starts(length[0], win[0], step[0])
    xs = _axis_starts(length[1], win[1], step[1])
    grid_y = ys[:(length[0] - win[0]) // step[0] + 1]
    grid_x = xs[:(length[1] - win[1]) // step[1] + 1]
    out = [(y, x) for y in grid_y for x in grid_x]
    if len(ys) > len(grid_y):
        out += [(ys[-1], x) for x in grid_x]
    if len(xs) > len(grid_x):
        out += [(y, xs[-1]) for y in grid_y]
    if len(ys) > len(grid_y) and len(xs) > len(grid_x):
        out.append((ys[-1], xs[-1]))
    arr = np.asarray(out, np.int64).reshape(-1, 2)
    return arr - np.asarray(offset, np.int64)


def _reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Indices for ``np.pad(mode="reflect")`` (edge not repeated), for overhangs shorter than ``n``."""
    idx = np.where(idx < 0, -idx, idx)
    return np.where(idx >= n, 2 * (n - 1) - idx, idx)


def crop_reflect(x: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """``x[y0:y0+h, x0:x0+w]`` where out-of-image pixels are reflections (as ``np.pad`` reflect).

    A plain slice (a view) when the window lies inside the image.

    Args:
        x: ``[H, W, ...]`` array.
        y0, x0: Top-left corner; may be negative.
        h, w: Window size.
    """
    H, W = x.shape[:2]
    if y0 >= 0 and x0 >= 0 and y0 + h <= H and x0 + w <= W:
        return x[y0:y0 + h, x0:x0 + w]
    if y0 <= -H or x0 <= -W or y0 + h >= 2 * H or x0 + w >= 2 * W:
        raise ValueError(f"window (y0={y0}, x0={x0}, h={h}, w={w}) overhangs the image of shape {(H, W)} by "
                         "more than its size; a single reflection cannot fill it")
    rows = _reflect_index(np.arange(y0, y0 + h), H)
    cols = _reflect_index(np.arange(x0, x0 + w), W)
    return x[rows[:, None], cols[None, :]]


def extract_patches(
    x: np.ndarray,
    win_size: int | Sequence[int],
    step_size: int | Sequence[int],
    mode: str = "mirror",
) -> list[np.ndarray]:
    """Cut ``x`` into HoVer-Net's patches (same windows, same order, same padding).

    Args:
        x: ``[H, W]`` or ``[H, W, C]`` array (e.g. the ``[H, W, 5]`` RGB+inst+type stack).
        win_size: Window ``(h, w)`` or an int.
        step_size: Step ``(h, w)`` or an int.
        mode: ``"mirror"`` or ``"valid"``.

    Returns:
        List of ``[win_h, win_w, ...]`` arrays with the dtype of ``x`` (views in valid mode).

    Examples:
        >>> len(extract_patches(np.zeros((1000, 1000, 5), np.int32), 540, 164))
        49
    """
    if not isinstance(x, np.ndarray) or x.ndim < 2:
        raise TypeError(f"`x` must be a numpy array [H, W] or [H, W, C], got "
                        f"{type(x).__name__}{getattr(x, 'shape', '')}")
    win = _pair("win_size", win_size)
    origins = patch_origins(x.shape[:2], win, step_size, mode)
    return [crop_reflect(x, int(y), int(xx), win[0], win[1]) for y, xx in origins]
