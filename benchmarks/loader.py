"""Loader throughput and the training loop's wait: the base dataset alone vs DiffMixDataset.

Run::

    python -m benchmarks.loader              # table + benchmarks/results/loader.{json,md}
    python -m benchmarks.loader --busy 2     # beside two CPU-bound processes: results/loader_busy.{json,md}
    python -m benchmarks.loader --quick      # fewer items and repeats (smoke run, seconds)

Loaders over the same base, each at ``num_workers`` 0 and 2, measured in one run:

- ``base``: the base dataset alone: toy 64x64 patches generated per item (standing in for a
  file read) plus a flip / brightness augmentation, returned as dicts of numpy arrays;
- ``warm``: the offline pool: ``DiffMixDataset(base, None, cache_dir=<a patch store of 32
  patches>, max_reuse=10**9)``, ``synthetic_ratio=0.5``, no producer;
- ``spent``: what a live loader serves without its producer: a store of the 4 patches of a live
  warm-up, each served up to ``max_reuse`` (8) times, then originals; ``live`` minus ``spent`` is
  what the producer itself costs the consumer;
- ``live``: ``DiffMixDataset(base, <tiny SDM Synthesizer on CPU>)`` with its producer thread running
  while the loader is read (nice +10, ``label_workers=1``);
- ``burner``: the producer thread with a GIL-free CPU load (torch matmuls) as long as one real batch
  as its synthesizer: ``burner`` - ``warm`` is what a producer costs by taking CPU time, ``live`` -
  ``burner`` what it costs by holding the main process's GIL;
- ``--variants`` adds ``live_lw0`` (``label_workers=0``: label maps built in the producer thread).

Design: the repeats are the outer loop and the kinds run in a fresh random order in each, so a
drifting host load falls on every kind alike; each run's wait is paired with the ``base`` run of the
same repeat and worker count. Two measurements per run: items/s over whole epochs (ratio vs
``base``), and the consumer's wait per step in a training loop whose step is a sleep of
``--step-ms`` (a GPU-bound step leaves the host CPU idle): the *mean* wait over ``--steps`` steps.
The table gives the median and the spread over repeats.

Interleaved blocks (``--blocks``, 0 and 2 workers): per-run figures move by a few per cent of the
step between runs on a busy host. So ``base``, ``held`` (the live loader with its producer held
between batches: no producer CPU) and ``live`` also take turns in blocks of ``--block-steps``
steps, in a fresh random order each round, with the loaders alive side by side; the extra wait is
the mean over rounds of (arm - base of the same round) with its standard error.

Goals (issue 30): ``warm`` keeps >= 0.95x the base's items/s; with 2 workers the live producer's
extra wait stays < 2 % of the 100 ms step, on a quiet host and beside two CPU burners (reported).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from diffmix_aug.data.toy import make_toy_dataset
from diffmix_aug.dataset import DiffMixDataset

RESULTS = Path(__file__).parent / "results"
SIZE = 64
WORKERS = (0, 2)
COMMON = dict(synthetic_ratio=0.5, cache_capacity=32, patch_size=SIZE, rare_classes=(1,), num_classes=5)


class AugmentedToy(torch.utils.data.Dataset):
    """A typical user dataset: load a patch, augment it, return a dict of arrays."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.data = make_toy_dataset(n, SIZE, seed)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.data[i]
        rng = np.random.default_rng(i)
        img, inst, typ = s.image, s.inst_map, s.type_map
        if rng.random() < 0.5:
            img, inst, typ = img[:, ::-1], inst[:, ::-1], typ[:, ::-1]
        img = np.clip(img.astype(np.int16) + int(rng.integers(-26, 27)), 0, 255).astype(np.uint8)
        return {"image": np.ascontiguousarray(img), "inst_map": np.ascontiguousarray(inst),
                "type_map": np.ascontiguousarray(typ)}


class CPUBurner:
    """A synthesizer stand-in that keeps one core busy for ``seconds`` per batch without the GIL."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self._m = torch.randn(192, 192)

    def __call__(self, images, inst_maps, type_maps, generator=None):
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            self._m @ self._m  # releases the GIL while it runs
        return np.asarray(images)


def tiny_synthesizer():
    from diffmix_aug.sampling.ddim import DDIMSampler
    from diffmix_aug.sampling.synthesizer import Synthesizer
    from diffmix_aug.sdm import build_sdm

    torch.manual_seed(0)
    model = build_sdm("tiny", num_label_channels=6, image_size=SIZE)
    return Synthesizer(model, DDIMSampler(steps=2, t_start=250), device="cpu")


def make_pool(base, synth, directory: Path, batches: int, batch_size: int) -> Path:
    """A patch store of ``batches * batch_size`` patches, written by a producer (cooperative steps)."""
    with DiffMixDataset(base, synth, cache_dir=directory, batch_size=batch_size, cooperative=True, start=False,
                        **COMMON) as filler:
        filler.producer.step(batches)
    return directory


def items_per_s(ds, workers: int, batch: int, epochs: int) -> float:
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, persistent_workers=workers > 0)
    for _ in loader:  # warm-up epoch: worker start-up, templates
        pass
    t0 = time.perf_counter()
    n = 0
    for e in range(epochs):
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(e + 1)
        for b in loader:
            n += len(b["image"])
    dt = time.perf_counter() - t0
    del loader
    return n / dt


def _cycle(loader):
    while True:
        yield from loader


def wait_per_step(ds, workers: int, batch: int, steps: int, step_s: float, collate_fn=None) -> list[float]:
    """Seconds the training loop waits for each of ``steps`` batches (a sleep stands in for the step)."""
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, persistent_workers=workers > 0,
                        collate_fn=collate_fn)
    it = _cycle(loader)
    next(it)
    waits = []
    for _ in range(steps):
        t0 = time.perf_counter()
        next(it)
        waits.append(time.perf_counter() - t0)
        time.sleep(step_s)  # the (GPU-bound) training step
    del it, loader
    return waits


def interleaved(make, workers: int, blocks: int, block_steps: int, batch: int, step_s: float,
                seed: int = 0) -> dict[str, Any]:
    """``base``, ``held`` and ``live`` in interleaved blocks (see the module); mean extra wait +- se."""
    live = make("live")
    its = {"base": _cycle(DataLoader(make("base"), batch_size=batch, num_workers=workers,
                                     persistent_workers=workers > 0))}
    its["held"] = its["live"] = _cycle(DataLoader(live, batch_size=batch, num_workers=workers,
                                                  persistent_workers=workers > 0))
    waits: dict[str, list[float]] = {k: [] for k in its}
    writes0 = live.cache.writes
    rng = np.random.default_rng(seed)
    try:
        for _ in range(blocks):
            for arm in rng.permutation(list(its)):
                # the producer runs only in a live block (held between batches otherwise: no CPU)
                with live.producer.paused() if arm != "live" else contextlib.nullcontext():
                    it = its[arm]
                    next(it)  # the first batch after a switch is not timed
                    block = []
                    for _ in range(block_steps):
                        t0 = time.perf_counter()
                        next(it)
                        block.append(time.perf_counter() - t0)
                        time.sleep(step_s)
                waits[arm].append(statistics.fmean(block))
    finally:
        written = live.cache.writes - writes0
        live.close()

    def extra(arm: str, ref: str) -> dict[str, float]:
        d = [(a - b) / step_s for a, b in zip(waits[arm], waits[ref])]
        return {"mean": statistics.fmean(d), "se": statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0}

    return {"workers": workers, "blocks": blocks, "block_steps": block_steps,
            "base_wait_mean_s": statistics.fmean(waits["base"]),
            "held_extra_wait_fraction_of_step": extra("held", "base"),
            "live_extra_wait_fraction_of_step": extra("live", "base"),
            "live_producer_cost_fraction_of_step": extra("live", "held"), "live_patches": written}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def render_markdown(result: dict[str, Any]) -> str:
    """The table of ``result`` (the JSON), for ``loader*.md``."""
    c = result["config"]
    where = f"beside {c['busy']} CPU burners" if c["busy"] else "quiet host"
    lines = [f"# Loader benchmark ({where})", "",
             f"{result['machine']}, {result['cpu_count']} CPUs, torch {result['torch']}, {c['repeats']} repeats, "
             f"{c['items']} items, batch {c['batch']}, a {c['step_ms']:.0f} ms sleeping step; medians (min..max).",
             "", "| loader | workers | items/s | vs base | wait/step | extra wait (of the step) | patches/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        e, pp = r["extra_wait_fraction_of_step"], r["producer_patches_per_s"]
        rate = "" if pp is None else f"{pp['median']:.2f}"
        lines.append(f"| {r['loader']} | {r['num_workers']} | {r['items_per_s']['median']:.1f} | "
                     f"{r['ratio_vs_base']['median']:.2f} | {r['wait_mean_s']['median'] * 1000:.2f} ms | "
                     f"{e['median']:+.2%} ({e['min']:+.1%}..{e['max']:+.1%}) | {rate} |")
    for inter in result["interleaved"]:
        le, pc = inter["live_extra_wait_fraction_of_step"], inter["live_producer_cost_fraction_of_step"]
        lines += ["", f"Interleaved, {inter['workers']} workers, {inter['blocks']} rounds of {inter['block_steps']} "
                      f"steps: live {le['mean']:+.2%} +- {le['se']:.2%} (se) against base, {pc['mean']:+.2%} +- "
                      f"{pc['se']:.2%} against the same loader with its producer held; {inter['live_patches']} patches."]
    lines += ["", f"Goals: {result['goals']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from tqdm.auto import tqdm

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--step-ms", type=float, default=100.0)
    p.add_argument("--quick", action="store_true", help="a smoke run: few items, one repeat")
    p.add_argument("--busy", type=int, default=0,
                   help="CPU-bound processes run beside the measurement (a busy node); 2 on 2 cores fills it")
    p.add_argument("--variants", action="store_true", help="also live_lw0 (label_workers=0)")
    p.add_argument("--blocks", type=int, default=30, help="rounds of the interleaved measurement (0: skip it)")
    p.add_argument("--block-steps", type=int, default=10)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default results/loader[_busy].json)")
    args = p.parse_args(argv)
    if args.quick:
        args.items, args.epochs, args.repeats, args.steps, args.blocks, args.block_steps = 64, 1, 1, 10, 2, 3
    if args.out is None:
        args.out = RESULTS / ("loader_busy.json" if args.busy else "loader.json")
    torch.set_num_threads(1)
    # the low-share warning fires by design here (the producing loaders serve originals past max_reuse)
    logging.getLogger("diffmix_aug").setLevel(logging.ERROR)
    base = AugmentedToy(args.items)
    synth = tiny_synthesizer()
    tmp = Path(tempfile.mkdtemp(prefix="diffmix_bench_"))
    pool = make_pool(base, synth, tmp / "pool", batches=4, batch_size=8)
    spent = make_pool(base, synth, tmp / "spent", batches=1, batch_size=4)  # a live loader's warm-up
    img = np.zeros((4, SIZE, SIZE, 3), np.uint8)
    zeros = np.zeros((4, SIZE, SIZE), np.int32)
    t0 = time.perf_counter()
    synth(img, zeros, zeros, generator=torch.Generator().manual_seed(0))
    batch_s = time.perf_counter() - t0  # one real batch of 4 (the burner's duration)

    def make(kind: str):
        if kind == "base":
            return base
        if kind in ("warm", "spent"):
            # warm: no max_reuse limit, or after 32 x 8 serves every synthetic item would be an original
            return DiffMixDataset(base, None, cache_dir=pool if kind == "warm" else spent,
                                  max_reuse=10**9 if kind == "warm" else 8, **COMMON)
        kw = {"label_workers": 0} if kind == "live_lw0" else {}
        return DiffMixDataset(base, CPUBurner(batch_s) if kind == "burner" else synth, batch_size=4,
                              warmup="block", warmup_items=4, **COMMON, **kw)

    kinds = ["base", "warm", "spent", "live", "burner"] + (["live_lw0"] if args.variants else [])
    producing = {"live", "burner", "live_lw0"}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    runs: dict[tuple[str, int], list[dict[str, float]]] = {(k, w): [] for w in WORKERS for k in kinds}
    order_rng = np.random.default_rng(0)
    inter = []
    try:
        with tqdm(total=args.repeats * len(runs), desc="loader benchmark") as bar:
            for _ in range(args.repeats):
                for workers in WORKERS:
                    for kind in ["base"] + list(order_rng.permutation(kinds[1:])):
                        ds = make(kind)
                        try:
                            w0, t0 = ds.cache.writes if kind in producing else 0, time.perf_counter()
                            speed = items_per_s(ds, workers, args.batch, args.epochs)
                            waits = wait_per_step(ds, workers, args.batch, args.steps, args.step_ms / 1000)
                            run = {"items_per_s": speed, "wait_mean_s": statistics.fmean(waits)}
                            if kind in producing:
                                run["patches_per_s"] = (ds.cache.writes - w0) / (time.perf_counter() - t0)
                        finally:
                            if ds is not base:
                                ds.close()
                        runs[(kind, workers)].append(run)
                        bar.update()
        if args.blocks:
            inter = [interleaved(make, w, args.blocks, args.block_steps, args.batch, args.step_ms / 1000)
                     for w in tqdm(WORKERS, desc="interleaved blocks")]
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    step = args.step_ms / 1000
    rows = []
    for (kind, workers), rs in runs.items():
        bs = runs[("base", workers)]
        extra = [(r["wait_mean_s"] - b["wait_mean_s"]) / step for r, b in zip(rs, bs)]
        rows.append({"loader": kind, "num_workers": workers, "items_per_s": summary([r["items_per_s"] for r in rs]),
                     "ratio_vs_base": summary([r["items_per_s"] / b["items_per_s"] for r, b in zip(rs, bs)]),
                     "wait_mean_s": summary([r["wait_mean_s"] for r in rs]),
                     "extra_wait_fraction_of_step": summary(extra),
                     "producer_patches_per_s": summary([r["patches_per_s"] for r in rs]) if kind in producing
                     else None})
    row = {(r["loader"], r["num_workers"]): r for r in rows}

    def med(kind: str, w: int, key: str = "extra_wait_fraction_of_step") -> float:
        return row[(kind, w)][key]["median"]

    decomposition = {w: {"wrapper_warm_minus_base": med("warm", w),
                         "producer_cpu_burner_minus_warm": med("burner", w) - med("warm", w),
                         "producer_gil_live_minus_burner": med("live", w) - med("burner", w),
                         "producer_live_minus_spent": med("live", w) - med("spent", w)} for w in WORKERS}
    result = {
        "benchmark": "loader", "machine": platform.node(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "load_average_1min_at_end": os.getloadavg()[0],
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "patch": SIZE, "synthesizer": "tiny SDM, 2 DDIM steps from t = 250, CPU, 1 thread", "real_batch_s": batch_s,
                   "producer": "thread, nice +10, label_workers=1"},
        "rows": rows, "extra_wait_decomposition": decomposition, "interleaved": inter,
        "goals": {"warm_ratio_ge_0.95": all(med("warm", w, "ratio_vs_base") >= 0.95 for w in WORKERS),
                  "live_2_workers_extra_wait_lt_2pct": med("live", 2) < 0.02},
    }
    print(render_markdown(result))
    from diffmix_aug._io import atomic_write_text

    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), render_markdown(result))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
