"""Loader throughput and the consumer's wait: the base dataset alone vs DiffMixDataset.

Run::

    python -m benchmarks.loader              # table + benchmarks/results/loader.json
    python -m benchmarks.loader --busy 2     # beside two CPU-bound processes: results/loader_busy.json
    python -m benchmarks.loader --quick      # fewer items and repeats (smoke run)

Loaders over the same base, each at ``num_workers`` 0 and 2, measured in one run:

- ``base``: the base dataset alone: toy 64x64 patches generated per item (standing in for a
  file read) plus a flip / brightness augmentation, returned as dicts of numpy arrays;
- ``warm``: ``DiffMixDataset(base, None, cache_dir=..., max_reuse=10**9)`` serving patches from a
  cache warm-started from disk (no producer), ``synthetic_ratio=0.5``;
- ``spent``: what a live loader serves without its producer: a cache warm-started with the 4
  patches of a live warm-up, each served up to ``max_reuse`` (8) times, then originals; ``live_*``
  minus ``spent`` is what the producer itself costs the consumer (``live_*`` minus ``base`` also
  counts the cheaper synthetic items);
- ``live_thread`` / ``live_process``: ``DiffMixDataset(base, <tiny SDM Synthesizer on CPU>)`` with
  its producer running while the loader is read, as a thread of the training process
  (``producer_backend="thread"``) or as a forked process (``"process"``, stopped while the
  training process loads a batch itself: ``producer_pause_on_load``, the default);
- ``live_nopause``: the process producer with ``producer_pause_on_load=False`` (it runs through
  the loads of a ``num_workers=0`` loop; with workers the two are the same);
- ``burner``: the thread backend, but the synthesizer is a GIL-free CPU load (torch matmuls, which
  release the GIL) as long as one real batch, returning its input. It separates what a producer
  thread costs by taking CPU time (``burner`` - ``warm``) from what it costs by holding the GIL in
  the consumer's process (``live_thread`` - ``burner``); ``warm`` - ``base`` is the wrapper's own
  cost (negative here: a synthetic item skips the base's augmentation). Approximate: ``warm`` has no
  reuse limit, the producing loaders serve an original past ``max_reuse``;
- ``--variants`` adds ``live_lw0`` (``label_workers=0``) and ``live_normal``
  (``producer_priority="normal"``), two settings a user might reach for when the consumer waits.

Interleaved blocks (``--blocks``, ``num_workers=0``): the per-run figures above move by a few per
cent of the step between runs on a busy host, as much as the effect measured. So the 0-worker wait
is also measured with the loaders alive side by side: ``base``, ``live_process`` and
``live_nopause`` take turns in blocks of ``--block-steps`` steps, in a fresh random order each
round, and only the producer of the arm being measured runs (the others are stopped with
``SIGSTOP``; in a ``base`` block both are: a stopped process takes no CPU). The extra wait is the
mean over rounds of (arm - base of the same round) with its standard error; the same blocks give
each producer's CPU seconds, i.e. what the pause costs it.

Design: the repeats are the outer loop and the kinds run in a fresh random order in each, so a
drifting host load falls on every kind alike; each run's wait is paired with the ``base`` run of the
same repeat and worker count. Two measurements per run: items/s over whole epochs (ratio vs
``base``), and the consumer's wait per step in a training loop whose step is a sleep of
``--step-ms`` (a GPU-bound step leaves the host CPU idle): the *mean* wait over ``--steps`` steps,
since a producer that slows a few steps a lot costs the job those steps. The table gives the median
and the spread over repeats. Goals: ``warm`` keeps >= 0.95 of base items/s; with the default
backend's live producer the extra wait per step over ``base`` stays < 1 % of the step time.
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
    return Synthesizer(model, DDIMSampler(steps=2, t_start=250), device="cpu")


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


def wait_per_step(ds, workers: int, batch: int, steps: int, step_s: float, collate_fn=None) -> list[float]:
    """Seconds the training loop waits for each of ``steps`` batches (a sleep stands in for the step)."""
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
    return waits


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def interleaved(make, blocks: int, block_steps: int, batch: int, step_s: float, seed: int = 0) -> dict[str, Any]:
    """The 0-worker wait of ``live_process`` and ``live_nopause`` against ``base`` in interleaved blocks.

    Args:
        make: ``kind -> dataset`` (the benchmark's factory).
        blocks: Rounds; each runs one block of every arm, in a fresh random order.
        block_steps: Steps per block (a step: wait for a batch, then sleep ``step_s``).

    Returns:
        Per arm: mean and standard error of the extra wait per step (fraction of the step) against
        the base block of the same round, the mean wait, the producer's CPU seconds per block and
        the patches it wrote.
    """
    import signal

    live = {k: make(k) for k in ("live_process", "live_nopause")}
    pids = {k: ds.producer._process.pid for k, ds in live.items()}
    stopped: set[str] = set()

    def hold(kinds: set[str]) -> None:  # only the measured arm's producer runs
        for k in live:
            if k in kinds and k not in stopped:
                os.kill(pids[k], signal.SIGSTOP)
                stopped.add(k)
            elif k not in kinds and k in stopped:
                os.kill(pids[k], signal.SIGCONT)
                stopped.discard(k)

    def cycle(ds):
        loader = DataLoader(ds, batch_size=batch, num_workers=0)
        while True:
            yield from loader

    # "stopped": the live_process loader read while both producers are stopped: the same wrapper and
    # cache, no producer CPU, so arm - stopped is the producer's own cost (arm - base also counts the
    # synthetic items, which skip the base's augmentation)
    arms = ["base", "stopped", *live]
    its = {k: cycle(make("base") if k == "base" else live.get(k, live["live_process"])) for k in arms}
    waits: dict[str, list[float]] = {k: [] for k in arms}
    cpu: dict[str, list[float]] = {k: [] for k in live}
    writes0 = {k: ds.cache.writes for k, ds in live.items()}
    rng = np.random.default_rng(seed)
    try:
        from tqdm.auto import tqdm

        for _ in tqdm(range(blocks), desc="interleaved blocks (0 workers)"):
            for arm in rng.permutation(arms):
                hold(set(live) - {arm})
                it = its[arm]
                next(it)  # the first batch after a switch is not timed
                c0 = _cpu_seconds(pids[arm]) if arm in live else 0.0
                block = []
                for _ in range(block_steps):
                    t0 = time.perf_counter()
                    next(it)
                    block.append(time.perf_counter() - t0)
                    time.sleep(step_s)
                if arm in live:
                    cpu[arm].append(_cpu_seconds(pids[arm]) - c0)
                waits[arm].append(statistics.fmean(block))
    finally:
        hold(set())
        written = {k: ds.cache.writes - writes0[k] for k, ds in live.items()}
        for ds in live.values():
            ds.close()
    def extra(arm: str, ref: str) -> dict[str, float]:
        d = [(a - b) / step_s for a, b in zip(waits[arm], waits[ref])]
        return {"mean": statistics.fmean(d), "se": statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0,
                "median": statistics.median(d)}

    out: dict[str, Any] = {"blocks": blocks, "block_steps": block_steps,
                           "base_wait_mean_s": statistics.fmean(waits["base"]),
                           "stopped": {"wait_mean_s": statistics.fmean(waits["stopped"]),
                                       "extra_wait_fraction_of_step": extra("stopped", "base")}}
    for k in live:
        out[k] = {"extra_wait_fraction_of_step": extra(k, "base"),
                  "producer_cost_fraction_of_step": extra(k, "stopped"),
                  "wait_mean_s": statistics.fmean(waits[k]),
                  "producer_cpu_s_per_block": statistics.fmean(cpu[k]), "producer_writes": written[k]}
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    from tqdm.auto import tqdm

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--step-ms", type=float, default=100.0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--busy", type=int, default=0,
                   help="CPU-bound processes run beside the measurement (a busy node); 2 on 2 cores fills it")
    p.add_argument("--label-workers", default=None,
                   help="label_workers of the live DiffMixDataset (default: the library's default)")
    p.add_argument("--variants", action="store_true",
                   help="also live_lw0 (label_workers=0) and live_normal (producer_priority='normal'), 2 workers")
    p.add_argument("--blocks", type=int, default=40,
                   help="rounds of the interleaved 0-worker measurement (0: skip it)")
    p.add_argument("--block-steps", type=int, default=10)
    p.add_argument("--out", type=Path, default=RESULTS / "loader.json")
    args = p.parse_args(argv)
    if args.quick:
        args.items, args.epochs, args.repeats, args.steps, args.blocks, args.block_steps = 64, 1, 1, 10, 2, 3
    if args.busy and args.out == RESULTS / "loader.json":
        args.out = RESULTS / "loader_busy.json"
    torch.set_num_threads(1)
    import logging

    # the low-share warning fires by design here (the producing loaders serve originals past
    # max_reuse, and the first epoch is the warm-up one); the table reports the shares instead
    logging.getLogger("diffmix_aug").setLevel(logging.ERROR)
    base = AugmentedToy(args.items)
    synth = tiny_synthesizer(64)
    cache_dir = Path(tempfile.mkdtemp(prefix="diffmix_bench_"))
    # fill an on-disk store once (the offline mode), so that "warm" has no producer at all
    with DiffMixDataset(base, synth, cache_capacity=32, cache_dir=cache_dir, patch_size=64, batch_size=8,
                        cooperative=True, start=False, rare_classes=(1,), num_classes=5) as filler:
        filler.producer.step(4)
    spent_dir = Path(tempfile.mkdtemp(prefix="diffmix_bench_spent_"))
    with DiffMixDataset(base, synth, cache_capacity=32, cache_dir=spent_dir, patch_size=64, batch_size=4,
                        cooperative=True, start=False, rare_classes=(1,), num_classes=5) as filler:
        filler.producer.step(1)  # the 4 patches a live loader's warm-up makes
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
        if kind == "spent":
            # what a live loader serves without its producer: the 4 warm-up patches, each served up to
            # max_reuse (8) times, then originals; live - spent is what the producer itself costs
            return DiffMixDataset(base, None, synthetic_ratio=0.5, cache_capacity=32, cache_dir=spent_dir,
                                  patch_size=64, num_classes=5)
        kw = dict(live_kw)
        kw["producer_backend"] = "process" if kind in ("live_process", "live_nopause") else "thread"
        if kind == "live_nopause":
            kw["producer_pause_on_load"] = False
        if kind == "live_lw0":
            kw["label_workers"] = 0
        elif kind == "live_normal":
            kw["producer_priority"] = "normal"
        return DiffMixDataset(base, CPUBurner(batch_s) if kind == "burner" else synth, synthetic_ratio=0.5,
                              cache_capacity=32, patch_size=64, batch_size=4, warmup="block", warmup_items=4,
                              rare_classes=(1,), num_classes=5, **kw)

    import subprocess
    import sys

    from diffmix_aug.config import DiffMixConfig

    default_backend = DiffMixConfig().producer_backend
    if default_backend == "auto":
        default_backend = "process" if sys.platform.startswith("linux") else "thread"
    kinds = ["base", "warm", "spent", "live_thread", "live_process", "live_nopause", "burner"]
    if args.variants:
        kinds += ["live_lw0", "live_normal"]
    producing = {"live_thread", "live_process", "live_nopause", "burner", "live_lw0", "live_normal"}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    runs: dict[tuple[str, int], list[dict[str, float]]] = {(k, w): [] for w in (0, 2) for k in kinds}
    label_workers = None
    order_rng = np.random.default_rng(0)
    try:
        with tqdm(total=args.repeats * len(runs), desc="loader benchmark") as bar:
            # repeats outermost and the kinds in a fresh order each time: a drifting host load falls on
            # every kind alike, and each kind's wait is paired with the base measured in the same repeat
            for _ in range(args.repeats):
                for workers in (0, 2):
                    for kind in ["base"] + list(order_rng.permutation(kinds[1:])):
                        ds = make(kind)
                        try:
                            w0, t0 = (ds.cache.writes, time.perf_counter()) if kind in producing else (0, 0.0)
                            speed = items_per_s(ds, workers, args.batch, args.epochs)
                            waits = wait_per_step(ds, workers, args.batch, args.steps, args.step_ms / 1000)
                            run = {"items_per_s": speed, "wait_mean_s": statistics.fmean(waits),
                                   "wait_median_s": statistics.median(waits)}
                            if kind in producing:
                                run["writes"] = ds.cache.writes - w0
                                run["patches_per_s"] = run["writes"] / (time.perf_counter() - t0)
                            if kind == "live_thread":
                                label_workers = ds.producer.label_workers
                        finally:
                            if ds is not base:
                                ds.close()
                        runs[(kind, workers)].append(run)
                        bar.update()
        inter = interleaved(make, args.blocks, args.block_steps, args.batch, args.step_ms / 1000) \
            if args.blocks and default_backend == "process" else None
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    step = args.step_ms / 1000
    rows = []
    for (kind, workers), rs in runs.items():
        bs = runs[("base", workers)]
        # the consumer's extra wait: this run's mean wait per step minus that of the base in the same
        # repeat (the mean, not the median: a producer that slows a few steps a lot costs the job those)
        extra = [(r["wait_mean_s"] - b["wait_mean_s"]) / step for r, b in zip(rs, bs)]
        rows.append({
            "loader": kind, "num_workers": workers,
            "items_per_s": summary([r["items_per_s"] for r in rs]),
            "ratio_vs_base": summary([r["items_per_s"] / b["items_per_s"] for r, b in zip(rs, bs)]),
            "wait_mean_s": summary([r["wait_mean_s"] for r in rs]),
            "wait_median_s": summary([r["wait_median_s"] for r in rs]),
            "extra_wait_fraction_of_step": summary(extra),
            "producer_writes": summary([r["writes"] for r in rs]) if kind in producing else None,
            "producer_patches_per_s": summary([r["patches_per_s"] for r in rs]) if kind in producing else None,
        })
    row = {(r["loader"], r["num_workers"]): r for r in rows}

    def med_extra(kind: str, w: int) -> float:
        return row[(kind, w)]["extra_wait_fraction_of_step"]["median"]

    # the thread backend's extra wait taken apart (fractions of the step): the wrapper itself, the
    # CPU a producer takes (a GIL-free burner of one batch's length), and the rest: its GIL
    decomposition = {w: {"wrapper_warm_minus_base": med_extra("warm", w),
                         "producer_cpu_burner_minus_warm": med_extra("burner", w) - med_extra("warm", w),
                         "producer_gil_live_thread_minus_burner": med_extra("live_thread", w) - med_extra("burner", w),
                         "live_thread_total": med_extra("live_thread", w),
                         "live_process_total": med_extra("live_process", w),
                         "producer_thread_live_minus_spent": med_extra("live_thread", w) - med_extra("spent", w),
                         "producer_process_live_minus_spent": med_extra("live_process", w) - med_extra("spent", w),
                         } for w in (0, 2)}
    live_default = f"live_{default_backend}"
    result = {
        "benchmark": "loader", "machine": platform.node(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "load_average_1min_at_end": os.getloadavg()[0],
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "patch": SIZE, "synthetic_patch": 64, "synthesizer": "tiny SDM, 4 DDIM steps, CPU, 1 thread",
                   "live_label_workers": label_workers, "real_batch_s": batch_s,
                   "default_producer_backend": default_backend},
        "rows": rows,
        "extra_wait_decomposition": decomposition,
        "interleaved_0_workers": inter,
        "goals": {
            "warm_ratio_ge_0.95": all(row[("warm", w)]["ratio_vs_base"]["median"] >= 0.95 for w in (0, 2)),
            f"{live_default}_extra_wait_lt_1pct": all(med_extra(live_default, w) < 0.01 for w in (0, 2)),
        },
    }
    if inter is not None:
        result["goals"]["interleaved_0_workers_live_process_extra_wait_lt_1pct"] = \
            inter["live_process"]["extra_wait_fraction_of_step"]["mean"] < 0.01
    print(f"{'loader':<13}{'workers':>8}{'items/s':>9}{'vs base':>9}{'wait/step':>11}"
          f"{'extra wait (min..max)':>26}{'patches/s':>11}")
    for r in rows:
        e = r["extra_wait_fraction_of_step"]
        spread = f"{e['median']:+.2%} ({e['min']:+.1%}..{e['max']:+.1%})"
        pp = r["producer_patches_per_s"]
        print(f"{r['loader']:<13}{r['num_workers']:>8}{r['items_per_s']['median']:>9.1f}"
              f"{r['ratio_vs_base']['median']:>9.2f}{r['wait_mean_s']['median'] * 1000:>9.2f}ms"
              f"{spread:>26}" + (f"{pp['median']:>11.3f}" if pp else ""))
    for w, d in decomposition.items():
        print(f"extra wait, {w} workers, fraction of the step:", {k: f"{v:+.2%}" for k, v in d.items()})
    if inter is not None:
        print(f"interleaved, 0 workers, {inter['blocks']} rounds of {inter['block_steps']} steps "
              f"(base wait {inter['base_wait_mean_s'] * 1000:.2f} ms):")
        e = inter["stopped"]["extra_wait_fraction_of_step"]
        print(f"  {'stopped':<13} extra wait vs base {e['mean']:+.2%} +- {e['se']:.2%} (se) (the wrapper, no producer CPU)")
        for k in ("live_process", "live_nopause"):
            e, c = inter[k]["extra_wait_fraction_of_step"], inter[k]["producer_cost_fraction_of_step"]
            print(f"  {k:<13} extra wait vs base {e['mean']:+.2%} +- {e['se']:.2%} (se), median {e['median']:+.2%}; "
                  f"vs stopped {c['mean']:+.2%} +- {c['se']:.2%}; producer {inter[k]['producer_cpu_s_per_block']:.3f} "
                  f"CPU s per block, {inter[k]['producer_writes']} patches")
    print("goals:", result["goals"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from diffmix_aug._io import atomic_write_text

    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
