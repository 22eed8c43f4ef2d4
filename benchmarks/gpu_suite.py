"""The GPU suite: everything a lent H100/H200 should measure, in one command under 8 minutes.

    python benchmarks/gpu_suite.py                 # on the GPU: benchmarks/results/gpu/gpu_suite.{json,md}
    python benchmarks/gpu_suite.py --dry-run       # CPU, tiny sizes, seconds: proves the script runs (CI);
                                                   # writes to a new temporary folder unless --out is given

Parts, in order, each skipped (with the reason written) when the remaining budget cannot hold it:

1. ``peak``: measured bf16 / fp16 dense matmul rate (TFLOP/s) and device-to-device copy bandwidth.
2. ``sampler``: the paper preset (256 px, batch 8, 55 guided DDIM steps from t = 540) as the fp32
   eager reference (:class:`ReferenceDDIMSampler`), the fast fp16 eager sampler and the fast fp16
   CUDA-graph sampler, then the fast fp16 CUDA-graph sampler with each multistep solver setting of
   ``SOLVER_ROWS`` (issue 29): patches/s, achieved TFLOP/s (FLOPs counted with ``FlopCounterMode``),
   fraction of the measured peak, and the largest output difference against the reference (for a
   solver row that is its ODE discretisation error plus rounding, not rounding alone).
3. ``loader``: ``DiffMixDataset`` with a CUDA producer running the online default sampler
   (``"fast"``) under ``DataLoader(num_workers=4)``: items/s against the bare dataset and the
   consumer's extra wait per step.
4. ``tests``: the ``cuda``-marked tests (``pytest -m cuda tests/gpu``).

Random weights are used throughout (speed does not depend on them; output differences compare two
samplers on the same weights and noise).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu"
#: the multistep solver rows of the sampler part (fast, CUDA graph): solver, spacing, steps from t = 540
SOLVER_ROWS = ({"solver": "unipc", "spacing": "logsnr", "steps": 10}, {"solver": "dpmpp_2m", "spacing": "logsnr", "steps": 10})


class Budget:
    """Wall-clock budget: ``fits(seconds)`` says whether a part estimated at ``seconds`` still fits."""

    def __init__(self, seconds: float) -> None:
        self.total, self.t0 = float(seconds), time.monotonic()

    def left(self) -> float:
        return self.total - (time.monotonic() - self.t0)

    def fits(self, seconds: float) -> bool:
        return seconds <= self.left()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _stats(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


def measure_peak(device: torch.device, n: int, reps: int) -> dict[str, Any]:
    """Dense matmul TFLOP/s per dtype and copy bandwidth (GB/s, read + write)."""
    out: dict[str, Any] = {}
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    for name, dt in dtypes.items():
        if device.type == "cpu" and name == "fp16":
            continue  # no fast fp16 matmul on CPUs
        a = torch.randn(n, n, device=device, dtype=dt)
        b = torch.randn(n, n, device=device, dtype=dt)
        a @ b
        t = _stats(_timed(lambda a=a, b=b: a @ b, device, reps))
        out[f"matmul_{name}_tflops"] = 2 * n ** 3 / t["median_s"] / 1e12
    nbytes = (1 << 28) if device.type == "cuda" else (1 << 24)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = _stats(_timed(lambda: dst.copy_(src), device, reps))
    out["copy_gb_per_s"] = 2 * nbytes / t["median_s"] / 1e9
    return out


def _model(preset: str, size: int, device: torch.device):
    from benchmarks.sampler import random_sdm

    return random_sdm(preset, size, device)


def step_flops(model, batch: int, size: int, device: torch.device, precision: str) -> dict[str, float]:
    """FLOPs of one guided fast step and of the per-batch setup (modulations)."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.sampler import inputs
    from diffmix_aug.sampling.ddim import DDIMSampler

    x0, cond, _ = inputs(batch, size, device)
    t = torch.full((batch,), 500, dtype=torch.long, device=device)
    den = DDIMSampler(precision="fp32").denoiser_for(model, x0)
    with torch.no_grad():
        with FlopCounterMode(display=False) as fs:
            prepared = den.prepare(cond)
        with FlopCounterMode(display=False) as fc:
            den(x0, t, prepared)
    return {"step": float(fc.get_total_flops()), "setup": float(fs.get_total_flops())}


def bench_sampler(device: torch.device, preset: str, size: int, batch: int, steps: int, t_start: int,
                  reps: int, peak_tflops: float | None, budget: Budget) -> dict[str, Any]:
    from benchmarks.sampler import inputs
    from diffmix_aug.sampling import DDIMSampler, ReferenceDDIMSampler
    from diffmix_aug.sampling.ddim import ModelCaches

    model = _model(preset, size, device)
    x0, cond, noise = inputs(batch, size, device)
    kw = dict(steps=steps, t_start=t_start, guidance_scale=1.5)
    cuda = device.type == "cuda"
    half = "fp16" if cuda else "bf16"
    arms = [("reference-fp32-eager", ReferenceDDIMSampler(**kw), None),
            (f"fast-{half}-eager", DDIMSampler(**kw, precision=half, channels_last=cuda), None),
            (f"fast-{half}-graph", DDIMSampler(**kw, precision=half, channels_last=cuda, cuda_graph=True), "graph")]
    for row in SOLVER_ROWS:
        solver_kw = {**kw, **row, "steps": min(row["steps"], steps)}
        path = "graph" if cuda else "eager"  # the dry run proves the rows run (eager on the CPU)
        arms.append((f"fast-{half}-{path}-{row['solver']}-{row['spacing']}{solver_kw['steps']}",
                     DDIMSampler(**solver_kw, precision=half, channels_last=cuda, cuda_graph=cuda), path if cuda else None))
    flops = step_flops(model, batch, size, device, half)
    rows, ref_out, skipped = [], None, {}
    with torch.no_grad():
        for name, sampler, kind in arms:
            if kind == "graph" and not cuda:
                skipped[name] = "CUDA graphs need a CUDA device"
                continue
            caches = ModelCaches(model)
            is_ref = name.startswith("reference")
            call = (lambda s=sampler: s.sample(model, x0, cond, noise=noise)) if is_ref else \
                (lambda s=sampler, c=caches: s.sample(model, x0, cond, noise=noise, caches=c))
            if is_ref:
                # the slow fp32 reference runs once: its time (cudnn warm-up included) and its output
                _sync(device)
                t_ref = time.perf_counter()
                out = call()
                _sync(device)
                times = [time.perf_counter() - t_ref]
                ref_out = out
            else:
                t_first = _timed(call, device, 1)[0]  # warm-up (graph capture, cudnn autotune)
                if not budget.fits(t_first * (reps + 1) + 30):
                    skipped[name] = (f"one call took {t_first:.1f} s; {reps} more do not fit the budget "
                                     f"({budget.left():.0f} s left)")
                    continue
                times = _timed(call, device, reps)
                out = call()
            st = _stats(times)
            total_flops = flops["setup"] + sampler.num_inference_steps * flops["step"]
            tflops = total_flops / st["median_s"] / 1e12
            rows.append({"arm": name, "solver": sampler.solver, "steps": sampler.num_inference_steps, **st, "patches_per_s": batch / st["median_s"], "s_per_patch": st["median_s"] / batch,
                         "achieved_tflops": tflops,
                         "fraction_of_peak": None if not peak_tflops else tflops / peak_tflops,
                         "max_abs_diff_vs_reference": None if ref_out is None else float((out - ref_out).abs().max()),
                         "path": getattr(sampler, "last_run", {}).get("path", "eager")})
    base = next((r for r in rows if r["arm"].startswith("reference")), None)
    for r in rows:
        r["speedup_vs_reference"] = None if base is None else base["median_s"] / r["median_s"]
    return {"preset": preset, "size": size, "batch": batch, "guided_steps": steps, "t_start": t_start,
            "params": sum(p.numel() for p in model.parameters()), "flops_per_step": flops["step"],
            "flops_setup": flops["setup"], "peak_tflops_used": peak_tflops, "rows": rows, "skipped": skipped}


class _BareDataset(torch.utils.data.Dataset):
    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        s = self.base[i]
        return {"image": torch.from_numpy(s.image), "inst_map": torch.from_numpy(s.inst_map),
                "type_map": torch.from_numpy(s.type_map)}


def bench_loader(device: torch.device, preset: str, size: int, items: int, workers: int, step_s: float,
                 steps: int, budget: Budget) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from benchmarks.loader import wait_per_step
    from diffmix_aug.data.toy import make_toy_dataset
    from diffmix_aug.dataset import DiffMixDataset
    from diffmix_aug.sampling import Synthesizer
    from diffmix_aug.sampling.presets import DEFAULT_PRESET, make_sampler

    base = make_toy_dataset(items, size=size, seed=0).materialised()
    bare = _BareDataset(base)
    half = "fp16" if device.type == "cuda" else "fp32"
    # the online default (what a user's loop runs), not the 55-step protocol
    synth = Synthesizer(_model(preset, size, device), make_sampler(DEFAULT_PRESET), device=device, precision=half)

    def collate(batch):
        return [b.image for b in batch] if not isinstance(batch[0], dict) else batch

    def loader_rate(ds) -> float:
        loader = DataLoader(ds, batch_size=8, num_workers=workers, persistent_workers=workers > 0,
                            collate_fn=collate)
        for _ in loader:
            pass
        t0 = time.perf_counter()
        n = sum(len(b) for b in loader)
        rate = n / (time.perf_counter() - t0)
        del loader
        return rate

    result: dict[str, Any] = {"items": items, "size": size, "workers": workers, "step_s": step_s,
                              "precision": half, "sampler": DEFAULT_PRESET}
    result["bare_items_per_s"] = loader_rate(bare)
    bare_wait = statistics.fmean(wait_per_step(bare, workers, 8, steps, step_s, collate))
    with DiffMixDataset(base, synth, synthetic_ratio=0.5, cache_capacity=64, batch_size=8, warmup="block",
                        warmup_items=8, warmup_timeout=max(30.0, budget.left() / 4)) as ds:
        result["diffmix_items_per_s"] = loader_rate(ds)
        live_wait = statistics.fmean(wait_per_step(ds, workers, 8, steps, step_s, collate))
        result["stats"] = ds.stats()
    result["ratio_vs_bare"] = result["diffmix_items_per_s"] / result["bare_items_per_s"]
    result["bare_wait_s"], result["live_wait_s"] = bare_wait, live_wait
    result["extra_wait_share_of_step"] = (live_wait - bare_wait) / step_s  # mean wait per step
    return result


def run_cuda_tests(timeout: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/gpu", "-p",
                               "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"rc": None, "summary": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return {"rc": proc.returncode, "summary": lines[-1] if lines else "", "wall_s": time.perf_counter() - t0,
            "tail": "\n".join(lines[-15:])}


def _markdown(res: dict[str, Any]) -> str:
    lines = [f"# GPU suite{' (dry run on CPU: tiny sizes, not a measurement)' if res['dry_run'] else ''}", "",
             f"Device: {res['machine']['device']}; torch {res['machine']['torch']}; wall {res['wall_s']:.0f} s.", ""]
    if "peak" in res:
        lines += ["## Peak", "", "| measure | value |", "|---|---:|",
                  *[f"| {k} | {v:.4g} |" for k, v in res["peak"].items()], ""]
    if "sampler" in res:
        s = res["sampler"]
        lines += [f"## Sampler: {s['preset']} preset, {s['size']} px, batch {s['batch']}, {s['guided_steps']} guided "
                  f"steps for the DDIM rows ({s['params'] / 1e6:.1f} M parameters)", "",
                  "| arm | steps | s/batch (median) | patches/s | TFLOP/s | of peak | max diff vs ref | speed-up |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in s["rows"]:
            frac = "n/a" if r["fraction_of_peak"] is None else f"{r['fraction_of_peak']:.1%}"
            diff = "-" if r["max_abs_diff_vs_reference"] is None else f"{r['max_abs_diff_vs_reference']:.2e}"
            lines.append(f"| {r['arm']} | {r['steps']} | {r['median_s']:.3f} | {r['patches_per_s']:.2f} | {r['achieved_tflops']:.2f} "
                         f"| {frac} | {diff} | {r['speedup_vs_reference']:.2f}x |")
        lines += [*(f"- skipped {k}: {v}" for k, v in s["skipped"].items()), ""]
    if "loader" in res:
        lo = res["loader"]
        lines += ["## Loader", "", f"DiffMixDataset {lo['diffmix_items_per_s']:.0f} items/s against bare "
                  f"{lo['bare_items_per_s']:.0f} ({lo['ratio_vs_bare']:.2f}x), {lo['workers']} workers, sampler "
                  f"\"{lo.get('sampler', 'fast')}\"; extra "
                  f"wait {lo['extra_wait_share_of_step']:.1%} of a {lo['step_s'] * 1e3:.0f} ms step.", ""]
    if "tests" in res:
        lines += ["## cuda tests", "", f"`{res['tests']['summary']}` (rc {res['tests']['rc']})", ""]
    for k, v in res.get("skipped", {}).items():
        lines.append(f"- part `{k}` skipped: {v}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from diffmix_aug._io import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check that every part runs")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock budget (default 450 s, dry run 300 s)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default benchmarks/results/gpu; with --dry-run a new temporary folder)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: peak,sampler,loader,tests")
    args = ap.parse_args(argv)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU, or pass --dry-run to check the script on the CPU")
    device = torch.device("cpu" if dry else "cuda")
    budget = Budget(args.budget_s if args.budget_s is not None else (300.0 if dry else 450.0))
    if args.out is not None:
        out_dir = args.out
    elif dry:  # a dry run is no measurement: never into the source tree
        import tempfile

        out_dir = Path(tempfile.mkdtemp(prefix="gpu_suite_dry_run_"))
    else:
        out_dir = RESULTS
    skip = {s for s in args.skip.split(",") if s}
    torch.manual_seed(0)
    t0 = time.perf_counter()
    res: dict[str, Any] = {
        "benchmark": "gpu_suite", "dry_run": dry,
        "machine": {"device": torch.cuda.get_device_name(0) if not dry else f"cpu ({os.cpu_count()} cores)",
                    "platform": platform.platform(), "torch": torch.__version__, "numpy": np.__version__,
                    "cuda": torch.version.cuda, "load_average_1min": os.getloadavg()[0]},
        "budget_s": budget.total, "skipped": {}}
    plan = {"peak": dict(n=256 if dry else 8192, reps=3 if dry else 20),
            "sampler": dict(preset="tiny" if dry else "paper", size=32 if dry else 256, batch=2 if dry else 8,
                            steps=3 if dry else 55, t_start=200 if dry else 540, reps=1 if dry else 3),
            "loader": dict(preset="tiny", size=32 if dry else 256, items=16 if dry else 256, workers=2 if dry else 4,
                           step_s=0.02 if dry else 0.1, steps=8 if dry else 100),
            "tests": dict(timeout=60 if dry else 150)}
    res["plan"] = plan
    estimates = {"peak": 5 if dry else 15, "sampler": 20 if dry else 200, "loader": 30 if dry else 90,
                 "tests": plan["tests"]["timeout"]}
    for part in ("peak", "sampler", "loader", "tests"):
        if part in skip:
            res["skipped"][part] = "--skip"
            continue
        if not budget.fits(estimates[part]):
            res["skipped"][part] = f"needs ~{estimates[part]} s, {budget.left():.0f} s left"
            continue
        print(f"[gpu_suite] {part} ({budget.left():.0f} s left)", flush=True)
        if part == "peak":
            res["peak"] = measure_peak(device, **plan["peak"])
        elif part == "sampler":
            peak = res.get("peak", {}).get("matmul_fp16_tflops" if not dry else "matmul_bf16_tflops")
            res["sampler"] = bench_sampler(device, peak_tflops=peak, budget=budget, **plan["sampler"])
        elif part == "loader":
            res["loader"] = bench_loader(device, budget=budget, **plan["loader"])
        elif dry:
            res["tests"] = {"rc": None, "summary": "dry run: cuda tests not run (no CUDA device)"}
        else:
            res["tests"] = run_cuda_tests(min(plan["tests"]["timeout"], budget.left() - 5))
    res["wall_s"] = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "gpu_suite.json", json.dumps(res, indent=2, default=float) + "\n")
    md = _markdown(res)
    atomic_write_text(out_dir / "gpu_suite.md", md)
    print(md)
    print(f"wrote {out_dir / 'gpu_suite.json'} and gpu_suite.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
