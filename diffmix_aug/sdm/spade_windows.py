"""SPADE modulations computed once per distinct label window (an exact rewrite of the setup).

A SPADE layer's ``gamma`` / ``beta`` at a pixel are two 3x3 convolutions deep in the label map:
``gamma(p) = conv3x3(ReLU(conv3x3(y)))(p)``, so they depend only on the 5x5 window of ``y`` around
``p`` (and on which of its cells lie outside the image, where both convolutions pad with zeros). A
nuclei label map is piecewise constant: background, nucleus interiors and the boundary patterns
repeat, so a batch has far fewer distinct windows than pixels. :func:`label_windows` finds them once
per resolution; :func:`spade_affine_from_windows` runs a layer's two convolutions on the distinct
windows only (a 5x5 input gives one output pixel) and spreads the result back by index. Same
products summed as the full convolutions, in another order: equal to float rounding.

Random per-pixel labels have (almost) no repeated window; :func:`label_windows` then reports a
ratio near 1 and the caller keeps the full convolutions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["LabelWindows", "label_windows", "spade_affine_from_windows"]


@dataclass(frozen=True)
class LabelWindows:
    """The distinct 5x5 label windows of a batch at one resolution.

    Attributes:
        y: ``[U, C, 5, 5]`` window values (zeros outside the image), in the label's dtype.
        inside: ``[U, 1, 3, 3]`` 1 where the window's inner 3x3 cell (a hidden-activation position)
            lies inside the image, else 0 (the hidden activation is zero-padded there).
        inverse: ``int64 [N * h * w]`` index of each pixel's window (pixels in NHW order).
        shape: ``(N, h, w)``.
    """

    y: torch.Tensor
    inside: torch.Tensor
    inverse: torch.Tensor
    shape: tuple[int, int, int]

    @property
    def ratio(self) -> float:
        """Distinct windows per pixel (1.0: nothing repeats)."""
        n, h, w = self.shape
        return self.y.shape[0] / max(1, n * h * w)


def label_windows(y: torch.Tensor) -> LabelWindows:
    """Distinct 5x5 windows of ``y`` (with the image border marked).

    Args:
        y: ``[N, C, h, w]`` label condition at the SPADE layer's resolution (any float dtype).

    Returns:
        :class:`LabelWindows`.
    """
    n, c, h, w = y.shape
    inside = torch.ones((n, 1, h, w), dtype=y.dtype, device=y.device)
    yi = torch.cat([y, inside], dim=1)
    cols = F.unfold(yi, kernel_size=5, padding=2)  # [N, (C+1)*25, h*w]
    inverse = _window_ids(yi)
    if inverse is None:  # too many distinct strips for exact integer keys: sort the rows themselves
        rows = cols.transpose(1, 2).reshape(n * h * w, (c + 1) * 25)
        uniq, inverse = torch.unique(rows, dim=0, return_inverse=True)
    else:
        count = int(inverse.max()) + 1
        first = torch.full((count,), n * h * w, dtype=torch.int64, device=y.device)
        first.scatter_reduce_(0, inverse, torch.arange(n * h * w, device=y.device), reduce="amin")
        uniq = cols[first // (h * w), :, first % (h * w)]  # [U, (C+1)*25]: one pixel per window
    win = uniq.reshape(-1, c + 1, 5, 5)
    return LabelWindows(win[:, :c].contiguous(), win[:, c:, 1:4, 1:4].contiguous(), inverse, (n, h, w))


_KEY_LIMIT = 2**62


def _window_ids(yi: torch.Tensor) -> torch.Tensor | None:
    """``int64 [N*h*w]`` ids such that two pixels share an id exactly when their 5x5 windows of
    ``yi`` (zero padded) are equal, or None when the integer keys would overflow.

    Exact, by three small sorts instead of one over 25-cell rows: pixel vectors -> pixel codes;
    five horizontal neighbours' codes -> strip codes (a base-P number); five vertical strips'
    codes -> window codes (a base-S number).
    """
    n, c1, h, w = yi.shape
    padded = F.pad(yi, (2, 2, 2, 2))
    pix = padded.permute(0, 2, 3, 1).reshape(-1, c1)
    _, code = torch.unique(pix, dim=0, return_inverse=True)
    code = code.view(n, h + 4, w + 4)
    base = int(code.max()) + 1
    if base**5 >= _KEY_LIMIT:
        return None
    strip = sum(code[:, :, k:k + w] * base**k for k in range(5))  # [N, h+4, w]
    _, strip = torch.unique(strip, return_inverse=True)
    base = int(strip.max()) + 1
    if base**5 >= _KEY_LIMIT:
        return None
    key = sum(strip[:, k:k + h, :] * base**k for k in range(5))  # [N, h, w]
    _, ids = torch.unique(key.reshape(-1), return_inverse=True)
    return ids


def spade_affine_from_windows(mlp_shared: torch.nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor,
                              windows: LabelWindows,
                              memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """``conv3x3(ReLU(mlp_shared(y)), weight, bias)`` at every pixel, from the distinct windows.

    Args:
        mlp_shared: The layer's first convolution (``label_channels -> hidden``, 3x3, padding 1).
        weight: ``[K, hidden, 3, 3]`` second convolution (e.g. gamma and beta weights stacked).
        bias: ``[K]``.
        windows: From :func:`label_windows` at this layer's resolution.
        memory_format: Of the returned tensor.

    Returns:
        ``[N, K, h, w]`` in the weights' dtype, the full convolutions' result to float rounding.
    """
    hidden = F.relu(F.conv2d(windows.y.to(mlp_shared.weight.dtype), mlp_shared.weight, mlp_shared.bias))
    hidden = hidden * windows.inside.to(hidden.dtype)  # [U, hidden, 3, 3], zero-padded outside the image
    # a 3x3 convolution of a 3x3 input to one pixel is one matrix product: [K, hidden*9] x [hidden*9, U]
    per_window = torch.addmm(bias[:, None], weight.flatten(1), hidden.flatten(1).T)  # [K, U]
    n, h, w = windows.shape
    if memory_format == torch.channels_last:
        out = per_window.T.index_select(0, windows.inverse).view(n, h, w, -1)  # NHWC
        return out.permute(0, 3, 1, 2)
    out = torch.empty((n, per_window.shape[0], h * w), dtype=per_window.dtype, device=per_window.device)
    for i, inv in enumerate(windows.inverse.view(n, h * w)):
        torch.index_select(per_window, 1, inv, out=out[i])  # NCHW written in place, no permute
    return out.view(n, -1, h, w)
