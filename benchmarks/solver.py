"""Accuracy against cost of the partial-noise solvers on real CoNSeP label maps (issue 29).

With eta = 0 every solver integrates the same probability-flow ODE (guidance 1.5 on eps, x0 clipped)
from the same start x_t: the original patch noised to t = 540 with one fixed draw per map. So each
setting's error is measured without noise against a **converged reference**: the same ODE solved by
UniPC with ``--ref-steps`` steps (default 200, log-SNR spacing), cross-checked against DPM-Solver++(2M)
with as many steps (a different second-order method: the distance between the two is reported), and
on the first ``--ddim-unit-maps`` maps (default 3) against DDIM with all 541 unit steps (first order:
its own error stays near 1e-3 of the [-1, 1] range on a smooth model, see
``tests/unit/test_sampling_solvers.py``).

Error of a setting: RMSE and max |difference| on the 0-255 scale (float, before uint8 rounding)
between its final patch and the reference's, per map; mean and worst case over the maps. The bar is
the **reference protocol's own error** (55 DDIM steps from t = 540, ``sampler="reference"``): a
setting whose worst-case error is at or below it is at least as accurate as the paper's sampler.

Maps: CoNSeP validation tiles 1-5 (never seen by the SDM), at the SDM's field of view and training
size (20x, 64 px crops; ``--size 128`` renders whole 20x windows at 4x the cost): per tile
``--per-tile`` windows, each as its real map, a balancing map and an enlarging map, drawn as
``benchmarks/fidelity.py`` draws them (balancing on the whole validation tile, validation donors). Network: the shipped
CoNSeP SDM ``benchmarks/weights/sdm_consep_cpu.safetensors``. Wall time per patch is measured in
the same run (batches of ``--batch``, fp32, eager), so every setting runs on equal terms.

    python benchmarks/solver.py                       # full run: 30 maps, 31,683 patch-evaluations: about
                                                      # 17 min on 2 quiet cores (29 ms per 64 px patch-evaluation
                                                      # at batch 8 here); it prints its own estimate
    python benchmarks/solver.py --quick --out /tmp/s  # smoke run: 3 maps at 32 px, a few settings

Writes ``solver.json``, ``solver.md`` and ``solver.png`` to ``--out`` (default
``benchmarks/results/solver``). Data: CoNSeP (Graham et al., "HoVer-Net", Medical Image Analysis
2019), research use; ``../shared/data/consep_256`` is read and the script stops with the reason where
it is absent.
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
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.consep_pool import ATTRIBUTION, SDM_VAL_TILES, WEIGHTS
from diffmix_aug._io import atomic_write_text

RESULTS = Path(__file__).parent / "results" / "solver"
DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "consep_256"  # ../shared beside the checkout
BAR = {"solver": "ddim", "steps": 55, "spacing": "linear"}  # the reference protocol (sampler="reference")
REFERENCE = {"solver": "unipc", "spacing": "logsnr"}
CROSS_CHECK = {"solver": "dpmpp_2m", "spacing": "logsnr"}
# the settings measured: (solver, spacing) -> step counts
# (a 3-map pilot showed linear spacing far worse for every multistep solver than log-SNR: the last
# step into t = 0 is one large log-SNR step; so linear and quadratic are kept as a few control points)
FULL_PLAN = {
    ("ddim", "linear"): [5, 8, 10, 15, 20, 30, 40],  # + 55: the bar
    ("unipc", "logsnr"): [5, 6, 7, 8, 9, 10, 11, 12, 15, 20],
    ("dpmpp_2m", "logsnr"): [5, 6, 7, 8, 9, 10, 11, 12, 15, 20],
    ("dpmpp_3m", "logsnr"): [5, 6, 7, 8, 9, 10, 11, 12, 15, 20],
    ("unipc", "linear"): [10, 20],
    ("dpmpp_2m", "linear"): [10, 20],
    ("dpmpp_3m", "linear"): [10, 20],
    ("unipc", "quadratic"): [10],
    ("dpmpp_2m", "quadratic"): [10],
}
QUICK_PLAN = {("ddim", "linear"): [5], ("dpmpp_2m", "logsnr"): [5, 10], ("unipc", "logsnr"): [5, 10]}
T_START = 540


# ----------------------------------------------------------------------------------- maps


def _best_crop(inst_map: np.ndarray, size: int) -> tuple[int, int]:
    """The top-left corner of the ``size`` window (corners and centre) holding the most nuclei."""
    h, w = inst_map.shape
    cands = {(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), ((h - size) // 2, (w - size) // 2)}
    return max(sorted(cands), key=lambda yx: len(np.unique(inst_map[yx[0]:yx[0] + size, yx[1]:yx[1] + size])))


def load_maps(data_root: Path, size: int, per_tile: int, seed: int) -> list[dict[str, Any]]:
    """Real, balancing and enlarging maps of validation windows, cropped to ``size`` px at 20x.

    The maps are drawn as ``benchmarks/fidelity.py`` draws them (:func:`benchmarks.fidelity.validation_maps`:
    GradMix label mixing on the whole validation tiles with validation donors, enlarging per window);
    per tile the ``per_tile`` fullest of the drawn 128 px windows whose ``size`` px crop (the one holding the
    most nuclei) overlaps no other chosen crop of the tile.

    Returns:
        ``[{"name", "kind", "image" uint8 [S, S, 3], "inst_map" int32 [S, S], "type_map" int32 [S, S]}]``:
        kinds ``real``, ``balance``, ``enlarge`` per window (the image is always the real patch: the start).
    """
    from benchmarks.fidelity import validation_maps
    from benchmarks.tilesets import consep_tilesets

    _, val = consep_tilesets(data_root, SDM_VAL_TILES, only_tiles=())
    vm = validation_maps(val, 8 * len(val.tiles) * per_tile, seed)
    by_tile: dict[str, list[int]] = {}
    for j, (name, _, _) in enumerate(vm["where"]):
        by_tile.setdefault(name, []).append(j)
    maps = []
    for name in sorted(by_tile, key=lambda n: int(n.split("_")[-1])):
        boxes: list[tuple[int, int]] = []
        for j in sorted(by_tile[name], key=lambda j: -len(vm["real"][j].info)):  # the fullest first
            real = vm["real"][j]
            y, x = _best_crop(real.inst_map, size)
            _, wy, wx = vm["where"][j]
            if len(boxes) == per_tile or any(abs(wy + y - by) < size and abs(wx + x - bx) < size for by, bx in boxes):
                continue  # crops of one tile never overlap
            boxes.append((wy + y, wx + x))
            sl = (slice(y, y + size), slice(x, x + size))
            for kind, (inst, typ) in (("real", (real.inst_map, real.type_map)), ("balance", vm["balance"][j]),
                                      ("enlarge", vm["enlarge"][j])):
                maps.append({"name": f"{name}@{wy + y},{wx + x}", "kind": kind,
                             "image": np.ascontiguousarray(real.image[sl]),
                             "inst_map": np.ascontiguousarray(inst[sl], np.int32),
                             "type_map": np.ascontiguousarray(typ[sl], np.int32)})
    return maps


def encode(maps: list[dict[str, Any]], num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0 float32 [N, 3, S, S] in [-1, 1], cond float32 [N, K + 1, S, S])``."""
    from diffmix_aug.labelmaps.encode import encode_condition_torch

    x0 = torch.from_numpy(np.stack([m["image"] for m in maps])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    cond = encode_condition_torch(torch.from_numpy(np.stack([m["type_map"] for m in maps])).long(),
                                  torch.from_numpy(np.stack([m["inst_map"] for m in maps])).long(), num_classes)
    return x0, cond


def start_noise(n: int, size: int, seed: int) -> torch.Tensor:
    """One standard normal draw per map (``[n, 3, S, S]``): the same x_t for every solver."""
    return torch.stack([torch.randn((3, size, size), generator=torch.Generator().manual_seed(seed * 100_003 + i))
                        for i in range(n)])


# ----------------------------------------------------------------------------------- runs


def run_setting(model, caches, x0, cond, z, *, solver: str, steps: int, spacing: str, batch: int):
    """The final patches of one setting, ``float32 [N, 3, S, S]``, and the seconds per batch."""
    from diffmix_aug.sampling import DDIMSampler

    sampler = DDIMSampler(solver=solver, steps=steps, t_start=T_START, spacing=spacing, guidance_scale=1.5)
    outs, seconds = [], []
    for lo in range(0, len(x0), batch):
        t0 = time.perf_counter()
        outs.append(sampler.sample(model, x0[lo:lo + batch], cond[lo:lo + batch], noise=z[lo:lo + batch],
                                   caches=caches))
        seconds.append((time.perf_counter() - t0, min(batch, len(x0) - lo)))
    return torch.cat(outs), seconds


def errors_255(out: torch.Tensor, ref: torch.Tensor) -> dict[str, list[float]]:
    """Per map: RMSE and max |difference| on the 0-255 scale (float, before uint8 rounding)."""
    diff = (out.double() - ref.double()) * 127.5
    return {"rmse": diff.pow(2).flatten(1).mean(1).sqrt().tolist(), "max_abs": diff.abs().flatten(1).amax(1).tolist()}


def summarise(err: dict[str, list[float]]) -> dict[str, float]:
    rmse, mx = np.asarray(err["rmse"]), np.asarray(err["max_abs"])
    return {"rmse_mean": float(rmse.mean()), "rmse_worst": float(rmse.max()), "max_abs_worst": float(mx.max())}


def per_patch_seconds(seconds: list[tuple[float, int]]) -> dict[str, float]:
    """Median and spread of the seconds per patch over the full batches (all batches when none is full)."""
    full = max(b for _, b in seconds)
    rates = [t / b for t, b in seconds if b == full] or [t / b for t, b in seconds]
    return {"s_per_patch": statistics.median(rates), "s_per_patch_min": min(rates), "s_per_patch_max": max(rates)}


# ----------------------------------------------------------------------------------- report


def smallest_meeting(rows: list[dict[str, Any]], bar: dict[str, float]) -> dict[str, Any]:
    """Per (solver, spacing): the smallest step count whose worst-case (and mean) RMSE is at or below the bar's."""
    out: dict[str, Any] = {}
    for r in rows:
        key = f"{r['solver']}/{r['spacing']}"
        entry = out.setdefault(key, {"worst_case": None, "mean": None})
        if r["rmse_worst"] <= bar["rmse_worst"] and (entry["worst_case"] is None or r["steps"] < entry["worst_case"]):
            entry["worst_case"] = r["steps"]
        if r["rmse_mean"] <= bar["rmse_mean"] and (entry["mean"] is None or r["steps"] < entry["mean"]):
            entry["mean"] = r["steps"]
    return out


def markdown(res: dict[str, Any]) -> str:
    bar, cfg = res["bar"], res["config"]
    lines = [f"# Solver accuracy against cost on real CoNSeP maps{' (quick run: not a measurement)' if cfg['quick'] else ''}",
             "", f"Command: `{res['command']}`  ",
             f"{res['n_maps']} maps ({', '.join(f'{v} {k}' for k, v in res['maps_by_kind'].items())}) of validation "
             f"tiles {list(SDM_VAL_TILES)} at 20x, {cfg['size']} px; SDM `{cfg['weights']}`; start t = {T_START}, "
             f"guidance 1.5, x0 clipped, eta = 0; batch {cfg['batch']}, fp32 eager, {res['machine']['torch_threads']} "
             f"threads; {res['wall_s'] / 60:.1f} min.", "",
             f"Converged reference: {REFERENCE['solver']} with {cfg['ref_steps']} steps ({REFERENCE['spacing']} spacing). "
             "Cross-checks (RMSE on 0-255 against it, mean / worst over maps): "
             + "; ".join(f"{k} ({v['maps']} maps): {v['rmse_mean']:.4f} / {v['rmse_worst']:.4f}"
                         for k, v in res["cross_checks"].items())
             + ".", "",
             f"Bar: the reference protocol (55 DDIM steps from t = 540) is {bar['rmse_mean']:.3f} RMSE on average and "
             f"{bar['rmse_worst']:.3f} at worst (max |diff| {bar['max_abs_worst']:.2f}) from the converged ODE solution.",
             "", "| solver | spacing | steps | network evaluations | model passes | RMSE mean | RMSE worst | max abs worst "
             "| s / patch | at or below the bar (worst case) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in res["rows"]:
        ok = "yes" if r["rmse_worst"] <= bar["rmse_worst"] else ""
        lines.append(f"| {r['solver']} | {r['spacing']} | {r['steps']} | {r['network_evaluations']} | "
                     f"{r['model_passes']} | {r['rmse_mean']:.3f} | {r['rmse_worst']:.3f} | {r['max_abs_worst']:.2f} | "
                     f"{r['s_per_patch']:.3f} | {ok} |")
    lines += ["", "Smallest step count at or below the bar (worst case / mean):", ""]
    for key, v in res["smallest_meeting_bar"].items():
        lines.append(f"- {key}: {v['worst_case'] or 'none measured'} / {v['mean'] or 'none measured'}")
    lines += ["", "Network evaluations = guided batches (the fast sampler runs the conditional and unconditional passes "
              "as one batch); model passes = 2 x that (the public sampler's count). Wall times are from this run, on "
              "this machine, under its load (load average at start "
              f"{res['machine']['load_average_at_start'][0]:.1f}): ratios between rows are the claim, not the "
              "absolute seconds. What this does not show: fidelity of the renders to their maps (a solver that "
              "matches the ODE matches the reference protocol's renders; `benchmarks/fidelity.py` judges those), "
              "other networks, other entry timesteps.", ""]
    return "\n".join(lines)


def figure(res: dict[str, Any], path: Path) -> None:
    """Worst-case and mean RMSE against network evaluations (log scales), one line per solver and spacing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in res["rows"]:
        groups.setdefault(f"{r['solver']} ({r['spacing']})", []).append(r)
    for ax, key, title in ((axes[0], "rmse_worst", "worst case over maps"), (axes[1], "rmse_mean", "mean over maps")):
        for label, rows in groups.items():
            rows = sorted(rows, key=lambda r: r["steps"])
            ax.plot([r["network_evaluations"] for r in rows], [max(r[key], 1e-6) for r in rows], "o-", ms=3,
                    label=label)
        ax.axhline(res["bar"][key], color="k", ls="--", lw=1, label="55 DDIM steps (reference protocol)")
        ax.axvline(11, color="grey", ls=":", lw=1, label="11 evaluations (5x fewer)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = sorted({r["network_evaluations"] for r in res["rows"]} & {5, 6, 8, 10, 12, 15, 20, 55})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("network evaluations per patch (guided batches)")
        ax.set_title(f"ODE error, {title}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("RMSE to the converged solution (0-255)")
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Partial-noise solvers from t = {T_START} on {res['n_maps']} real CoNSeP maps "
                 f"({res['config']['size']} px, guidance 1.5)", fontsize=11)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


# ----------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=DATA_ROOT, help="consep_256 (or its train/ folder)")
    ap.add_argument("--weights", type=Path, default=WEIGHTS)
    ap.add_argument("--size", type=int, default=64, help="crop side at 20x (64: the SDM's training size; 128: whole patches)")
    ap.add_argument("--per-tile", type=int, default=2, help="validation windows per tile (x3 maps: real, balance, enlarge)")
    ap.add_argument("--ref-steps", type=int, default=200, help="steps of the converged reference and its cross-check")
    ap.add_argument("--ddim-unit-maps", type=int, default=3, help="maps also solved by DDIM with all 541 unit steps "
                    "(a cross-check of the reference; 0: none)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--plan", default=None, help="settings to measure instead of the default plan, e.g. "
                    "'unipc/logsnr:8,10,12;dpmpp_2m/linear:10' (solver/spacing:steps; ...)")
    ap.add_argument("--max-maps", type=int, default=None, help="measure only the first N maps")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 maps at 32 px, a few settings, 20-step reference")
    args = ap.parse_args(argv)
    if args.quick:
        args.ref_steps, args.per_tile, args.size, args.ddim_unit_maps = min(args.ref_steps, 20), 1, 32, 0
        args.max_maps = min(args.max_maps or 3, 3)
    args.plan = parse_plan(args.plan) if args.plan else (QUICK_PLAN if args.quick else FULL_PLAN)
    return args


def parse_plan(text: str) -> dict[tuple[str, str], list[int]]:
    """``'unipc/logsnr:8,10;ddim/linear:20'`` -> ``{("unipc", "logsnr"): [8, 10], ("ddim", "linear"): [20]}``."""
    from diffmix_aug.diffusion.schedule import SPACINGS
    from diffmix_aug.sampling.solvers import SOLVERS

    plan: dict[tuple[str, str], list[int]] = {}
    for item in filter(None, (p.strip() for p in text.split(";"))):
        try:
            head, counts = item.split(":")
            solver, spacing = head.split("/")
            steps = [int(c) for c in counts.split(",") if c.strip()]
        except ValueError:
            raise SystemExit(f"--plan item {item!r} must read solver/spacing:steps,steps (e.g. unipc/logsnr:8,10)") from None
        if solver not in SOLVERS or spacing not in SPACINGS or not steps or min(steps) < 1:
            raise SystemExit(f"--plan item {item!r}: solver in {list(SOLVERS)}, spacing in {list(SPACINGS)}, steps >= 1")
        plan[(solver, spacing)] = steps
    return plan


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from diffmix_aug.sampling.ddim import ModelCaches
    from diffmix_aug.sdm import load_sdm

    args = parse_args(argv)
    root = Path(args.data_root)
    if not any((r / "Labels").is_dir() for r in (root, root / "train", root / "Train")):
        raise SystemExit(f"no CoNSeP patches at {root} (../shared/data/consep_256; see its README): nothing measured")
    torch.set_num_threads(args.threads)
    t_begin = time.perf_counter()
    print(f"[solver] loading CoNSeP validation maps from {root} ...", flush=True)
    maps = load_maps(root, args.size, args.per_tile, args.seed)
    if args.max_maps:
        maps = maps[: args.max_maps]
    model = load_sdm(args.weights, device="cpu").eval()
    num_classes = model.label_channels - 1
    x0, cond = encode(maps, num_classes)
    z = start_noise(len(maps), args.size, args.seed)
    caches = ModelCaches(model)
    plan = args.plan
    n_all, n_unit = len(maps), min(args.ddim_unit_maps, len(maps))
    jobs = [("reference", {**REFERENCE, "steps": args.ref_steps}, n_all), ("bar", dict(BAR), n_all),
            ("cross_check", {**CROSS_CHECK, "steps": args.ref_steps}, n_all)]
    if n_unit:  # first order, 541 evaluations: on the first maps only
        jobs.append(("cross_check", {"solver": "ddim", "spacing": "linear", "steps": T_START + 1}, n_unit))
    jobs += [("row", {"solver": s, "spacing": sp, "steps": n}, n_all) for (s, sp), counts in plan.items() for n in counts]
    total_evals = sum(j[1]["steps"] * j[2] for j in jobs)
    print(f"[solver] {n_all} maps x {len(jobs)} settings = {total_evals} patch-evaluations", flush=True)
    rows, cross, bar, ref = [], {}, None, None
    done = 0
    with torch.no_grad(), tqdm(total=total_evals, desc="solver bench", unit="patch-eval") as pbar:
        for role, setting, n in jobs:
            out, seconds = run_setting(model, caches, x0[:n], cond[:n], z[:n], batch=args.batch, **setting)
            pbar.update(setting["steps"] * n)
            done += setting["steps"] * n
            if role == "reference":
                ref = out
                rate = sum(t for t, _ in seconds) / done
                pbar.write(f"[solver] reference done: {rate * 1e3:.0f} ms per patch-evaluation, about "
                           f"{(total_evals - done) * rate / 60:.0f} min left")
                continue
            err = errors_255(out, ref[:n])
            row = {**setting, "maps": n, "network_evaluations": setting["steps"], "model_passes": 2 * setting["steps"],
                   **summarise(err), **per_patch_seconds(seconds), "per_map_rmse": err["rmse"]}
            if role == "bar":
                bar = row
                rows.append(row)
            elif role == "cross_check":
                cross[f"{setting['solver']}/{setting['spacing']}/{setting['steps']}"] = row
            else:
                rows.append(row)
    smallest = smallest_meeting(rows, bar)
    kinds = [m["kind"] for m in maps]
    res = {"benchmark": "solver", "command": " ".join(["python", "benchmarks/solver.py", *(argv if argv is not None
                                                                                         else sys.argv[1:])]),
           "config": {"size": args.size, "per_tile": args.per_tile, "ref_steps": args.ref_steps, "batch": args.batch,
                      "ddim_unit_maps": n_unit,
                      "seed": args.seed, "quick": args.quick, "t_start": T_START, "guidance_scale": 1.5,
                      "weights": Path(args.weights).name, "reference": REFERENCE, "cross_check": CROSS_CHECK,
                      "bar": BAR, "plan": {f"{s}/{sp}": v for (s, sp), v in plan.items()},
                      "error_scale": "0-255 float (x + 1) * 127.5, before uint8 rounding"},
           "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                       "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "processor": platform.processor(), "load_average_at_start": list(os.getloadavg())},
           "n_maps": len(maps), "maps": [{"name": m["name"], "kind": m["kind"]} for m in maps],
           "maps_by_kind": {k: kinds.count(k) for k in dict.fromkeys(kinds)},
           "bar": bar, "cross_checks": cross, "rows": rows, "smallest_meeting_bar": smallest,
           "attribution": ATTRIBUTION}
    res["wall_s"] = time.perf_counter() - t_begin
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "solver.json", json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    atomic_write_text(args.out / "solver.md", md)
    figure(res, args.out / "solver.png")
    print(md)
    print(f"wrote {args.out / 'solver.json'}, solver.md, solver.png ({res['wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
