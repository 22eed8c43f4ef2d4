"""``SDMUNet``: SDM's denoiser with the encode / modulation / decode split.

The label map never enters the encoder, and every SPADE (gamma, beta) depends on the label only,
so a sampler can run the encoder once for the conditional and the unconditional pass and hoist the
SPADE convolutions out of the denoising loop (``design/performance.md`` §3)::

    state = model.encode(x, t)                    # EncoderState
    mods = model.modulation(y, kind="full")       # SpadeModulation
    out = model.decode(state, mods)               # == model(x, t, y)

``encode(..., fast=True)`` / ``decode(..., fast=True)`` run each block's inference-only ``forward_fast``
(fused kernels, same math to float rounding); a fast decode also takes one encoder state for k stacked
modulations (``[cond, null]``: k = 2) without materialising k copies of the skips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_choice, describe
from .blocks import (
    AttentionBlock,
    GroupNorm32,
    ResBlock,
    SDMResBlock,
    SPADEGroupNorm,
    timestep_embedding,
    zero_module,
)
from .config import SDMConfig
from .spade_windows import LabelWindows, label_windows, spread_windows, window_values

__all__ = ["MODULATION_KINDS", "EncoderState", "SDMUNet", "SpadeModulation"]

MODULATION_KINDS = ("full", "hidden", "affine")
#: ``modulation(windows=None)`` computes gamma / beta per distinct label window when at most this
#: share of the pixels has a window of its own (nuclei maps: far fewer; random labels: about all)
WINDOW_RATIO_MAX = 0.75


@dataclass
class EncoderState:
    """Encoder output: what the decoder needs besides the label.

    Attributes:
        h: Last encoder activation ``[N, C, h, w]`` (also ``skips[-1]``).
        skips: Every encoder block's output, in order (popped from the end by the decoder).
        emb: Time embedding ``[N, 4 * model_channels]``.
    """

    h: torch.Tensor
    skips: list[torch.Tensor]
    emb: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.h.shape[0]

    def repeat(self, k: int) -> EncoderState:
        """Batch repeated ``k`` times, concatenated along the batch (``[s, s]`` for k = 2)."""
        return EncoderState(torch.cat([self.h] * k), [torch.cat([s] * k) for s in self.skips],
                            torch.cat([self.emb] * k))


@dataclass
class SpadeModulation:
    """Label-only inputs of every SPADE layer, in forward order.

    Attributes:
        kind: ``"full"``: ``values[i] = (gamma_i, beta_i)``, each ``[N, C_i, h_i, w_i]``;
            ``"affine"``: as full with the one folded in, ``(1 + gamma_i, beta_i)`` (the fast fp32 cache);
            ``"hidden"``: ``values[i]`` = the shared ``ReLU(conv3x3(y))`` ``[N, spade_hidden, h_i, w_i]``.
        values: One entry per SPADE layer.
        tail: None, or a batch-1 modulation of the same kind that stands for ``tail_repeats`` more rows
            after those of ``values`` (see :meth:`with_tail`).
        tail_repeats: Rows the tail stands for (0 without a tail).
    """

    kind: str
    values: list
    tail: SpadeModulation | None = None
    tail_repeats: int = 0

    def _own_tensors(self) -> list[torch.Tensor]:
        return [t for v in self.values for t in (v if isinstance(v, tuple) else (v,))]

    def _tensors(self) -> list[torch.Tensor]:
        return self._own_tensors() + ([] if self.tail is None else self.tail._tensors())

    @property
    def batch_size(self) -> int:
        return self._own_tensors()[0].shape[0] + self.tail_repeats

    def _map(self, fn) -> SpadeModulation:
        tail = None if self.tail is None else self.tail._map(fn)
        if self.kind != "hidden":
            return SpadeModulation(self.kind, [(fn(g), fn(b)) for g, b in self.values], tail, self.tail_repeats)
        return SpadeModulation(self.kind, [fn(a) for a in self.values], tail, self.tail_repeats)

    def with_tail(self, tail: SpadeModulation, repeats: int) -> SpadeModulation:
        """``self.cat(tail.expand(repeats))`` without the copy: the fast decode broadcasts the batch-1
        ``tail`` over the last ``repeats`` rows (e.g. the null label's modulation under guidance), so
        neither memory nor the per-step reads grow with ``repeats``. Other uses see the concatenation
        (:meth:`materialize`)."""
        if not isinstance(tail, SpadeModulation) or tail.kind != self.kind or len(tail.values) != len(self.values):
            raise ValueError(f"`tail` must be a {self.kind!r} SpadeModulation of {len(self.values)} layers, got "
                             f"{type(tail).__name__ if not isinstance(tail, SpadeModulation) else (tail.kind, len(tail.values))}")
        if tail.batch_size != 1 or tail.tail is not None or self.tail is not None:
            raise ValueError(f"`tail` must be a plain batch-1 modulation appended to one without a tail, got tail batch "
                             f"{tail.batch_size} (own tail: {tail.tail is not None}, self's: {self.tail is not None})")
        if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
            raise ValueError(f"`repeats` must be an int >= 1, got {repeats!r}")
        return SpadeModulation(self.kind, self.values, tail, repeats)

    def materialize(self) -> SpadeModulation:
        """The same modulation with the tail (if any) concatenated in memory."""
        if self.tail is None:
            return self
        return SpadeModulation.concat([SpadeModulation(self.kind, self.values), self.tail.expand(self.tail_repeats)])

    def cat(self, other: SpadeModulation) -> SpadeModulation:
        """Concatenate along the batch: ``self`` first, then ``other`` (same kind and layers)."""
        return SpadeModulation.concat([self, other])

    @staticmethod
    def concat(mods: Sequence[SpadeModulation]) -> SpadeModulation:
        """Concatenate several modulations along the batch (tails materialised)."""
        kinds = {m.kind for m in mods}
        if len(kinds) != 1 or len({len(m.values) for m in mods}) != 1:
            raise ValueError(f"can only concatenate SpadeModulations of one kind and layer count, got kinds "
                             f"{sorted(kinds)} and layer counts {[len(m.values) for m in mods]}")
        mods = [m.materialize() for m in mods]
        kind = mods[0].kind
        if kind != "hidden":
            values = [(torch.cat([m.values[i][0] for m in mods]), torch.cat([m.values[i][1] for m in mods]))
                      for i in range(len(mods[0].values))]
        else:
            values = [torch.cat([m.values[i] for m in mods]) for i in range(len(mods[0].values))]
        return SpadeModulation(kind, values)

    def repeat(self, k: int) -> SpadeModulation:
        """Batch repeated ``k`` times (``[m, m]`` for k = 2)."""
        return self.materialize()._map(lambda t: torch.cat([t] * k))

    def expand(self, n: int) -> SpadeModulation:
        """Broadcast a batch-1 modulation to batch ``n`` without copying (stride-0 views)."""
        if self.batch_size != 1 or self.tail is not None:
            raise ValueError(f"`expand` needs a batch-1 modulation without a tail, got batch {self.batch_size}")
        return self._map(lambda t: t.expand(n, *t.shape[1:]))

    def to(self, *args, **kwargs) -> SpadeModulation:
        """``Tensor.to`` on every tensor (device, dtype, memory_format)."""
        return self._map(lambda t: t.to(*args, **kwargs))

    def conds(self, *, tails: bool = False) -> list[tuple]:
        """Per layer ``(kind, value)``; with ``tails``, ``(kind, value, tail value)`` where there is a
        tail (the fast blocks' broadcast form), else the tail materialised."""
        if tails and self.tail is not None:
            return [(self.kind, v, t) for v, t in zip(self.values, self.tail.values, strict=True)]
        return [(self.kind, v) for v in self.materialize().values]


class SDMUNet(nn.Module):
    """Semantic diffusion model U-Net (SDM, Wang et al. 2022), as used by DiffMix.

    ``forward(x [N,3,H,W], t [N] int64 (original timesteps), y [N,label_channels,H,W])`` returns
    ``[N, out_channels, H, W]`` in ``x``'s dtype: eps, then (learned sigma) the variance
    interpolation v. The encoder sees ``x`` and ``t`` only; SPADE norms in the middle and decoder
    blocks inject ``y``.

    Args:
        config: :class:`SDMConfig`.
    """

    def __init__(self, config: SDMConfig):
        super().__init__()
        self.config = config
        c = config
        mc = c.model_channels
        emb_dim = 4 * mc
        attn_ds = set(c.attention_ds)
        common = dict(dropout=c.dropout, use_scale_shift_norm=c.use_scale_shift_norm, num_groups=c.num_groups,
                      use_checkpoint=c.use_checkpoint)
        spade = dict(label_channels=c.label_channels, spade_hidden=c.spade_hidden)

        def attention(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, c.num_heads, c.num_head_channels, c.num_groups, c.use_checkpoint)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        ch = int(c.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([nn.ModuleList([nn.Conv2d(c.in_channels, ch, 3, padding=1)])])
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, int(mult * mc), **common)]
                ch = int(mult * mc)
                if ds in attn_ds:
                    layers.append(attention(ch))
                self.input_blocks.append(nn.ModuleList(layers))
                skip_chans.append(ch)
            if level != len(c.channel_mult) - 1:
                down = (ResBlock(ch, emb_dim, ch, resample="down", **common) if c.resblock_updown
                        else _Downsample(ch))
                self.input_blocks.append(nn.ModuleList([down]))
                skip_chans.append(ch)
                ds *= 2
        self.middle_block = nn.ModuleList([
            SDMResBlock(ch, emb_dim, ch, ds=ds, **spade, **common),
            attention(ch),
            SDMResBlock(ch, emb_dim, ch, ds=ds, **spade, **common),
        ])
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(c.channel_mult))[::-1]:
            for i in range(c.num_res_blocks + 1):
                skip_ch = skip_chans.pop()
                layers = [SDMResBlock(ch + skip_ch, emb_dim, int(mc * mult), ds=ds, **spade, **common)]
                ch = int(mc * mult)
                if ds in attn_ds:
                    layers.append(attention(ch))
                if level and i == c.num_res_blocks:
                    layers.append(SDMResBlock(ch, emb_dim, ch, resample="up", ds=ds, **spade, **common)
                                  if c.resblock_updown else _Upsample(ch))
                    ds //= 2
                self.output_blocks.append(nn.ModuleList(layers))
        self.out_norm = GroupNorm32(c.num_groups, ch)
        self.out_conv = zero_module(nn.Conv2d(ch, c.out_channels, 3, padding=1))
        self._spade_list = self._collect_spade_layers()  # plain list: not registered twice

    # ------------------------------------------------------------------ properties
    @property
    def label_channels(self) -> int:
        return self.config.label_channels

    @property
    def learn_sigma(self) -> bool:
        return self.config.learn_sigma

    @property
    def out_channels(self) -> int:
        return self.config.out_channels

    def spade_layers(self) -> list[SPADEGroupNorm]:
        """Every SPADE layer in forward order (middle, then decoder; in-norm before out-norm)."""
        return list(self._spade_list)

    def _collect_spade_layers(self) -> list[SPADEGroupNorm]:
        blocks = [m for m in self.middle_block if isinstance(m, SDMResBlock)]
        blocks += [m for layers in self.output_blocks for m in layers if isinstance(m, SDMResBlock)]
        return [norm for b in blocks for norm in b.spade_layers()]

    # ------------------------------------------------------------------ the split
    def encode(self, x: torch.Tensor, t: torch.Tensor, *, fast: bool = False) -> EncoderState:
        """Run the time embedding and the encoder (no label involved).

        Args:
            x: ``[N, in_channels, H, W]`` noisy image.
            t: ``[N]`` original timesteps (0..T-1).
            fast: Inference-only fused blocks (no autograd; same result to float rounding).
        """
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"`x` must be [N, {self.config.in_channels}, H, W], got {describe(x)}")
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"`t` must be [N] with N = x.shape[0] = {x.shape[0]}, got {describe(t)}")
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels))
        if fast:
            return self._encode_fast(x, emb)
        h = x
        skips = []
        for layers in self.input_blocks:
            for layer in layers:
                h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        return EncoderState(h, skips, emb)

    def modulation(self, y: torch.Tensor, kind: str = "full", *, windows: bool | None = None) -> SpadeModulation:
        """Every SPADE layer's label-only input, in forward order (see :class:`SpadeModulation`).

        Args:
            y: ``[N, label_channels, H, W]`` condition at image resolution (all zeros = null label).
            kind: ``"full"`` for (gamma, beta), ``"affine"`` for (1 + gamma, beta) (gamma and beta by one
                convolution with both weights), ``"hidden"`` for the shared hidden activation.
            windows: Compute gamma / beta from the distinct label windows
                (:mod:`~diffmix_aug.sdm.spade_windows`, exact to float rounding; without autograd
                only): None (default) where there are at most ``WINDOW_RATIO_MAX`` (three quarters as many)
                distinct 3x3 label windows as pixels, as in nuclei label maps; True always; False never.
        """
        check_choice("kind", kind, MODULATION_KINDS)
        self._check_label(y)
        if windows not in (None, True, False):
            raise TypeError(f"`windows` must be None (auto), True or False, got {windows!r}")
        values = []
        fmt = _memory_format_of(y)
        found: dict[tuple[int, int], LabelWindows | None] = {}  # per resolution; None: full convolutions
        for norm in self._spade_list:
            size = (y.shape[-2] // norm.ds, y.shape[-1] // norm.ds)
            if kind != "hidden" and windows is not False and not torch.is_grad_enabled():
                if size not in found:
                    ys = y if tuple(y.shape[-2:]) == size else F.interpolate(y, size=size, mode="nearest")
                    win = label_windows(ys)
                    found[size] = win if windows or win.ratio <= WINDOW_RATIO_MAX else None
                if found[size] is not None:
                    values.append(_spade_values_from_windows(norm, found[size], kind, fmt))
                    continue
            a = norm.hidden(y)
            values.append(a if kind == "hidden" else _spade_values(norm, a, kind, fmt))
        return SpadeModulation(kind, values)

    def null_modulation(self, batch_size: int, size: tuple[int, int] | int, kind: str = "full", *,
                        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                        memory_format: torch.memory_format = torch.contiguous_format) -> SpadeModulation:
        """Modulation of the all-zero (null) label: computed at batch 1, broadcast to ``batch_size``.

        The zero label makes every SPADE hidden activation the constant ``ReLU(bias)`` (zero padding of
        zeros is zeros), so gamma and beta depend only on the distance to the border: they are computed on
        a 3x3 map (corner, edge and interior taps) and spread to the layer's size by index, instead of a
        full-size convolution; the same numbers as ``modulation(zeros)`` to float rounding.

        Args:
            batch_size: Batch of the returned (stride-0) modulation.
            size: Image size ``(H, W)`` or ``H`` for square.
            kind: As :meth:`modulation`.
            device, dtype: Of the zero label; default the model's parameters'.
            memory_format: Of the returned tensors (``torch.channels_last`` for NHWC models).
        """
        check_choice("kind", kind, MODULATION_KINDS)
        h, w = (size, size) if isinstance(size, int) else size
        p = next(self.parameters())
        device, dtype = device or p.device, dtype or p.dtype
        zero3 = torch.zeros(1, self.label_channels, 3, 3, device=device, dtype=dtype)
        values = []
        for norm in self._spade_list:
            hh, ww = h // norm.ds, w // norm.ds
            if min(hh, ww) < 2:  # both borders in one row / column: compute at full size
                a = norm.hidden(torch.zeros(1, self.label_channels, h, w, device=device, dtype=dtype))
                value = a if kind == "hidden" else _spade_values(norm, a, kind, torch.contiguous_format)
            else:
                a = norm.hidden(zero3, (3, 3))
                value = a if kind == "hidden" else _spade_values(norm, a, kind, torch.contiguous_format)
                rows = torch.tensor([0] + [1] * (hh - 2) + [2], device=device)
                cols = torch.tensor([0] + [1] * (ww - 2) + [2], device=device)

                def spread(t: torch.Tensor, rows: torch.Tensor = rows, cols: torch.Tensor = cols) -> torch.Tensor:
                    return t.index_select(2, rows).index_select(3, cols)

                value = spread(value) if kind == "hidden" else tuple(spread(t) for t in value)
            values.append(value)
        mods = SpadeModulation(kind, values)
        if memory_format != torch.contiguous_format:
            mods = mods.to(memory_format=memory_format)
        return mods.expand(batch_size)

    def decode(self, state: EncoderState, mods: SpadeModulation, *, fast: bool = False) -> torch.Tensor:
        """Middle and decoder blocks plus the output head.

        Args:
            state: From :meth:`encode` (possibly ``repeat``-ed).
            mods: From :meth:`modulation` (possibly concatenated); same batch as ``state``, or with
                ``fast`` a multiple k of it (the state is then shared by k stacked modulations, e.g.
                ``[cond, null]``, as ``decode(state.repeat(k), mods)`` without the copies).
            fast: Inference-only fused blocks (no autograd; same result to float rounding).

        Returns:
            ``float32 [N, out_channels, H, W]``.
        """
        if not isinstance(mods, SpadeModulation):
            raise TypeError(f"`mods` must be a SpadeModulation from model.modulation(y), got {type(mods).__name__}")
        n_layers = len(self._spade_list)
        if len(mods.values) != n_layers:
            raise ValueError(f"`mods` has {len(mods.values)} SPADE layers, this model has {n_layers}; build it "
                             "with this model's modulation()")
        shared = fast and mods.batch_size % max(state.batch_size, 1) == 0
        if mods.batch_size != state.batch_size and not shared:
            raise ValueError(f"`mods` batch {mods.batch_size} != encoder state batch {state.batch_size}; use "
                             "EncoderState.repeat(k) / SpadeModulation.cat(...) so that they match")
        if fast:
            return self._decode_fast(state, mods.conds(tails=True), mods.batch_size // state.batch_size)
        return self._decode(state, mods.conds())

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[N, out_channels, H, W]`` in ``x``'s dtype (see the class docstring)."""
        self._check_label(y, x)
        out = self._decode(self.encode(x, t), [("label", y)] * len(self._spade_list))
        return out.to(x.dtype)

    # ------------------------------------------------------------------ internals
    def _check_label(self, y: torch.Tensor, x: torch.Tensor | None = None) -> None:
        if not isinstance(y, torch.Tensor) or y.ndim != 4 or y.shape[1] != self.label_channels:
            raise ValueError(f"`y` must be [N, {self.label_channels}, H, W] (label_channels = num_classes + 1), "
                             f"got {describe(y)}")
        if x is not None and (y.shape[0] != x.shape[0] or y.shape[-2:] != x.shape[-2:]):
            raise ValueError(f"`y` must match x's batch and size {(x.shape[0], *x.shape[-2:])}, got {describe(y)}")

    def _decode(self, state: EncoderState, conds: list) -> torch.Tensor:
        it = iter(conds)
        emb = state.emb
        skips = list(state.skips)
        h = state.h
        for layer in self.middle_block:
            h = layer(h, emb, next(it), next(it)) if isinstance(layer, SDMResBlock) else layer(h)
        for layers in self.output_blocks:
            h = torch.cat([h, skips.pop().to(h.dtype)], dim=1)
            for layer in layers:
                h = layer(h, emb, next(it), next(it)) if isinstance(layer, SDMResBlock) else layer(h)
        # output head in float32, as the reference keeps it out of fp16
        with torch.autocast(h.device.type, enabled=False):
            h = F.silu(self.out_norm(h.float()))
            return F.conv2d(h, self.out_conv.weight.float(), self.out_conv.bias.float(), padding=1)


    # ------------------------------------------------------------------ fast (inference) forms
    def _emb_projections(self, part: str, semb: torch.Tensor, k: int = 1) -> list[torch.Tensor]:
        """Every res-block's ``emb_layer(silu(emb))[:, :, None, None]`` of one part of the U-Net by one
        matrix product with the stacked weights (cached while the weights are unchanged), batch tiled k times."""
        blocks = [m for layers in (self.input_blocks if part == "encoder" else
                                   [self.middle_block, *self.output_blocks])
                  for m in layers if isinstance(m, (ResBlock, SDMResBlock))]
        params = [p for b in blocks for p in (b.emb_layer.weight, b.emb_layer.bias)]
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        cache = self.__dict__.setdefault("_fast_emb_cache", {})
        hit = cache.get(part)
        if hit is None or hit[0] != key:
            with torch.no_grad():
                weight = torch.cat([b.emb_layer.weight for b in blocks])
                bias = torch.cat([b.emb_layer.bias for b in blocks])
            hit = (key, weight, bias, [b.emb_layer.out_features for b in blocks])
            cache[part] = hit
        _, weight, bias, sizes = hit
        e = F.linear(semb, weight, bias)
        if k > 1:
            e = torch.cat([e] * k)
        return [t[:, :, None, None] for t in e.split(sizes, dim=1)]

    def _encode_fast(self, x: torch.Tensor, emb: torch.Tensor) -> EncoderState:
        es = iter(self._emb_projections("encoder", F.silu(emb)))
        h = x
        skips = []
        for layers in self.input_blocks:
            for layer in layers:
                if isinstance(layer, ResBlock):
                    h = layer.forward_fast(h, next(es))
                elif isinstance(layer, AttentionBlock):
                    h = layer.forward_fast(h)
                else:
                    h = layer(h)
            skips.append(h)
        return EncoderState(h, skips, emb)

    def _decode_fast(self, state: EncoderState, conds: list, k: int) -> torch.Tensor:
        it = iter(conds)
        es = iter(self._emb_projections("decoder", F.silu(state.emb), k))  # on the shared batch, tiled k times
        skips = list(state.skips)
        h = state.h if k == 1 else torch.cat([state.h] * k)

        def run(layer, h):
            if isinstance(layer, SDMResBlock):
                return layer.forward_fast(h, next(es), next(it), next(it))
            if isinstance(layer, AttentionBlock):
                return layer.forward_fast(h)
            return layer(h)

        for layer in self.middle_block:
            h = run(layer, h)
        for layers in self.output_blocks:
            h = _cat_shared(h, skips.pop(), k)
            for layer in layers:
                h = run(layer, h)
        with torch.autocast(h.device.type, enabled=False):
            h = F.silu(self.out_norm(h.float()), inplace=True)
            return F.conv2d(h, self.out_conv.weight.float(), self.out_conv.bias.float(), padding=1)


def _spade_values(norm: SPADEGroupNorm, a: torch.Tensor, kind: str, fmt: torch.memory_format) -> tuple:
    """``(gamma, beta)`` ("full") or ``(1 + gamma, beta)`` ("affine": one convolution with both weights)."""
    if kind == "full":
        return norm.gamma_beta(a)
    w = torch.cat([norm.mlp_gamma.weight, norm.mlp_beta.weight])
    b = torch.cat([norm.mlp_gamma.bias, norm.mlp_beta.bias])
    gamma, beta = F.conv2d(a, w, b, padding=1).chunk(2, dim=1)
    return (1 + gamma.float()).contiguous(memory_format=fmt), beta.contiguous(memory_format=fmt)


def _spade_values_from_windows(norm: SPADEGroupNorm, win: LabelWindows, kind: str, fmt: torch.memory_format) -> tuple:
    """:func:`_spade_values` of ``norm`` from the distinct label windows (:mod:`.spade_windows`)."""
    weight, bias = norm.tap_weights()
    channels = norm.mlp_gamma.out_channels
    if kind == "affine":  # fold the 1 of (1 + gamma) into the bias of the U distinct values
        bias = torch.cat([bias[:channels] + 1, bias[channels:]])
    per_field = window_values(norm.mlp_shared, weight, bias, win)  # [U, 2C]
    n, h, w = win.shape
    out = tuple(torch.empty((n, channels, h, w), dtype=dtype, device=per_field.device, memory_format=fmt)
                for dtype in (torch.float32 if kind == "affine" else per_field.dtype, per_field.dtype))
    spread_windows(per_field, win, out)
    return out


def _memory_format_of(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if (x.is_contiguous(memory_format=torch.channels_last)
                                   and not x.is_contiguous()) else torch.contiguous_format


def _cat_shared(h: torch.Tensor, skip: torch.Tensor, k: int) -> torch.Tensor:
    """``cat([h, cat([skip] * k)], dim=1)`` in one buffer, in ``h``'s memory format."""
    n, ch = h.shape[:2]
    out = torch.empty((n, ch + skip.shape[1], *h.shape[2:]), dtype=h.dtype, device=h.device,
                      memory_format=_memory_format_of(h))
    out[:, :ch].copy_(h)
    out[:, ch:].unflatten(0, (k, n // k)).copy_(skip.unsqueeze(0).expand(k, *skip.shape))
    return out


class _Downsample(nn.Module):
    """Strided conv3x3 down-sampling (``resblock_updown=False``, the reference's conv_resample)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class _Upsample(nn.Module):
    """Nearest x2 then conv3x3 (``resblock_updown=False``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
