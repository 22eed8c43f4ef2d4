"""``diffmix-aug train-sdm``: train the semantic diffusion model from a YAML config.

Single process: ``diffmix-aug train-sdm --config diffmix_aug/configs/sdm_tiny.yaml``.
Multi-GPU / multi-process: the same command under ``torchrun --nproc_per_node N`` (DDP; gloo on
CPU, nccl on GPU; ``train.batch_size`` is per process).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import require_config

HELP = "Train the SDM (stage 1 + classifier-free fine-tune) from a YAML config; works under torchrun."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True,
                        help="YAML training config (see diffmix_aug/configs/sdm_*.yaml)")
    parser.add_argument("--out", type=Path, default=None, help="training directory (default: the config's out_dir)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in the training directory")
    parser.add_argument("--steps", type=int, default=None,
                        help="stop after this many total optimizer steps (default: all stages)")
    parser.add_argument("--batch-size", type=int, default=None, help="override train.batch_size (per process)")
    parser.add_argument("--seed", type=int, default=None, help="override train.seed")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="override train.device")
    parser.add_argument("--data-root", type=str, default=None, help="override data.data_root")
    parser.add_argument("--export", type=Path, default=None,
                        help="after training, write an fp16 inference export to this .safetensors")
    parser.add_argument("--export-weights", choices=("ema", "model"), default="ema",
                        help="which weights --export writes: the EMA copy (default) or the raw model")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    require_config(args.config, "diffmix_aug/configs/sdm_tiny.yaml")  # before the torch import
    import torch.distributed as dist

    from ..sdm.checkpoint import export_sdm
    from ..train.config import load_train_config
    from ..train.loop import train_sdm

    config = load_train_config(args.config)
    train_over = {k: v for k, v in (("batch_size", args.batch_size), ("seed", args.seed), ("device", args.device))
                  if v is not None}
    if train_over:
        config = config.replace(train=train_over)
    if args.data_root is not None:
        config = config.replace(data={"data_root": args.data_root})
    try:
        result = train_sdm(config, out_dir=args.out, resume=args.resume, max_steps=args.steps,
                           progress=not args.no_progress)
    except KeyboardInterrupt:
        print("train-sdm: interrupted before a checkpoint could be saved (a second Ctrl-C, or before the first "
              "step); nothing new was written", file=sys.stderr, flush=True)
        return 130
    rank = dist.get_rank() if dist.is_initialized() else 0
    if result.interrupted:
        if rank == 0:
            again = f"diffmix-aug train-sdm --config {args.config} --resume" + \
                (f" --out {args.out}" if args.out is not None else "")
            print(f"train-sdm: interrupted at step {result.step}; checkpoint saved in {result.out_dir}. "
                  f"Resume with: {again}", file=sys.stderr, flush=True)
        return 130
    if rank == 0:
        summary = {"out_dir": str(result.out_dir), "step": result.step, "wall_s": round(result.wall_s, 1)}
        if result.losses:
            k = max(1, min(50, len(result.losses) // 5))
            summary["loss_first"] = sum(result.losses[:k]) / k
            summary["loss_last"] = sum(result.losses[-k:]) / k
        if args.export is not None:
            summary["export"] = str(export_sdm(result.out_dir, args.export, use_ema=args.export_weights == "ema"))
        print(json.dumps(summary))
    return 0
