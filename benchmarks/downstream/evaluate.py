"""Whole-tile evaluation of the downstream network: per-tile counts and per-nucleus type scores.

Validation items are whole tiles (CoNSeP: 500 x 500 px at 20x), never overlapping patches, so a
nucleus is scored once and the bootstrap can resample tiles. Each tile is reflect-padded to a
multiple of the network's stride, run in one pass, and cropped back. Per tile:

- ``seg``: Dice, AJI, AJI+, DQ, SQ, PQ of HoVer-Net's post-processing (``pair_table``);
- ``counts``: HoVer-Net's additive classification counts (detection tp / fp / fn, then per type
  ``tp_c, fp_c, fn_c, fp_dc, fn_dc``) with the pairing radius of the field of view;
- per ground-truth nucleus: its true type and the network's type probabilities averaged over its
  pixels (``float [n, T]``), the threshold-free score of the rare-class endpoints (AP, AUROC) and
  of the type accuracy on ground-truth nuclei.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from diffmix_aug.metrics import aji, aji_plus, dice, pair_table, panoptic_quality

from .postproc import process

__all__ = ["TileEval", "counts_from_points", "evaluate_tiles", "predict_tile"]

SEG_NAMES = ("dice", "aji", "aji_plus", "dq", "sq", "pq")


@torch.no_grad()
def predict_tile(model: torch.nn.Module, image: np.ndarray, device: str = "cpu") -> dict[str, np.ndarray]:
    """Network maps of one whole image: ``{"np": float [H, W], "hv": float [H, W, 2], "tp": float [H, W, T]}``.

    The image is reflect-padded on the bottom / right to a multiple of ``2 ** model.depth``; the
    network must return maps of its input size (``SmallHoVerNet``).
    """
    depth = getattr(model, "depth", None)
    if depth is None:
        raise TypeError(f"evaluate_tiles needs a same-size network with a `depth` (SmallHoVerNet), got "
                        f"{type(model).__name__}; use benchmarks.downstream.train.evaluate on patches instead")
    m = 2 ** int(depth)
    h, w = image.shape[:2]
    ph, pw = (-h) % m, (-w) % m
    x = np.pad(np.asarray(image, np.uint8), ((0, ph), (0, pw), (0, 0)), mode="reflect") if ph or pw else image
    model.eval()
    t = torch.from_numpy(np.ascontiguousarray(x)).to(device).permute(2, 0, 1)[None].float()
    out = model(t)
    np_prob = torch.softmax(out["np"], 1)[0, 1, :h, :w].cpu().numpy()
    hv = out["hv"][0, :, :h, :w].permute(1, 2, 0).cpu().numpy()
    tp = torch.softmax(out["tp"], 1)[0, :, :h, :w].permute(1, 2, 0).cpu().numpy() if "tp" in out else None
    return {"np": np_prob, "hv": hv, "tp": tp}


def counts_from_points(true_c: np.ndarray, true_t: np.ndarray, pred_c: np.ndarray, pred_t: np.ndarray,
                       type_ids: Sequence[int], radius: float) -> np.ndarray:
    """HoVer-Net's additive classification counts of one image, ``int64 [3 + 5 * len(type_ids)]``."""
    from diffmix_aug.metrics.classification import pair_coordinates

    tc = np.asarray(true_c, np.float64).reshape(-1, 2)
    pc = np.asarray(pred_c, np.float64).reshape(-1, 2)
    tt = np.asarray(true_t).reshape(-1)
    pt = np.asarray(pred_t).reshape(-1)
    out = np.zeros(3 + 5 * len(type_ids), np.int64)
    ia, ib = pair_coordinates(tc, pc, radius)
    t_un = np.ones(tt.size, bool)
    t_un[ia] = False
    p_un = np.ones(pt.size, bool)
    p_un[ib] = False
    out[:3] = (len(ia), p_un.sum(), t_un.sum())
    ptt, ppt = tt[ia], pt[ib]
    for k, c in enumerate(type_ids):
        ti, pi = ptt == c, ppt == c
        out[3 + 5 * k: 8 + 5 * k] = ((ti & pi).sum(), (~ti & pi).sum(), (ti & ~pi).sum(),
                                     (pt[p_un] == c).sum(), (tt[t_un] == c).sum())
    return out


class TileEval(dict):
    """What :func:`evaluate_tiles` returns (a dict).

    Keys:
        seg: ``float [n_tiles, 6]`` (:data:`SEG_NAMES`).
        counts: ``int64 [n_tiles, 3 + 5 T]``.
        nuc_tile: ``int64 [n]`` tile of each ground-truth nucleus.
        nuc_type: ``int64 [n]`` its true type.
        nuc_prob: ``float32 [n, num_types]`` mean type probabilities over its pixels.
        type_ids: the scored types.
    """


def evaluate_tiles(model: torch.nn.Module, tiles: Sequence[Any], *, type_ids: Sequence[int], radius: float,
                   postproc: dict[str, Any], device: str = "cpu") -> TileEval:
    """Score ``model`` on whole tiles (``NucleiSample``-like: ``image``, ``inst_map``, ``type_map``).

    Args:
        model: Trained same-size network.
        tiles: Whole validation images.
        type_ids: Types scored by the counts.
        radius: Pairing radius (HoVer-Net's 12 px at 40x; 6 px at 20x).
        postproc: Keyword arguments of :func:`~benchmarks.downstream.postproc.proc_np_hv`.
        device: Torch device.
    """
    from diffmix_aug.data.sample import instance_info

    seg, counts, nuc_tile, nuc_type, nuc_prob = [], [], [], [], []
    for k, tile in enumerate(tiles):
        maps = predict_tile(model, tile.image, device)
        pred = process(maps["np"], maps["hv"], maps["tp"], **postproc)
        inst = np.asarray(tile.inst_map, np.int32)
        typ = np.asarray(tile.type_map, np.int32)
        tab = pair_table(inst, pred["inst_map"])
        dq, sq, pq = panoptic_quality(tab)
        seg.append([dice(inst, pred["inst_map"]), aji(tab), aji_plus(tab), dq, sq, pq])
        info = instance_info(inst, typ)
        counts.append(counts_from_points(info.centroids, info.types, pred["inst_centroid"], pred["inst_type"],
                                         type_ids, radius))
        if maps["tp"] is not None and len(info):
            ids, inv = np.unique(inst.ravel(), return_inverse=True)
            n_types = maps["tp"].shape[-1]
            sums = np.stack([np.bincount(inv, weights=maps["tp"][..., c].ravel(), minlength=ids.size)
                             for c in range(n_types)], 1)
            area = np.bincount(inv, minlength=ids.size)[:, None]
            prob = (sums / np.maximum(area, 1))[np.searchsorted(ids, info.ids)]
            nuc_prob.append(prob.astype(np.float32))
            nuc_type.append(info.types.astype(np.int64))
            nuc_tile.append(np.full(len(info), k, np.int64))
    n_types = int(model.num_types) if getattr(model, "num_types", None) else 1
    return TileEval(
        seg=np.asarray(seg, np.float64).reshape(-1, 6), counts=np.asarray(counts, np.int64).reshape(len(tiles), -1),
        nuc_tile=np.concatenate(nuc_tile) if nuc_tile else np.zeros(0, np.int64),
        nuc_type=np.concatenate(nuc_type) if nuc_type else np.zeros(0, np.int64),
        nuc_prob=np.concatenate(nuc_prob) if nuc_prob else np.zeros((0, n_types), np.float32),
        type_ids=list(type_ids))
