"""The downstream training loop and evaluation, identical for every ablation arm.

Only the training dataset differs between arms. Items may be ``NucleiSample``-like objects
(``.image``, ``.inst_map``, ``.type_map``), dicts with ``img``/``image``, ``inst_map`` and
``type_map``, or dicts that already hold HoVer-Net targets (``img``, ``np_map``, ``hv_map``,
``tp_map``, as HoVer-Net's FileLoader returns). Items with label maps get the same random
augmentation (parameters drawn first from a per-item seed of the loop): HoVer-Net's affine and
photometric augmentation with a random ``crop`` window (:mod:`~benchmarks.downstream.augment`,
the default), or dihedral flips and rotations only (``augment="dihedral"``); then HoVer-Net's
``gen_targets`` with the HV-target size rule of the field of view (``min_hv_area``). Items with
ready targets are used as they are.

Evaluation runs the network on held-out patches, HoVer-Net's post-processing, and returns the
paper's Table-1 numbers: Dice, AJI, DQ, SQ, PQ (mean over images, as ``compute_stats`` prints),
AJI+, and the pooled detection F1, type accuracy and per-type F1 (``classification_stats``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from diffmix_aug._checks import check_positive_int
from diffmix_aug.metrics import aji, aji_plus, classification_stats, dice, pair_table, panoptic_quality

from . import augment as aug
from .losses import hovernet_loss
from .net import build_network
from .postproc import TOY_POSTPROC, process
from .targets import MIN_HV_AREA, crop_to_shape, gen_targets

AUGMENTS = ("hovernet", "dihedral", "none")

__all__ = ["AUGMENTS", "HarnessConfig", "draw_item_params", "evaluate", "predict", "prepare_item", "raw_maps", "train"]


@dataclass
class HarnessConfig:
    """Everything that defines a downstream run (the same for every arm).

    Attributes:
        iterations: optimiser steps (the fixed budget).
        batch_size: patches per step.
        lr: Adam learning rate (HoVer-Net: 1e-4 with an ImageNet encoder; the small net trains
            from scratch and uses 1e-3 with a cosine decay).
        width / depth: :class:`~benchmarks.downstream.net.SmallHoVerNet` size.
        net: ``"small"`` or ``"monai"``.
        augment: ``"hovernet"`` (HoVer-Net's affine + photometric augmentation, with a random
            ``crop`` window), ``"dihedral"`` (flips and 90-degree rotations only) or ``"none"``
            (``True`` / ``False`` mean ``"dihedral"`` / ``"none"``).
        crop: Side of the training window cut from each item (0: the whole item; with
            ``"dihedral"`` / ``"none"`` a random crop, with ``"hovernet"`` the affine's window).
        min_hv_area: HoVer-Net's HV-target size rule (30 px at 40x; :func:`~.targets.min_hv_area`).
        pair_radius: Detection pairing radius of :func:`evaluate` (HoVer-Net: 12 px at 40x).
        rare_classes: Classes whose instances and pixels in every prepared (augmented) item are
            counted (``history["served_rare"]``), the exposure the network really saw.
        seed: seeds the weights, the item order and the augmentation.
        num_workers: DataLoader workers.
        eval_batch: batch size of inference.
        postproc: keyword arguments of :func:`~benchmarks.downstream.postproc.proc_np_hv`.
        device: torch device.
        type_weights: per-class weights of the type cross-entropy (``num_types`` floats; the
            class-weighted-loss arm), None for HoVer-Net's unweighted loss.
    """

    iterations: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    width: int = 16
    depth: int = 3
    net: str = "small"
    augment: str | bool = "hovernet"
    crop: int = 0
    min_hv_area: int = MIN_HV_AREA
    pair_radius: float = 12.0
    rare_classes: tuple[int, ...] = ()
    seed: int = 0
    num_workers: int = 0
    eval_batch: int = 16
    postproc: dict[str, Any] = field(default_factory=lambda: dict(TOY_POSTPROC))
    device: str = "cpu"
    type_weights: list[float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.augment, bool):
            self.augment = "dihedral" if self.augment else "none"
        if self.augment not in AUGMENTS:
            raise ValueError(f"`augment` must be one of {list(AUGMENTS)} (or a bool), got {self.augment!r}")
        if isinstance(self.crop, bool) or not isinstance(self.crop, int) or self.crop < 0:
            raise ValueError(f"`crop` must be an int >= 0 (0: whole items), got {self.crop!r}")
        self.rare_classes = tuple(int(c) for c in self.rare_classes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def raw_maps(item: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(image uint8 [H,W,3], inst_map int32 [H,W], type_map int32 [H,W])`` of an item, or None."""
    if isinstance(item, dict):
        img = item.get("img", item.get("image"))
        if img is None or "inst_map" not in item:
            return None
        inst = np.asarray(item["inst_map"])
        typ = np.asarray(item.get("type_map", np.zeros_like(inst)))
    elif hasattr(item, "inst_map") and hasattr(item, "image"):
        img, inst, typ = item.image, item.inst_map, item.type_map
    else:
        return None
    return np.asarray(img, np.uint8), np.asarray(inst, np.int32), np.asarray(typ, np.int32)


def _dihedral(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    x = np.rot90(x, k, axes=(0, 1))
    return np.ascontiguousarray(x[:, ::-1] if flip else x)


def draw_item_params(rng: np.random.Generator, shape: tuple[int, int], config: HarnessConfig) -> Any:
    """One item's augmentation parameters for ``config`` (``None``: none), drawn before they are applied."""
    h, w = shape
    if config.augment == "hovernet":
        return aug.draw_params(rng, (h, w), config.crop or min(h, w))
    params: dict[str, Any] = {}
    if config.crop and config.crop < min(h, w):
        params["crop"] = (int(rng.integers(0, h - config.crop + 1)), int(rng.integers(0, w - config.crop + 1)))
    if config.augment == "dihedral":
        params["dihedral"] = (int(rng.integers(4)), bool(rng.integers(2)))
    return params or None


def prepare_item(item: Any, params: Any, out_shape: tuple[int, int] | None = None,
                 min_area: int = MIN_HV_AREA, crop: int = 0, keep_maps: bool = False) -> dict:
    """Turn one dataset item into HoVer-Net's sample dict.

    Args:
        item: see the module docstring.
        params: from :func:`draw_item_params`: an :class:`~.augment.AugParams`, a dict with
            ``"crop": (y, x)`` and / or ``"dihedral": (k rotations, flip)``, a bare ``(k, flip)``
            pair, or None for no augmentation.
        out_shape: target (mask) shape; default: the (augmented) image shape.
        min_area: HV-target size rule (:func:`~.targets.gen_targets`).
        crop: window side for ``params["crop"]``.
        keep_maps: also return the augmented ``"inst_map"`` / ``"type_map"`` (full input size).

    Returns:
        ``{"img": uint8 [H,W,3], "np_map": int32 [h,w], "hv_map": float32 [h,w,2], "tp_map": int32 [h,w]}``.
    """
    maps = raw_maps(item)
    if maps is None:
        if isinstance(item, dict) and {"img", "np_map", "hv_map"} <= set(item):
            out = {k: np.asarray(item[k]) for k in ("img", "np_map", "hv_map")}
            out["tp_map"] = np.asarray(item.get("tp_map", np.zeros_like(out["np_map"])))
            return out
        raise TypeError(f"dataset item must be a NucleiSample-like object or a dict with img/inst_map/type_map "
                        f"or img/np_map/hv_map/tp_map, got {type(item).__name__}")
    img, inst, typ = maps
    if isinstance(params, aug.AugParams):
        img, inst, typ = aug.apply(img, inst, typ, params)
    elif params is not None:
        if isinstance(params, tuple):
            params = {"dihedral": params}
        if "crop" in params:
            y, x = params["crop"]
            img, inst, typ = (a[y:y + crop, x:x + crop] for a in (img, inst, typ))
        if "dihedral" in params:
            k, flip = params["dihedral"]
            img, inst, typ = (_dihedral(a, k, flip) for a in (img, inst, typ))
    img, inst, typ = (np.ascontiguousarray(a) for a in (img, inst, typ))
    shape = tuple(out_shape or inst.shape)
    tg = gen_targets(inst, shape, min_area)
    out = {"img": img, "np_map": tg["np_map"], "hv_map": tg["hv_map"],
           "tp_map": np.ascontiguousarray(crop_to_shape(typ, shape)).astype(np.int32)}
    if keep_maps:
        out.update(inst_map=inst, type_map=typ)
    return out


class _Prepared(torch.utils.data.Dataset):
    """Wraps the arm's dataset; augmentation parameters come from a per-item seed of the loop.

    With ``config.rare_classes`` it records, per index, the rare instances and pixels of the
    prepared item (``served_rare``, ``int64 [len, 2]``; the last serve of each index).
    """

    def __init__(self, base: Any, config: HarnessConfig, out_shape: tuple[int, int] | None):
        self.base, self.config, self.out_shape = base, config, out_shape
        self.epoch = 0
        self.served_rare = np.zeros((len(base), 2), np.int64)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        item = self.base[index]
        params = None
        maps = raw_maps(item)
        if maps is not None and (self.config.augment != "none" or self.config.crop):
            rng = np.random.default_rng((self.config.seed, self.epoch, int(index)))
            params = draw_item_params(rng, maps[1].shape, self.config)
        out = prepare_item(item, params, self.out_shape, self.config.min_hv_area, self.config.crop, keep_maps=True)
        inst, typ = out.pop("inst_map", None), out.pop("type_map", None)
        if self.config.rare_classes and inst is not None:
            mask = np.isin(typ, self.config.rare_classes) & (inst > 0)
            self.served_rare[int(index)] = (np.unique(inst[mask]).size, int(mask.sum()))
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


def _output_shape(model: torch.nn.Module, hw: tuple[int, int], device: str) -> tuple[int, int]:
    with torch.no_grad():
        was = model.training
        model.eval()
        out = model(torch.zeros(1, 3, *hw, device=device))
        model.train(was)
    return tuple(out["np"].shape[-2:])


def train(dataset: Any, num_types: int, config: HarnessConfig | None = None, *, progress: bool = True,
          desc: str = "train", batch_sampler: Any = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train a fresh network on ``dataset`` for exactly ``config.iterations`` steps.

    Args:
        dataset: map-style dataset of items (module docstring).
        num_types: type classes including background.
        config: :class:`HarnessConfig`.
        progress: show a tqdm bar.
        desc: progress-bar label.
        batch_sampler: optional iterable of index lists, one per step (it fixes the composition of
            every batch, e.g. the ablation's real + arm items); default: shuffled batches of
            ``config.batch_size``.

    Returns:
        ``(model in eval mode, history)`` with the loss curve, seconds and samples seen.
    """
    from tqdm import tqdm

    config = config or HarnessConfig()
    check_positive_int("config.iterations", config.iterations)
    if len(dataset) == 0:
        raise ValueError("`dataset` is empty; the downstream harness needs at least one training item")
    torch.manual_seed(config.seed)
    model = build_network(config.net, num_types, **({"width": config.width, "depth": config.depth}
                                                     if config.net == "small" else {})).to(config.device)
    # with a training window the input size is known without reading an item (a stateful dataset, e.g.
    # DiffMixDataset, would count a serve)
    hw = (config.crop, config.crop) if config.crop else tuple(prepare_item(dataset[0], None)["img"].shape[:2])
    out_shape = _output_shape(model, hw, config.device)
    prepared = _Prepared(dataset, config, None if out_shape == hw else out_shape)
    gen = torch.Generator().manual_seed(config.seed)
    if batch_sampler is not None:
        loader = torch.utils.data.DataLoader(prepared, batch_sampler=batch_sampler, num_workers=config.num_workers)
    else:
        loader = torch.utils.data.DataLoader(prepared, batch_size=config.batch_size, shuffle=True,
                                             drop_last=len(dataset) >= config.batch_size, generator=gen,
                                             num_workers=config.num_workers)
    weights = None
    if config.type_weights is not None:
        if len(config.type_weights) != num_types:
            raise ValueError(f"`config.type_weights` must hold {num_types} weights (one per type incl. background), "
                             f"got {len(config.type_weights)}")
        weights = torch.tensor(config.type_weights, dtype=torch.float32, device=config.device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, config.iterations) / config.iterations)))
    model.train()
    losses: list[float] = []
    step, epoch, seen = 0, 0, 0
    t0 = time.perf_counter()
    bar = tqdm(total=config.iterations, desc=desc, disable=not progress, leave=False)
    while step < config.iterations:
        prepared.epoch = epoch
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        for batch in loader:
            imgs = batch["img"].to(config.device).permute(0, 3, 1, 2).float()
            out = model(imgs)
            loss, _ = hovernet_loss(out, batch["np_map"].to(config.device), batch["hv_map"].to(config.device),
                                    batch["tp_map"].to(config.device), type_weights=weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            seen += imgs.shape[0]
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if step >= config.iterations:
                break
        epoch += 1
    bar.close()
    model.eval()
    history = {"loss": losses, "seconds": time.perf_counter() - t0, "samples": seen, "epochs": epoch,
               "output_shape": list(out_shape), "served_rare": prepared.served_rare}
    return model, history


@torch.no_grad()
def predict(model: torch.nn.Module, images: Sequence[np.ndarray], config: HarnessConfig | None = None) -> list[dict]:
    """Run the network and the post-processing on ``uint8 [H, W, 3]`` images.

    Returns:
        One dict per image from :func:`~benchmarks.downstream.postproc.process` (``inst_map``,
        ``type_map``, ``inst_centroid``, ``inst_type``), at the network's output size.
    """
    config = config or HarnessConfig()
    model.eval()
    results = []
    for start in range(0, len(images), config.eval_batch):
        chunk = np.stack([np.asarray(im, np.uint8) for im in images[start:start + config.eval_batch]])
        x = torch.from_numpy(chunk).to(config.device).permute(0, 3, 1, 2).float()
        out = model(x)
        np_prob = torch.softmax(out["np"], 1)[:, 1].cpu().numpy()
        hv = out["hv"].permute(0, 2, 3, 1).cpu().numpy()
        tp = torch.softmax(out["tp"], 1).permute(0, 2, 3, 1).cpu().numpy() if "tp" in out else None
        for i in range(chunk.shape[0]):
            results.append(process(np_prob[i], hv[i], None if tp is None else tp[i], **config.postproc))
    return results


def evaluate(model: torch.nn.Module, items: Sequence[Any], config: HarnessConfig | None = None,
             type_ids: Sequence[int] | None = None, per_image: bool = False) -> dict[str, Any]:
    """Table-1 metrics of ``model`` on held-out items (anything :func:`raw_maps` reads).

    Args:
        model: trained network.
        items: held-out items with label maps (real patches, or synthetic ones with the maps they
            were conditioned on, for label fidelity).
        config: harness config (post-processing, batch, device).
        type_ids: types scored by per-type F1 (default: the sorted unique GT types).
        per_image: also return ``"per_image"``: ``{"seg": float [n, 6]`` (dice, aji, aji+, dq, sq, pq
            per image), ``"true": [...], "pred": [...]}`` (the centroid/type dicts per image), for
            bootstrap intervals over images.

    Returns:
        ``{"dice", "aji", "aji_plus", "dq", "sq", "pq"`` (means over images), ``"f1_detection",
        "accuracy", "f1_per_type": {type: F1}, "n_images", "n_true", "n_pred"}``.
    """
    from diffmix_aug.data.sample import instance_info

    maps = [raw_maps(it) for it in items]
    if any(m is None for m in maps):
        raise TypeError("evaluation items need image, inst_map and type_map (NucleiSample-like or dicts)")
    preds = predict(model, [m[0] for m in maps], config)
    rows, true_pts, pred_pts = [], [], []
    for (_, inst, typ), pred in zip(maps, preds):
        out_shape = pred["inst_map"].shape
        inst = np.ascontiguousarray(crop_to_shape(inst, out_shape))
        typ = np.ascontiguousarray(crop_to_shape(typ, out_shape))
        tab = pair_table(inst, pred["inst_map"])
        dq, sq, pq = panoptic_quality(tab)
        rows.append([dice(inst, pred["inst_map"]), aji(tab), aji_plus(tab), dq, sq, pq])
        info = instance_info(inst, typ)
        true_pts.append({"inst_centroid": info.centroids, "inst_type": info.types})
        pred_pts.append({"inst_centroid": pred["inst_centroid"], "inst_type": pred["inst_type"]})
    mean = np.mean(np.asarray(rows, np.float64), 0) if rows else np.full(6, np.nan)
    cls = classification_stats(true_pts, pred_pts, radius=config.pair_radius, type_ids=type_ids)
    res = dict(zip(["dice", "aji", "aji_plus", "dq", "sq", "pq"], (float(v) for v in mean)))
    res.update(f1_detection=cls["f1_detection"], accuracy=cls["accuracy"], f1_per_type=cls["f1_per_type"],
               n_images=len(rows), n_true=cls["tp"] + cls["fn"], n_pred=cls["tp"] + cls["fp"])
    if per_image:
        res["per_image"] = {"seg": np.asarray(rows, np.float64).reshape(-1, 6), "true": true_pts, "pred": pred_pts}
    return res
