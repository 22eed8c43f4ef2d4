"""HoVer-Net's training loss (``models/hovernet/utils.py`` + ``run_desc.train_step``), NHWC tensors.

Total = np (cross-entropy + Dice) + hv (MSE + MSGE) + tp (cross-entropy + Dice), weight 1 each.
MSGE is the squared error of 5x5 Sobel-like gradients of the HV maps, averaged over the true
nuclei pixels. The gradient kernel is ``k_x[i, j] = x / (x^2 + y^2)`` with ``x = j - 2``,
``y = i - 2`` (``k_y`` likewise with ``y``), and the x-map is differentiated along x, the y-map along
y, as in the paper and HoVer-Net's TF code. (The PyTorch port builds its kernels with
``torch.meshgrid``'s "ij" indexing, which transposes them, so there the x-map is differentiated
along y; ``transposed_kernels=True`` reproduces that.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dice_loss", "hovernet_loss", "msge_loss", "mse_loss", "sobel_kernels", "xentropy_loss"]


def xentropy_loss(true: torch.Tensor, pred: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of one-hot ``true`` and probabilities ``pred``, both ``float [N, H, W, C]``.

    ``weights`` (``float [C]``, optional) weights each pixel's term by its true class (a class-weighted
    loss); None is HoVer-Net's unweighted mean.
    """
    eps = 10e-8
    pred = pred / torch.sum(pred, -1, keepdim=True)
    pred = torch.clamp(pred, eps, 1.0 - eps)
    if weights is None:
        return -torch.sum(true * torch.log(pred), -1).mean()
    return -torch.sum(true * torch.log(pred) * weights.to(pred), -1).mean()


def dice_loss(true: torch.Tensor, pred: torch.Tensor, smooth: float = 1e-3) -> torch.Tensor:
    """Soft Dice loss summed over channels, ``float [N, H, W, C]`` one-hot vs probabilities."""
    inse = torch.sum(pred * true, (0, 1, 2))
    left = torch.sum(pred, (0, 1, 2))
    right = torch.sum(true, (0, 1, 2))
    return torch.sum(1.0 - (2.0 * inse + smooth) / (left + right + smooth))


def mse_loss(true: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the HV maps ``float [N, H, W, 2]``."""
    diff = pred - true
    return (diff * diff).mean()


def sobel_kernels(size: int = 5, *, transposed: bool = False, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """HoVer-Net's gradient kernels ``(k_x, k_y)``, each ``float32 [size, size]``."""
    if size % 2 != 1:
        raise ValueError(f"`size` must be odd, got {size}")
    r = torch.arange(-(size // 2), size // 2 + 1, dtype=torch.float32, device=device)
    y, x = torch.meshgrid(r, r, indexing="ij")
    if transposed:
        x, y = y, x
    denom = x * x + y * y + 1.0e-15
    return x / denom, y / denom


def _gradients(hv: torch.Tensor, transposed: bool) -> torch.Tensor:
    kx, ky = sobel_kernels(5, transposed=transposed, device=hv.device)
    gx = F.conv2d(hv[..., 0].unsqueeze(1), kx.view(1, 1, 5, 5).to(hv.dtype), padding=2)
    gy = F.conv2d(hv[..., 1].unsqueeze(1), ky.view(1, 1, 5, 5).to(hv.dtype), padding=2)
    return torch.cat([gx, gy], 1).permute(0, 2, 3, 1)


def msge_loss(true: torch.Tensor, pred: torch.Tensor, focus: torch.Tensor, *,
              transposed_kernels: bool = False) -> torch.Tensor:
    """Mean squared gradient error inside ``focus`` (``[N, H, W]`` true nuclei mask)."""
    focus = focus[..., None].float().expand(*focus.shape, 2)
    diff = _gradients(pred, transposed_kernels) - _gradients(true, transposed_kernels)
    return (focus * diff * diff).sum() / (focus.sum() + 1.0e-8)


def hovernet_loss(
    out: dict[str, torch.Tensor],
    np_map: torch.Tensor,
    hv_map: torch.Tensor,
    tp_map: torch.Tensor | None = None,
    *,
    transposed_kernels: bool = False,
    type_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """HoVer-Net's summed loss.

    Args:
        out: network output ``{"np": [N,2,H,W] logits, "hv": [N,2,H,W], "tp": [N,T,H,W] logits}``
            (``"tp"`` optional).
        np_map: ``int [N, H, W]`` in {0, 1}.
        hv_map: ``float [N, H, W, 2]`` (x, y).
        tp_map: ``int [N, H, W]`` in 0..T-1, or None.
        transposed_kernels: reproduce the PyTorch port's transposed MSGE kernels.
        type_weights: ``float [T]`` per-class weights of the type branch's cross-entropy (the
            class-weighted-loss baseline of the ablation); None: HoVer-Net's unweighted loss.

    Returns:
        ``(total, parts)`` where ``parts`` maps each term name to its float value.
    """
    np_prob = F.softmax(out["np"], 1).permute(0, 2, 3, 1)
    np_true = F.one_hot(np_map.long(), 2).float()
    hv_pred = out["hv"].permute(0, 2, 3, 1)
    hv_true = hv_map.float()
    parts = {
        "np_bce": xentropy_loss(np_true, np_prob),
        "np_dice": dice_loss(np_true, np_prob),
        "hv_mse": mse_loss(hv_true, hv_pred),
        "hv_msge": msge_loss(hv_true, hv_pred, np_map > 0, transposed_kernels=transposed_kernels),
    }
    if tp_map is not None and "tp" in out:
        n_types = out["tp"].shape[1]
        tp_prob = F.softmax(out["tp"], 1).permute(0, 2, 3, 1)
        tp_true = F.one_hot(tp_map.long(), n_types).float()
        parts["tp_bce"] = xentropy_loss(tp_true, tp_prob, type_weights)
        parts["tp_dice"] = dice_loss(tp_true, tp_prob)
    total = sum(parts.values())
    return total, {k: float(v.detach()) for k, v in parts.items()}
