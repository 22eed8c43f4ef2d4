"""Bad arguments to ``DiffMixDataset`` fail at construction, in the caller's process, with a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
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


class _BadDicts(torch.utils.data.Dataset):
    def __init__(self, kind):
        self.kind = kind

    def __len__(self):
        return 4

    def __getitem__(self, i):
        img = np.zeros((32, 32, 3), np.uint8)
        inst = np.zeros((32, 32), np.float32)
        inst[4:9, 4:9] = 1
        if self.kind == "nan":
            inst[0, 0] = np.nan
        elif self.kind == "negative":
            inst[0, 0] = -3
        elif self.kind == "size":
            img = np.zeros((48, 48, 3), np.uint8)
        return {"image": img, "inst_map": inst, "type_map": (inst > 0).astype(np.int64)}


@pytest.mark.parametrize("kind, match", [("nan", "NaN"), ("negative", "negative ids"),
                                         ("size", r"image 'image' is \(48, 48\) but the maps")])
def test_bad_dict_base_is_refused_at_construction(kind, match):
    with pytest.raises(ValueError, match=match):
        DiffMixDataset(_BadDicts(kind), NoiseSynth(), mode="enlarge", num_classes=5, start=False)
