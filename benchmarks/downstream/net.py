"""HoVer-Net-style networks for the downstream harness: a small CPU one and an optional MONAI wrapper.

Both map ``float [N, 3, H, W]`` images in 0..255 (the model divides by 255, as HoVer-Net's does) to
``{"np": [N, 2, H, W] logits, "hv": [N, 2, H, W], "tp": [N, T, H, W] logits}`` at the input size.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MonaiHoVerNet", "SmallHoVerNet", "build_network"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class _Decoder(nn.Module):
    """U-Net style decoder branch (one per HoVer-Net head)."""

    def __init__(self, widths: list[int], out_channels: int):
        super().__init__()
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for deep, skip in zip(widths[::-1][:-1], widths[::-1][1:]):
            self.ups.append(nn.ConvTranspose2d(deep, skip, 2, stride=2))
            self.blocks.append(_block(2 * skip, skip))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for up, block, skip in zip(self.ups, self.blocks, feats[::-1][1:]):
            x = block(torch.cat([up(x), skip], 1))
        return self.head(x)


class SmallHoVerNet(nn.Module):
    """A small HoVer-Net: shared encoder, three decoders (np, hv, tp), same-size output.

    Args:
        num_types: type classes including background (HoVer-Net's ``nr_types``); None for no tp branch.
        width: channels of the first level (doubled at each of the ``depth`` downsamplings).
        depth: number of 2x downsamplings; input sides must be divisible by ``2**depth``.
    """

    def __init__(self, num_types: int | None = 5, width: int = 16, depth: int = 3):
        super().__init__()
        if num_types is not None and num_types < 2:
            raise ValueError(f"`num_types` must be >= 2 (background + classes) or None, got {num_types}")
        widths = [width * 2 ** i for i in range(depth + 1)]
        self.depth = depth
        self.num_types = num_types
        self.stem = _block(3, widths[0])
        self.downs = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), _block(a, b)) for a, b in zip(widths, widths[1:]))
        self.decoders = nn.ModuleDict({"np": _Decoder(widths, 2), "hv": _Decoder(widths, 2)})
        if num_types is not None:
            self.decoders["tp"] = _Decoder(widths, num_types)

    def forward(self, imgs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``imgs``: ``float [N, 3, H, W]`` in 0..255 with H, W divisible by ``2**depth``."""
        m = 2 ** self.depth
        if imgs.ndim != 4 or imgs.shape[1] != 3 or imgs.shape[2] % m or imgs.shape[3] % m:
            raise ValueError(f"`imgs` must be [N, 3, H, W] with H and W divisible by {m}, got {tuple(imgs.shape)}")
        x = self.stem(imgs / 255.0)
        feats = [x]
        for down in self.downs:
            x = down(x)
            feats.append(x)
        out = {name: dec(feats) for name, dec in self.decoders.items()}
        out["hv"] = torch.tanh(out["hv"])
        return out


class MonaiHoVerNet(nn.Module):
    """Wrapper around ``monai.networks.nets.HoVerNet`` (``pip install monai``; the ``bench`` extra).

    MONAI's model takes images scaled to [0, 1] and returns keys ``nucleus_prediction``,
    ``horizontal_vertical`` and ``type_prediction``; this wrapper renames them to np / hv / tp and
    divides the 0..255 input by 255. Use mode "fast" (256 in, 164 out) or "original" (270 in, 80 out):
    the targets must then be generated with ``crop_shape`` = the output size.
    """

    def __init__(self, num_types: int | None = 5, mode: str = "fast", **kwargs):
        super().__init__()
        try:
            from monai.networks.nets import HoVerNet
        except ImportError as exc:  # pragma: no cover - monai is optional
            raise ImportError("MonaiHoVerNet needs MONAI, which is not installed; install the optional "
                              "extra with `pip install -e '.[bench]'` (or `pip install monai`), or use "
                              "SmallHoVerNet / `--net small`") from exc
        self.num_types = num_types
        self.net = HoVerNet(mode=mode, out_classes=num_types or 0, **kwargs)

    def forward(self, imgs: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.net(imgs / 255.0)
        res = {"np": out["nucleus_prediction"], "hv": out["horizontal_vertical"]}
        if "type_prediction" in out:
            res["tp"] = out["type_prediction"]
        return res


def build_network(name: str, num_types: int | None, **kwargs) -> nn.Module:
    """``"small"`` -> :class:`SmallHoVerNet`, ``"monai"`` -> :class:`MonaiHoVerNet`."""
    if name == "small":
        return SmallHoVerNet(num_types, **kwargs)
    if name == "monai":
        return MonaiHoVerNet(num_types, **kwargs)
    raise ValueError(f"`name` must be one of ['small', 'monai'], got {name!r}")
