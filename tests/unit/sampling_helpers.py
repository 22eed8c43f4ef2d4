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


@torch.no_grad()
def plain_solver_sample(model, x0, cond, noise, timesteps, solver: str, scale: float = 1.5, clip: bool = True):
    """DPM-Solver++ (2M, 3M) and UniPC-bh2 written the plain way: two model passes per step, float64 scalars,
    the update formulas of the papers and their public code, no tables, no history buffers.

    The oracle of the fast sampler's table form. ``timesteps``: the grid, descending (the clean image follows
    its last point); the linear beta schedule of T = 1000.
    """
    import math

    import numpy as np

    abar_all = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    ts = [int(t) for t in timesteps]
    n = len(ts)
    alpha = [math.sqrt(abar_all[t]) for t in ts] + [1.0]
    sigma = [math.sqrt(1.0 - abar_all[t]) for t in ts] + [0.0]
    lam = [math.log(a / s) for a, s in zip(alpha[:-1], sigma[:-1])] + [math.inf]
    x0, cond = x0.float(), cond.float()

    def data_pred(x, i):
        t = torch.full((x.shape[0],), ts[i], dtype=torch.long)
        eps_c = model(x, t, cond)[:, :3].float()
        eps = eps_c
        if scale > 1:
            eps_u = model(x, t, torch.zeros_like(cond))[:, :3].float()
            eps = eps_u + scale * (eps_c - eps_u)
        d = (x - sigma[i] * eps) / alpha[i]
        return d.clamp(-1, 1) if clip else d

    max_order = {"dpmpp_2m": 2, "dpmpp_3m": 3, "unipc": 2}[solver]
    x = alpha[0] * x0 + sigma[0] * noise.float()
    ms = [data_pred(x, 0)]  # model outputs (x0 predictions) at the grid points reached so far
    for j in range(1, n + 1):  # the step into grid point j (j = n: the clean image)
        i, order = j - 1, min(max_order, j, n + 1 - j)
        if j == n:  # lambda = infinity: every solver's update is the last prediction
            x = ms[-1]
            break
        h = lam[j] - lam[i]
        if solver.startswith("dpmpp"):
            if order == 1:  # DPM-Solver++(1) = DDIM
                x = sigma[j] / sigma[i] * x - alpha[j] * math.expm1(-h) * ms[-1]
            elif order == 2:  # Algorithm 2 of Lu et al. 2022 (multistep 2M)
                r = (lam[i] - lam[i - 1]) / h
                d = (1 + 1 / (2 * r)) * ms[-1] - 1 / (2 * r) * ms[-2]
                x = sigma[j] / sigma[i] * x - alpha[j] * math.expm1(-h) * d
            else:  # the third-order multistep update of the public DPM-Solver code
                h0, h1 = lam[i] - lam[i - 1], lam[i - 1] - lam[i - 2]
                r0, r1 = h0 / h, h1 / h
                d1_0, d1_1 = (ms[-1] - ms[-2]) / r0, (ms[-2] - ms[-3]) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi1 = math.expm1(-h)
                x = (sigma[j] / sigma[i] * x - alpha[j] * phi1 * ms[-1] + alpha[j] * (phi1 / h + 1) * d1
                     - alpha[j] * ((phi1 + h) / h ** 2 - 0.5) * d2)
            ms.append(data_pred(x, j))
            continue
        # UniPC-bh2: predictor UniP-`order`, then the corrector UniC with the pass at the predicted point
        hh = -h
        rks, d1s = [], []
        for k in range(1, order):
            rk = (lam[i - k] - lam[i]) / h
            rks.append(rk)
            d1s.append((ms[-1 - k] - ms[-1]) / rk)
        rks.append(1.0)
        b_h, h_phi_k, fact, rows, b = math.expm1(hh), math.expm1(hh) / hh - 1, 1, [], []
        for k in range(1, order + 1):
            rows.append([rk ** (k - 1) for rk in rks])
            b.append(h_phi_k * fact / b_h)
            fact *= k + 1
            h_phi_k = h_phi_k / hh - 1 / fact
        rmat, b = np.asarray(rows), np.asarray(b)
        x_base = sigma[j] / sigma[i] * x - alpha[j] * math.expm1(hh) * ms[-1]
        pred = 0.5 * d1s[0] if order == 2 else (sum(c * d for c, d in zip(np.linalg.solve(rmat[:-1, :-1], b[:-1]), d1s))
                                                  if order > 2 else 0.0)
        x_pred = x_base - alpha[j] * b_h * pred
        m_new = data_pred(x_pred, j)
        rhos_c = [0.5] if order == 1 else list(np.linalg.solve(rmat, b))
        corr = sum((c * d for c, d in zip(rhos_c[:-1], d1s)), torch.zeros_like(x))
        x = x_base - alpha[j] * b_h * (corr + rhos_c[-1] * (m_new - ms[-1]))
        ms.append(m_new)
    return x
