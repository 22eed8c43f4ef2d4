"""Two samplers' fidelity on the same maps: is the default's within the seed spread of the reference protocol's?

    python -m benchmarks.fidelity_compare \\
        --candidate benchmarks/results/consep/fidelity.json \\
        --reference benchmarks/results/consep/fidelity_reference/fidelity.json \\
        --out benchmarks/results/consep/fidelity_solver

Both inputs are ``benchmarks/fidelity.py`` runs with the same judges (same seeds, same training
tiles, same validation windows and maps) and different render settings (``--solver``, ``--spacing``,
``--render-steps``). Each side may be several runs of one sampler with different ``--render-seed``
(the renders' noise draws): then its spread includes the renderer's own seed variation, not only the
judges'. For every figure of the SDM's renders (label fidelity, type fidelity, realism) the table
gives each side's mean ± sd over all its seeds, the difference, whether it lies within the
reference's seed spread (``|Δ| <= sd`` of the reference) and the paired differences. Writes
``<out>.json`` and ``<out>.md`` (rendered from the JSON).

    python -m benchmarks.fidelity_compare \\
        --candidate unipc10/fidelity.json unipc10_rs1/fidelity.json unipc10_rs2/fidelity.json \\
        --reference ddim55/fidelity.json ddim55_rs1/fidelity.json ddim55_rs2/fidelity.json --out cmp
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
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


def figures(r: dict[str, Any]) -> dict[str, list[float]]:
    """The SDM figures of one ``fidelity.json``, by name: the value per judge seed."""
    ps = r["per_seed"]
    out: dict[str, list[float]] = {}
    for key, lab in LABEL_SETS.items():
        seeds = [s[key] for s in ps["label_fidelity"]]
        out[f"label: {lab}, PQ"] = [m["pq"] for m in seeds]
        out[f"label: {lab}, PQ / real"] = [m["pq_ratio"] for m in seeds]
        out[f"label: {lab}, F1 detection"] = [m["f1_detection"] for m in seeds]
        out[f"label: {lab}, F1 misc"] = [m["f1_per_type"]["1"] for m in seeds]
    for c, name in NAMES.items():
        out[f"type: SDM(enlarged map), {name} read as {name}"] = [s["sdm_enlarge"][c]["share"]
                                                                  for s in ps["type_fidelity"]]
    out["type: SDM pasted misc, read as misc"] = [s["sdm_pasted"]["1"]["share"] for s in ps["type_fidelity"]]
    out["realism: two-sample AUC of the SDM's renders"] = [s["sdm"] for s in ps["realism"]]
    return out


def _runs(runs: dict[str, Any] | list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    """One or more ``fidelity.json`` runs of one sampler, checked: same sampler, distinct ``render_seed``."""
    runs = [runs] if isinstance(runs, dict) else list(runs)
    if not runs:
        raise ValueError(f"{role}: give at least one fidelity.json")
    settings = {json.dumps({k: r["sampler"].get(k) for k in SAMPLER_KEYS}) for r in runs}
    if len(settings) > 1:
        raise ValueError(f"{role}: the runs use different samplers ({sorted(settings)}); give the runs of one "
                         "sampler, repeated with --render-seed")
    seeds = [int(r.get("render_seed", 0)) for r in runs]
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"{role}: render seeds {seeds} repeat; repeat a run with another --render-seed")
    return runs


def _finite(x: Any) -> bool:
    return x is not None and not math.isnan(x)


def _mean_sd(v: list[float]) -> list[float] | None:
    a = [float(x) for x in v if _finite(x)]
    if not a:
        return None
    m = sum(a) / len(a)
    sd = math.sqrt(sum((x - m) ** 2 for x in a) / (len(a) - 1)) if len(a) > 1 else 0.0
    return [m, sd]


def compare(candidate: dict[str, Any] | list[dict[str, Any]],
            reference: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
    """Row per figure: both samplers' mean ± sd over all their seeds, the difference, within the reference's sd.

    Each side is one ``fidelity.json`` run or several runs of the same sampler with different
    ``--render-seed`` (the renders' noise draws; maps and judges the same). A side's sd is over all its
    (render seed, judge seed) values: the protocol's own seed spread. With one run per side this is the
    sd over judge seeds. Paired differences: per render seed that both sides ran (same noise draws,
    same judges: the mean over judge seeds), or per judge seed when each side has one run.

    Raises:
        ValueError: the runs differ in anything but the render settings and seed (judges, tiles,
            windows), or one side mixes samplers or repeats a render seed.
    """
    cands, refs = _runs(candidate, "candidate"), _runs(reference, "reference")
    same = ("validation_tiles", "validation_windows", "judge_train_patches", "where", "quick")
    first = refs[0]
    for run in cands + refs:
        diff = [k for k in same if run.get(k) != first.get(k)]
        if diff:
            raise ValueError(f"the fidelity runs differ in {diff}: compare runs with the same judges and maps "
                             "(same fidelity.py options except --solver, --spacing, --render-steps, --render-seed)")
    fa, fb = [figures(r) for r in cands], [figures(r) for r in refs]
    sa = {int(r.get("render_seed", 0)): f for r, f in zip(cands, fa)}
    sb = {int(r.get("render_seed", 0)): f for r, f in zip(refs, fb)}
    both = sorted(set(sa) & set(sb))
    by_render = len(cands) > 1 or len(refs) > 1
    rows = []
    for name in fa[0]:
        pooled_a = [v for f in fa for v in f[name]]
        pooled_b = [v for f in fb for v in f[name]]
        ma, mb = _mean_sd(pooled_a), _mean_sd(pooled_b)
        bad = ma is None or mb is None
        delta = None if bad else ma[0] - mb[0]
        if by_render:  # per render seed run on both sides: the difference of the judge-seed means
            paired = []
            for k in both:
                x, y = _mean_sd(sa[k][name]), _mean_sd(sb[k][name])
                paired.append(None if x is None or y is None else x[0] - y[0])
        else:  # one run each: the same judge seed scoring both runs' renders
            paired = [x - y if _finite(x) and _finite(y) else None
                      for x, y in zip(fa[0][name], fb[0][name])]
        render_sd = _mean_sd([m[0] for m in (_mean_sd(f[name]) for f in fb) if m is not None])
        rows.append({"figure": name, "candidate": ma or [float("nan")] * 2, "reference": mb or [float("nan")] * 2,
                     "delta": delta, "delta_per_seed": paired,
                     "reference_render_seed_sd": render_sd[1] if render_sd and len(refs) > 1 else None,
                     "within_reference_sd": None if bad else bool(abs(delta) <= mb[1])})
    judged = [r for r in rows if r["within_reference_sd"] is not None]

    def side(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {"sampler": {k: runs[0]["sampler"].get(k) for k in SAMPLER_KEYS},
                "s_per_render": runs[0]["s_per_render"], "command": runs[0]["command"],
                "render_seeds": [int(r.get("render_seed", 0)) for r in runs],
                "commands": [r["command"] for r in runs]}

    return {"candidate": side(cands), "reference": side(refs), "validation_windows": first["validation_windows"],
            "paired_by": "render_seed" if by_render else "judge_seed", "paired_render_seeds": both,
            "rows": rows, "within": sum(r["within_reference_sd"] for r in judged), "judged": len(judged)}


def _ms(x: list[float] | None) -> str:
    return "n/a" if x is None or x[0] is None or math.isnan(x[0]) else f"{x[0]:.3f} ± {x[1]:.3f}"


def _sampler(s: dict[str, Any]) -> str:
    return (f"{s['sampler']['solver']}, {s['sampler']['denoising_steps']} steps ({s['sampler']['spacing']} grid) "
            f"from t = {s['sampler']['entry_timestep']}, guidance {s['sampler']['guidance_scale']}")


def _side(s: dict[str, Any]) -> str:
    seeds = s.get("render_seeds", [0])
    runs = (f"render seed {seeds[0]}" if len(seeds) == 1
            else f"{len(seeds)} runs, render seeds {', '.join(map(str, seeds))}")
    cmds = "; ".join(f"`{c}`" for c in s.get("commands", [s["command"]]))
    return f"{_sampler(s)}; {s['s_per_render']} s per render; {runs}: {cmds}"


def markdown(c: dict[str, Any]) -> str:
    """``<out>.md`` from the comparison JSON."""
    solver_md = c.get("solver_md", "../solver/solver.md")  # the solver results, relative to the markdown
    cand, ref = c["candidate"], c["reference"]
    by_render = c.get("paired_by") == "render_seed"
    n_ref = len(ref.get("render_seeds", [0]))
    spread = (f"over all of a side's seeds ({n_ref} render seeds x its judge seeds for the reference)" if by_render
              else "over judge seeds")
    per = ("Δ per render seed: both samplers from the same noise draws, scored by the same judges (paired; render "
           f"seeds {', '.join(map(str, c.get('paired_render_seeds', [])))})" if by_render
           else "Δ per seed: the same judge scoring both runs' renders (paired)")
    head = "| Figure | candidate | reference | Δ | within | Δ per seed |"
    rule = "|---|---|---|---|---|---|"
    if by_render:
        head = "| Figure | candidate | reference | reference: sd over render seeds | Δ | within | Δ per render seed |"
        rule = "|---|---|---|---|---|---|---|"
    L = ["# Fidelity of two samplers' renders on the same maps and judges (CoNSeP validation tiles)", "",
         "Rendered by `python -m benchmarks.fidelity_compare` from `benchmarks/fidelity.py` runs with the same "
         f"judges, tiles and maps ({c.get('validation_windows')} validation windows, each rendered under an enlarged, a "
         "balanced and a swapped map); do not edit by hand.", "",
         f"- candidate: {_side(cand)}",
         f"- reference: {_side(ref)}", "",
         f"Each figure: mean ± sd {spread}; Δ = candidate - reference; within = |Δ| <= the reference's sd; {per}.",
         "", head, rule]
    for r in c["rows"]:
        d = "n/a" if r["delta"] is None else f"{r['delta']:+.3f}"
        w = "n/a" if r["within_reference_sd"] is None else ("yes" if r["within_reference_sd"] else "**no**")
        ps = ", ".join("n/a" if x is None else f"{x:+.3f}" for x in r.get("delta_per_seed", []))
        if by_render:
            rs = r.get("reference_render_seed_sd")
            rs = "n/a" if rs is None else f"{rs:.3f}"
            L.append(f"| {r['figure']} | {_ms(r['candidate'])} | {_ms(r['reference'])} | {rs} | {d} | {w} | {ps} |")
        else:
            L.append(f"| {r['figure']} | {_ms(r['candidate'])} | {_ms(r['reference'])} | {d} | {w} | {ps} |")
    L += ["", f"**{c['within']} of {c['judged']} figures** lie within the reference's seed spread.", "",
          "What this does not show: the judges are small networks trained here (few seeds: the sd is itself "
          "uncertain), and the renders are scored by the same judges in both runs, so a difference within the "
          "spread is no proof that the two samplers' outputs are alike; the exact per-patch distance of each setting "
          f"from the converged render is in [the solver results]({solver_md}).", ""]
    return "\n".join(L)


def _where(path: Path) -> str:
    """``path`` relative to the repository when inside it (so a committed comparison can be recomputed)."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidate", type=Path, nargs="+", required=True,
                    help="fidelity.json of the sampler under test (several: its runs with other --render-seed)")
    ap.add_argument("--reference", type=Path, nargs="+", required=True,
                    help="fidelity.json of the reference protocol (several: its runs with other --render-seed)")
    ap.add_argument("--out", type=Path, required=True, help="output path without suffix (.json and .md are written)")
    args = ap.parse_args(argv)
    c = compare([json.loads(p.read_text()) for p in args.candidate], [json.loads(p.read_text()) for p in args.reference])
    c["inputs"] = {"candidate": [_where(p) for p in args.candidate], "reference": [_where(p) for p in args.reference]}
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
