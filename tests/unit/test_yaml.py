"""The package's one YAML reader: safe, no aliases (alias bombs), bounded size; fuzzed."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffmix_aug._checks import describe
from diffmix_aug._yaml import MAX_YAML_BYTES, load_yaml, load_yaml_text
from diffmix_aug.sdm.config import load_sdm_config
from diffmix_aug.train.config import load_train_config

# 9 levels of 9 references: 9**9 = 387 million leaves once expanded, in under 500 bytes
BOMB = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                 + [f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)])


def test_alias_bomb_is_refused_before_it_expands(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text("train:\n  seed: 0\n" + "\n".join("  " + line for line in BOMB.splitlines()) + "\n")
    assert path.stat().st_size < 600
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"bomb\.yaml.*aliases \(\*a\) are not allowed.*line 4.*in full"):
        load_yaml(path)
    for loader in (load_train_config, load_sdm_config):
        with pytest.raises(ValueError, match="aliases"):
            loader(path)
    assert time.perf_counter() - t0 < 5  # generous: the expanded value would take minutes and GBs


def test_anchor_without_alias_and_plain_documents_load(tmp_path):
    assert load_yaml_text("a: &x 1\nb: [1, 2]\n") == {"a": 1, "b": [1, 2]}
    assert load_yaml_text("") is None
    path = tmp_path / "ok.yaml"
    path.write_text("diffmix:\n  seed: 3\n")
    assert load_yaml(path) == {"diffmix": {"seed": 3}}


def test_oversized_missing_invalid_and_unsafe_files(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * (MAX_YAML_BYTES + 1))
    with pytest.raises(ValueError, match=r"big\.yaml: \d+ bytes is more than"):
        load_yaml(big)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: not valid YAML"):
        load_yaml(bad)
    with pytest.raises(ValueError, match="not valid YAML"):  # no python object tags under SafeLoader
        load_yaml_text("!!python/object/apply:os.system ['echo pwned']")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"a: \xe9\n")
    with pytest.raises(ValueError, match=r"latin\.yaml: not UTF-8"):
        load_yaml(latin)


def test_describe_is_bounded_on_huge_shared_structures():
    value: list = ["x"] * 9
    for _ in range(30):  # 9**31 leaves if walked
        value = [value] * 9
    t0 = time.perf_counter()
    text = describe(value)
    assert len(text) <= 80 and time.perf_counter() - t0 < 1.0


@settings(max_examples=150, deadline=timedelta(seconds=20))
@given(st.text(max_size=300))
def test_any_text_parses_or_fails_with_a_value_error(text):
    t0 = time.perf_counter()
    try:
        load_yaml_text(text, "fuzz.yaml")
    except ValueError as exc:
        assert str(exc).startswith("fuzz.yaml: ")
    assert time.perf_counter() - t0 < 2.0  # a bound per case, not a speed claim


@settings(max_examples=60, deadline=timedelta(seconds=20))
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
                    max_leaves=20))
def test_yaml_round_trip_of_plain_values(value):
    import yaml

    assert load_yaml_text(yaml.safe_dump(value)) == value
