"""``diffmix-aug synthesize``: the offline mode (the paper's): write N synthetic patches to disk.

Patches are HoVer-Net ``.npy`` files (``int32 [H, W, 5]`` = RGB, instance, type) with a JSON
sidecar each (label-map parameters, seeds, source index), written atomically; add the output
folder to HoVer-Net's ``train_dir_list`` (or warm-start a :class:`DiffMixDataset` cache from it).
Under ``torchrun`` every rank writes its own share with rank-offset seeds
(``diffmix_r{rank}_*.npy``), so the shards never collide or repeat a patch.

The YAML config::

    data:                       # the labelled training patches label maps start from
      kind: hovernet_npy        # hovernet_npy | consep | toy
      path: dataset/training_data/consep/consep/train/540x540_164x164
      dataset: consep           # class table (rare classes, number of classes)
      # toy: {n: 64, size: 64, seed: 0}
    model:
      checkpoint: sdm_consep.safetensors    # or preset: tiny (random weights: smoke tests only)
      device: cuda
      precision: fp16
      sampler: {num_steps: 100, strength: 0.55}
    diffmix: {mode: both, seed: 0, batch_size: 8, patch_size: 256}
    synthesize: {num_patches: 1000}
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

HELP = "Write N DiffMix synthetic patches (HoVer-Net .npy format) to a folder; sharded under torchrun."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="YAML config (data, model, diffmix, synthesize)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the .npy patches")
    parser.add_argument("--num", type=int, default=None, help="number of patches (overrides synthesize.num_patches)")
    parser.add_argument("--mode", choices=["balance", "enlarge", "both"], default=None,
                        help="DiffMix-B / DiffMix-E / DiffMix (overrides diffmix.mode)")
    parser.add_argument("--seed", type=int, default=None, help="seed (overrides diffmix.seed)")
    parser.add_argument("--device", default=None, help="synthesizer device (overrides model.device)")


def _section(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    value = cfg.get(name) or {}
    if not isinstance(value, dict):
        raise ValueError(f"config section `{name}` must be a mapping, got {type(value).__name__}")
    return value


def build_source(data: dict[str, Any]):
    """The labelled dataset (``NucleiDataset``) described by the ``data`` section."""
    from ..data.classes import get_dataset_info
    from ..data.dataset import NucleiDataset
    from ..data.toy import make_toy_dataset

    kind = data.get("kind", "toy")
    if kind == "toy":
        toy = data.get("toy") or {}
        return make_toy_dataset(int(toy.get("n", 64)), int(toy.get("size", 64)), int(toy.get("seed", 0)))
    info = get_dataset_info(data.get("dataset", "consep"))
    if kind == "hovernet_npy":
        return NucleiDataset.from_hovernet_npy_dir(data["path"], info)
    if kind == "consep":
        return NucleiDataset.from_consep_dir(data["path"], info.name)
    raise ValueError(f"`data.kind` must be one of ['hovernet_npy', 'consep', 'toy'], got {kind!r}")


def build_synthesizer(model: dict[str, Any], device: str | None):
    """A :class:`Synthesizer` from ``model.checkpoint`` (or an untrained ``model.preset``)."""
    import torch

    from ..sampling.ddim import DDIMSampler
    from ..sampling.synthesizer import Synthesizer

    device = device or model.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    sampler_kw = dict(model.get("sampler") or {})
    precision = model.get("precision", "fp32")
    if "checkpoint" in model:
        return Synthesizer.from_checkpoint(model["checkpoint"], device=device, precision=precision, **sampler_kw)
    if "preset" in model:
        from ..sdm import build_sdm

        torch.manual_seed(int(model.get("init_seed", 0)))
        net = build_sdm(model["preset"], num_label_channels=int(model.get("num_classes", 5)) + 1,
                        image_size=int(model.get("image_size", 64)))
        return Synthesizer(net, DDIMSampler(**sampler_kw), device=device, precision=precision)
    raise ValueError("config section `model` needs `checkpoint: <path>` (or `preset: tiny` for smoke tests)")


def _dist() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def synthesize(cfg: dict[str, Any], out: Path, num: int | None = None, *, progress: bool = True) -> list[Path]:
    """Write this rank's share of ``num`` patches into ``out``; returns the files written."""
    from tqdm.auto import tqdm

    from ..cache import ReplayCache
    from ..dataset import build_label_sampler, load_diffmix_config
    from ..producer import Producer

    dm = load_diffmix_config(_section(cfg, "diffmix"))
    total = int(num if num is not None else _section(cfg, "synthesize").get("num_patches", 100))
    rank, world = _dist()
    share = total // world + (1 if rank < total % world else 0)
    source = build_source(_section(cfg, "data"))
    synth = build_synthesizer(_section(cfg, "model"), cfg.get("_device"))
    num_classes = int(dm.get("num_classes") or getattr(synth, "num_classes", None) or source.num_classes)
    rare = tuple(dm.get("rare_classes") or source.info.rare_classes)
    mode = dm.get("mode", "both")
    size = dm.get("patch_size") or tuple(source[0].shape)
    size = (int(size), int(size)) if isinstance(size, int) else tuple(int(v) for v in size)
    batch = int(dm.get("batch_size", 4))
    cache = ReplayCache(batch, size, num_classes=max(2, num_classes), cache_dir=out, name=f"diffmix_r{rank}",
                        warm_start=False)
    if cache.cache_dir is None:
        raise OSError(f"cannot write to --out {str(out)!r}")
    sampler = build_label_sampler(source, mode, num_classes, rare, patch_size=size)
    producer = Producer(cache, synth, source, sampler, batch_size=batch, seed=int(dm.get("seed", 0)), rank=rank,
                        rare_classes=rare if mode != "enlarge" else ())
    written = 0
    with tqdm(total=share, desc=f"synthesize rank {rank}/{world}", unit="patch",
              disable=not progress or rank != 0) as bar:
        while written < share:
            producer.batch_size = min(batch, share - written)
            n = producer.step()
            written += n
            bar.update(n)
    producer.close()
    cache.close()
    return sorted(out.glob(f"diffmix_r{rank}_*.npy"))


def run(args: argparse.Namespace) -> int:
    import yaml

    with open(args.config, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"config {str(args.config)!r} must hold a mapping")
    dm = dict(cfg.get("diffmix") or {})
    if args.mode is not None:
        dm["mode"] = args.mode
    if args.seed is not None:
        dm["seed"] = args.seed
    cfg["diffmix"] = dm
    cfg["_device"] = args.device
    files = synthesize(cfg, Path(args.out), args.num)
    rank, world = _dist()
    print(f"rank {rank}/{world}: wrote {len(files)} patches to {args.out}")
    return 0
