"""Two samplers' fidelity on the same maps: is the default's within the seed spread of the reference protocol's?

    python -m benchmarks.fidelity_compare \\
        --candidate benchmarks/results/consep/fidelity.json \\
        --reference benchmarks/results/consep/fidelity_reference/fidelity.json \\
        --out benchmarks/results/consep/fidelity_solver

Both inputs are ``benchmarks/fidelity.py`` runs with the same judges (same seeds, same training
tiles, same validation windows and maps) and different render settings (``--solver``, ``--spacing``,
``--render-steps``). For every figure of the SDM's renders (label fidelity, type fidelity, realism)
the table gives each run's mean ± sd over judge seeds, the difference, and whether it lies within
the reference run's seed spread (``|Δ| <= sd`` of the reference). Writes ``<out>.json`` and
``<out>.md`` (rendered from the JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report_io import json_default
from diffmix_aug._io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"1": "misc", "2": "inflammatory", "3": "epithelial", "4": "spindle"}
LABEL_SETS = {"sdm_enlarge": "SDM(enlarged map)", "sdm_balance": "SDM(balanced map)", "swap_vs_B": "swap, vs B"}
SAMPLER_KEYS = ("solver", "denoising_steps", "spacing", "entry_timestep", "guidance_scale")


def figures(r: dict[str, Any]) -> dict[str, tuple[list[float], list[float]]]:
    """The SDM figures of one ``fidelity.json``, by name: ``([mean, sd] over judge seeds, per-seed values)``."""
    lf, tf, ps = r["label_fidelity"], r["type_fidelity"], r["per_seed"]
    out: dict[str, tuple[list[float], list[float]]] = {}

    def label(name: str, key: str, get: Callable[[dict[str, Any]], float]) -> None:
        out[name] = (get(lf[key]), [get(s[key]) for s in ps["label_fidelity"]])

    for key, lab in LABEL_SETS.items():
        label(f"label: {lab}, PQ", key, lambda m: m["pq"])
        label(f"label: {lab}, PQ / real", key, lambda m: m["pq_ratio"])
        label(f"label: {lab}, F1 detection", key, lambda m: m["f1_detection"])
        label(f"label: {lab}, F1 misc", key, lambda m: m["f1_per_type"]["1"])
    for c, name in NAMES.items():
        out[f"type: SDM(enlarged map), {name} read as {name}"] = (
            tf["sdm_enlarge"][c]["share"], [s["sdm_enlarge"][c]["share"] for s in ps["type_fidelity"]])
    out["type: SDM pasted misc, read as misc"] = (tf["sdm_pasted"]["1"]["share"],
                                                  [s["sdm_pasted"]["1"]["share"] for s in ps["type_fidelity"]])
    out["realism: two-sample AUC of the SDM's renders"] = (r["realism"]["sdm"], [s["sdm"] for s in ps["realism"]])
    return out


def compare(candidate: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Row per figure: both runs' ``[mean, sd]``, the difference and whether it is within the reference's sd.

    Raises:
        ValueError: the runs differ in anything but the render settings (judges, tiles, windows).
    """
    same = ("validation_tiles", "validation_windows", "judge_train_patches", "where", "quick")
    diff = [k for k in same if candidate.get(k) != reference.get(k)]
    if diff:
        raise ValueError(f"the two fidelity runs differ in {diff}: compare runs with the same judges and maps "
                         "(same fidelity.py options except --solver, --spacing, --render-steps)")
    a, b = figures(candidate), figures(reference)
    rows = []
    for name in a:
        ((ma, sa), pa), ((mb, sb), pb) = a[name], b[name]
        bad = any(x is None or math.isnan(x) for x in (ma, mb, sb))
        delta = None if bad else ma - mb
        paired = [None if x is None or y is None or math.isnan(x) or math.isnan(y) else x - y for x, y in zip(pa, pb)]
        rows.append({"figure": name, "candidate": [ma, sa], "reference": [mb, sb], "delta": delta,
                     "delta_per_seed": paired, "within_reference_sd": None if bad else bool(abs(delta) <= sb)})
    judged = [r for r in rows if r["within_reference_sd"] is not None]
    return {"candidate": {"sampler": {k: candidate["sampler"].get(k) for k in SAMPLER_KEYS},
                          "s_per_render": candidate["s_per_render"], "command": candidate["command"]},
            "reference": {"sampler": {k: reference["sampler"].get(k) for k in SAMPLER_KEYS},
                          "s_per_render": reference["s_per_render"], "command": reference["command"]},
            "validation_windows": candidate["validation_windows"], "rows": rows, "within": sum(r["within_reference_sd"] for r in judged), "judged": len(judged)}


def _ms(x: list[float] | None) -> str:
    return "n/a" if x is None or x[0] is None or math.isnan(x[0]) else f"{x[0]:.3f} ± {x[1]:.3f}"


def _sampler(s: dict[str, Any]) -> str:
    return (f"{s['sampler']['solver']}, {s['sampler']['denoising_steps']} steps ({s['sampler']['spacing']} grid) "
            f"from t = {s['sampler']['entry_timestep']}, guidance {s['sampler']['guidance_scale']}")


def markdown(c: dict[str, Any]) -> str:
    """``<out>.md`` from the comparison JSON."""
    solver_md = c.get("solver_md", "../solver/solver.md")  # the solver results, relative to the markdown
    cand, ref = c["candidate"], c["reference"]
    L = ["# Fidelity of two samplers' renders on the same maps and judges (CoNSeP validation tiles)", "",
         "Rendered by `python -m benchmarks.fidelity_compare` from two `benchmarks/fidelity.py` runs with the same "
         f"judges, tiles and maps ({c.get('validation_windows')} validation windows, each rendered under an enlarged, a "
         "balanced and a swapped map); do not edit by hand.", "",
         f"- candidate: {_sampler(cand)}; {cand['s_per_render']} s per render; `{cand['command']}`",
         f"- reference: {_sampler(ref)}; {ref['s_per_render']} s per render; `{ref['command']}`", "",
         "Each figure: mean ± sd over judge seeds; Δ = candidate - reference; within = |Δ| <= the reference's sd; "
         "Δ per seed: the same judge scoring both runs' renders (paired).",
         "", "| Figure | candidate | reference | Δ | within | Δ per seed |", "|---|---|---|---|---|---|"]
    for r in c["rows"]:
        d = "n/a" if r["delta"] is None else f"{r['delta']:+.3f}"
        w = "n/a" if r["within_reference_sd"] is None else ("yes" if r["within_reference_sd"] else "**no**")
        per = ", ".join("n/a" if x is None else f"{x:+.3f}" for x in r.get("delta_per_seed", []))
        L.append(f"| {r['figure']} | {_ms(r['candidate'])} | {_ms(r['reference'])} | {d} | {w} | {per} |")
    L += ["", f"**{c['within']} of {c['judged']} figures** lie within the reference run's seed spread.", "",
          "What this does not show: the judges are small networks trained here (few seeds: the sd is itself "
          "uncertain), and the renders are scored by the same judges in both runs, so a difference within the "
          "spread is no proof that the two samplers' outputs are alike; the exact per-patch distance of each setting "
          f"from the converged render is in [the solver results]({solver_md}).", ""]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidate", type=Path, required=True, help="fidelity.json of the sampler under test")
    ap.add_argument("--reference", type=Path, required=True, help="fidelity.json of the reference protocol")
    ap.add_argument("--out", type=Path, required=True, help="output path without suffix (.json and .md are written)")
    args = ap.parse_args(argv)
    c = compare(json.loads(args.candidate.read_text()), json.loads(args.reference.read_text()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    c["solver_md"] = Path(os.path.relpath(ROOT / "benchmarks/results/solver/solver.md",
                                          args.out.parent.resolve())).as_posix()
    text = markdown(c)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(c, indent=1, default=json_default) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
