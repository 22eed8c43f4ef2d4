"""Render the model cards of the shipped SDM checkpoints (``diffmix_aug/weights/<file>.md``).

Every fact comes from the checkpoint's own metadata (architecture, classes, resolution, steps,
provenance) or from the training benchmark's JSON (command, wall time, loss); nothing is typed by
hand. ``tests/unit/test_model_cards.py`` checks that the committed cards equal this rendering.

    python benchmarks/model_cards.py          # rewrite the cards
    python benchmarks/model_cards.py --check  # exit 1 if a card is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffmix_aug.sdm.checkpoint import read_sdm_metadata
from diffmix_aug.sdm.registry import SHIPPED_CHECKPOINTS, shipped_checkpoint_path

ROOT = Path(__file__).resolve().parents[1]

#: what the metadata cannot say: purpose, data source and terms, the training JSON
CARDS = {
    "consep-20x": {
        "title": "CoNSeP SDM at 20x (CPU scale)",
        "train_json": "benchmarks/results/consep/train_sdm.json",
        "fidelity": "benchmarks/results/consep/fidelity.md",
        "data": "CoNSeP training tiles 6-27 (352 of the 432 256 px patches of `consep_256`), halved to 20x; "
                "tiles 1-5 held out for validation and never seen in training.",
        "use": "Demonstration and CPU-scale experiments with real tissue: the `tiny` preset trained for a few "
               "thousand steps on 2 CPU cores, far below the paper's scale (a 650 M-parameter SDM trained on a "
               "GPU). Its renders are coarse; train your own SDM (`diffmix-aug train-sdm`, "
               "`configs/sdm_paper_consep.yaml`) for results you report.",
        "licence": "Derived from CoNSeP (Graham et al., \"HoVer-Net: Simultaneous segmentation and "
                   "classification of nuclei in multi-tissue histology images\", Medical Image Analysis 2019). "
                   "The dataset carries no licence of its own; its authors ask for the paper to be cited. "
                   "Research use only; these weights carry the same terms.",
    },
    "toy": {
        "title": "Procedural toy SDM (demo)",
        "train_json": None,
        "fidelity": None,
        "data": "The package's procedural toy nuclei (`diffmix_aug.data.toy`): no real tissue.",
        "use": "The demo and the tests only. It renders toy patches, not H&E.",
        "licence": "MIT, as the package; no third-party data.",
    },
}


def render(name: str) -> str:
    """The markdown card of shipped checkpoint ``name``."""
    path = shipped_checkpoint_path(name)
    meta = read_sdm_metadata(path)
    card = CARDS[name]
    cfg = meta["config"]
    prov = meta.get("provenance") or {}
    mpp = meta["mpp"]
    classes = meta["class_names"] or [f"class {i}" for i in range(meta["num_classes"])]
    lines = [f"# `{name}`: {card['title']}", "",
             f"File `{SHIPPED_CHECKPOINTS[name]}` ({path.stat().st_size / 1e6:.1f} MB). Load it with "
             f"`Synthesizer.from_checkpoint(\"{name}\")` or `load_sdm(\"{name}\")`.", "",
             "| | |", "|---|---|",
             f"| data | {card['data']} |",
             f"| resolution | {'unknown (procedural)' if mpp is None else f'{mpp:g} um/px'} |",
             f"| classes | {', '.join(f'{i} {c}' for i, c in enumerate(classes))} |",
             f"| network | SDM U-Net, width {cfg.model_channels}, channel_mult {list(cfg.channel_mult)}, "
             f"{cfg.image_size} px crops, {meta['num_classes'] + 1} label channels |",
             f"| training steps | {meta['step']} |"]
    if card["train_json"]:
        tj = json.loads((ROOT / card["train_json"]).read_text())
        lines += [f"| training command | `{tj['command']}` |",
                  f"| training time | {tj['wall_s'] / 60:.0f} min ({tj['machine']}) |",
                  f"| loss (first / last 50 steps) | {tj['loss_first_50']:.4f} / {tj['loss_last_50']:.4f} |",
                  f"| source | `{card['train_json']}` |"]
    if prov.get("git_commit"):
        lines.append(f"| trained at commit | `{prov['git_commit'][:12]}` (package {prov.get('package_version', '?')}) |")
    if card["fidelity"]:
        lines.append(f"| measured fidelity | `{card['fidelity']}` in the source repository |")
    lines += ["", "## Intended use", "", card["use"], "", "## Licence and attribution", "", card["licence"], ""]
    return "\n".join(lines)


def card_path(name: str) -> Path:
    return ROOT / "diffmix_aug" / "weights" / (Path(SHIPPED_CHECKPOINTS[name]).stem + ".md")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a committed card differs from the rendering")
    args = ap.parse_args(argv)
    stale = []
    for name in SHIPPED_CHECKPOINTS:
        text, path = render(name), card_path(name)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale model cards (run python benchmarks/model_cards.py): {stale}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
