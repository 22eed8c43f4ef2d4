"""The SDM training loop: single process, or DDP when started by ``torchrun``.

Randomness: model init from ``seed``; data order from ``(seed, epoch)``; crops from
``(seed, epoch, item)``; timesteps, noise and label dropout from one ``torch.Generator`` per rank
whose state is checkpointed. Together with the optimizer / EMA / scaler state this makes resume
exact: ``N`` steps in one go and ``k`` + ``N - k`` steps with a resume in between give the same
weights.
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..diffusion.gaussian import DiffusionTables, drop_labels, sample_timesteps
from ..diffusion.losses import training_losses
from ..sdm.presets import build_sdm
from .checkpoint import (
    capture_rng_state,
    has_checkpoint,
    load_training_checkpoint,
    restore_rng_state,
    save_training_checkpoint,
)
from .config import TrainConfig
from .data import SDMTrainData, build_dataset, data_fingerprint, epoch_indices

__all__ = ["TrainResult", "train_sdm"]


@dataclass
class TrainResult:
    """Outcome of :func:`train_sdm` (on rank 0; other ranks get their own losses).

    Attributes:
        out_dir: The training directory.
        step: Optimizer steps done in total.
        losses: Mean batch loss of every step run by this call.
        wall_s: Seconds spent in this call's training steps.
        model, ema: The trained (unwrapped) model and its EMA copy.
    """

    out_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    model: Any = None
    ema: Any = None
    interrupted: bool = False


class _StopRequest:
    """Ctrl-C (SIGINT) as a request to stop at the next step boundary, where a checkpoint is saved.

    The first SIGINT sets the flag; a second one raises ``KeyboardInterrupt`` at once. Only the main
    thread can install signal handlers; elsewhere the default behaviour stays. Under DDP every rank
    stops at the same step (the flags are reduced across ranks each step).
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def agreed(self, world: int, device: torch.device) -> bool:
        """Whether any rank asked to stop (a collective call when ``world > 1``)."""
        if world == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)


def _dist_setup(device_pref: str) -> tuple[int, int, torch.device, bool]:
    """``(rank, world_size, device, created_group)``; starts a process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref == "cuda"
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise ValueError("`train.device` is 'cuda' but CUDA is not available; use 'auto' or 'cpu'")
    created = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        created = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, world, device, created


def _package_version() -> str:
    from .. import __version__

    return str(__version__)


def _git_commit() -> str:
    """The commit of the source tree the package runs from ("" outside a git checkout)."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    if out.returncode != 0:
        return ""
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def ema_decay(rate: float, step: int, warmup: bool) -> float:
    """EMA decay of the update after ``step`` earlier optimizer steps.

    Without warmup this is ``rate`` (the reference code's plain EMA). With warmup it is
    ``min(rate, (1 + step) / (10 + step))`` (the convention of diffusers' ``EMAModel`` and TF's
    ``ExponentialMovingAverage(num_updates=...)``): a plain 0.999 EMA after 2,000 steps still holds
    0.999^2000 = 13 % of the initial weights, whose zero output convolutions shrink every predicted
    noise by that much; with warmup the initial weights are gone after a few steps.
    """
    if not warmup:
        return rate
    return min(rate, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, rate: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(rate).add_(p.detach().float(), alpha=1 - rate)


def _amp_settings(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use GradScaler)``."""
    if amp == "auto":
        amp = "fp16" if device.type == "cuda" else "none"
    if amp == "none":
        return None, False
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return dtype, dtype == torch.float16 and device.type == "cuda"


def train_sdm(config: TrainConfig, *, out_dir: str | os.PathLike[str] | None = None, resume: bool = False,
              max_steps: int | None = None, progress: bool = True, dataset: Any = None) -> TrainResult:
    """Train (or resume training) an SDM as ``config`` says.

    Args:
        config: :class:`~diffmix_aug.train.config.TrainConfig`.
        out_dir: Training directory (default ``config.out_dir``).
        resume: Continue from the checkpoint in ``out_dir`` (error if there is none).
        max_steps: Stop after this many total steps (default: the sum of the stages' steps).
        progress: Show a tqdm bar (rank 0 only).
        dataset: A ``NucleiDataset`` to use instead of the one ``config.data`` names.

    Returns:
        :class:`TrainResult`.
    """
    out = Path(out_dir if out_dir is not None else config.out_dir)
    rank, world, device, created_group = _dist_setup(config.train.device)
    try:
        return _train(config, out, resume, max_steps, progress, dataset, rank, world, device)
    finally:
        if created_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, out: Path, resume: bool, max_steps: int | None, progress: bool, dataset: Any,
           rank: int, world: int, device: torch.device) -> TrainResult:
    tc, dc = config.train, config.data
    total = tc.total_steps if max_steps is None else min(int(max_steps), tc.total_steps)
    say = _status(rank == 0 and progress)
    if dataset is None:
        say(f"train-sdm: reading the {dc.dataset} training data"
            + (f" from {dc.data_root}" if dc.data_root else "") + " ...")
        # read once: every item is re-read 6x per epoch (toy: generated; folders: decoded + downsampled)
        dataset = build_dataset(dc).materialised(progress=rank == 0 and progress)
    data = SDMTrainData(dataset, dc.crop_size, augment=dc.augment, seed=tc.seed)
    num_classes = data.num_classes

    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed % 2**32)
    random.seed(tc.seed)
    image_size = config.model.image_size or dc.crop_size
    model = build_sdm(config.model.preset, num_classes + 1, image_size, **config.model.overrides).to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    tables = DiffusionTables.from_schedule(config.diffusion.beta_schedule, config.diffusion.num_timesteps).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.stages[0].lr, weight_decay=0.0)
    amp_dtype, use_scaler = _amp_settings(tc.amp, device)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    gen = torch.Generator(device=device).manual_seed(tc.seed * 1000003 + rank)
    data_info = getattr(dataset, "info", None)
    run_config = {"sdm": model.config.to_dict(), "train": config.to_dict(), "num_classes": num_classes,
                  "dataset": getattr(data_info, "name", dc.dataset),
                  "mpp": getattr(data_info, "mpp", None),
                  "class_names": list(data_info.class_names) if data_info is not None else None,
                  "data_hash": data_fingerprint(dataset), "num_items": len(dataset),
                  "package_version": _package_version(), "git_commit": _git_commit()}

    step = 0
    if resume:
        if not has_checkpoint(out):
            raise FileNotFoundError(f"{out}: no complete checkpoint to resume (needs model.safetensors, "
                                    "ema.safetensors, config.json, train_state.pt); drop --resume to start fresh")
        loaded = load_training_checkpoint(out, model=model, ema=ema, optimizer=optimizer, scaler=scaler,
                                          sdm_config=run_config["sdm"])
        step = loaded["step"]
        restore_rng_state(loaded["rng"][rank] if isinstance(loaded["rng"], list) else loaded["rng"], gen)
        if rank == 0:
            _truncate_log(out / "log.jsonl", step)

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    bar = None
    n_params = sum(p.numel() for p in model.parameters())
    say(f"train-sdm: {len(dataset)} training images, {n_params / 1e6:.2f} M parameters on {device}, "
        f"steps {step}..{total}, checkpoints every {tc.save_interval or 'end'} steps in {out} (Ctrl-C saves one)")
    if rank == 0 and progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc="train-sdm", unit="it", dynamic_ncols=True)
    losses: list[float] = []
    log_rows: list[dict[str, Any]] = []
    per_epoch = len(epoch_indices(len(data), 0, tc.seed, rank=rank, world_size=world, batch_size=tc.batch_size))
    batches_per_epoch = per_epoch // tc.batch_size
    if batches_per_epoch == 0:
        raise ValueError(f"`train.batch_size`={tc.batch_size} x {world} process(es) exceeds the {len(data)} "
                         "training items; lower the batch size or add images")
    t_start = time.perf_counter()
    model.train()
    with _StopRequest() as stop:
        step, log_rows, interrupted = _loop(
            step, total, data, tc, dc, rank, world, device, net, model, ema, optimizer, scaler, tables, gen,
            amp_dtype, out, run_config, config, bar, losses, log_rows, stop)
    wall = time.perf_counter() - t_start
    if bar is not None:
        bar.close()
    if rank == 0 and log_rows:
        _append_log(out / "log.jsonl", log_rows)
    _save(out, model, ema, optimizer, scaler, step, gen, run_config, rank, world)
    if interrupted:
        return TrainResult(out, step, losses, wall, model, ema, interrupted=True)
    if rank == 0 and tc.sample_interval:
        say(f"train-sdm: checkpoint saved at step {step}; writing preview samples ({tc.sample_count} images, "
            f"{tc.sample_steps} DDIM steps) to {out / 'samples'} ...")
        _sample_grid(out, ema, tables, data, tc, step, config.diffusion.beta_schedule)
    return TrainResult(out, step, losses, wall, model, ema)


def _status(enabled: bool):
    """A one-line status printer (progress before and after the bar), or a no-op."""
    def say(text: str) -> None:
        if enabled:
            print(text, flush=True)
    return say


def _loop(step, total, data, tc, dc, rank, world, device, net, model, ema, optimizer, scaler, tables, gen, amp_dtype,
          out, run_config, config, bar, losses, log_rows, stop) -> tuple[int, list, bool]:
    """The training steps from ``step`` to ``total``; returns ``(step, unwritten log rows, interrupted)``."""
    per_epoch = len(epoch_indices(len(data), 0, tc.seed, rank=rank, world_size=world, batch_size=tc.batch_size))
    batches_per_epoch = per_epoch // tc.batch_size
    while step < total:
        epoch, offset = divmod(step, batches_per_epoch)
        data.set_epoch(epoch)
        indices = epoch_indices(len(data), epoch, tc.seed, rank=rank, world_size=world, batch_size=tc.batch_size)
        loader = torch.utils.data.DataLoader(data, batch_size=tc.batch_size, sampler=indices[offset * tc.batch_size:],
                                             num_workers=dc.num_workers, drop_last=True,
                                             pin_memory=device.type == "cuda")
        batches = iter(loader)
        while True:
            try:
                x, y = next(batches)
            except StopIteration:
                break
            except RuntimeError:
                if stop.requested:  # Ctrl-C reached the DataLoader workers too, and they exited
                    return step, log_rows, True
                raise
            if step >= total:
                break
            stage = tc.stage_at(step)
            for group in optimizer.param_groups:
                group["lr"] = stage.lr
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if tc.channels_last:
                x, y = x.to(memory_format=torch.channels_last), y.to(memory_format=torch.channels_last)
            t = sample_timesteps(x.shape[0], tables.num_timesteps, generator=gen, device=device)
            noise = torch.randn(x.shape, generator=gen, device=device)
            y = drop_labels(y, stage.drop_rate, generator=gen)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                parts = training_losses(net, tables, x, y, t, noise)
            loss = parts["loss"].mean()
            optimizer.zero_grad(set_to_none=True)
            stepped = _backward_step(loss, optimizer, scaler, model, tc.grad_clip)
            if stepped:
                _ema_update(ema, model, ema_decay(tc.ema_rate, step, tc.ema_warmup))
            step += 1
            value = float(loss.detach())
            losses.append(value)
            if rank == 0:
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}", stage=stage.name)
                log_rows.append({"step": step, "loss": value, "mse": float(parts["mse"].detach().mean()),
                                 "vb": float(parts["vb"].detach().mean()) if "vb" in parts else None, "lr": stage.lr,
                                 "stage": stage.name, "skipped": not stepped})
                if tc.log_interval and (step % tc.log_interval == 0 or step == total):
                    _append_log(out / "log.jsonl", log_rows)
                    log_rows = []
            if tc.save_interval and step % tc.save_interval == 0 and step < total:
                _save(out, model, ema, optimizer, scaler, step, gen, run_config, rank, world)
            if rank == 0 and tc.sample_interval and step % tc.sample_interval == 0 and step < total:
                _sample_grid(out, ema, tables, data, tc, step, config.diffusion.beta_schedule)
            if stop.agreed(world, device) and step < total:
                return step, log_rows, True
            if step >= total:
                break  # before the loader fetches a batch that would not be trained on
    return step, log_rows, False


def _backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: Any, model: torch.nn.Module,
                   grad_clip: float | None) -> bool:
    """Backward and optimizer step; returns False when the GradScaler skipped the step (inf/nan grads)."""
    if scaler is None:
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        return True
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= before


def _save(out: Path, model, ema, optimizer, scaler, step: int, gen: torch.Generator, run_config: dict,
          rank: int, world: int) -> None:
    """Rank 0 writes; every rank's generator state is gathered so each rank resumes its own stream."""
    rng = capture_rng_state(gen)
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, rng)
        rng_all: Any = gathered
    else:
        rng_all = rng
    if rank == 0:
        save_training_checkpoint(out, model=model, ema=ema, optimizer=optimizer, scaler=scaler, step=step,
                                 rng=rng_all, config=run_config)
    if world > 1:
        dist.barrier()


def _append_log(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the resumed step (they are re-run)."""
    from .._io import atomic_write_text

    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _sample_grid(out: Path, ema, tables: DiffusionTables, data: SDMTrainData, tc, step: int,
                 beta_schedule: str = "linear") -> None:
    """DDIM samples of the EMA model for the first ``sample_count`` training crops (fixed across steps)."""
    from .preview import ddim_sample, write_sample_grid

    device = next(ema.parameters()).device
    saved_epoch = data.epoch
    data.set_epoch(0)
    n = min(tc.sample_count, len(data.dataset))
    items = [data[i * data.variants] for i in range(n)]
    data.set_epoch(saved_epoch)
    real = torch.stack([x for x, _ in items]).to(device)
    y = torch.stack([c for _, c in items]).to(device)
    gen = torch.Generator(device=device).manual_seed(tc.seed + 12345)
    samples = ddim_sample(ema, y, steps=tc.sample_steps, guidance=tc.sample_guidance, generator=gen,
                          num_timesteps=tables.num_timesteps, beta_schedule=beta_schedule)
    palette = np.asarray(data.dataset.info.palette()) if hasattr(data.dataset, "info") else _default_palette(y)
    write_sample_grid(out / "samples" / f"step_{step:07d}.png", samples, real, y, palette)


def _default_palette(y: torch.Tensor) -> np.ndarray:
    k = y.shape[1] - 1
    rng = np.random.default_rng(0)
    pal = rng.integers(64, 256, size=(k, 3)).astype(np.uint8)
    pal[0] = 0
    return pal
