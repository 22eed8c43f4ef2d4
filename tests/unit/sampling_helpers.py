"""Small models and inputs shared by the sampler tests (not collected: no ``test_`` prefix)."""

from __future__ import annotations

import torch
from torch import nn


class ConvModel(nn.Module):
    """A generic ``model(x, t, y) -> [N, 6, H, W]`` (no encode/decode split): tests the batched path."""

    def __init__(self, label_channels: int = 6, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3 + label_channels + 1, 6, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        self.label_channels = label_channels
        self.calls: list[int] = []  # batch size of every call

    def forward(self, x, t, y):
        self.calls.append(x.shape[0])
        tt = (t.float() / 1000).view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
        return torch.tanh(self.conv(torch.cat([x, y, tt], 1)))


class AnalyticModel:
    """eps(x, t, y) = 0.3 x + 0.4 y[:, :3] + 0.05 t / 1000 (a closed form for independent checks)."""

    label_channels = 3

    def __call__(self, x, t, y):
        eps = 0.3 * x + 0.4 * y[:, :3] + 0.05 * (t.float() / 1000).view(-1, 1, 1, 1)
        return torch.cat([eps, torch.zeros_like(eps)], 1)


def randomize_sdm(model: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Give zero-initialised layers random weights so every path of the SDM contributes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


def make_inputs(n: int = 2, size: int = 32, channels: int = 6, seed: int = 0):
    """``x0`` in [-1, 1] ``[n, 3, size, size]`` and a one-hot-plus-edge-like ``cond``."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand((n, 3, size, size), generator=gen) * 2 - 1
    types = torch.randint(0, channels - 1, (n, size, size), generator=gen)
    cond = torch.nn.functional.one_hot(types, channels).permute(0, 3, 1, 2).float()
    return x0, cond
