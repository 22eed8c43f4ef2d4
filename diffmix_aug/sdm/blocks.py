"""Building blocks of the SDM U-Net (after SDM's ``guided_diffusion/unet.py``, own implementation).

Precision: group norms and the attention softmax always run in float32 (also under autocast) and
cast back to the input dtype. Every block supports ``channels_last`` inputs.

Each block also has a ``forward_fast`` (inference only, no autograd: it works in place) used by the fast
sampler through ``SDMUNet.encode(..., fast=True)`` / ``decode(..., fast=True)``: the same math with fused
kernels (``scaled_dot_product_attention`` instead of einsum + softmax, ``addcmul`` for the modulations,
in-place SiLU, per-step time embeddings computed once on the shared batch, the up-sampling
convolution at the low resolution). ``forward`` stays the plain
form that the reference sampler runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .spade_windows import tap_major
from .upsample_conv import add_nearest_up_, conv3x3_of_nearest_up, fold_nearest_up_conv3x3

__all__ = [
    "AttentionBlock",
    "GroupNorm32",
    "ResBlock",
    "SDMResBlock",
    "SPADEGroupNorm",
    "spade_apply",
    "spade_apply_fast",
    "timestep_embedding",
    "zero_module",
]


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` (the reference's output-conv initialisation)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, cos half first.

    Args:
        t: ``[N]`` timesteps (int or float; original 0..999, not rescaled).
        dim: Embedding width.
        max_period: Lowest frequency's period.

    Returns:
        ``float32 [N, dim]``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32, result cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            w = None if self.weight is None else self.weight.float()
            b = None if self.bias is None else self.bias.float()
            return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def _resample(x: torch.Tensor, mode: str | None) -> torch.Tensor:
    if mode == "down":
        return F.avg_pool2d(x, kernel_size=2, stride=2)
    if mode == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    return x


class SPADEGroupNorm(nn.Module):
    """SPADE: ``GroupNorm(x, no affine) * (1 + gamma(y)) + beta(y)``.

    ``y`` is resized (nearest) to ``x``'s size, then ``a = ReLU(conv3x3(y))`` (width ``hidden``),
    ``gamma = conv3x3(a)``, ``beta = conv3x3(a)``. The three stages are exposed separately
    (:meth:`hidden`, :meth:`gamma_beta`, :meth:`modulate`) for the fast sampler.

    Args:
        channels: Channels of ``x``.
        label_channels: Channels of ``y``.
        hidden: Shared hidden width (paper 128).
        num_groups: GroupNorm groups.
        ds: Downsample factor of this layer relative to the input image (sets its resolution).
    """

    def __init__(self, channels: int, label_channels: int, hidden: int = 128, num_groups: int = 32, ds: int = 1):
        super().__init__()
        self.norm = GroupNorm32(num_groups, channels, affine=False)
        self.mlp_shared = nn.Conv2d(label_channels, hidden, 3, padding=1)
        self.mlp_gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, channels, 3, padding=1)
        self.ds = ds

    def hidden(self, y: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Shared activation ``ReLU(conv3x3(resize(y)))`` ``[N, hidden, h, w]``.

        Args:
            y: ``[N, label_channels, H, W]`` at image resolution.
            size: Target size; default ``(H // ds, W // ds)``.
        """
        if size is None:
            size = (y.shape[-2] // self.ds, y.shape[-1] // self.ds)
        if tuple(y.shape[-2:]) != tuple(size):
            y = F.interpolate(y, size=size, mode="nearest")
        return F.relu(self.mlp_shared(y))

    def gamma_beta(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gamma, beta)``, each ``[N, channels, h, w]``, from :meth:`hidden`'s output."""
        return self.mlp_gamma(hidden), self.mlp_beta(hidden)

    def modulate(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` and apply ``(1 + gamma)`` and ``beta`` (in float32, cast back to x's dtype)."""
        xn = self.norm(x)
        return (xn.float() * (1 + gamma.float()) + beta.float()).to(xn.dtype)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.gamma_beta(self.hidden(y, tuple(x.shape[-2:])))
        return self.modulate(x, gamma, beta)

    def tap_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma and beta convolutions stacked, tap-major (``[hidden, 9 * 2C]``, see
        :func:`~diffmix_aug.sdm.spade_windows.tap_major`), and their biases ``[2C]``; cached while the
        weights are unchanged (inference only)."""
        params = (self.mlp_gamma.weight, self.mlp_beta.weight, self.mlp_gamma.bias, self.mlp_beta.bias)
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        hit = self.__dict__.get("_tap_cache")
        if hit is None or hit[0] != key:
            with torch.no_grad():
                weight = tap_major(torch.cat([self.mlp_gamma.weight, self.mlp_beta.weight]))
                hit = (key, weight, torch.cat([self.mlp_gamma.bias, self.mlp_beta.bias]))
            self.__dict__["_tap_cache"] = hit
        return hit[1], hit[2]


def spade_apply(norm: SPADEGroupNorm, x: torch.Tensor, cond: tuple[str, object]) -> torch.Tensor:
    """Apply ``norm`` to ``x`` with one of three condition forms.

    Args:
        norm: The SPADE layer.
        x: ``[N, C, h, w]``.
        cond: ``("label", y)`` (image-resolution label map), ``("hidden", a)`` (the layer's hidden
            activation) or ``("full", (gamma, beta))``.
    """
    kind, value = cond
    if kind == "label":
        return norm(x, value)
    if kind == "hidden":
        gamma, beta = norm.gamma_beta(value)
        return norm.modulate(x, gamma, beta)
    if kind == "affine":
        gamma1, beta = value
        xn = norm.norm(x)
        return (xn.float() * gamma1.float() + beta.float()).to(xn.dtype)
    gamma, beta = value
    return norm.modulate(x, gamma, beta)


def spade_apply_fast(norm: SPADEGroupNorm, x: torch.Tensor, cond: tuple) -> torch.Tensor:
    """:func:`spade_apply` with one fused ``addcmul`` in float32 (other dtypes: the plain float32 form).

    ``cond`` may also be ``("affine", (1 + gamma, beta))``, the fast sampler's cached form, and may carry
    a third entry: the value of a batch-1 tail, broadcast over the rows of ``x`` after the value's own
    (``SpadeModulation.with_tail``; e.g. the null label's modulation under guidance).
    """
    kind, value, *tail = cond
    if kind == "label":
        return norm(x, value)
    xn = norm.norm(x)
    rows = _value_batch(kind, value)
    parts = [(xn, value)] if not tail else [(xn[:rows], value), (xn[rows:], tail[0])]
    for xp, v in parts:
        gamma1, beta = _affine_of(norm, kind, v)
        if xp.dtype == gamma1.dtype == beta.dtype == torch.float32:
            torch.addcmul(beta, xp, gamma1, out=xp)  # in place: xn is this call's own buffer
        else:
            xp.copy_(xp.float() * gamma1.float() + beta.float())
    return xn


def _value_batch(kind: str, value) -> int:
    return (value if kind == "hidden" else value[0]).shape[0]


def _affine_of(norm: SPADEGroupNorm, kind: str, value) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1 + gamma, beta)`` from a ``"hidden"``, ``"full"`` or ``"affine"`` condition value."""
    if kind == "affine":
        return value
    gamma, beta = norm.gamma_beta(value) if kind == "hidden" else value
    return 1 + gamma.float(), beta


def _film_fast(h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``h * (1 + scale) + shift`` with ``(scale, shift) = e.chunk(2, dim=1)`` (``e`` ``[N, 2C, 1, 1]``),
    written into ``h`` in float32 (the caller's own buffer)."""
    scale, shift = e.to(h.dtype).chunk(2, dim=1)
    if h.dtype == torch.float32:
        return torch.addcmul(shift, h, 1 + scale, out=h)
    return h * (1 + scale) + shift


class ResBlock(nn.Module):
    """Encoder res-block: GN-SiLU-(resample)-conv, + time FiLM, GN-SiLU-dropout-zero conv, + skip.

    Args:
        channels: Input channels.
        emb_channels: Time-embedding width.
        out_channels: Output channels (default ``channels``).
        dropout: Dropout probability.
        use_scale_shift_norm: FiLM ``norm(h) * (1 + scale) + shift`` (else add the embedding).
        resample: ``"down"`` (2x2 avg-pool), ``"up"`` (nearest x2) or None.
        num_groups: GroupNorm groups.
        use_checkpoint: Gradient checkpointing (only while training with grad enabled).
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, *, dropout: float = 0.0,
                 use_scale_shift_norm: bool = True, resample: str | None = None, num_groups: int = 32,
                 use_checkpoint: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resample = resample
        self.use_checkpoint = use_checkpoint
        self.in_norm = GroupNorm32(num_groups, channels)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.emb_layer = nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        self.out_norm = GroupNorm32(num_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.in_norm(x))
        h = self.in_conv(_resample(h, self.resample))
        x = _resample(x, self.resample)
        e = self.emb_layer(F.silu(emb)).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h

    def forward_fast(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Inference form of :meth:`forward`; ``e = emb_layer(silu(emb))[:, :, None, None]`` precomputed."""
        h = F.silu(self.in_norm(x), inplace=True)
        h = self.in_conv(_resample(h, self.resample))
        x = _resample(x, self.resample)
        if self.use_scale_shift_norm:
            h = _film_fast(self.out_norm(h), e)
        else:
            h = self.out_norm(h + e.to(h.dtype))
        h = self.out_conv(self.dropout(F.silu(h, inplace=True)))
        return h.add_(self.skip(x))


class SDMResBlock(nn.Module):
    """Middle/decoder res-block: both group norms are :class:`SPADEGroupNorm` (label-conditioned).

    Args:
        channels, emb_channels, out_channels, dropout, use_scale_shift_norm, resample, num_groups,
        use_checkpoint: as :class:`ResBlock`.
        label_channels: Channels of ``y``.
        spade_hidden: SPADE hidden width.
        ds: Downsample factor of the block's *input* resolution (the output one differs for up).
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, *, label_channels: int,
                 spade_hidden: int = 128, dropout: float = 0.0, use_scale_shift_norm: bool = True,
                 resample: str | None = None, num_groups: int = 32, use_checkpoint: bool = False, ds: int = 1):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resample = resample
        self.use_checkpoint = use_checkpoint
        out_ds = ds // 2 if resample == "up" else ds * 2 if resample == "down" else ds
        self.in_norm = SPADEGroupNorm(channels, label_channels, spade_hidden, num_groups, ds=ds)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.emb_layer = nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        self.out_norm = SPADEGroupNorm(out_channels, label_channels, spade_hidden, num_groups, ds=out_ds)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def spade_layers(self) -> list[SPADEGroupNorm]:
        """This block's SPADE layers in forward order."""
        return [self.in_norm, self.out_norm]

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cond_in: tuple, cond_out: tuple) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, cond_in, cond_out, use_reentrant=False)
        return self._forward(x, emb, cond_in, cond_out)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor, cond_in: tuple, cond_out: tuple) -> torch.Tensor:
        h = F.silu(spade_apply(self.in_norm, x, cond_in))
        h = self.in_conv(_resample(h, self.resample))
        x = _resample(x, self.resample)
        e = self.emb_layer(F.silu(emb)).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = spade_apply(self.out_norm, h, cond_out) * (1 + scale) + shift
        else:
            h = spade_apply(self.out_norm, h + e, cond_out)
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h

    def forward_fast(self, x: torch.Tensor, e: torch.Tensor, cond_in: tuple, cond_out: tuple) -> torch.Tensor:
        """Inference form of :meth:`forward`; ``e = emb_layer(silu(emb))[:, :, None, None]`` precomputed.

        An up-sampling block convolves at the low resolution (:mod:`.upsample_conv`) and adds the
        up-sampled skip without materialising it.
        """
        h = F.silu(spade_apply_fast(self.in_norm, x, cond_in), inplace=True)
        up = self.resample == "up" and isinstance(self.skip, nn.Identity)
        if up:
            h = conv3x3_of_nearest_up(h, *self._folded_up_conv())
        else:
            h = self.in_conv(_resample(h, self.resample))
            x = _resample(x, self.resample)
        if self.use_scale_shift_norm:
            h = _film_fast(spade_apply_fast(self.out_norm, h, cond_out), e)
        else:
            h = spade_apply_fast(self.out_norm, h + e.to(h.dtype), cond_out)
        h = self.out_conv(self.dropout(F.silu(h, inplace=True)))
        return add_nearest_up_(h, x) if up else h.add_(self.skip(x))

    def _folded_up_conv(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``in_conv`` folded for :func:`conv3x3_of_nearest_up`, cached while its weights are unchanged."""
        params = [p for p in (self.in_conv.weight, self.in_conv.bias) if p is not None]
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        hit = self.__dict__.get("_fast_up_cache")
        if hit is None or hit[0] != key:
            with torch.no_grad():
                hit = (key, *fold_nearest_up_conv3x3(self.in_conv.weight, self.in_conv.bias))
            self.__dict__["_fast_up_cache"] = hit
        return hit[1], hit[2]


class AttentionBlock(nn.Module):
    """Spatial self-attention with the legacy QKV order (heads split before q/k/v) and fp32 softmax.

    Args:
        channels: Channels.
        num_heads: Heads when ``num_head_channels == -1``.
        num_head_channels: Channels per head, or -1.
        num_groups: GroupNorm groups.
        use_checkpoint: Gradient checkpointing while training.
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1, num_groups: int = 32,
                 use_checkpoint: bool = False):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"`num_head_channels`={num_head_channels} must divide the attention width {channels}")
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads:
            raise ValueError(f"`num_heads`={self.num_heads} must divide the attention width {channels}")
        self.use_checkpoint = use_checkpoint
        self.norm = GroupNorm32(num_groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        flat = x.reshape(b, c, hh * ww)
        qkv = self.qkv(self.norm(flat))
        length = qkv.shape[-1]
        ch = c // self.num_heads
        q, k, v = qkv.reshape(b * self.num_heads, 3 * ch, length).split(ch, dim=1)
        scale = 1.0 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, length)
        return (flat + self.proj_out(a)).reshape(b, c, hh, ww)

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """Inference form of :meth:`forward`: tokens ``[b, hw, c]``, ``scaled_dot_product_attention``.

        Same heads and order (legacy: heads split before q/k/v); softmax(q k^T / sqrt(ch)) v equals the
        reference's (q ch^-1/4)(k ch^-1/4) form to rounding. No copy of x in NHWC.
        """
        b, c, hh, ww = x.shape
        heads = self.num_heads
        ch = c // heads
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, hh * ww, c)
        qkv = F.linear(tokens, self.qkv.weight[:, :, 0], self.qkv.bias)          # [b, L, 3c]
        q, k, v = qkv.unflatten(-1, (heads, 3, ch)).transpose(1, 2).unbind(-2)  # each [b, heads, L, ch]
        a = F.scaled_dot_product_attention(q, k, v)                               # [b, heads, L, ch]
        a = a.transpose(1, 2).reshape(b, hh * ww, c)
        out = F.linear(a, self.proj_out.weight[:, :, 0], self.proj_out.bias)      # [b, L, c]
        out = out.view(b, hh, ww, c).permute(0, 3, 1, 2)
        return torch.add(x, out.to(x.dtype), out=torch.empty_like(x))  # in x's memory format
