"""Benchmark: the reference DDIM sampler vs the fast one, per precision, eager vs CUDA graph, per batch size.

Every row is measured in the same run, interleaved with its reference, on random weights of an SDM preset.
To keep a CPU run to minutes the loop runs ``--steps`` (two short step counts, e.g. 1 and 3); the
per-step time is the difference quotient of the two (so per-batch setup, e.g. the hoisted SPADE
modulations, is separated out), and the per-patch time is extrapolated to DiffMix's 55 steps:
``(setup + 55 x step) / batch``. The network cost does not depend on the timestep, so this is exact up
to noise. Outputs of the fast fp32 path are compared with the reference on the same noise.

Every row also gives the per-patch time and the speed-up at 10 guided steps (``*_10``); for the
``--direct-presets`` cases (default ``w32``) whole 10-step runs are also timed as they are, each paired
with the reference run of the same repeat (``*_10_measured``, column ``x10 run``), and that ratio is
the goal's. The CPU
default plan includes the equal-network case: the ``w32`` preset (the public SDM configuration at
width 32: channel_mult (1, 2, 3, 4), 2 res-blocks, attention at 32/16/8, SPADE hidden 128,
15,761,382 parameters) at 64 px, batch 4, whose fast/reference ratio at 10 guided steps is the
issue-14 goal (>= 3.3x). The ratio against the public code itself is measured from its own source,
not here. Label maps (``--labels``): ``real`` (default: crops of the three real patches' nuclei maps,
what the sampler sees, where most 3x3 label windows repeat and the SPADE setup runs once per distinct
window, ``diffmix_aug/sdm/spade_windows.py``) or ``random`` (a random class per pixel: nothing
repeats, the setup keeps the full convolutions).

    python benchmarks/sampler.py                       # CPU defaults: tiny@64 (batches 1,4), w32@64 and small@128 (batch 4)
    python benchmarks/sampler.py --threads 1           # one intra-op thread (a shared, busy machine)
    python benchmarks/sampler.py --device cuda         # GPU defaults: paper@256, fp32/fp16/bf16, eager and graph
    python benchmarks/sampler.py --race --public-src ~/src/DiffMix   # whole-patch runs, see below

Writes ``benchmarks/results/sampler_<device>.json`` (machine, torch version, config, median and spread).

``--race`` (issue 29): whole sampling runs at the equal network (w32, 64 px, batch 4, real label maps,
fp32, eager), interleaved and paired per repeat: the public DiffMix sampler from its own source (a
checkout of hvcl/DiffMix given by ``--public-src``: its ``create_model_and_diffusion`` with the w32
configuration, random weights, its ``ddim_sample_loop`` over ``ddim100`` entered at 55 %, s = 1.5, as
its ``image_sample.py`` calls it; that code is not part of this project and is never copied into
it), the project's plain reference (55 DDIM steps, two passes per step), the current fast 55-step
DDIM and each ``--race-solvers`` setting (default ``unipc/logsnr:10``). Writes
``benchmarks/results/solver_speed_<device>.{json,md}``. Without ``--public-src`` the public arm is
left out (and said so).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffmix_aug._io import atomic_write_text
from diffmix_aug.sampling import DDIMSampler, ReferenceDDIMSampler
from diffmix_aug.sampling.ddim import ModelCaches
from diffmix_aug.sdm import build_sdm

STEPS_PER_PATCH = 55
SHORT_STEPS = 10  # the equal-network comparison's guided steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_sdm(preset: str, size: int, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """An SDM preset with random weights everywhere (zero-initialised layers get small noise)."""
    torch.manual_seed(seed)
    model = build_sdm(preset, 6, image_size=max(size, 64) if preset in ("tiny", "w32") else 256)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return model.eval().to(device)


LABELS = ("real", "random")
_labels = {"kind": "real"}  # set by --labels


def real_conditions(batch: int, size: int) -> torch.Tensor:
    """``[batch, 6, size, size]``: ``size`` crops of the three real patches' label maps
    (``tests/data/he_patches``; PanNuke types 5 folded into 4 for the 5-class benchmark model), as
    the sampler sees nuclei maps."""
    import numpy as np

    from benchmarks.labelmaps import HE_DIR
    from diffmix_aug.data.classes import get_dataset_info
    from diffmix_aug.data.readers import read_consep_tile
    from diffmix_aug.labelmaps.encode import encode_condition_torch

    info = get_dataset_info("consep")
    samples = [read_consep_tile(HE_DIR / f"patch{k}.png", HE_DIR / f"patch{k}.mat", info=info, merge=False)
               for k in (1, 2, 3)]
    maps = [(s.inst_map, s.type_map) for s in samples]
    crops = []
    for i in range(batch):
        inst, typ = maps[i % len(maps)]
        reps = -(-size // min(inst.shape))  # tile small patches up to ``size``
        inst, typ = np.tile(inst, (reps, reps)), np.tile(typ, (reps, reps))
        o = (i // len(maps)) * 37 % max(1, inst.shape[0] - size + 1)
        crops.append((inst[o:o + size, o:o + size], np.minimum(typ[o:o + size, o:o + size], 4)))
    inst = torch.stack([torch.from_numpy(np.ascontiguousarray(c[0])).long() for c in crops])
    typ = torch.stack([torch.from_numpy(np.ascontiguousarray(c[1])).long() for c in crops])
    return encode_condition_torch(typ, inst, 5)


def inputs(batch: int, size: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand((batch, 3, size, size), generator=gen) * 2 - 1
    types = torch.randint(0, 5, (batch, size, size), generator=gen)
    cond = torch.nn.functional.one_hot(types, 6).permute(0, 3, 1, 2).float()
    if _labels["kind"] == "real":
        cond = real_conditions(batch, size)
    noise = torch.randn((batch, 3, size, size), generator=gen)
    return x0.to(device), cond.to(device), noise.to(device)


def make_sampler(mode: dict, steps: int):
    kw = dict(steps=steps, t_start=540)
    if mode["kind"] == "reference":
        return ReferenceDDIMSampler(**kw)
    return DDIMSampler(**kw, precision=mode["precision"], cuda_graph=mode["graph"],
                       channels_last=mode.get("channels_last", False))


def mode_name(mode: dict) -> str:
    if mode["kind"] == "reference":
        return "reference-fp32"
    return f"fast-{mode['precision']}" + ("-graph" if mode["graph"] else "") + ("-nhwc" if mode.get("channels_last") else "")


def _register_cpu_flash_flops() -> None:
    """Count the CPU flash-attention kernel (the fast path's attention) like the CUDA one: 4 b h L^2 d."""
    from torch.utils import flop_counter

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op.default in flop_counter.flop_registry or op in flop_counter.flop_registry:
        return

    def _flash_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    with contextlib.suppress(RuntimeError):  # registered already (by torch or an earlier call)
        flop_counter.register_flop_formula(op)(_flash_cpu_flop)


def count_flops(model, mode: dict, batch: int, size: int, device: torch.device) -> dict:
    """FLOPs (2 per multiply-add, convs and matmuls) of one step and of the per-batch setup."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_flash_flops()
    x0, cond, _ = inputs(batch, size, device)
    t = torch.full((batch,), 500, dtype=torch.long, device=device)
    sampler = make_sampler({**mode, "graph": False}, 1)
    with torch.no_grad():
        if mode["kind"] == "reference":
            with FlopCounterMode(display=False) as fc:
                model(x0, t, cond)
                model(x0, t, torch.zeros_like(cond))
            return {"step": fc.get_total_flops(), "setup": 0}
        den = sampler.denoiser_for(model, x0)
        with FlopCounterMode(display=False) as fc_setup:
            prepared = den.prepare(cond)
        with FlopCounterMode(display=False) as fc:
            den(x0, t, prepared)
    return {"step": fc.get_total_flops(), "setup": fc_setup.get_total_flops()}


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul rate, TFLOP/s."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    reps = 20 if device.type == "cuda" else 3
    best = 0.0
    for _ in range(3):  # best of three: a busy shared CPU only ever slows a trial down
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12)
    return best


def timed_sample(sampler, model, x0, cond, noise, device) -> tuple[float, torch.Tensor, int]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    out = sampler.sample(model, x0, cond, noise=noise)
    _sync(device)
    elapsed = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return elapsed, out, peak


def bench_case(preset: str, size: int, batch: int, modes: list[dict], args, device, model, pbar) -> list[dict]:
    """All modes for one (preset, size, batch), interleaved over repeats.

    NHWC modes run on a channels_last copy of the model (same weights).
    """
    s1, s2 = args.steps
    x0, cond, noise = inputs(batch, size, device)
    samplers = {mode_name(m): (m, make_sampler(m, s1), make_sampler(m, s2)) for m in modes}
    nhwc = (copy.deepcopy(model).to(memory_format=torch.channels_last)
            if any(m.get("channels_last") for m in modes) else None)
    models = {name: nhwc if m.get("channels_last") else model for name, (m, _, _) in samplers.items()}
    outs = {}
    for name, (_, a, b) in samplers.items():  # warm-up (and graph capture)
        outs[name] = a.sample(models[name], x0, cond, noise=noise)
        b.sample(models[name], x0, cond, noise=noise)
    times = {name: {"t1": [], "t2": [], "peak": []} for name in samplers}
    for _ in range(args.repeats):
        for name, (_, a, b) in samplers.items():
            t1, _, p1 = timed_sample(a, models[name], x0, cond, noise, device)
            t2, _, p2 = timed_sample(b, models[name], x0, cond, noise, device)
            times[name]["t1"].append(t1)
            times[name]["t2"].append(t2)
            times[name]["peak"].append(max(p1, p2))
            pbar.update(1)
    direct = {}  # whole SHORT_STEPS-step runs, timed as they are (the goal case: no extrapolation)
    if preset in args.direct_presets:
        runs = {name: make_sampler(m, SHORT_STEPS) for name, (m, _, _) in samplers.items()}
        for name, sampler in runs.items():  # warm-up
            sampler.sample(models[name], x0, cond, noise=noise)
        direct = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, sampler in runs.items():
                direct[name].append(timed_sample(sampler, models[name], x0, cond, noise, device)[0])
    ref_out = outs.get("reference-fp32")
    rows = []
    for name, (_mode, a, _) in samplers.items():
        t1, t2 = times[name]["t1"], times[name]["t2"]
        steps = [(y - x) / (s2 - s1) for x, y in zip(t1, t2)]
        setups = [max(x - s1 * st, 0.0) for x, st in zip(t1, steps)]
        step, setup = statistics.median(steps), statistics.median(setups)
        per_patch = (setup + STEPS_PER_PATCH * step) / batch
        row = {
            "preset": preset, "size": size, "batch": batch, "mode": name,
            "path": getattr(a, "last_run", {}).get("path", "eager"),
            "ms_per_step": 1e3 * step, "ms_per_step_min": 1e3 * min(steps), "ms_per_step_max": 1e3 * max(steps),
            "setup_ms": 1e3 * setup, "s_per_patch_55": per_patch, "patches_per_s": 1.0 / per_patch,
            f"s_per_patch_{SHORT_STEPS}": (setup + SHORT_STEPS * step) / batch,
            "peak_memory_bytes": max(times[name]["peak"]),
            "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        }
        if name in direct:
            row[f"s_per_patch_{SHORT_STEPS}_measured"] = statistics.median(direct[name]) / batch
            if "reference-fp32" in direct:  # paired per repeat: each run against the reference run beside it
                paired = [r / t for r, t in zip(direct["reference-fp32"], direct[name], strict=True)]
                row[f"speedup_vs_reference_{SHORT_STEPS}_measured"] = {
                    "median": statistics.median(paired), "min": min(paired), "max": max(paired)}
        if ref_out is not None:
            diff = (outs[name] - ref_out)
            row["max_abs_diff_vs_reference"] = float(diff.abs().max())
            row["rel_err_vs_reference"] = float(diff.norm() / ref_out.norm())
        rows.append(row)
    ref = next((r for r in rows if r["mode"] == "reference-fp32"), None)
    short = f"s_per_patch_{SHORT_STEPS}"
    for r in rows:
        if ref is not None:
            r["speedup_vs_reference"] = ref["s_per_patch_55"] / r["s_per_patch_55"]
            r[f"speedup_vs_reference_{SHORT_STEPS}"] = ref[short] / r[short]
    return rows


def default_plan(device: torch.device) -> tuple[list[tuple[str, int, list[int]]], list[dict]]:
    if device.type == "cuda":
        cases = [("paper", 256, [1, 4, 8, 16])]
        modes = [{"kind": "reference"}]
        for p in ("fp32", "fp16", "bf16"):
            modes += [{"kind": "fast", "precision": p, "graph": False, "channels_last": True},
                      {"kind": "fast", "precision": p, "graph": True, "channels_last": True}]
        return cases, modes
    # a CPU run stays within minutes: tiny at two batches; bf16 (emulated without avx512_bf16/AMX) and
    # NHWC only where they are asked about (the equal network)
    cases = [("tiny", 64, [1, 4]), ("w32", 64, [4]), ("small", 128, [4])]
    modes = [{"kind": "reference"}, {"kind": "fast", "precision": "fp32", "graph": False},
             {"kind": "fast", "precision": "fp32", "graph": False, "channels_last": True, "only": ("w32",)},
             {"kind": "fast", "precision": "bf16", "graph": False, "only": ("w32",)}]
    return cases, modes


def parse_cases(text: str, batches: list[int] | None) -> list[tuple[str, int, list[int]]]:
    out = []
    for item in text.split(","):
        preset, size = item.split(":")
        out.append((preset, int(size), batches or [4]))
    return out


# ----------------------------------------------------------------------------------- --race (issue 29)

W32_PUBLIC = dict(image_size=64, num_classes=5, num_channels=32, num_res_blocks=2, channel_mult="", learn_sigma=True,
                  class_cond=True, attention_resolutions="32,16,8", num_heads=4, num_head_channels=-1,
                  use_scale_shift_norm=True, resblock_updown=True, no_instance=False, use_fp16=False,
                  diffusion_steps=1000, noise_schedule="linear", timestep_respacing="ddim100")


def public_sampler(src: Path, device: torch.device):
    """``(model, run(x0, cond) -> samples)``: the public DiffMix sampler from its own source at the equal network.

    ``src`` is a checkout of hvcl/DiffMix; its ``semantic-diffusion-model/guided_diffusion_sample`` package is
    imported from there (nothing of it is copied here). Random weights: the time does not depend on them.
    """
    pkg = Path(src).expanduser() / "semantic-diffusion-model"
    if not (pkg / "guided_diffusion_sample" / "script_util.py").is_file():
        raise SystemExit(f"--public-src {src}: no semantic-diffusion-model/guided_diffusion_sample/script_util.py "
                         "there; pass a checkout of https://github.com/hvcl/DiffMix")
    sys.path.insert(0, str(pkg))
    from guided_diffusion_sample.script_util import create_model_and_diffusion, model_and_diffusion_defaults

    kw = model_and_diffusion_defaults()
    kw.update(W32_PUBLIC)
    torch.manual_seed(0)
    model, diffusion = create_model_and_diffusion(**kw)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    model = model.eval().to(device)

    @torch.no_grad()
    def run(x0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return diffusion.ddim_sample_loop(model, tuple(x0.shape), clip_denoised=True,
                                          model_kwargs={"y": cond, "gt": x0, "s": 1.5}, ddim_percent=0.55)

    return model, run


def parse_race_solvers(text: str) -> list[dict]:
    out = []
    for item in filter(None, (p.strip() for p in text.split(";"))):
        head, steps = item.split(":")
        solver, spacing = head.split("/")
        out += [{"solver": solver, "spacing": spacing, "steps": int(n)} for n in steps.split(",")]
    return out


def race(args, device: torch.device) -> int:
    """Whole runs per arm, interleaved, each repeat's ratios paired; JSON + markdown."""
    from tqdm import tqdm

    preset, size, batch = "w32", 64, args.race_batch
    model = random_sdm(preset, size, device)
    x0, cond, noise = inputs(batch, size, device)
    arms: dict[str, tuple] = {}
    notes = []
    if args.public_src:
        pub_model, pub_run = public_sampler(args.public_src, device)
        arms["public-ddim55"] = (lambda: pub_run(x0, cond), sum(p.numel() for p in pub_model.parameters()), 55)
    else:
        notes.append("public arm not run: pass --public-src <checkout of hvcl/DiffMix>")
    ref = ReferenceDDIMSampler(steps=55, t_start=540)
    arms["reference-ddim55"] = (lambda: ref.sample(model, x0, cond, noise=noise), None, 55)
    caches = ModelCaches(model)
    fast = DDIMSampler(steps=55, t_start=540)
    arms["fast-ddim55"] = (lambda: fast.sample(model, x0, cond, noise=noise, caches=caches), None, 55)
    for setting in parse_race_solvers(args.race_solvers):
        s = DDIMSampler(t_start=540, **setting)
        name = f"fast-{setting['solver']}-{setting['spacing']}{setting['steps']}"
        arms[name] = (lambda s=s: s.sample(model, x0, cond, noise=noise, caches=caches), None, setting["steps"])
    params = sum(p.numel() for p in model.parameters())
    times: dict[str, list[float]] = {k: [] for k in arms}
    with torch.no_grad(), tqdm(total=len(arms) * (args.repeats + 1), desc="race", unit="run") as bar:
        for rep in range(args.repeats + 1):  # repeat 0 is the warm-up
            for name, (fn, _, _) in arms.items():
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                if rep:
                    times[name].append(time.perf_counter() - t0)
                bar.update(1)
    rows = []
    for name, (_, pub_params, evals) in arms.items():
        row = {"arm": name, "network_evaluations": evals, "s_per_patch": statistics.median(times[name]) / batch,
               "s_per_patch_min": min(times[name]) / batch, "s_per_patch_max": max(times[name]) / batch,
               "params": pub_params or params}
        for base in ("fast-ddim55", "public-ddim55", "reference-ddim55"):
            if base in times:  # paired per repeat: each run against the base run of the same repeat
                ratios = [t / b for t, b in zip(times[name], times[base], strict=True)]
                row[f"cost_vs_{base}"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        rows.append(row)
    goals = {}
    for r in rows:
        if r["arm"].startswith("fast-") and r["arm"] != "fast-ddim55":
            goals[r["arm"]] = {"cost_vs_fast_ddim55": r["cost_vs_fast-ddim55"]["median"], "goal_vs_fast_ddim55": 0.25,
                               "cost_vs_public": r.get("cost_vs_public-ddim55", {}).get("median"),
                               "goal_vs_public": 1 / 15}
    machine = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
               "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "processor": platform.processor(),
               "load_average_at_start": list(os.getloadavg())}
    report = {"benchmark": "solver_speed", "machine": machine,
              "command": args.command,
              "config": {"preset": preset, "size": size, "batch": batch, "labels": "real", "precision": "fp32",
                         "path": "eager", "repeats": args.repeats, "t_start": 540, "guidance_scale": 1.5,
                         "public_config": W32_PUBLIC if args.public_src else None,
                         "method": "whole runs, arms interleaved per repeat after one warm-up round; ratios paired per "
                                   "repeat (median, min, max)"},
              "rows": rows, "goals": goals, "notes": notes}
    lines = [f"# Sampler speed, whole patches: the solvers against the 55-step protocol ({device.type})", "",
             f"Equal network: {preset} ({params:,} parameters"
             + (f"; public model {arms['public-ddim55'][1]:,}" if "public-ddim55" in arms else "")
             + f"), {size} px, batch {batch}, real label maps, fp32 eager, {torch.get_num_threads()} threads, "
             f"{args.repeats} repeats (load average at start {machine['load_average_at_start'][0]:.1f}).", "",
             "| arm | network evaluations | s / patch (median) | min-max | cost vs fast DDIM-55 | cost vs public |",
             "|---|---:|---:|---:|---:|---:|"]
    def ratio(r: dict, base: str, digits: int) -> str:  # median (min-max over the paired repeats)
        c = r.get(f"cost_vs_{base}")
        if c is None:
            return "n/a"
        spread = f" ({c['min']:.{digits}f}-{c['max']:.{digits}f})" if args.repeats > 1 else ""
        return f"{c['median']:.{digits}f}{spread}"

    for r in rows:
        lines.append(f"| {r['arm']} | {r['network_evaluations']} | {r['s_per_patch']:.3f} | {r['s_per_patch_min']:.3f}-"
                     f"{r['s_per_patch_max']:.3f} | {ratio(r, 'fast-ddim55', 3)} | {ratio(r, 'public-ddim55', 4)} |")
    lines += ["", "Costs are per-repeat paired ratios of whole-run times: median (min-max over repeats).",
              f"Command: `{args.command}`", "",
              *(f"- {n}" for n in notes), *([""] if notes else []), "Goals (issue 29): at most 0.25 of the fast 55-step DDIM and 1/15 of "
              "the public sampler, same run, same network.", ""]
    out = Path(args.out or Path(__file__).parent / "results" / f"solver_speed_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out} and {out.with_suffix('.md').name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", default=None, help="preset:size list, e.g. 'tiny:64,small:128'")
    parser.add_argument("--batches", default=None, help="comma list of batch sizes (with --cases)")
    parser.add_argument("--precisions", default=None, help="fast-path precisions, e.g. 'fp32,bf16'")
    parser.add_argument("--direct-presets", default="w32",
                        help=f"comma list of presets whose whole {SHORT_STEPS}-step runs are also timed as they are "
                             "(paired with the reference run of the same repeat); '' for none")
    parser.add_argument("--steps", default="1,3", help="two step counts; per-step time is their difference")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 on CUDA, 2 on CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-flops", action="store_true")
    parser.add_argument("--labels", choices=LABELS, default="real",
                        help="label maps: 'real' (crops of the real patches' nuclei maps, the default: what the "
                             "sampler sees) or 'random' (a random class per pixel: no label window repeats, "
                             "so the per-window SPADE setup falls back to full convolutions)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--race", action="store_true", help="whole-patch runs: solvers vs the 55-step protocol and "
                        "the public sampler (see the module docstring)")
    parser.add_argument("--race-solvers", default="unipc/logsnr:10",
                        help="--race: fast solver settings, 'solver/spacing:steps[,steps];...'")
    parser.add_argument("--public-src", type=Path, default=None, help="--race: a checkout of hvcl/DiffMix")
    parser.add_argument("--race-batch", type=int, default=4, help="--race: batch size (the goal case: 4)")
    args = parser.parse_args(argv)
    args.command = " ".join(["python", "benchmarks/sampler.py", *(sys.argv[1:] if argv is None else argv)])
    device = torch.device(args.device)
    _labels["kind"] = args.labels
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.race:
        args.repeats = args.repeats or 3
        return race(args, device)
    args.direct_presets = tuple(p for p in args.direct_presets.split(",") if p)
    args.steps = [int(s) for s in args.steps.split(",")]
    if len(args.steps) != 2 or not 0 < args.steps[0] < args.steps[1]:
        parser.error("--steps needs two increasing positive counts, e.g. 1,3")
    args.repeats = args.repeats or (3 if device.type == "cuda" else 2)
    cases, modes = default_plan(device)
    if args.cases:
        cases = parse_cases(args.cases, [int(b) for b in args.batches.split(",")] if args.batches else None)
    elif args.batches:
        cases = [(p, s, [int(b) for b in args.batches.split(",")]) for p, s, _ in cases]
    if args.precisions:
        keep = set(args.precisions.split(","))
        modes = [m for m in modes if m["kind"] == "reference" or m["precision"] in keep]
    if device.type != "cuda":
        modes = [m for m in modes if not m.get("graph")]

    machine = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
               "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "load_average_at_start": list(os.getloadavg())}
    peaks = {"fp32": matmul_peak(device, torch.float32)}
    if device.type == "cuda":
        peaks.update(fp16=matmul_peak(device, torch.float16), bf16=matmul_peak(device, torch.bfloat16))
    rows: list[dict] = []
    def case_modes(preset: str) -> list[dict]:
        return [m for m in modes if preset in m.get("only", (preset,))]

    total = sum(len(b) * len(case_modes(p)) for p, _, b in cases) * args.repeats
    with tqdm(total=total, desc="sampler bench", unit="run") as pbar:
        for preset, size, batches in cases:
            model = random_sdm(preset, size, device)
            flops = {} if args.no_flops else {mode_name(m): count_flops(model, m, 1, size, device)
                                              for m in case_modes(preset)}
            for batch in batches:
                for row in bench_case(preset, size, batch, case_modes(preset), args, device, model, pbar):
                    f = flops.get(row["mode"])
                    if f:
                        row["gflop_per_step_per_image"] = f["step"] / 1e9
                        row["gflop_setup_per_image"] = f["setup"] / 1e9
                        row["achieved_tflops"] = f["step"] * batch / (row["ms_per_step"] / 1e3) / 1e12
                        prec = row["mode"].split("-")[1]
                        row["fraction_of_matmul_peak"] = row["achieved_tflops"] / peaks.get(prec, peaks["fp32"])
                    rows.append(row)
            del model

    goals = {}
    for r in rows:
        if r["preset"] == "small" and r["size"] == 128 and r["batch"] == 4 and r["mode"] == "fast-fp32":
            goals["cpu_small128_b4_fast_vs_reference"] = {"ratio": r.get("speedup_vs_reference"), "goal": 2.0,
                                                          "max_abs_diff": r.get("max_abs_diff_vs_reference")}
        if r["preset"] == "w32" and r["size"] == 64 and r["batch"] == 4 and r["mode"].startswith("fast"):
            # equal network (15.8 M parameters each), 10 guided steps: fast >= 3.3x its own reference is the
            # mark for >= 4x the public sampler (whose loop costs about 1.2x this reference's, issue 14)
            measured = r.get(f"speedup_vs_reference_{SHORT_STEPS}_measured")
            goals[f"cpu_w32_64_b4_{r['mode']}_vs_reference_{SHORT_STEPS}_steps"] = {
                "ratio": measured["median"] if measured else r.get(f"speedup_vs_reference_{SHORT_STEPS}"),
                "ratio_source": f"whole {SHORT_STEPS}-step runs, median of paired repeats" if measured else
                                "extrapolated from the short runs",
                "ratio_measured_spread": [measured["min"], measured["max"]] if measured else None,
                "ratio_extrapolated": r.get(f"speedup_vs_reference_{SHORT_STEPS}"),
                "goal": 3.3 if "fp32" in r["mode"] else None,
                "ratio_55_steps": r.get("speedup_vs_reference"), "max_abs_diff": r.get("max_abs_diff_vs_reference"),
                "fraction_of_matmul_peak": r.get("fraction_of_matmul_peak")}
        if r["preset"] == "paper" and r["size"] == 256 and r["batch"] == 8 and r["mode"] != "reference-fp32":
            goals[f"gpu_paper256_b8_{r['mode']}"] = {"ratio": r.get("speedup_vs_reference"), "goal_ratio": 5.0,
                                                     "patches_per_s": r["patches_per_s"], "goal_patches_per_s": 1.5}

    header = (f"{'preset':>6} {'size':>4} {'B':>3} {'mode':<20} {'ms/step':>9} {'setup ms':>9} {'s/patch':>8} "
              f"{'patch/s':>8} {'x ref':>6} {'x ref10':>7} {'x10 run':>7} {'TFLOP/s':>8} {'peak %':>6} {'maxdiff':>9}")
    print(header)
    for r in rows:
        print(f"{r['preset']:>6} {r['size']:>4} {r['batch']:>3} {r['mode']:<20} {r['ms_per_step']:9.1f} "
              f"{r['setup_ms']:9.1f} {r['s_per_patch_55']:8.3f} {r['patches_per_s']:8.3f} "
              f"{r.get('speedup_vs_reference', float('nan')):6.2f} "
              f"{r.get(f'speedup_vs_reference_{SHORT_STEPS}', float('nan')):7.2f} "
              f"{r.get(f'speedup_vs_reference_{SHORT_STEPS}_measured', {}).get('median', float('nan')):7.2f} "
              f"{r.get('achieved_tflops', float('nan')):8.4f} {100 * r.get('fraction_of_matmul_peak', float('nan')):6.1f} "
              f"{r.get('max_abs_diff_vs_reference', float('nan')):9.2e}")
    print("goals:", json.dumps(goals, indent=1))
    report = {"benchmark": "sampler", "machine": machine, "matmul_peak_tflops": peaks,
              "config": {"labels": args.labels, "steps_measured": args.steps, "steps_per_patch": STEPS_PER_PATCH, "repeats": args.repeats,
                         "cases": cases, "modes": {p: [mode_name(m) for m in case_modes(p)] for p, _, _ in cases},
                         "method": "per-step = (T(s2) - T(s1)) / (s2 - s1); per-patch = (setup + 55 step) / B; "
                                   f"*_{SHORT_STEPS} = (setup + {SHORT_STEPS} step) / B; *_{SHORT_STEPS}_measured: whole "
                                   f"{SHORT_STEPS}-step runs of the --direct-presets cases, the speed-up the median of "
                                   "per-repeat ratios against the reference run of the same repeat; NHWC rows use a "
                                   "channels_last copy of the model", "direct_presets": list(args.direct_presets)},
              "results": rows, "goals": goals}
    out = Path(args.out or Path(__file__).parent / "results" / f"sampler_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
