"""Bad arguments to ``DiffMixDataset`` fail at construction, in the caller's process, with a clear error."""

from __future__ import annotations

import pytest
from diffmix_helpers import DictDataset, NoiseSynth

from diffmix_aug import DiffMixDataset


def _make(**kw):
    kw.setdefault("start", False)
    return DiffMixDataset(kw.pop("base", DictDataset(4)), NoiseSynth(), mode=kw.pop("mode", "enlarge"), **kw)


@pytest.mark.parametrize(("kw", "err", "match"), [
    ({"seed": "abc"}, TypeError, "`seed` must be an int"),
    ({"seed": True}, TypeError, "`seed` must be an int"),
    ({"rare_classes": "abc"}, TypeError, "`rare_classes` must be a sequence"),
    ({"rare_classes": (9,)}, ValueError, "not foreground classes"),
    ({"rare_classes": (0,)}, ValueError, "not foreground classes"),
    ({"cooperative": "no"}, TypeError, "`cooperative` must be True or False"),
    ({"num_classes": 7}, ValueError, "trained with num_classes=5"),
    ({"base": []}, ValueError, "`base` is empty"),
    ({"base": 5}, TypeError, "map-style dataset"),
    ({"warmup_timeout": 0}, ValueError, "warmup_timeout"),
    ({"mode": "balanse"}, ValueError, "mode"),
])
def test_bad_argument_is_named(kw, err, match):
    with pytest.raises(err, match=match):
        _make(**kw)


@pytest.mark.parametrize("state", [{}, {"seed": 0}, "not a dict"])
def test_load_state_dict_rejects_what_state_dict_did_not_write(state):
    ds = _make()
    try:
        with pytest.raises(ValueError, match="returned by DiffMixDataset.state_dict"):
            ds.load_state_dict(state)
    finally:
        ds.close()
