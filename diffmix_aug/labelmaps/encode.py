"""Condition encoding of a nuclei label map: one-hot types plus the instance-edge channel.

Reference: SDM ``train_util.preprocess_input`` / ``get_edges`` (``design/method.md`` §2).
"""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_array, check_positive_int

__all__ = ["encode_condition", "encode_condition_torch", "instance_edges", "instance_edges_torch"]


def instance_edges(inst_map: np.ndarray) -> np.ndarray:
    """Two-pixel-thick instance boundaries.

    A pixel is an edge when its id differs from its left, right, upper or lower neighbour; both
    pixels of each differing 4-neighbour pair are marked; image borders are not.

    Args:
        inst_map: ``int [H, W]``.

    Returns:
        ``bool [H, W]``.
    """
    check_array("inst_map", inst_map, ndim=2, dtype_kind="iu")
    edge = np.zeros(inst_map.shape, bool)
    dh = inst_map[:, 1:] != inst_map[:, :-1]
    dv = inst_map[1:, :] != inst_map[:-1, :]
    edge[:, 1:] |= dh
    edge[:, :-1] |= dh
    edge[1:, :] |= dv
    edge[:-1, :] |= dv
    return edge


def encode_condition(type_map: np.ndarray, inst_map: np.ndarray, num_classes: int) -> np.ndarray:
    """Encode a label map as the SDM condition ``y``.

    Args:
        type_map: ``int [H, W]`` with values in ``0..num_classes-1`` (0 = background).
        inst_map: ``int [H, W]`` instance ids (0 = background).
        num_classes: Number of classes *counting the background* (CoNSeP: 5, GLySAC: 4).

    Returns:
        ``float32 [num_classes + 1, H, W]``: one-hot type channels (background first), then edges.

    Raises:
        ValueError: shape mismatch or type values outside ``0..num_classes-1``.
    """
    check_positive_int("num_classes", num_classes)
    check_array("type_map", type_map, ndim=2, dtype_kind="iu")
    check_array("inst_map", inst_map, ndim=2, dtype_kind="iu")
    if type_map.shape != inst_map.shape:
        raise ValueError(f"`type_map` and `inst_map` must have the same shape, got {type_map.shape} and {inst_map.shape}")
    if type_map.size and (type_map.min() < 0 or type_map.max() >= num_classes):
        raise ValueError(f"`type_map` values must lie in 0..{num_classes - 1} (num_classes={num_classes} counts the "
                         f"background), got range {type_map.min()}..{type_map.max()}")
    h, w = type_map.shape
    out = np.empty((num_classes + 1, h, w), np.float32)
    # one-hot by broadcast comparison (no index arrays): out[c] = (type_map == c)
    classes = np.arange(num_classes)
    if num_classes - 1 <= np.iinfo(type_map.dtype).max:  # compare in the map's own dtype (no upcast)
        classes = classes.astype(type_map.dtype)
    out[:num_classes] = type_map[None] == classes[:, None, None]
    out[num_classes] = instance_edges(inst_map)
    return out


def instance_edges_torch(inst_maps: torch.Tensor) -> torch.Tensor:
    """Batched :func:`instance_edges` on any device. ``[N, H, W]`` int -> ``[N, H, W]`` bool."""
    if inst_maps.ndim != 3:
        raise ValueError(f"`inst_maps` must be [N, H, W], got shape {tuple(inst_maps.shape)}")
    edge = torch.zeros_like(inst_maps, dtype=torch.bool)
    dh = inst_maps[:, :, 1:] != inst_maps[:, :, :-1]
    dv = inst_maps[:, 1:, :] != inst_maps[:, :-1, :]
    edge[:, :, 1:] |= dh
    edge[:, :, :-1] |= dh
    edge[:, 1:, :] |= dv
    edge[:, :-1, :] |= dv
    return edge


def encode_condition_torch(
    type_maps: torch.Tensor, inst_maps: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Batched, device-side :func:`encode_condition`.

    Args:
        type_maps: ``int [N, H, W]``.
        inst_maps: ``int [N, H, W]``.
        num_classes: Classes counting the background.
        dtype: Output dtype.

    Returns:
        ``[N, num_classes + 1, H, W]`` of ``dtype``; equal to stacking :func:`encode_condition`.
    """
    check_positive_int("num_classes", num_classes)
    if type_maps.shape != inst_maps.shape or type_maps.ndim != 3:
        raise ValueError(f"`type_maps` and `inst_maps` must both be [N, H, W], got {tuple(type_maps.shape)} "
                         f"and {tuple(inst_maps.shape)}")
    if type_maps.is_floating_point() or inst_maps.is_floating_point():
        raise TypeError(f"`type_maps`/`inst_maps` must be integer tensors, got {type_maps.dtype}/{inst_maps.dtype}")
    if type_maps.numel() and (int(type_maps.min()) < 0 or int(type_maps.max()) >= num_classes):
        raise ValueError(f"`type_maps` values must lie in 0..{num_classes - 1}, got range "
                         f"{int(type_maps.min())}..{int(type_maps.max())}")
    n, h, w = type_maps.shape
    # scatter straight into the output dtype (no int64 one-hot intermediate)
    out = torch.zeros((n, num_classes + 1, h, w), dtype=dtype, device=type_maps.device)
    out.scatter_(1, type_maps.long().unsqueeze(1), 1)
    out[:, num_classes] = instance_edges_torch(inst_maps).to(dtype)
    return out
