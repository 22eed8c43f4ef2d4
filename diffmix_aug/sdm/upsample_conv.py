"""A 3x3 convolution of a nearest x2 up-sampled map, computed at the low resolution (an exact rewrite).

``conv3x3(up2(h))`` (padding 1) reads, at an output pixel ``(2i + a, 2j + b)``, the up-sampled cells
of rows ``2i + a - 1 .. 2i + a + 1``; these are copies of only two low-resolution rows: ``i - 1, i``
for ``a = 0`` (taps ``dy = -1`` | ``dy = 0, +1``) and ``i, i + 1`` for ``a = 1`` (``dy = -1, 0`` |
``dy = +1``), and the same for columns. So each of the four output parities is a 2x2 convolution of
``h`` with the 3x3 kernel's taps summed in those pairs: 16 instead of 36 multiply-adds per
low-resolution pixel and output channel, and no up-sampled copy of ``h``. Zero padding of the
up-sampled map is zero padding of ``h``, so the borders agree too. The result equals the plain form
to float rounding (the summed taps round once more).

Used by the fast (inference) decoder's up-sampling res-blocks (``SDMResBlock.forward_fast``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["add_nearest_up_", "conv3x3_of_nearest_up", "fold_nearest_up_conv3x3"]


def _pairs(w: torch.Tensor, parity: int, dim: int) -> torch.Tensor:
    """Sum the 3 taps of ``w`` along ``dim`` into the 2 that parity ``parity`` reads."""
    t0, t1, t2 = w.unbind(dim)
    return torch.stack([t0, t1 + t2] if parity == 0 else [t0 + t1, t2], dim)


def fold_nearest_up_conv3x3(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The four parity kernels of ``conv3x3(up2(.), weight, bias)``, stacked.

    Args:
        weight: ``[O, I, 3, 3]``.
        bias: ``[O]`` or None.

    Returns:
        ``([4 * O, I, 2, 2], [4 * O] or None)``: block ``2 a + b`` is output parity (row a, column b).
    """
    if weight.ndim != 4 or tuple(weight.shape[-2:]) != (3, 3):
        raise ValueError(f"`weight` must be [O, I, 3, 3], got {tuple(weight.shape)}")
    blocks = [_pairs(_pairs(weight, a, 2), b, 3) for a in (0, 1) for b in (0, 1)]
    return torch.cat(blocks), None if bias is None else bias.repeat(4)


def conv3x3_of_nearest_up(h: torch.Tensor, weight4: torch.Tensor, bias4: torch.Tensor | None) -> torch.Tensor:
    """``conv3x3(interpolate(h, scale_factor=2, mode="nearest"), padding=1)`` from the folded kernels.

    Args:
        h: ``[N, I, H, W]`` (contiguous or channels_last).
        weight4, bias4: From :func:`fold_nearest_up_conv3x3`.

    Returns:
        ``[N, O, 2H, 2W]`` in ``h``'s memory format and the convolution's dtype.
    """
    n, _, hh, ww = h.shape
    o = weight4.shape[0] // 4
    y = F.conv2d(F.pad(h, (1, 1, 1, 1)), weight4, bias4)  # [N, 4O, H+1, W+1]
    nhwc = h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous()
    out = torch.empty((n, o, 2 * hh, 2 * ww), dtype=y.dtype, device=y.device,
                      memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    for a in (0, 1):
        for b in (0, 1):
            part = y[:, (2 * a + b) * o:(2 * a + b + 1) * o, a:a + hh, b:b + ww]
            _parity_view(out, a, b).copy_(part)
    return out


def add_nearest_up_(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``h += interpolate(x, scale_factor=2, mode="nearest")`` without the up-sampled copy.

    Args:
        h: ``[N, C, 2H, 2W]``, written in place.
        x: ``[N, C, H, W]``.
    """
    for a in (0, 1):
        for b in (0, 1):
            _parity_view(h, a, b).add_(x.to(h.dtype))
    return h


def _parity_view(t: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """The ``[N, C, H, W]`` view of the pixels ``(2i + a, 2j + b)`` of ``t`` ``[N, C, 2H, 2W]``."""
    return t[:, :, a::2, b::2]
