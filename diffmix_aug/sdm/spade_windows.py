"""SPADE modulations from the distinct label windows (an exact rewrite of the sampler's setup).

A SPADE layer's ``gamma`` / ``beta`` are two 3x3 convolutions deep in the label map,
``gamma(p) = sum_t W_t a(p + t) + b`` over the nine taps ``t``, with the hidden activation
``a(q) = ReLU(conv3x3(y)(q))`` inside the image and 0 outside (the second convolution's zero padding).
``a(q)`` depends only on the 3x3 label window at ``q`` (the label is zero padded, and a padded cell
is a zero label), and a nuclei label map is piecewise constant: background, nucleus interiors and
boundary patterns repeat. So, per resolution, :func:`label_windows` finds

* the V distinct 3x3 label windows (hundreds in a batch of 64 px maps, against 16 k pixels), and
* the U distinct 9-tuples of the taps' window ids (a pixel's whole 5x5 receptive field), with the
  index of each pixel's tuple,

and per layer :func:`window_values` runs the first convolution on the V windows only, multiplies
each hidden vector by the nine tap matrices once (one ``[V, hidden] x [hidden, 9 K]`` product) and
sums the nine taps of each of the U tuples by ``embedding_bag``; :func:`spread_windows` writes the
U columns back to every pixel. The same products as the full convolutions summed in another order:
equal to float rounding. Window ids are exact integers (per-channel value codes, then 3-wide strips,
then 3 strips, each a small 1-D sort), with a row sort as the fallback where the keys would overflow.

Random per-pixel labels have (almost) no repeated window; :func:`label_windows` then reports a ratio
near 1 and the caller keeps the full convolutions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["LabelWindows", "label_windows", "spread_windows", "tap_major", "window_values"]

_KEY_LIMIT = 2**62


@dataclass(frozen=True)
class LabelWindows:
    """The distinct label windows of a batch at one resolution.

    Attributes:
        y: ``[V, C, 3, 3]`` the distinct 3x3 label windows around the image's pixels (zeros outside
            the image), in the label's dtype.
        taps: ``int64 [U, 9]`` for each distinct 5x5 receptive field, its nine taps (row-major over
            the 3x3 kernel) as rows of the per-tap table of :func:`window_values`: ``9 v + t`` for
            3x3 window ``v`` at tap ``t``, ``9 V`` (a zero row) where the tap lies outside the image.
        inverse: ``int64 [N * h * w]`` the index in ``taps`` of each pixel (pixels in NHW order).
        shape: ``(N, h, w)``.
    """

    y: torch.Tensor
    taps: torch.Tensor
    inverse: torch.Tensor
    shape: tuple[int, int, int]

    @property
    def ratio(self) -> float:
        """Distinct 3x3 label windows per pixel (1.0: nothing repeats): about the share of the full
        convolutions' multiply-adds that :func:`window_values` still does."""
        n, h, w = self.shape
        return self.y.shape[0] / max(1, n * h * w)


def label_windows(y: torch.Tensor) -> LabelWindows:
    """Distinct 3x3 label windows and 5x5 receptive fields of ``y`` (see the module docstring).

    Args:
        y: ``[N, C, h, w]`` label condition at the SPADE layer's resolution (any float dtype, any
            memory format).

    Returns:
        :class:`LabelWindows`.
    """
    n, c, h, w = y.shape
    padded = F.pad(y, (1, 1, 1, 1))  # the first convolution's zero padding: a zero label
    code = _pixel_codes(padded)  # [N, h+2, w+2]
    win = _window_codes(code)  # [N, h, w]: id of the 3x3 window around each pixel
    n_win = int(win.max()) + 1 if win.numel() else 0
    first = _first_of_each(win.reshape(-1), n_win)
    rows, cols = torch.div(first % (h * w), w, rounding_mode="floor"), first % w
    y3 = _gather3x3(padded.permute(0, 2, 3, 1), first // (h * w), rows, cols)  # [V, 3, 3, C]
    y3 = y3.permute(0, 3, 1, 2).contiguous()
    tap_map = F.pad(win, (1, 1, 1, 1), value=n_win)  # taps outside the image: the zero row
    fields = _window_codes(tap_map)  # [N, h, w]: id of the 9-tuple of tap windows
    n_fields = int(fields.max()) + 1 if fields.numel() else 0
    first = _first_of_each(fields.reshape(-1), n_fields)
    rows, cols = torch.div(first % (h * w), w, rounding_mode="floor"), first % w
    taps = _gather3x3(tap_map, first // (h * w), rows, cols).reshape(-1, 9)  # [U, 9] window ids
    tap = torch.arange(9, device=y.device)
    taps = torch.where(taps == n_win, 9 * n_win, taps * 9 + tap)
    return LabelWindows(y3, taps, fields.reshape(-1), (n, h, w))


def tap_major(weight: torch.Tensor) -> torch.Tensor:
    """``[K, hidden, 3, 3]`` convolution weight as ``[hidden, 9 K]`` with column ``t K + k`` = tap ``t``
    (row-major) of output channel ``k``: the right factor of :func:`window_values`'s product."""
    k, hidden = weight.shape[:2]
    return weight.permute(1, 2, 3, 0).reshape(hidden, 9 * k).contiguous()


def window_values(mlp_shared: torch.nn.Conv2d, weight_taps: torch.Tensor, bias: torch.Tensor,
                  windows: LabelWindows) -> torch.Tensor:
    """``conv3x3(ReLU(mlp_shared(y)), weight, bias)`` for each distinct receptive field.

    Args:
        mlp_shared: The layer's first convolution (``label_channels -> hidden``, 3x3, padding 1).
        weight_taps: ``[hidden, 9 K]`` second convolution (e.g. gamma and beta weights stacked), from
            :func:`tap_major`.
        bias: ``[K]`` its bias (with whatever constant the caller folds in, e.g. the 1 of ``1 + gamma``).
        windows: From :func:`label_windows` at this layer's resolution.

    Returns:
        ``[U, K]``, in the hidden activation's dtype (the first convolution's, e.g. under autocast).
    """
    hidden = F.relu_(F.conv2d(windows.y.to(mlp_shared.weight.dtype), mlp_shared.weight, mlp_shared.bias))
    hidden = hidden.flatten(1)  # [V, hidden]: the 3x3 window's centre
    n_win, k = hidden.shape[0], weight_taps.shape[1] // 9
    table = torch.empty((9 * n_win + 1, k), dtype=hidden.dtype, device=hidden.device)
    torch.mm(hidden, weight_taps.to(hidden.dtype), out=table[:9 * n_win].view(n_win, 9 * k))  # row 9v+t: W_t a_v
    table[9 * n_win].zero_()  # a tap outside the image: zero-padded hidden activation
    out = F.embedding_bag(windows.taps, table, mode="sum")  # [U, K]: the nine taps summed
    return out.add_(bias.to(out.dtype))


def spread_windows(values: torch.Tensor, windows: LabelWindows, out: Sequence[torch.Tensor]) -> None:
    """Write each pixel's receptive-field value into ``out`` (channels split across the tensors).

    Args:
        values: ``[U, K]`` from :func:`window_values`.
        windows: The same :class:`LabelWindows`.
        out: Tensors ``[N, K_i, h, w]`` (NCHW or channels_last) whose ``K_i`` sum to ``K``, written
            in order (e.g. the first N images of a ``[2N, ...]`` buffer), each in its own dtype.
    """
    n, h, w = windows.shape
    sizes = [t.shape[1] for t in out]
    if sum(sizes) != values.shape[1] or any(tuple(t.shape) != (n, k, h, w) for t, k in zip(out, sizes, strict=True)):
        raise ValueError(f"`out` shapes {[tuple(t.shape) for t in out]} do not split {values.shape[1]} channels "
                         f"at batch {n} and size {(h, w)}")
    if all(t.is_contiguous() for t in out):
        per_channel = values.T.contiguous()  # [K, U]: each image's NCHW rows by one index_select
        for part, dst in zip(per_channel.split(sizes), out, strict=True):
            part = part.to(dst.dtype)
            for i, inv in enumerate(windows.inverse.view(n, h * w)):
                torch.index_select(part, 1, inv, out=dst[i].view(dst.shape[1], h * w))
        return
    per_pixel = values.index_select(0, windows.inverse).view(n, h, w, -1)  # NHWC
    for part, dst in zip(per_pixel.split(sizes, dim=-1), out, strict=True):
        dst.copy_(part.permute(0, 3, 1, 2))


# ------------------------------------------------------------------ integer window ids
def _pixel_codes(y: torch.Tensor) -> torch.Tensor:
    """``int64 [N, H, W]`` equal exactly where the pixels' label vectors are equal (compact 0..P-1)."""
    n, c, h, w = y.shape
    key = torch.zeros((n, h, w), dtype=torch.int64, device=y.device)
    mult = 1
    for ch in range(c):
        values, inv = torch.unique(y[:, ch], return_inverse=True)
        if mult * len(values) >= _KEY_LIMIT:  # too many value combinations for one key: sort the vectors
            _, code = torch.unique(y.permute(0, 2, 3, 1).reshape(-1, c), dim=0, return_inverse=True)
            return code.view(n, h, w)
        key += inv * mult
        mult *= len(values)
    _, code = torch.unique(key, return_inverse=True)
    return code


def _window_codes(code: torch.Tensor) -> torch.Tensor:
    """``int64 [N, H-2, W-2]``: ids equal exactly where the 3x3 windows of ``code`` ``[N, H, W]`` are.

    Two small sorts (3-wide strips as base-P numbers, then 3 strips as base-S numbers) instead of one
    over 9-cell rows, which remains the fallback where the keys would overflow.
    """
    n, hp, wp = code.shape
    h, w = hp - 2, wp - 2
    base = int(code.max()) + 1 if code.numel() else 1
    if base**3 < _KEY_LIMIT:
        strip = code[:, :, 0:w] + code[:, :, 1:w + 1] * base + code[:, :, 2:w + 2] * (base * base)
        _, strip = torch.unique(strip, return_inverse=True)  # [N, H, w]
        base = int(strip.max()) + 1 if strip.numel() else 1
        if base**3 < _KEY_LIMIT:
            key = strip[:, 0:h] + strip[:, 1:h + 1] * base + strip[:, 2:h + 2] * (base * base)
            _, ids = torch.unique(key, return_inverse=True)
            return ids
    rows = torch.stack([code[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], dim=-1)
    _, ids = torch.unique(rows.reshape(-1, 9), dim=0, return_inverse=True)
    return ids.view(n, h, w)


def _first_of_each(ids: torch.Tensor, count: int) -> torch.Tensor:
    """``int64 [count]``: the first position of each id in the flat ``ids``."""
    first = torch.full((count,), ids.numel(), dtype=torch.int64, device=ids.device)
    return first.scatter_reduce_(0, ids, torch.arange(ids.numel(), device=ids.device), reduce="amin")


def _gather3x3(grid: torch.Tensor, batch: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``grid[batch, rows + i, cols + j]`` for i, j in 0..2: ``[M, 3, 3, ...]`` from ``grid`` ``[N, H, W, ...]``."""
    off = torch.arange(3, device=grid.device)
    return grid[batch.view(-1, 1, 1), rows.view(-1, 1, 1) + off.view(1, 3, 1), cols.view(-1, 1, 1) + off.view(1, 1, 3)]
