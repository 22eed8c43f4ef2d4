"""The freshness contract: ``max_reuse`` holds for every served item, a synthesizer that raises
surfaces on the next item, resume never serves an empty slot, warmup times out with a clear error,
and ``stats()`` says what was served. (Whether a busy host still gets new patches is a property of
CPU scheduling, measured by ``benchmarks/loader.py --busy 2``, not asserted here.)"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from diffmix_helpers import DictDataset, NoiseSynth

from diffmix_aug import DiffMixDataset


def test_max_reuse_holds_for_every_served_item():
    base = DictDataset(64)
    with DiffMixDataset(base, NoiseSynth(), mode="enlarge", synthetic_ratio=1.0, seed=0, cache_capacity=4,
                        max_reuse=2, warmup="block", warmup_items=4, batch_size=4, cooperative=True,
                        cooperative_every=10_000) as ds:
        items = [ds[i] for i in range(len(ds))]
        st = ds.stats()
    seqs = [ds._served[i].item() for i in range(len(items))]
    syn = [s for s in seqs if s >= 0]
    assert len(syn) == 8  # 4 patches x max_reuse 2; every other item was served as an original
    assert max(np.unique(syn, return_counts=True)[1]) <= 2
    assert st["synthetic_asked"] == 64 and st["synthetic_served"] == 8 and st["max_reuse"] == 2
    assert st["distinct_patches"] == 4


def test_low_served_share_is_warned_once_per_epoch(caplog):
    base = DictDataset(32)
    with DiffMixDataset(base, NoiseSynth(), mode="enlarge", synthetic_ratio=1.0, seed=0, cache_capacity=2,
                        max_reuse=1, warmup="block", warmup_items=2, batch_size=2, cooperative=True,
                        cooperative_every=10_000) as ds, caplog.at_level(logging.WARNING, "diffmix_aug"):
        for i in range(len(ds)):
            ds[i]
        ds.stats()
        ds.stats()
        ds.set_epoch(1)
    warned = [r for r in caplog.records if "cannot keep up" in r.getMessage()]
    assert len(warned) == 1 and "2 of 32" in warned[0].getMessage()


def test_resume_without_cache_contents_never_serves_an_empty_slot():
    base = DictDataset(200)
    kw = dict(mode="enlarge", synthetic_ratio=0.5, seed=3, cache_capacity=8, batch_size=4, cooperative=True,
              cooperative_every=25)
    with DiffMixDataset(base, NoiseSynth(), warmup="block", **kw, rare_classes=(1,)) as ds:
        for i in range(40):
            ds[i]
        state = ds.state_dict(cache_contents=False)
    with DiffMixDataset(base, NoiseSynth(), start=False, **kw, rare_classes=(1,)) as ds2:
        ds2.load_state_dict(state)
        assert len(ds2.cache) == 0
        empty = 0
        for i in range(len(base)):
            it = ds2[i]
            if it["is_synthetic"]:
                empty += int(np.asarray(it["image"]).max() == 0 and np.asarray(it["inst_map"]).max() == 0)
        assert empty == 0
        assert ds2.stats()["synthetic_served"] > 0


def test_warmup_block_times_out_with_a_named_cause():
    class Stuck(NoiseSynth):
        def __call__(self, *a, **k):
            time.sleep(3)
            return super().__call__(*a, **k)

    with pytest.raises(TimeoutError, match="warmup: waited"):
        DiffMixDataset(DictDataset(8), Stuck(), mode="enlarge", warmup="block", warmup_items=4, warmup_timeout=0.5)


@pytest.mark.parametrize("cooperative", [False, True])
def test_a_synthesizer_that_raises_surfaces_on_the_next_item(cooperative):
    """The original exception is the ProducerError's cause, raised by the next item (main process)."""
    from diffmix_aug.producer import ProducerError

    ds = DiffMixDataset(DictDataset(8), NoiseSynth(fail_after=1), mode="enlarge", synthetic_ratio=1.0,
                        cache_capacity=4, batch_size=4, warmup="block", cooperative=cooperative, cooperative_every=1,
                        num_classes=5)
    try:
        if not cooperative:
            ds[0]  # served from the warm-up batch
            ds.cache.release_credit(4)  # as if 4 patches had been read: the thread makes batch 2, which fails
            assert ds.producer.join(20)
        with pytest.raises(ProducerError) as info:
            ds[1]  # cooperative: this item's own synthesis batch (the second) fails
        assert isinstance(info.value.__cause__, FloatingPointError)
    finally:
        ds.close()
