"""README.md and docs/*.md: every relative link resolves (files and #anchors), the README stays short
and keeps the test command `.ci/run` runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md"] + sorted((ROOT / "docs").glob("*.md"))
#: pages written by a script from result files: (page, the input without which it cannot exist yet)
GENERATED = {ROOT / "docs" / "results.md": ROOT / "benchmarks/results/consep/ablation/ablation.json"}

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose(text: str) -> str:
    """The text without fenced code blocks (links inside code are not links)."""
    return _FENCE.sub("", text)


def links(text: str) -> list[str]:
    """Targets of the inline Markdown links and images of ``text``, outside code."""
    return [m.group(1) for m in _LINK.finditer(_CODE.sub("", _prose(text)))]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (not ``-`` / ``_``), spaces -> ``-``."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", _prose(path.read_text()), re.M)}


def test_slug_matches_github():
    assert slug("The offline pool: `cache_dir=` with `synthesizer=None`") == \
        "the-offline-pool-cache_dir-with-synthesizernone"
    assert slug("4. What HoVer-Net needs on a CPU") == "4-what-hover-net-needs-on-a-cpu"


def test_link_parser_skips_code_and_reads_images():
    text = "see [a](x.md) and ![b](img/p.png \"t\")\n```\n[c](nope.md)\n```\n`[d](nope2.md)`"
    assert links(text) == ["x.md", "img/p.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    bad = []
    for target in links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            source = GENERATED.get(dest)
            if source is not None and not source.exists():
                continue  # rendered once its input is committed; test_render_results checks it then
            bad.append(f"{target}: {dest} does not exist")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not bad, f"{page.relative_to(ROOT)}: " + "; ".join(bad)


def test_generated_pages_exist_once_their_input_does():
    for page, source in GENERATED.items():
        if source.exists():
            assert page.exists(), f"{source} is committed but {page} is not: run python -m benchmarks.render_results"


def test_readme_is_short():
    n = len((ROOT / "README.md").read_text(encoding="utf-8"))
    assert n < 10_000, f"README.md has {n} characters; move detail into docs/ (limit 10,000)"


def test_readme_keeps_the_ci_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = 'pip install -e ".[test]" && python -m pytest'
    assert 'pip install -e ".[test]"' in ci and "python -m pytest" in ci
    assert command in (ROOT / "README.md").read_text(), "the README's test command must stay what .ci/run runs"


def _table_keys(section: str) -> set[str]:
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))


def test_synthesize_page_names_exactly_the_accepted_keys():
    from diffmix_aug.commands.synthesize import DATA_KEYS, MODEL_KEYS, SYNTH_KEYS, TOY_KEYS

    text = (ROOT / "docs" / "synthesize.md").read_text()
    sections = {m.group(1): m.group(2) for m in re.finditer(r"^## `(\w+)`[^\n]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)}
    assert _table_keys(sections["data"]) == DATA_KEYS
    assert _table_keys(sections["model"]) == MODEL_KEYS
    assert _table_keys(sections["diffmix"]) == SYNTH_KEYS
    assert "{" + ", ".join(sorted(TOY_KEYS, key=["n", "size", "seed"].index)) + "}" in sections["data"]
