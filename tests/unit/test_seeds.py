"""Keyed draws of ``diffmix_aug._seeds``: deterministic, in range, uniform, sensitive to every key."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffmix_aug._seeds import _splitmix64, derive_seed, key_indices, key_uniform

keys = st.lists(st.integers(min_value=-(2**62), max_value=2**62), min_size=1, max_size=5)


def test_splitmix64_matches_the_published_reference_outputs():
    # the first outputs of SplitMix64 seeded with 1234567 (Vigna's splitmix64.c: state += golden
    # gamma, then the two multiply-xorshift rounds); _splitmix64(x) is one step from state x
    state, out = 1234567, []
    for _ in range(3):
        out.append(_splitmix64(state))
        state = (state + 0x9E3779B97F4A7C15) & ((1 << 64) - 1)
    assert out == [6457827717110365317, 3203168211198807973, 9817491932198370423]


@settings(max_examples=200, deadline=None)
@given(keys)
def test_key_uniform_is_a_deterministic_float_in_the_unit_interval(k):
    u = key_uniform(*k)
    assert 0.0 <= u < 1.0 and u == key_uniform(*k)


@settings(max_examples=100, deadline=None)
@given(keys, st.integers(min_value=1, max_value=10), st.integers(min_value=1, max_value=10**6))
def test_key_indices_are_deterministic_and_in_range(k, count, high):
    idx = key_indices(count, high, *k)
    assert len(idx) == count and all(0 <= i < high for i in idx) and idx == key_indices(count, high, *k)


def test_key_uniform_is_uniform_and_depends_on_every_key_and_their_order():
    u = np.array([key_uniform(7, 3, i, 0x5D1F) for i in range(40_000)])
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    expected = len(u) / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.9  # chi-square, 9 degrees of freedom, p = 0.001
    assert abs(float(np.mean(u < 0.3)) - 0.3) < 0.01
    assert key_uniform(1, 2, 3) != key_uniform(2, 1, 3)
    assert len({key_uniform(s, 0, 0) for s in range(100)}) == 100
    assert len({key_uniform(0, e, 0) for e in range(100)}) == 100


def test_key_indices_cover_the_range_evenly_and_reject_an_empty_range():
    draws = np.concatenate([key_indices(3, 7, 0, i) for i in range(20_000)])
    counts = np.bincount(draws, minlength=7)
    assert counts.min() > 0.95 * len(draws) / 7 and counts.max() < 1.05 * len(draws) / 7
    with pytest.raises(ValueError, match="high"):
        key_indices(1, 0, 1)
    with pytest.raises(ValueError, match="count"):
        key_indices(-1, 5, 1)


def test_derive_seed_is_unchanged():
    # seeds of generators saved in runs and checkpoints must not move
    assert derive_seed(0) == derive_seed(0) and 0 <= derive_seed(1, 2) < 2**63
    assert derive_seed(1, 2) != derive_seed(2, 1)
