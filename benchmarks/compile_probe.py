"""Benchmark: ``torch.compile`` (inductor, compiled offline with the local C++ compiler) of one guided
fast-sampler step against the same step eager, on the same model, batch and inputs, interleaved.

Issue 14 asked to try it and keep it where it measures; this is the measurement. It compiles the
whole guided step (``SDMGuidance.__call__``: shared encoder, 2B decoder, guidance combine) with
``dynamic=False`` for one shape, then times eager and compiled calls alternately.

    python benchmarks/compile_probe.py                     # w32 equal network, 64 px, batch 4 (compiles ~1.5 min on 2 cores)
    python benchmarks/compile_probe.py --preset tiny --repeats 10

Writes ``benchmarks/results/compile_probe_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.sampler import _sync, random_sdm, real_conditions
from diffmix_aug._io import atomic_write_text
from diffmix_aug.sampling.denoisers import SDMGuidance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="w32")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = random_sdm(args.preset, args.size, device)
    denoiser = SDMGuidance(model, 1.5)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    t = torch.full((args.batch,), 500, dtype=torch.long, device=device)
    with torch.no_grad():
        cond = denoiser.prepare(real_conditions(args.batch, args.size).float().to(device)).materialize()

        def eager(x, t, cond):
            return denoiser(x, t, cond)

        compiled = torch.compile(eager, dynamic=False)
        t0 = time.perf_counter()
        out_c = compiled(x, t, cond)
        _sync(device)
        compile_s = time.perf_counter() - t0
        out_e = eager(x, t, cond)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(args.repeats):
            for name, fn in (("eager", eager), ("compiled", compiled)):
                _sync(device)
                t0 = time.perf_counter()
                fn(x, t, cond)
                _sync(device)
                times[name].append(time.perf_counter() - t0)
    rows = {name: {"median_ms": 1e3 * statistics.median(v), "min_ms": 1e3 * min(v), "max_ms": 1e3 * max(v)}
            for name, v in times.items()}
    ratio = rows["eager"]["median_ms"] / rows["compiled"]["median_ms"]
    diff = float((out_c - out_e).abs().max())
    print(f"{'step':<9} {'median ms':>10} {'min':>8} {'max':>8}")
    for name, r in rows.items():
        print(f"{name:<9} {r['median_ms']:10.1f} {r['min_ms']:8.1f} {r['max_ms']:8.1f}")
    print(f"compiled speed-up {ratio:.2f}x (eager / compiled), compile {compile_s:.1f} s, max |diff| {diff:.2e}")
    report = {"benchmark": "compile_probe",
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "load_average_at_end": list(os.getloadavg())},
              "torch": torch.__version__,
              "config": {"preset": args.preset, "size": args.size, "batch": args.batch, "repeats": args.repeats,
                         "device": str(device), "guidance": 1.5, "what": "one guided fast step, eager vs "
                         "torch.compile(dynamic=False), interleaved"},
              "results": rows, "speedup_compiled_vs_eager": ratio, "compile_s": compile_s, "max_abs_diff": diff}
    out = Path(args.out or Path(__file__).parent / "results" / f"compile_probe_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
