"""The offline pool: ``DiffMixDataset(base, None, cache_dir=<a diffmix-aug synthesize output>)``.

No producer runs; exactly the pool's patches are served, with the usual accounting (``max_reuse``
over the whole run and across workers, ``stats()``, ``item_info()``, resume), and a pool made by
another configuration is refused with the mismatch named. Also: a pool larger than
``cache_capacity``, the ``max_reuse`` a pool needs, and a live producer adding to a store.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from diffmix_helpers import NoiseSynth, patch_key, toy
from torch.utils.data import DataLoader

from diffmix_aug.commands.synthesize import synthesize
from diffmix_aug.dataset import DiffMixDataset
from diffmix_aug.store import PatchStore

N_POOL = 6


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """A real `diffmix-aug synthesize` output: 6 balancing patches of the toy data (tiny untrained SDM, 32 px)."""
    out = tmp_path_factory.mktemp("pool") / "balance"
    torch.set_num_threads(1)
    cfg = {"data": {"kind": "toy", "toy": {"n": 16, "size": 32, "seed": 0}},
           "model": {"preset": "tiny", "image_size": 32, "device": "cpu", "sampler": {"steps": 1, "t_start": 250}},
           "diffmix": {"mode": "balance", "seed": 0, "batch_size": 4}}
    files = synthesize(cfg, out, N_POOL, progress=False, allow_untrained=True)
    assert len(files) == N_POOL
    return out


def _pool_images(pool: Path) -> dict[bytes, str]:
    store = PatchStore.open(pool)
    return {store.read(n).image.tobytes(): n for n in store.names()}


def test_the_pool_is_served_exactly_with_the_usual_accounting(pool):
    images = _pool_images(pool)
    base = toy(16)
    with DiffMixDataset(base, None, cache_dir=pool, mode="balance", synthetic_ratio=0.5, seed=0,
                        cache_capacity=N_POOL, max_reuse=100) as ds:
        assert ds.producer is None and len(ds.cache) == N_POOL
        assert ds.config.patch_size == (32, 32) and ds.classes.rare_classes == (1,)
        items = [ds[i] for i in range(len(ds))]
        synthetic = [i for i, it in enumerate(items) if it.meta["is_synthetic"]]
        assert synthetic == [i for i in range(len(ds)) if ds.wants_synthetic(i)]  # every ask served
        for i in synthetic:
            name = images[items[i].image.tobytes()]  # the pixels are a pool patch's, untouched
            info = ds.item_info(i)
            assert info["meta"]["store"] == name and info["meta"]["mode"] == "balance"
            assert {"params", "batch_seed", "source_index", "sampler", "checkpoint_sha256"} <= set(info["meta"])
        st = ds.stats()
        assert st["synthetic_served"] == st["synthetic_asked"] == len(synthetic) and st["producer_patches_per_s"] is None


@pytest.mark.parametrize("ctx", ["fork", "spawn"])
def test_max_reuse_holds_across_workers_and_the_pool_needs_ceil_asked_over_size(pool, ctx):
    """Over 3 epochs with 2 workers: with max_reuse = ceil(S / P) every one of the S asks is served;
    with one less, exactly P * max_reuse are, and no patch is served more than max_reuse times."""
    base = toy(16)
    probe = DiffMixDataset(base, None, cache_dir=pool, mode="balance", cache_capacity=N_POOL, start=False)
    asks = sum(probe.wants_synthetic(i, e) for e in range(3) for i in range(len(base)))
    probe.close()
    need = math.ceil(asks / N_POOL)
    for max_reuse, served in ((need, asks), (need - 1, N_POOL * (need - 1))):
        with DiffMixDataset(base, None, cache_dir=pool, mode="balance", cache_capacity=N_POOL,
                            max_reuse=max_reuse) as ds:
            loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=ctx, collate_fn=list,
                                persistent_workers=True, timeout=120)
            counts: dict[int, int] = {}
            total = 0
            for epoch in range(3):
                ds.set_epoch(epoch)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    list(loader)
                seqs = ds._served.numpy()[(ds._served_epoch == epoch).numpy()]
                for s in seqs[seqs >= 0]:
                    counts[int(s)] = counts.get(int(s), 0) + 1
                total += ds.stats(epoch)["synthetic_served"]
            del loader
            assert total == served == sum(counts.values())
            assert max(counts.values()) <= max_reuse and ds.cache.reads == served
            assert int(ds.cache._np["reuse"].max()) <= max_reuse


def test_an_ask_whose_picked_patch_is_taken_meanwhile_is_served_another(pool):
    """The CI race, made deterministic: between this item's pick and its claim another worker takes
    the picked patch's last serve (max_reuse=1). The ask is served another fresh pool patch, not an
    original; once every patch reached max_reuse, originals."""
    with DiffMixDataset(toy(16), None, cache_dir=pool, mode="balance", synthetic_ratio=1.0, seed=0,
                        cache_capacity=N_POOL, max_reuse=1) as ds:
        cache, pick, raced = ds.cache, ds.cache.pick, []

        def racing_pick(rng):
            slot = pick(rng)
            if not raced and slot is not None:
                raced.append(cache.read(slot))  # the other worker's serve: the slot's last
            return slot

        cache.pick = racing_pick
        first = ds[0]
        assert raced and first.meta["is_synthetic"], "served an original while fresh pool patches remained"
        assert ds.item_info(0)["seq"] != raced[0].seq
        rest = [ds[i].meta["is_synthetic"] for i in range(1, len(ds))]
        assert sum(rest) == N_POOL - 2 and not any(rest[N_POOL - 2:])  # the pool, each patch once
        assert cache.reads == N_POOL and int(cache._np["reuse"].max()) == 1


def test_a_pool_larger_than_the_cache_is_cut_with_a_warning(pool):
    with pytest.warns(RuntimeWarning, match=f"holds {N_POOL} patches, more than cache_capacity=4: the first 4"):
        ds = DiffMixDataset(toy(16), None, cache_dir=pool, mode="balance", cache_capacity=4)
    with ds:
        names = sorted(ds.cache.slot_meta(s)["store"] for s in range(4))
        assert names == PatchStore.open(pool).names()[:4]


def test_a_pool_of_another_configuration_is_refused(pool, tmp_path):
    with pytest.raises(ValueError, match="mode 'balance' there, 'union' here"):
        DiffMixDataset(toy(16), None, cache_dir=pool)  # the default mode is "union"
    with pytest.raises(ValueError, match=r"patch_shape \[32, 32\] there, \[64, 64\] here"):
        DiffMixDataset(toy(16), None, cache_dir=pool, mode="balance", patch_size=64)
    with pytest.raises(ValueError, match="classes"):
        DiffMixDataset(toy(16), None, cache_dir=pool, mode="balance", rare_classes=(2,))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DiffMixDataset(toy(16), None, cache_dir=tmp_path / "missing", mode="balance")
    with pytest.raises(ValueError, match="pass cache_dir="):
        DiffMixDataset(toy(16), None)


def test_resume_of_a_replayed_pool(pool):
    base = toy(16)
    kw = dict(cache_dir=pool, mode="balance", cache_capacity=N_POOL, max_reuse=3, seed=2)
    with DiffMixDataset(base, None, **kw) as a:
        first = [a[i] for i in range(8)]
        state = a.state_dict()
        rest = [a[i] for i in range(8, 16)]
    with DiffMixDataset(base, None, **kw) as b:
        b.load_state_dict(state)
        again = [b[i] for i in range(8, 16)]
    assert len(first) == 8
    assert [patch_key(x.image) for x in rest] == [patch_key(x.image) for x in again]


def test_a_live_producer_adds_to_its_store_and_the_next_run_warm_starts(tmp_path):
    store_dir = tmp_path / "store"
    base = toy(8)
    with DiffMixDataset(base, NoiseSynth(), cache_dir=store_dir, mode="enlarge", cache_capacity=8, batch_size=4,
                        warmup="block", warmup_items=4, synthetic_ratio=1.0) as ds:
        made = {ds.cache.read(s, count=False).image.tobytes() for s in range(len(ds.cache))}
    store = PatchStore.open(store_dir)
    assert store.manifest["created_by"] == "DiffMixDataset" and store.manifest["mode"] == "enlarge"
    assert len(store) >= 4 and all(n.startswith("online_r0_") for n in store.names())
    assert made <= {store.read(n).image.tobytes() for n in store.names()}
    with DiffMixDataset(base, NoiseSynth(), cache_dir=store_dir, mode="enlarge", cache_capacity=8, start=False) as again:
        assert len(again.cache) == len(store)  # warm-started from the first run's patches
    with pytest.raises(ValueError, match="mode 'enlarge' there, 'balance' here"):
        DiffMixDataset(base, NoiseSynth(), cache_dir=store_dir, mode="balance", start=False)
