"""EnlargeSettings / BalanceSettings: the one owner of the label-map options (issue 30)."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import re

import numpy as np
import pytest

from diffmix_aug.baselines.gradmix import GradMix
from diffmix_aug.labelmaps.balance import balance_label_map, draw_balance_params
from diffmix_aug.labelmaps.donors import DonorBank
from diffmix_aug.labelmaps.enlarge import draw_enlarge_params, enlarge_label_map
from diffmix_aug.labelmaps.sampler import LabelMapSampler
from diffmix_aug.labelmaps.settings import BalanceSettings, EnlargeSettings, borders_for_patch

REFERENCE_ENLARGE = dict(max_shift=15, p_shift=0.3, border_margin=32, symmetric=False, overlap="overwrite",
                         max_overlap=0.2, max_tries=10)
REFERENCE_BALANCE = dict(major_fraction=0.8, size_ratio=2.3, border=30, target_distribution=None,
                         use_own_donors=True)


def test_defaults_are_the_reference_codes():
    assert dataclasses.asdict(EnlargeSettings()) == REFERENCE_ENLARGE
    assert dataclasses.asdict(BalanceSettings()) == REFERENCE_BALANCE


@pytest.mark.parametrize("fn", [draw_enlarge_params, enlarge_label_map, draw_balance_params, balance_label_map,
                                LabelMapSampler, GradMix, DonorBank.from_maps, DonorBank.from_dataset])
def test_no_signature_repeats_an_option(fn):
    """Every label-map option has one owner: the settings classes; the users take a settings object."""
    options = {f.name for cls in (EnlargeSettings, BalanceSettings) for f in dataclasses.fields(cls)}
    repeated = set(inspect.signature(fn).parameters) & options
    if fn in (DonorBank.from_maps, DonorBank.from_dataset):  # the donors' own border rule, defaulted from the owner
        assert repeated == {"border"} and inspect.signature(fn).parameters["border"].default == BalanceSettings.border
    else:
        assert not repeated, f"{fn.__qualname__} repeats {sorted(repeated)}"
    defaults = [p.default for p in inspect.signature(fn).parameters.values()
                if isinstance(p.default, (EnlargeSettings, BalanceSettings))]
    assert all(d in (EnlargeSettings(), BalanceSettings()) for d in defaults)


@pytest.mark.parametrize("cls, field, value, error, expected", [
    (EnlargeSettings, "max_shift", -1, ValueError, ">= 0"),
    (EnlargeSettings, "max_shift", 1.5, TypeError, "must be an int"),
    (EnlargeSettings, "p_shift", 1.5, ValueError, r"in \[0.0, 1.0\]"),
    (EnlargeSettings, "border_margin", -2, ValueError, ">= 0"),
    (EnlargeSettings, "symmetric", "yes", TypeError, "must be a bool"),
    (EnlargeSettings, "overlap", "merge", ValueError, r"one of \['overwrite', 'avoid'\]"),
    (EnlargeSettings, "max_overlap", 2.0, ValueError, r"in \[0.0, 1.0\]"),
    (EnlargeSettings, "max_tries", 0, ValueError, "> 0"),
    (BalanceSettings, "major_fraction", 1.2, ValueError, r"in \[0.0, 1.0\]"),
    (BalanceSettings, "size_ratio", 0, ValueError, r"in \(0.0, inf\]"),
    (BalanceSettings, "size_ratio", "2.3", TypeError, "real number"),
    (BalanceSettings, "border", -1, ValueError, ">= 0"),
    (BalanceSettings, "target_distribution", {1: 2.0}, ValueError, r"target_distribution\[1\]"),
    (BalanceSettings, "target_distribution", "0.5", TypeError, "mapping class -> share"),
    (BalanceSettings, "target_distribution", {"a": 0.5}, TypeError, "keys must be class ids"),
    (BalanceSettings, "use_own_donors", 1, TypeError, "must be a bool"),
])
def test_bad_values_are_refused_naming_the_field_the_value_and_the_default(cls, field, value, error, expected):
    with pytest.raises(error) as err:
        cls(**{field: value})
    msg = str(err.value)
    assert msg.startswith(f"{cls.__name__}.{field}: ")
    assert re.search(expected, msg), msg
    default = next(f.default for f in dataclasses.fields(cls) if f.name == field)
    assert f"the default ({default!r})" in msg, "the fix: a value in range, or the default"


def test_values_are_normalised_frozen_and_picklable():
    e = EnlargeSettings(p_shift=1, max_shift=np.int64(3), symmetric=np.bool_(True))
    assert type(e.p_shift) is float and type(e.max_shift) is int and e.symmetric is True
    b = BalanceSettings(target_distribution=[0.0, 0.25])
    assert b.target_distribution == {0: 0.0, 1: 0.25}
    assert dataclasses.replace(b, border=8).target_distribution == {0: 0.0, 1: 0.25}, "its own form re-validates"
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.max_shift = 4  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(e)) == e and pickle.loads(pickle.dumps(b)) == b
    with pytest.raises(ValueError, match="EnlargeSettings.max_tries"):
        dataclasses.replace(e, max_tries=0)


def test_borders_for_patch_scales_only_the_bands():
    b = borders_for_patch(128)
    assert b["balance"] == BalanceSettings(border=15) and b["enlarge"] == EnlargeSettings(border_margin=16)


def test_settings_change_the_draws_as_the_old_keywords_did():
    """Same seed, same settings: the same draws; another setting: other draws (the object is really used)."""
    rng_map = np.random.default_rng(0)
    inst = np.zeros((96, 96), np.int32)
    for k in range(1, 30):
        y, x = rng_map.integers(4, 88, 2)
        inst[y:y + 4, x:x + 4] = k
    a = draw_enlarge_params(np.random.default_rng(1), inst, EnlargeSettings(border_margin=4, p_shift=1.0))
    b = draw_enlarge_params(np.random.default_rng(1), inst, EnlargeSettings(border_margin=4, p_shift=1.0))
    c = draw_enlarge_params(np.random.default_rng(1), inst, EnlargeSettings(border_margin=4, max_shift=2, p_shift=1.0))
    assert a.to_dict() == b.to_dict()
    assert np.abs(c.shifts).max() <= 2 < np.abs(a.shifts).max()


@pytest.mark.parametrize("call, message", [
    (lambda: LabelMapSampler("enlarge", num_classes=5, max_shift=6),
     r"LabelMapSampler\(\) takes label-map options in a settings object: got `max_shift=6`; "
     r"pass `enlarge=EnlargeSettings\(max_shift=6\)`"),
    (lambda: LabelMapSampler("balance", num_classes=5, rare_classes=(1,), border=4),
     r"pass `balance=BalanceSettings\(border=4\)`"),
    (lambda: GradMix(None, (1,), major_fraction=0.3), r"pass `balance=BalanceSettings\(major_fraction=0.3\)`"),
    (lambda: GradMix(None, (1,), max_shift=3),
     r"GradMix\(\) got an unexpected keyword argument `max_shift` \(`max_shift` belongs to EnlargeSettings, "
     r"which GradMix does not use\)"),
    (lambda: LabelMapSampler("enlarge", num_classes=5, bogus=1),
     r"LabelMapSampler\(\) got an unexpected keyword argument `bogus`$"),
])
def test_an_old_keyword_names_the_settings_object_that_owns_it(call, message):
    with pytest.raises(TypeError, match=message):
        call()
