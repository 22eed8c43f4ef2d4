"""A plain ``DataLoader`` (default collate, 2 workers) over ``DiffMixDataset`` for every base kind the
README lists whose items the library does not shape itself: ``NucleiDataset`` (items are
``NucleiSample``, a read-only mapping of its arrays), dict items and tuple items. The HoVer-Net
``FileLoader`` and SONNET port (dict items) are covered by ``test_adapters.py``.

Each batch is compared with a plain reference: the same items stacked by hand with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffmix_helpers import DictDataset, TupleDataset, tiny_synthesizer, toy
from torch.utils.data import DataLoader, default_collate

from diffmix_aug.data.sample import NucleiSample
from diffmix_aug.dataset import DiffMixDataset


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def synth():
    return tiny_synthesizer()


def both(batch):
    """The default collate of a batch beside the raw items (module level: picklable under spawn)."""
    return default_collate(batch), batch


def _stack(items, key):
    if isinstance(items[0], NucleiSample):
        items = [{k: it[k] for k in it} for it in items]
    return np.stack([np.asarray(it[key]) for it in items])


BASES = {
    "nuclei": (lambda: toy(16), ["image", "inst_map", "type_map", "is_synthetic"]),
    "dict": (lambda: DictDataset(16, torch_chw=False), ["image", "inst_map", "type_map", "is_synthetic"]),
    "tuple": (lambda: TupleDataset(16), [0, 1, 2]),
}


@pytest.mark.parametrize("kind,ctx", [("nuclei", "fork"), ("nuclei", "spawn"), ("dict", "fork"), ("tuple", "fork")])
def test_default_collate_over_every_base_kind(kind, ctx, synth):
    make, keys = BASES[kind]
    extra = {"keys": (1, 2, 0)} if kind == "tuple" else {}
    with DiffMixDataset(make(), synth, mode="union", synthetic_ratio=0.5, seed=0, cache_capacity=8, batch_size=4,
                        warmup="block", warmup_items=4, rare_classes=(1,), **extra) as ds:
        loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=both, multiprocessing_context=ctx)
        flags = []
        for batch, items in loader:
            if kind == "tuple":
                assert isinstance(batch, list) and len(batch) == 3
                pairs = [(batch[k], _stack(items, k)) for k in keys]
            else:
                assert isinstance(batch, dict) and list(batch) == keys
                pairs = [(batch[k], _stack(items, k)) for k in keys]
                flags += batch["is_synthetic"].tolist()
            for got, ref in pairs:
                assert isinstance(got, torch.Tensor)
                np.testing.assert_array_equal(got.numpy(), ref)
        if kind != "tuple":
            assert len(flags) == 16 and any(flags) and not all(flags)
            assert flags == [ds.item_info(i)["is_synthetic"] for i in range(16)]
        # and with no collate_fn at all, as a user writes it
        batch = next(iter(DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=ctx)))
        first = batch[0] if kind == "tuple" else batch["image"]
        assert first.shape[0] == 4


def test_nuclei_sample_is_a_read_only_mapping_with_identity_equality():
    s = toy(1)[0]
    assert list(s) == list(NucleiSample.KEYS) and len(s) == 4
    assert s["image"] is s.image and s["inst_map"] is s.inst_map and s["type_map"] is s.type_map
    assert s["is_synthetic"] is False and dict(s)["is_synthetic"] is False
    s.meta["is_synthetic"] = True
    assert s["is_synthetic"] is True
    with pytest.raises(KeyError, match="meta"):
        s["meta"]
    with pytest.raises(TypeError):
        s["image"] = s.image  # type: ignore[index]
    other = toy(1)[0]
    assert s == s and s != other and len({s, other}) == 2  # identity, not array comparison
    assert "image" in s and "name" not in s
