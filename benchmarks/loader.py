"""Loader throughput: the base dataset alone vs DiffMixDataset (warm cache, live producer).

Run::

    python -m benchmarks.loader              # table + benchmarks/results/loader.json
    python -m benchmarks.loader --quick      # fewer items and repeats (smoke run)

Three loaders over the same base, each at ``num_workers`` 0 and 2, measured in one run:

- ``base``: the base dataset alone: toy 64x64 patches generated per item (standing in for a
  file read) plus a flip / brightness augmentation, returned as dicts of numpy arrays;
- ``warm``: ``DiffMixDataset(base, None, cache_dir=..., max_reuse=10**9)`` serving patches from a
  cache warm-started from disk (no producer), ``synthetic_ratio=0.5``, every asked item synthetic;
- ``live``: ``DiffMixDataset(base, <tiny SDM Synthesizer on CPU>)`` with its producer thread
  running while the loader is read;
- ``burner`` (2 workers only): the same, but the synthesizer is a GIL-free CPU load (torch matmuls,
  which release the GIL) as long as one real batch, returning its input. It separates what a
  producer costs by taking CPU time (``burner`` - ``warm``) from what it costs by holding the GIL
  in the consumer's process (``live`` - ``burner``); ``warm`` - ``base`` is the wrapper's own cost.
  There is no other lock between the producer and the consumer: workers read the cache through a
  seqlock and never block, the producer's locks are taken only by ``close()`` / ``state_dict()``;
- ``--variants`` adds, at 2 workers, ``live_lw0`` (``label_workers=0``: label maps built in the
  producer thread) and ``live_normal`` (``producer_priority="normal"``: no SCHED_IDLE), the two
  settings a user might reach for when the consumer waits.

Two measurements per loader: items/s over whole epochs (median and spread of ``--repeats`` runs;
ratio vs ``base`` at the same ``num_workers``), and the consumer's wait per step in a training
loop whose step is simulated by a sleep of ``--step-ms`` (a GPU-bound step leaves the host CPU
idle). Goals: ``warm`` keeps >= 0.95 of base items/s; with ``live`` the extra wait per step over
``base`` stays < 1 % of the step time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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

    def __init__(self, seconds: float, image_size: int = SIZE) -> None:
        self.seconds, self.image_size = float(seconds), image_size
        self._m = torch.randn(192, 192)

    def __call__(self, images, inst_maps, type_maps, generator=None):
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            self._m @ self._m  # releases the GIL while it runs
        return np.asarray(images)


def tiny_synthesizer(image_size: int):
    from diffmix_aug.sampling.ddim import DDIMSampler
    from diffmix_aug.sampling.synthesizer import Synthesizer
    from diffmix_aug.sdm import build_sdm

    torch.manual_seed(0)
    model = build_sdm("tiny", num_label_channels=6, image_size=image_size)
    return Synthesizer(model, DDIMSampler(num_steps=4, strength=0.5), device="cpu")


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


def wait_per_step(ds, workers: int, batch: int, steps: int, step_s: float, collate_fn=None) -> float:
    """Median seconds the training loop waits for the next batch."""
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, persistent_workers=workers > 0,
                        collate_fn=collate_fn)
    waits = []
    it = iter(loader)
    next(it)
    for _ in range(steps):
        t0 = time.perf_counter()
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            next(it)
        waits.append(time.perf_counter() - t0)
        time.sleep(step_s)  # the (GPU-bound) training step
    del it, loader
    return statistics.median(waits)


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    from tqdm.auto import tqdm

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--step-ms", type=float, default=100.0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--busy", type=int, default=0,
                   help="CPU-bound processes run beside the measurement (a busy node); 2 on 2 cores fills it")
    p.add_argument("--label-workers", default=None,
                   help="label_workers of the live DiffMixDataset (default: the library's default)")
    p.add_argument("--variants", action="store_true",
                   help="also live_lw0 (label_workers=0) and live_normal (producer_priority='normal'), 2 workers")
    p.add_argument("--out", type=Path, default=RESULTS / "loader.json")
    args = p.parse_args(argv)
    if args.quick:
        args.items, args.epochs, args.repeats, args.steps = 64, 1, 1, 10
    if args.busy and args.out == RESULTS / "loader.json":
        args.out = RESULTS / "loader_busy.json"
    torch.set_num_threads(1)
    base = AugmentedToy(args.items)
    synth = tiny_synthesizer(64)
    cache_dir = Path(tempfile.mkdtemp(prefix="diffmix_bench_"))
    # fill an on-disk store once (the offline mode), so that "warm" has no producer at all
    with DiffMixDataset(base, synth, cache_capacity=32, cache_dir=cache_dir, patch_size=64, batch_size=8,
                        cooperative=True, start=False, rare_classes=(1,), num_classes=5) as filler:
        filler.producer.step(4)
    img = np.zeros((4, SIZE, SIZE, 3), np.uint8)
    zeros = np.zeros((4, SIZE, SIZE), np.int32)
    t0 = time.perf_counter()
    synth(img, zeros, zeros, generator=torch.Generator().manual_seed(0))
    batch_s = time.perf_counter() - t0  # one real batch of 4 (the burner's duration)
    live_kw: dict[str, Any] = {}
    if args.label_workers is not None:
        lw = args.label_workers
        live_kw["label_workers"] = lw if lw == "auto" else int(lw)

    def make(kind: str):
        if kind == "base":
            return base
        if kind == "warm":
            # a replayed store (the offline mode): no max_reuse limit, or after 32 x 8 serves every
            # synthetic item would fall back to an original and "warm" would measure the base again
            return DiffMixDataset(base, None, synthetic_ratio=0.5, cache_capacity=32, cache_dir=cache_dir,
                                  patch_size=64, num_classes=5, max_reuse=10**9)
        kw = dict(live_kw)
        if kind == "live_lw0":
            kw["label_workers"] = 0
        elif kind == "live_normal":
            kw["producer_priority"] = "normal"
        return DiffMixDataset(base, CPUBurner(batch_s) if kind == "burner" else synth, synthetic_ratio=0.5,
                              cache_capacity=32, patch_size=64, batch_size=4, warmup="block", warmup_items=4,
                              rare_classes=(1,), num_classes=5, **kw)

    import subprocess
    import sys

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    rows = []
    jobs = [(k, w) for w in (0, 2) for k in ("base", "warm", "live")] + [("burner", 2)]
    if args.variants:
        jobs += [("live_lw0", 2), ("live_normal", 2)]
    producing = ("live", "burner", "live_lw0", "live_normal")
    label_workers = None
    for kind, workers in tqdm(jobs, desc="loader benchmark"):
        speeds, waits, rates = [], [], []
        for _ in range(args.repeats):
            ds = make(kind)
            try:
                w0, t0 = (ds.cache.writes, time.perf_counter()) if kind in producing else (0, 0.0)
                speeds.append(items_per_s(ds, workers, args.batch, args.epochs))
                waits.append(wait_per_step(ds, workers, args.batch, args.steps, args.step_ms / 1000))
                writes = ds.cache.writes if kind in producing else None
                if writes is not None:
                    rates.append((writes - w0) / (time.perf_counter() - t0))
                if kind == "live":
                    label_workers = ds.producer.label_workers
            finally:
                if ds is not base:
                    ds.close()
        rows.append({"loader": kind, "num_workers": workers, "items_per_s": summary(speeds),
                     "wait_s": summary(waits), "producer_writes_last_run": writes,
                     "producer_patches_per_s": summary(rates) if rates else None})
    for h in hogs:
        h.kill()
        h.wait()
    for r in rows:
        ref = next(x for x in rows if x["loader"] == "base" and x["num_workers"] == r["num_workers"])
        r["ratio_vs_base"] = r["items_per_s"]["median"] / ref["items_per_s"]["median"]
        r["extra_wait_fraction_of_step"] = (r["wait_s"]["median"] - ref["wait_s"]["median"]) / (args.step_ms / 1000)
    med = {r["loader"]: r["wait_s"]["median"] for r in rows if r["num_workers"] == 2}
    step = args.step_ms / 1000
    # the live extra wait (2 workers) taken apart, each as a fraction of the step
    decomposition = {"wrapper_warm_minus_base": (med["warm"] - med["base"]) / step,
                     "producer_cpu_burner_minus_warm": (med["burner"] - med["warm"]) / step,
                     "producer_gil_live_minus_burner": (med["live"] - med["burner"]) / step,
                     "live_total": (med["live"] - med["base"]) / step}
    result = {
        "benchmark": "loader", "machine": platform.node(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "load_average_1min_at_end": os.getloadavg()[0],
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "patch": SIZE, "synthetic_patch": 64, "synthesizer": "tiny SDM, 4 DDIM steps, CPU, 1 thread",
                   "live_label_workers": label_workers, "real_batch_s": batch_s},
        "rows": rows,
        "extra_wait_decomposition_2_workers": decomposition,
        "goals": {
            "warm_ratio_ge_0.95": all(r["ratio_vs_base"] >= 0.95 for r in rows if r["loader"] == "warm"),
            "live_extra_wait_lt_1pct": all(r["extra_wait_fraction_of_step"] < 0.01 for r in rows if r["loader"] == "live"),
        },
    }
    print(f"{'loader':<8}{'workers':>8}{'items/s':>10}{'(min-max)':>18}{'vs base':>9}{'wait/step':>11}{'extra wait':>12}{'patches/s':>11}")
    for r in rows:
        s = r["items_per_s"]
        spread = "({:.0f}-{:.0f})".format(s["min"], s["max"])
        print(f"{r['loader']:<8}{r['num_workers']:>8}{s['median']:>10.1f}{spread:>18}"
              f"{r['ratio_vs_base']:>9.2f}{r['wait_s']['median'] * 1000:>9.2f}ms"
              f"{r['extra_wait_fraction_of_step']:>11.2%}"
              + (f"{r['producer_patches_per_s']['median']:>11.2f}" if r["producer_patches_per_s"] else ""))
    print("live extra wait (2 workers), fraction of the step:",
          {k: f"{v:.2%}" for k, v in decomposition.items()})
    print("goals:", result["goals"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from diffmix_aug._io import atomic_write_text

    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
