"""Markdown tables, figures and the results page, rendered from the result JSON files only.

    python -m benchmarks.render_results            # re-render every committed result
    python -m benchmarks.render_results --check    # exit 1 when a committed markdown differs

Numbers are never typed by hand: ``ablation.md`` / ``fidelity.md`` and the results page
(``docs/results.md``) are functions of ``ablation.json`` / ``fidelity.json``, and
``tests/unit/test_render_results.py`` checks that the committed files equal their rendering.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report_io import save_figure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = {"ablation": ROOT / "benchmarks/results/consep/ablation/ablation.json",
             "fidelity": ROOT / "benchmarks/results/consep/fidelity.json"}
PAGE = ROOT / "docs/results.md"
README = ROOT / "README.md"
GLANCE = ("<!-- results-at-a-glance: rendered by python -m benchmarks.render_results; do not edit -->",
          "<!-- results-at-a-glance: end -->")

__all__ = ["ablation_markdown", "fidelity_markdown", "readme_glance", "render_ablation", "render_fidelity",
           "replace_glance", "results_page"]


# ----------------------------------------------------------------------------------- formatting


def _n(x: Any, nd: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def _ci(s: dict[str, Any], nd: int = 3, sign: bool = False) -> str:
    lo, hi = s["ci95"]
    return f"{_n(s['mean'], nd, sign)} [{_n(lo, nd, sign)}, {_n(hi, nd, sign)}]"


def _verdict(d: dict[str, Any]) -> str:
    lo, hi = d["ci95"]
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return "undefined"
    if lo > 0:
        return "higher"
    if hi < 0:
        return "lower"
    return "not resolved"


def _table(heads: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)] + ["| " + " | ".join(r) + " |" for r in rows]


# ----------------------------------------------------------------------------------- ablation


def ablation_markdown(r: dict[str, Any]) -> str:
    """``ablation.md`` of one ``ablation.json``."""
    a = r["analysis"]
    rare = r["rare_class"]["name"]
    names = r["class_names"]
    ev, h, d = r["eval"], r["harness"], r["design"]
    arms = r["arms"]
    res = a["resolvable"]
    draws = d["pool_draws"]
    L = [f"# Ablation on real tissue ({r['dataset']}): {len(arms)} arms, {len(r['seeds'])} seeds, "
         f"{draws} pool draws" + (" — QUICK SMOKE RUN, not evidence" if r["quick"] else ""), "",
         f"Command: `{r['command']}`", "",
         f"**Data.** Training: {r['split']['train']}, {r['train']['n_patches']} patches of {r['train']['window']} px. "
         f"Evaluation: {r['split']['eval']}: {ev['n_tiles']} tiles, {ev['nuclei']} nuclei, {ev['rare_nuclei']} "
         f"{rare} (prevalence {_n(ev['rare_prevalence'], 4)}).", "",
         f"**One recipe for every arm.** Class-weighted type loss (weights {', '.join(_n(w, 2) for w in h['type_weights'])}"
         f" for {', '.join(names)}), HoVer-Net's affine and photometric augmentation on {h['crop']} px training windows, "
         f"HV-target size rule {h['min_hv_area']} px and pairing radius {_n(h['pair_radius'], 1)} px (HoVer-Net's 30 px "
         f"and 12 px at 40x, scaled to the field of view); SmallHoVerNet width {h['width']}, depth {h['depth']}; "
         f"{h['iterations']} steps x batch {h['batch_size']}, Adam {h['lr']}, cosine decay. Synthetic arms replace a "
         f"share {_n(d['synthetic_ratio'], 2)} of items through `DiffMixDataset` (producer off, warm-started from the "
         f"rendered pool); seed s reads pool draw s mod {draws}.", ""]
    rc = d.get("rare_crop")
    if rc:
        if rc.get("m_balance") is not None:
            L += [f"**Rare-centred crops.** Share {_n(rc['ratio'], 3)} of items (rare nuclei per training window: "
                  f"real {_n(rc['m_real'], 2)}, rare-centred {_n(rc['m_rare_crop'], 2)}, balancing pool "
                  f"{_n(rc['m_balance'], 2)}; matching the balancing arms' exposure "
                  + ("holds" if rc["matched"] else f"needs a share of {_n(rc['ratio_matched'], 2)}, capped at 1")
                  + ").", ""]
        else:
            L += [f"**Rare-centred crops.** Share {_n(rc['ratio'], 3)} of items (set by hand).", ""]
    if r.get("sampler"):
        s = r["sampler"]
        L += [f"**Renders.** {s.get('denoising_steps')} denoising steps entering at t = {s.get('entry_timestep')} "
              f"(guidance {s.get('guidance_scale')}; the sampler's settings are in the JSON), "
              f"{_n(r['pool'].get('s_per_render'), 2)} s per render.", ""]
    g = r["gate"]
    L += [f"**Gate.** The baseline's {rare} AUROC on the evaluation tiles' ground-truth nuclei: "
          f"{_n(g['mean_auroc'])} (per seed {', '.join(_n(p['auroc']) for p in g['per_seed'])}; required >= "
          f"{g['min_auroc']}): {'passed' if g['passed'] else 'FAILED'}.", "",
          f"**Smallest difference this design resolves** ({a['n_tiles']} tiles x {len(a['seeds'])} seeds, "
          f"hierarchical bootstrap, {a['n_boot']} resamples; {_n(a['z_resolve'], 2)} x the median bootstrap standard "
          f"error of the paired differences, a two-sided 5 % test with 80 % power): {rare} AP "
          f"{_n(res.get('rare_ap'))}, {rare} F1 {_n(res.get('rare_f1'))}, PQ {_n(res.get('pq'))}, type accuracy "
          f"{_n(res.get('accuracy'))}. Smaller differences are below what it can tell apart.", "",
          f"## Primary endpoint: {rare} average precision on ground-truth nuclei", "",
          "Mean over seeds [95 % hierarchical interval over tiles and seeds]; differences paired per seed.", ""]
    rows = []
    for arm in arms:
        m = a["arms"][arm]["metrics"]
        vb = a["arms"][arm]["vs_baseline"].get("rare_ap")
        rows.append([arm, _ci(m["rare_ap"]), "—" if vb is None else _ci(vb, sign=True),
                     "—" if vb is None else f"{vb['seeds_better']}/{vb['seeds_worse']} of {len(vb['per_seed'])}",
                     "—" if vb is None else _verdict(vb), _ci(m["rare_auroc"])])
    L += _table(["Arm", f"{rare} AP", "Δ vs baseline", "seeds better / worse", "verdict", f"{rare} AUROC"], rows)
    if a.get("pairs"):
        L += ["", "Head to head (paired per seed, a − b):", ""]
        rows = [[k, _ci(v["rare_ap"], sign=True), f"{v['rare_ap']['seeds_better']}/{v['rare_ap']['seeds_worse']}",
                 _verdict(v["rare_ap"]), _ci(v["accuracy"], sign=True)] for k, v in a["pairs"].items()]
        L += _table(["Comparison", f"Δ {rare} AP", "seeds a better / worse", "verdict", "Δ type accuracy"], rows)
    L += ["", "## Secondary endpoints", "",
          f"{rare} F1 is HoVer-Net's per-type F1 after detection (pairing radius {_n(h['pair_radius'], 1)} px); "
          "TP / FP / FN are means per seed over the evaluation tiles (FP and FN include unpaired detections).", ""]
    type_ids = r["type_ids"]
    rows = []
    for arm in arms:
        m = a["arms"][arm]["metrics"]
        rows.append([arm, _ci(m["rare_f1"]), f"{_n(m['rare_tp']['mean'], 1)} / {_n(m['rare_fp']['mean'], 1)} / "
                     f"{_n(m['rare_fn']['mean'], 1)}", _ci(m["pq"]), _ci(m["accuracy"]), _ci(m["gt_accuracy"])]
                    + [_ci(m[f"f1_{c}"]) for c in type_ids if c != r["rare_class"]["id"]])
    L += _table(["Arm", f"{rare} F1", "TP / FP / FN", "PQ", "type accuracy", "type accuracy (GT nuclei)"]
                + [f"F1 {names[c]}" for c in type_ids if c != r["rare_class"]["id"]], rows)
    L += ["", "Paired differences with the baseline:", ""]
    rows = []
    keys = ["rare_f1", "pq", "accuracy", "gt_accuracy"] + [f"f1_{c}" for c in type_ids if c != r["rare_class"]["id"]]
    for arm in arms[1:]:
        vb = a["arms"][arm]["vs_baseline"]
        rows.append([arm] + [_ci(vb[k], sign=True) for k in keys])
    L += _table(["Arm", f"Δ {rare} F1", "Δ PQ", "Δ type accuracy", "Δ type accuracy (GT)"]
                + [f"Δ F1 {names[c]}" for c in type_ids if c != r["rare_class"]["id"]], rows)
    L += ["", "## Rare exposure served (mean per run)", "",
          "Items are 128 px patches at 20x (or rare-centred windows); 'seen' counts the rare nuclei inside the "
          "augmented training windows the network was fed. Synthetic arms: what `DiffMixDataset.stats()` reported, "
          "summed over the run's epochs.", ""]
    rows = []
    for arm in arms:
        reps = r["exposure"][arm]

        def mean(key, reps=reps):
            vals = [x[key] for x in reps if x.get(key) is not None]
            return sum(vals) / len(vals) if vals else float("nan")

        ds = [x["dataset"] for x in reps if "dataset" in x]
        served = (f"{sum(x['synthetic_served'] for x in ds) / len(ds):.0f} / {sum(x['synthetic_asked'] for x in ds) / len(ds):.0f}"
                  if ds else "—")
        pool = (f"{sum(x['pool_patches_served'] for x in ds) / len(ds):.0f}, "
                f"max {max(x['pool_serves_max'] for x in ds)}" if ds else "—")
        rows.append([arm, f"{mean('items'):.0f}", f"{mean('replaced_items'):.0f}", f"{mean('rare_instances_items'):.0f}",
                     f"{mean('rare_instances_seen'):.0f}", f"{mean('rare_instances_seen_replaced'):.0f}", served, pool])
    L += _table(["Arm", "items", "replaced items", "rare nuclei in items", "rare nuclei seen", "seen in replaced items",
                 "DiffMixDataset synthetic served / asked", "pool patches served, max serves"], rows)
    if r.get("pool"):
        p = r["pool"]
        L += ["", "## The pool: balancing on whole tiles, then crops", "",
              f"{p['size']} crops of {p['patch']} px per kind and draw, tile and position uniform; balancing with "
              f"GradMix's label mixing on every whole training tile (border {p['field_of_view']['border']} px, donors "
              f"from the whole training split), enlarging shift {p['field_of_view']['max_shift']} px. Real training "
              f"patches: {rare} share of nuclei {_n(p['real_patches_rare_share'], 3)}.", ""]
        kinds = list(p["per_draw"][0]["rare_share"])
        rows = [[str(dd["draw"])] + [f"{_n(dd['rare_share'][k], 3)} ({_n(dd['rare_per_crop'][k], 1)})" for k in kinds]
                for dd in p["per_draw"]]
        L += _table(["draw"] + [f"{k}: {rare} share (per crop)" for k in kinds], rows)
        L += [""]
        rows = [[str(dd["draw"]), str(dd["balancing"]["donors"]), str(dd["balancing"]["donors_used"]),
                 str(dd["balancing"]["pastes"]), _n(dd["balancing"]["pastes_per_donor_mean"], 1),
                 str(dd["balancing"]["pastes_per_donor_max"]), str(dd["balancing"]["majors_converted"])]
                for dd in p["per_draw"]]
        L += _table(["draw", "donors", "donors used", "pastes", "pastes per donor", "max", "majors converted"], rows)
    t = r["timing_seconds"]
    runs = r["runs"]
    per_run = sum(x["train_seconds"] + x["eval_seconds"] for x in runs) / max(1, len(runs))
    L += ["", "## Cost", "",
          f"{t['total'] / 60:.1f} min in all on {r['machine']['cpu_count']} cores ({r['machine']['jobs']} jobs x "
          f"{r['machine']['threads_per_job']} threads): pool {t.get('pool', 0) / 60:.1f} min, mean run "
          f"{per_run:.0f} s (train + whole-tile evaluation). Torch {r['machine']['torch']}.", "",
          "## What this does not show", "",
          f"- Only {ev['n_tiles']} evaluation tiles holding {ev['rare_nuclei']} {rare} nuclei: the intervals are wide, "
          f"and differences below {_n(res.get('rare_ap'))} AP are not resolved either way.",
          "- A small network trained for minutes on 2 CPU cores at 20x, with renders of a CPU-sized SDM: the size of an "
          "effect at HoVer-Net's scale, with the reference's SDM, is not measured here.",
          "- One dataset (CoNSeP), one rare class; the SDM's training tiles are the downstream training tiles.", ""]
    return "\n".join(L)


def ablation_figures(r: dict[str, Any], out: Path) -> list[Path]:
    """``rare_ap.png`` (paired differences, forest plot) and ``f1_per_type.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, arms, rare = r["analysis"], r["arms"], r["rare_class"]["name"]
    paths = []
    others = arms[1:]
    fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(others) + 1.6))
    res = a["resolvable"].get("rare_ap")
    if res is not None and not math.isnan(res):
        ax.axvspan(-res, res, color="0.9", label=f"not resolved (±{res:.3f})")
    ax.axvline(0, color="k", lw=0.8)
    for i, arm in enumerate(others):
        d = a["arms"][arm]["vs_baseline"]["rare_ap"]
        lo, hi = d["ci95"]
        ax.errorbar([d["mean"]], [i], xerr=[[d["mean"] - lo], [hi - d["mean"]]], fmt="o", color=f"C{i}", capsize=3,
                    label=f"{arm}: {d['mean']:+.3f}")
        ax.plot(d["per_seed"], [i] * len(d["per_seed"]), "x", color=f"C{i}", alpha=0.5)
    ax.set_yticks(range(len(others)), others)
    ax.invert_yaxis()
    ax.set_xlabel(f"Δ {rare} AP vs baseline (mean, 95 % hierarchical CI; x = seeds)")
    ax.set_title(f"{r['dataset']}: {rare} AP on ground-truth nuclei, paired with the baseline", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    paths.append(save_figure(fig, out / "rare_ap.png"))
    plt.close(fig)
    type_ids, names = r["type_ids"], r["class_names"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.7 * len(type_ids), 3.6))
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        m = a["arms"][arm]["metrics"]
        vals = [m[f"f1_{c}"]["mean"] for c in type_ids]
        err = [[v - m[f"f1_{c}"]["ci95"][0] for v, c in zip(vals, type_ids)],
               [m[f"f1_{c}"]["ci95"][1] - v for v, c in zip(vals, type_ids)]]
        ax.bar([j + i * width - 0.4 + width / 2 for j in range(len(type_ids))], vals, width, yerr=err, label=arm,
               capsize=2)
    ax.set_xticks(range(len(type_ids)), [names[c] for c in type_ids])
    ax.set_ylabel("F1 per type (mean, 95 % CI)")
    ax.set_ylim(0, 1)
    ax.set_title(f"{r['dataset']}: per-type F1 on {r['eval']['n_tiles']} whole evaluation tiles", fontsize=9)
    ax.legend(fontsize=7, ncol=min(4, len(arms)))
    fig.tight_layout()
    paths.append(save_figure(fig, out / "f1_per_type.png"))
    plt.close(fig)
    return paths


def render_ablation(json_path: Path, page: Path | None = None, figures: bool = True) -> list[Path]:
    """Write ``ablation.md`` (and the figures, and the results page) next to ``json_path``."""
    from diffmix_aug._io import atomic_write_text

    json_path = Path(json_path)
    r = json.loads(json_path.read_text())
    out = [json_path]
    md = json_path.with_name("ablation.md")
    atomic_write_text(md, ablation_markdown(r))
    out.append(md)
    if figures:
        out += ablation_figures(r, json_path.parent)
    if page is not None:
        fid = json_path.parent.parent / "fidelity.json"
        page = Path(page)
        atomic_write_text(page, results_page(r, json.loads(fid.read_text()) if fid.is_file() else None,
                                             _rel(json_path.parent, page.parent), _rel(fid.parent, page.parent)))
        out.append(page)
    return out


def _rel(target: Path, start: Path) -> str:
    import os

    return Path(os.path.relpath(Path(target).resolve(), Path(start).resolve())).as_posix()


# ----------------------------------------------------------------------------------- the results page


def results_page(r: dict[str, Any], fid: dict[str, Any] | None, ablation_dir: str, fidelity_dir: str) -> str:
    """The real-tissue results page: what holds, what does not, and the smallest resolvable difference."""
    a, rare, arms = r["analysis"], r["rare_class"]["name"], r["arms"]
    res = a["resolvable"].get("rare_ap")
    title = "Results on real tissue (CoNSeP)" if r["dataset"] == "consep" else f"Results on the {r['dataset']} set"
    L = [f"# {title}", "",
         "Rendered by `python -m benchmarks.render_results` from "
         f"[`ablation.json`]({ablation_dir}/ablation.json)" + (f" and [`fidelity.json`]({fidelity_dir}/fidelity.json)"
                                                              if fid else "") + "; do not edit by hand.", "",
         f"Command: `{r['command']}`" + (" (QUICK SMOKE RUN: not evidence)" if r["quick"] else ""), "",
         f"Question: does an arm raise the {rare} class's average precision on ground-truth nuclei of whole "
         f"validation tiles no part of the pipeline saw ({r['eval']['n_tiles']} tiles, {r['eval']['rare_nuclei']} "
         f"{rare} nuclei), against a baseline that learns the class (gate: AUROC {_n(r['gate']['mean_auroc'])}, "
         f"required >= {r['gate']['min_auroc']})?", "",
         f"**Smallest difference the design resolves: {_n(res)} in {rare} AP** (two-sided 5 %, 80 % power, from the "
         "hierarchical bootstrap over tiles and seeds). Differences below it are not evidence either way.", "",
         "## What holds", ""]
    holds, not_holds = [], []
    for arm in arms[1:]:
        d = a["arms"][arm]["vs_baseline"]["rare_ap"]
        v = _verdict(d)
        seeds = f"{d['seeds_better']} of {len(d['per_seed'])} seeds better"
        if v in ("higher", "lower"):
            holds.append(f"- {arm} {'raises' if v == 'higher' else 'lowers'} {rare} AP: {_ci(d, sign=True)} ({seeds}).")
        else:
            not_holds.append(f"- {arm}: Δ {rare} AP {_ci(d, sign=True)} ({seeds}): {v}.")
        for key, label in (("accuracy", "type accuracy"), ("pq", "PQ")):
            dd = a["arms"][arm]["vs_baseline"][key]
            if _verdict(dd) in ("higher", "lower"):
                holds.append(f"- {arm} {'raises' if _verdict(dd) == 'higher' else 'lowers'} {label}: "
                             f"{_ci(dd, sign=True)}.")
    L += holds or [f"- No arm's {rare} AP differs from the baseline's by more than the intervals allow."]
    L += ["", "## What does not hold (not resolved by this design)", ""]
    L += not_holds or ["- Every arm's difference is resolved."]
    comp = a.get("pairs", {}).get("diffmix-union vs diffmix-composed")
    if comp:
        d = comp["rare_ap"]
        v = _verdict(d)
        pick = {"higher": "the paper's union", "lower": "the composed maps"}.get(v)
        L += ["", "## The library's default composition", "",
              f"diffmix-union − diffmix-composed: Δ {rare} AP {_ci(d, sign=True)} "
              f"({d['seeds_better']} of {len(d['per_seed'])} seeds favour the union). "
              + (f"The evidence favours {pick} as the default." if pick else
                 "Not resolved: this design cannot choose between the two; the default stays the paper's union "
                 "(the interim one) until a design that resolves it (e.g. benchmarks/gpu_evidence.py).")]
    L += ["", f"## {rare} AP per arm", ""]
    rows = []
    for arm in arms:
        m = a["arms"][arm]["metrics"]
        vb = a["arms"][arm]["vs_baseline"].get("rare_ap")
        rows.append([arm, _ci(m["rare_ap"]), "—" if vb is None else _ci(vb, sign=True), _ci(m["rare_f1"]),
                     _ci(m["accuracy"])])
    L += _table(["Arm", f"{rare} AP", "Δ vs baseline", f"{rare} F1", "type accuracy"], rows)
    L += ["", f"![paired differences]({ablation_dir}/rare_ap.png)", "",
          f"All endpoints, exposure, the pool's rare share and pastes per donor: [`ablation.md`]({ablation_dir}/ablation.md).",
          ""]
    if fid:
        L += ["## Fidelity of the renders, beside their controls", "", fidelity_summary(fid), "",
              f"Full tables: [`fidelity.md`]({fidelity_dir}/fidelity.md).", ""]
    L += ["## What this does not show", ""]
    if r.get("sampler"):
        from diffmix_aug.sampling.presets import DEFAULT_PRESET, PRESETS

        smp = r["sampler"]
        keys = ("solver", "steps", "t_start", "spacing", "guidance_scale")
        same = all(smp.get(k) == PRESETS[DEFAULT_PRESET][k] for k in keys)
        L += [f"- The pool was rendered with {smp.get('denoising_steps')} {smp.get('solver')} steps "
              f"({smp.get('spacing')} grid) from t = {smp.get('entry_timestep')}, guidance {smp.get('guidance_scale')}"
              + (f": the library's default sampler (`\"{DEFAULT_PRESET}\"`)." if same else
                 f", not the library's default sampler (`\"{DEFAULT_PRESET}\"`: {PRESETS[DEFAULT_PRESET]['steps']} "
                 f"{PRESETS[DEFAULT_PRESET]['solver']} steps); how far each setting is from the exact render: "
                 "[solver results](../benchmarks/results/solver/solver.md).")]
    L += ["- The evidence is for a CPU-sized SDM and downstream network on 20x CoNSeP; "
          "`benchmarks/gpu_evidence.py` runs the same design at GPU scale (3-fold cross-validation by tile, one SDM "
          "per fold, the reference's 55-step renders).",
          f"- {r['eval']['n_tiles']} validation tiles are few: a real effect smaller than {_n(res)} AP can exist "
          "unseen.", ""]
    return "\n".join(L)


def readme_glance(r: dict[str, Any], page: str = "docs/results.md") -> str:
    """The README's one results table: rare AP per arm beside the baseline, and what the design resolves."""
    a, rare, arms = r["analysis"], r["rare_class"]["name"], r["arms"]
    res = a["resolvable"].get("rare_ap")
    L = [f"{rare.capitalize()} average precision on ground-truth nuclei of {r['eval']['n_tiles']} whole CoNSeP "
         f"training tiles held out from every part of the pipeline ({r['eval']['rare_nuclei']} {rare} nuclei), "
         f"{len(r['seeds'])} seeds, mean [95 % hierarchical interval over tiles and seeds]"
         + (" (QUICK SMOKE RUN: not evidence)" if r["quick"] else "") + ":", ""]
    rows = []
    for arm in arms:
        m = a["arms"][arm]["metrics"]
        vb = a["arms"][arm]["vs_baseline"].get("rare_ap")
        rows.append([arm, _ci(m["rare_ap"]), "—" if vb is None else _ci(vb, sign=True),
                     "—" if vb is None else _verdict(vb)])
    L += _table(["Arm", f"{rare} AP", "Δ vs baseline (paired)", "verdict"], rows)
    L += ["", f"Differences below {_n(res)} AP are not resolved by this design (a CPU-sized SDM and network); "
          f"what holds and what does not: [{page}]({page})."]
    return "\n".join(L)


def replace_glance(text: str, block: str) -> str:
    """``text`` with the content between the :data:`GLANCE` markers replaced by ``block``."""
    begin, end = GLANCE
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"README.md has no results block: add the two lines {begin!r} and {end!r}")
    return text[: i + len(begin)] + "\n\n" + block + "\n\n" + text[j:]


# ----------------------------------------------------------------------------------- fidelity


def fidelity_summary(f: dict[str, Any]) -> str:
    """A few lines of the fidelity result for the results page."""
    lf = f["label_fidelity"]

    def ms(x: Any) -> str:  # [mean, sd] over judge seeds
        return "n/a" if x is None or x[0] is None or math.isnan(x[0]) else f"{x[0]:.3f} ± {x[1]:.3f}"

    rows = [[k, ms(lf[k]["pq"]), ms(lf[k]["pq_ratio"])] for k in lf["order"]]
    s = f["sampler"]
    return (f"Renders: {s.get('denoising_steps')} {s.get('solver')} steps from t = {s.get('entry_timestep')}; "
            "mean ± sd over judge seeds.\n\n"
            + "\n".join(_table(["Images scored against their maps (the same patches)", "PQ", "PQ / PQ on real"], rows)))


def fidelity_markdown(f: dict[str, Any]) -> str:
    """``fidelity.md`` of one ``fidelity.json``."""
    from benchmarks.fidelity import markdown

    return markdown(f)


def render_fidelity(json_path: Path, figures: bool = True) -> list[Path]:
    """Write ``fidelity.md`` (and its figures) next to ``json_path``."""
    from benchmarks.fidelity import figures as fid_figures
    from diffmix_aug._io import atomic_write_text

    json_path = Path(json_path)
    f = json.loads(json_path.read_text())
    md = json_path.with_name("fidelity.md")
    atomic_write_text(md, fidelity_markdown(f))
    out = [json_path, md]
    if figures:
        out += fid_figures(f, json_path.parent)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare the committed markdown with the rendering")
    args = ap.parse_args(argv)
    bad = []
    for kind, path in COMMITTED.items():
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        md = path.with_name(f"{kind}.md")
        text = ablation_markdown(r) if kind == "ablation" else fidelity_markdown(r)
        if args.check:
            if not md.is_file() or md.read_text() != text:
                bad.append(md)
            if kind == "ablation" and README.read_text() != replace_glance(README.read_text(), readme_glance(r)):
                bad.append(README)
        elif kind == "ablation":
            render_ablation(path, page=PAGE)
            from diffmix_aug._io import atomic_write_text

            atomic_write_text(README, replace_glance(README.read_text(), readme_glance(r)))
        else:
            render_fidelity(path)
    if bad:
        print("stale: " + ", ".join(str(b) for b in bad) + " (run python -m benchmarks.render_results)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
