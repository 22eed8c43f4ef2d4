"""Committed result markdown equals its rendering from the committed JSON (``benchmarks/render_results.py``)."""

from __future__ import annotations

import json

import pytest

from benchmarks.render_results import (
    COMMITTED,
    GLANCE,
    PAGE,
    README,
    ROOT,
    ablation_markdown,
    fidelity_markdown,
    readme_glance,
    replace_glance,
    results_page,
)


@pytest.mark.parametrize("kind", sorted(COMMITTED))
def test_committed_markdown_is_the_rendering(kind):
    path = COMMITTED[kind]
    if not path.is_file():
        pytest.skip(f"{path.relative_to(ROOT)} is not committed yet (the lead's full run writes it)")
    r = json.loads(path.read_text())
    text = ablation_markdown(r) if kind == "ablation" else fidelity_markdown(r)
    assert path.with_name(f"{kind}.md").read_text() == text, "stale: run python -m benchmarks.render_results"


def test_results_page_is_the_rendering():
    if not COMMITTED["ablation"].is_file():
        pytest.skip("benchmarks/results/consep/ablation/ablation.json is not committed yet")
    from benchmarks.render_results import _rel

    r = json.loads(COMMITTED["ablation"].read_text())
    fid = json.loads(COMMITTED["fidelity"].read_text()) if COMMITTED["fidelity"].is_file() else None
    text = results_page(r, fid, _rel(COMMITTED["ablation"].parent, PAGE.parent), _rel(COMMITTED["fidelity"].parent,
                                                                                         PAGE.parent))
    assert PAGE.read_text() == text, "stale: run python -m benchmarks.render_results"


def test_readme_results_table_is_the_rendering():
    text = README.read_text()
    assert all(marker in text for marker in GLANCE), "README.md lost its results block markers"
    if not COMMITTED["ablation"].is_file():
        pytest.skip("benchmarks/results/consep/ablation/ablation.json is not committed yet")
    r = json.loads(COMMITTED["ablation"].read_text())
    assert replace_glance(text, readme_glance(r)) == text, "stale: run python -m benchmarks.render_results"


def test_replace_glance_names_missing_markers():
    with pytest.raises(ValueError, match="no results block"):
        replace_glance("# a README without markers", "table")
    text = "a\n" + GLANCE[0] + "\nold\n" + GLANCE[1] + "\nb"
    assert replace_glance(text, "new") == "a\n" + GLANCE[0] + "\n\nnew\n\n" + GLANCE[1] + "\nb"


SOLVER_FIDELITY = ROOT / "benchmarks" / "results" / "consep" / "fidelity_solver"


@pytest.mark.parametrize("path", sorted(SOLVER_FIDELITY.glob("*_vs_*.json")), ids=lambda p: p.stem)
def test_committed_sampler_comparisons_are_recomputed_and_rendered(path):
    """Each committed comparison equals ``compare`` of the committed runs it names, and its markdown the rendering."""
    from benchmarks.fidelity_compare import compare, markdown

    c = json.loads(path.read_text())
    assert path.with_suffix(".md").read_text() == markdown(c), "stale: rerun python -m benchmarks.fidelity_compare"
    runs = {side: [json.loads((ROOT / p).read_text()) for p in c["inputs"][side]] for side in ("candidate", "reference")}
    again = compare(runs["candidate"], runs["reference"])
    assert json.loads(json.dumps(again["rows"])) == c["rows"] and again["within"] == c["within"]
