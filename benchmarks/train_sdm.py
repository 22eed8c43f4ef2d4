"""Benchmark: SDM training throughput (iterations/s) and peak memory per preset and precision.

Each row builds a preset with random init (``build_sdm(preset, 6, image_size=S)``), an AdamW optimizer
and an EMA copy, and times the training step of :mod:`diffmix_aug.train.loop` on one fixed random batch
(``x`` uniform in [-1, 1], ``y`` random one-hot label maps): timesteps, noise, label dropout,
``training_losses``, backward, optimizer step (GradScaler for fp16) and EMA update. No data loading is
timed. After ``--warmup`` steps it times ``--repeats`` runs of ``--steps`` steps each and reports the
median it/s and its min / max over the repeats.

Machines are noisy, so the headline numbers are ratios measured in the same run: every preset's median
it/s over the ``tiny`` preset's (``tiny`` is always measured, as the baseline), and on CUDA the AMP / fp32
speed-up per preset.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (reset before each row). On CPU the process'
peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) after the row minus the current RSS before the
model was built (``/proc/self/statm``). ``ru_maxrss`` is a high-water mark over the whole process, so the
delta is exact only when the row raised it (``peak_exact``); otherwise it is an upper bound. Rows run in
order of parameter count so that each one usually does.

    python benchmarks/train_sdm.py                          # CPU: tiny and small at 64x64, batch 4
    python benchmarks/train_sdm.py --quick                  # seconds: tiny at 32x32, batch 1, 1 step
    python benchmarks/train_sdm.py --device cuda            # GPU: tiny, small, paper at 256x256, fp32 vs AMP

On a machine whose cores are shared with other work use ``--threads 1``: intra-op threads that wait on
busy cores can make a step an order of magnitude slower (tiny@64, batch 4 on 2 shared cores: 0.08 it/s
with 2 threads, 1.4 it/s with 1).

Writes ``benchmarks/results/train_sdm.json`` (machine, config, per-row median and spread).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffmix_aug._io import atomic_write_text
from diffmix_aug.diffusion import DiffusionTables, drop_labels, sample_timesteps, training_losses
from diffmix_aug.sdm import PRESETS, build_sdm
from diffmix_aug.train.loop import _amp_settings, _backward_step, _ema_update

RESULTS = Path(__file__).parent / "results"
BASELINE = "tiny"
NUM_LABEL_CHANNELS = 6  # CoNSeP: 5 classes + the edge channel
LR, DROP_RATE, EMA_RATE = 1e-4, 0.2, 0.9999


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _available_threads() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def _current_rss_bytes() -> int | None:
    """Resident set size now (Linux ``/proc/self/statm``), or None where unavailable."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return None


def _max_rss_bytes() -> int:
    """The process' peak RSS so far (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


def random_batch(batch: int, size: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``[N, 3, S, S]`` uniform in [-1, 1] and one-hot label maps ``y`` ``[N, 6, S, S]``.

    Args:
        batch: Batch size ``N``.
        size: Image side ``S``.
        device: Where to put the tensors.
        seed: Seed of the CPU generator that draws them.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, 3, size, size), generator=gen) * 2 - 1
    types = torch.randint(0, NUM_LABEL_CHANNELS, (batch, size, size), generator=gen)
    y = torch.nn.functional.one_hot(types, NUM_LABEL_CHANNELS).permute(0, 3, 1, 2).float().contiguous()
    return x.to(device), y.to(device)


class TrainStep:
    """One optimizer step of the SDM training loop (:func:`diffmix_aug.train.loop.train_sdm`) on a fixed batch.

    Args:
        preset: SDM preset name.
        size: Image side (the model's ``image_size``).
        batch: Batch size.
        device: Where to train.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast; fp16 on CUDA uses a GradScaler).
        seed: Seed for the weights, the batch and the step's randomness.
    """

    def __init__(self, preset: str, size: int, batch: int, device: torch.device, precision: str = "fp32",
                 seed: int = 0):
        torch.manual_seed(seed)
        self.device = device
        self.model = build_sdm(preset, NUM_LABEL_CHANNELS, image_size=size).to(device).train()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.tables = DiffusionTables.from_schedule("linear", 1000).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=0.0)
        self.amp_dtype, use_scaler = _amp_settings("none" if precision == "fp32" else precision, device)
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.x, self.y = random_batch(batch, size, device, seed)
        self.losses: list[float] = []

    def __call__(self) -> float:
        """Run one step; returns the batch loss (a host sync, as in the training loop)."""
        x = self.x
        t = sample_timesteps(x.shape[0], self.tables.num_timesteps, generator=self.gen, device=self.device)
        noise = torch.randn(x.shape, generator=self.gen, device=self.device)
        y = drop_labels(self.y, DROP_RATE, generator=self.gen)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            parts = training_losses(self.model, self.tables, x, y, t, noise)
        loss = parts["loss"].mean()
        self.optimizer.zero_grad(set_to_none=True)
        if _backward_step(loss, self.optimizer, self.scaler, self.model, None):
            _ema_update(self.ema, self.model, EMA_RATE)
        value = float(loss.detach())
        self.losses.append(value)
        return value


def measure(preset: str, precision: str, args: argparse.Namespace, device: torch.device, pbar: Any) -> dict:
    """Warm up, then time ``args.repeats`` x ``args.steps`` training steps of one preset / precision.

    Args:
        preset: SDM preset name.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        args: Parsed CLI arguments (``image_size``, ``batch_size``, ``warmup``, ``steps``, ``repeats``).
        device: Where to train.
        pbar: tqdm bar, advanced once per warm-up step and per timed repeat.

    Returns:
        One result row (it/s median, min, max; peak memory; parameter count).
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before, maxrss_before = _current_rss_bytes(), _max_rss_bytes()
    step = TrainStep(preset, args.image_size, args.batch_size, device, precision)
    for _ in range(args.warmup):
        step()
        pbar.update(1)
    rates, seconds = [], []
    for _ in range(args.repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        _sync(device)
        elapsed = time.perf_counter() - t0
        seconds.append(elapsed / args.steps)
        rates.append(args.steps / elapsed)
        pbar.update(1)
    row: dict[str, Any] = {
        "preset": preset, "precision": precision, "image_size": args.image_size, "batch_size": args.batch_size,
        "params_m": sum(p.numel() for p in step.model.parameters()) / 1e6,
        "it_per_s": statistics.median(rates), "it_per_s_min": min(rates), "it_per_s_max": max(rates),
        "it_per_s_repeats": rates, "s_per_it": statistics.median(seconds),
        "images_per_s": statistics.median(rates) * args.batch_size,
        "final_loss": step.losses[-1],
    }
    if device.type == "cuda":
        row.update(peak_memory_bytes=torch.cuda.max_memory_allocated(device),
                   peak_memory_kind="torch.cuda.max_memory_allocated", peak_exact=True)
    else:
        maxrss_after = _max_rss_bytes()
        base = rss_before if rss_before is not None else maxrss_before
        row.update(peak_memory_bytes=maxrss_after - base,
                   peak_memory_kind="process peak RSS (ru_maxrss) minus RSS before the model was built",
                   peak_exact=maxrss_after > maxrss_before)
    del step
    return row


def add_ratios(rows: list[dict]) -> None:
    """Add ``ratio_vs_tiny`` (same precision) and ``amp_speedup`` (over the same preset's fp32) to ``rows``."""
    by_key = {(r["preset"], r["precision"]): r for r in rows}
    for r in rows:
        base = by_key.get((BASELINE, r["precision"]))
        if base is not None:
            r["ratio_vs_tiny"] = r["it_per_s"] / base["it_per_s"]
            r["ratio_vs_tiny_min"] = r["it_per_s_min"] / base["it_per_s_max"]
            r["ratio_vs_tiny_max"] = r["it_per_s_max"] / base["it_per_s_min"]
        fp32 = by_key.get((r["preset"], "fp32"))
        if r["precision"] != "fp32" and fp32 is not None:
            r["amp_speedup"] = r["it_per_s"] / fp32["it_per_s"]


def machine_info(device: torch.device) -> dict[str, Any]:
    """Platform, processor, core count, torch version and CUDA device (if any)."""
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0], "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "cpus_available": _available_threads(), "load_average_1min": os.getloadavg()[0],
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def table(rows: list[dict]) -> str:
    """The result rows as a fixed-width text table."""
    lines = [f"{'preset':<7} {'prec':<5} {'size':>4} {'B':>3} {'params M':>9} {'it/s':>8} {'(min-max)':>17} "
             f"{'img/s':>8} {'x tiny':>7} {'AMP x':>6} {'peak MiB':>9}"]
    for r in rows:
        spread = f"{r['it_per_s_min']:.3f}-{r['it_per_s_max']:.3f}"
        peak = ("" if r["peak_exact"] else "<=") + f"{r['peak_memory_bytes'] / 2**20:.0f}"
        amp = f"{r['amp_speedup']:6.2f}" if "amp_speedup" in r else f"{'-':>6}"
        lines.append(f"{r['preset']:<7} {r['precision']:<5} {r['image_size']:>4} {r['batch_size']:>3} "
                     f"{r['params_m']:9.2f} {r['it_per_s']:8.3f} {spread:>17} {r['images_per_s']:8.2f} "
                     f"{r.get('ratio_vs_tiny', float('nan')):7.3f} {amp} {peak:>9}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """CLI arguments, with the device-dependent and ``--quick`` defaults filled in."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--presets", default=None,
                    help="comma list (default tiny,small on CPU, tiny,small,paper on CUDA); tiny is always added")
    ap.add_argument("--precisions", default=None,
                    help="comma list of fp32, amp, bf16, fp16 (default fp32 on CPU, fp32,amp on CUDA; "
                         "amp = bf16 where supported, else fp16 with a GradScaler)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 4")
    ap.add_argument("--image-size", type=int, default=None, help="default 64 on CPU, 256 on CUDA")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 3)")
    ap.add_argument("--repeats", type=int, default=None, help="default 3")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: all available cores)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: tiny, 32x32, batch 1, 1 step, 1 repeat, 1 warm-up (explicit flags win)")
    ap.add_argument("--out", type=Path, default=RESULTS / "train_sdm.json")
    args = ap.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = args.device.startswith("cuda")
    quick = args.quick
    defaults = {"presets": "tiny" if quick else ("tiny,small,paper" if cuda else "tiny,small"),
                "precisions": "fp32,amp" if cuda else "fp32",
                "batch_size": 1 if quick else 4, "image_size": 32 if quick else (256 if cuda else 64),
                "steps": 1 if quick else 3, "repeats": 1 if quick else 3, "warmup": 1,
                "threads": _available_threads()}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("batch_size", "image_size", "steps", "repeats", "threads"):
        if getattr(args, key) < 1:
            ap.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        ap.error("--warmup must be >= 0")
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = sorted(set(presets) - set(PRESETS))
    if unknown:
        ap.error(f"unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    if BASELINE not in presets:
        presets.insert(0, BASELINE)
    args.presets = list(dict.fromkeys(presets))
    precisions = []
    for p in (p.strip() for p in args.precisions.split(",") if p.strip()):
        if p == "amp":
            p = "bf16" if cuda and torch.cuda.is_bf16_supported() else ("fp16" if cuda else "bf16")
        if p not in ("fp32", "bf16", "fp16"):
            ap.error(f"unknown precision {p!r}; choose from fp32, amp, bf16, fp16")
        precisions.append(p)
    args.precisions = list(dict.fromkeys(precisions))
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table and write the JSON report.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``).

    Returns:
        Process exit code (0).
    """
    from tqdm import tqdm

    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    def n_params(preset: str) -> int:
        meta = build_sdm(preset, NUM_LABEL_CHANNELS, image_size=args.image_size, device="meta")
        return sum(p.numel() for p in meta.parameters())

    order = sorted(args.presets, key=n_params)  # smallest first: each row usually raises the RSS high-water mark
    plan = [(preset, precision) for preset in order for precision in args.precisions]
    rows: list[dict] = []
    with tqdm(total=len(plan) * (args.warmup + args.repeats), desc="train-sdm bench", unit="rep") as pbar:
        for preset, precision in plan:
            pbar.set_postfix(preset=preset, precision=precision)
            rows.append(measure(preset, precision, args, device, pbar))
    add_ratios(rows)

    print(table(rows))
    report = {
        "benchmark": "train_sdm",
        "machine": machine_info(device),
        "config": {"device": device.type, "presets": order, "precisions": args.precisions,
                   "batch_size": args.batch_size, "image_size": args.image_size,
                   "num_label_channels": NUM_LABEL_CHANNELS, "steps_per_repeat": args.steps,
                   "repeats": args.repeats, "warmup": args.warmup, "threads": torch.get_num_threads(),
                   "quick": args.quick, "baseline": BASELINE,
                   "step": f"sample_timesteps + randn + drop_labels({DROP_RATE}) + training_losses (hybrid) + "
                           f"backward + AdamW(lr={LR}) + EMA({EMA_RATE}); fixed random batch, no data loading",
                   "method": "it/s = steps / wall time of one repeat; median, min, max over repeats; "
                             "ratio_vs_tiny = median / tiny's median (min/max from the extreme pairs)"},
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
