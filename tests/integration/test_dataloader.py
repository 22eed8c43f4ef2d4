"""DiffMixDataset with real DataLoaders: fractions, structure, worker visibility, reproducibility,
resume, faults, shutdown, DDP (gloo) and a slow soak test."""

from __future__ import annotations

import gc
import os
import threading
import time

import numpy as np
import pytest
import torch
from diffmix_helpers import DictDataset, NoiseSynth, TupleDataset, patch_key, tiny_synthesizer, toy
from torch.utils.data import DataLoader

from diffmix_aug.dataset import DiffMixDataset, Schedule, load_diffmix_config
from diffmix_aug.producer import ProducerError


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on 2 shared cores torch's second thread makes convolutions ~20x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def synth():
    return tiny_synthesizer()


def _spec(x):
    if isinstance(x, dict):
        return {k: _spec(v) for k, v in x.items() if k != "is_synthetic"}
    if isinstance(x, (tuple, list)):
        return type(x)(_spec(v) for v in x)
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return (type(x).__name__, str(x.dtype), tuple(x.shape))
    return type(x).__name__


def test_fraction_structure_and_item_info(synth):
    base = DictDataset(32)
    with DiffMixDataset(base, synth, mode="union", synthetic_ratio=0.5, seed=1, cache_capacity=8,
                        warmup="block", batch_size=4, rare_classes=(1,)) as ds:
        items = [ds[i] for i in range(len(ds))]
        flags = [it["is_synthetic"] for it in items]
        wanted = [ds.wants_synthetic(i) for i in range(len(ds))]
        assert flags == wanted  # cache warm: every wanted synthetic item is synthetic
        assert abs(np.mean(flags) - 0.5) < 0.2
        for i, it in enumerate(items):
            assert _spec(it) == _spec(base[i]), i
            assert float(it["image"].min()) >= 0.0 and float(it["image"].max()) <= 1.0  # range of the base
        i = flags.index(True)
        info = ds.item_info(i)
        assert info["is_synthetic"] and info["meta"]["mode"] == "union"
        assert {"batch_seed", "params", "source_index", "position", "checkpoint_sha256", "sampler"} <= set(info["meta"])
        assert info["meta"]["sampler"]["type"] == "DDIMSampler" and info["meta"]["sampler"]["settings"]["steps"] == 2
        assert ds.item_info(flags.index(False))["is_synthetic"] is False
        loader = DataLoader(ds, batch_size=8, num_workers=0)
        batch = next(iter(loader))
        assert batch["is_synthetic"].dtype == torch.bool and batch["image"].shape == (8, 3, 32, 32)


def test_tuple_items_unchanged_and_schedule():
    base = TupleDataset(16)
    with DiffMixDataset(base, NoiseSynth(), mode="enlarge", synthetic_ratio=1.0, keys=(1, 2, 0), cache_capacity=4,
                        warmup="block", schedule={"start_epoch": 1, "ramp_epochs": 2},
                        label_sampler=None) as ds:
        assert ds.ratio(0) == 0.0 and ds.ratio(1) == 0.5 and ds.ratio(2) == 1.0
        assert not any(ds.item_info(i)["is_synthetic"] for i in range(4) if ds[i] is not None)
        ds.set_epoch(2)
        for i in range(4):
            it = ds[i]
            assert isinstance(it, tuple) and _spec(it) == _spec(base[i])
            assert ds.item_info(i)["is_synthetic"]
    assert Schedule(2, 0)(1, 0.5) == 0.0


@pytest.mark.parametrize("ctx", ["fork", "spawn"])
def test_workers_see_cache_updates_after_start(ctx):
    """Persistent workers started on an empty cache serve patches written afterwards."""
    synth = NoiseSynth()
    base = DictDataset(16, torch_chw=False)
    ds = DiffMixDataset(base, synth, synthetic_ratio=0.5, cache_capacity=8, batch_size=4, start=False, rare_classes=(1,))
    try:
        loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True, multiprocessing_context=ctx)
        first = [b["is_synthetic"] for b in loader]
        assert not torch.cat(first).any()  # empty cache: originals only
        ds.producer.step(2)  # main process writes 8 patches while the workers are alive
        cached = {patch_key(ds.cache.read(s, count=False).image) for s in range(8)}
        ds.set_epoch(1)
        got = list(loader)
        flags = torch.cat([b["is_synthetic"] for b in got])
        assert flags.tolist() == [ds.wants_synthetic(i, 1) for i in range(16)]
        images = torch.cat([b["image"] for b in got])
        served = {patch_key(images[i]) for i in range(16) if flags[i]}
        assert served and served <= cached
        assert ds.cache.reads >= int(flags.sum())  # workers' reads are counted in shared memory
        del loader
    finally:
        ds.close()


def test_cooperative_batches_are_reproducible_and_resume(synth):
    def make():
        return DiffMixDataset(DictDataset(16), synth, synthetic_ratio=0.5, seed=3, cache_capacity=6,
                              batch_size=2, cooperative=True, cooperative_every=5, rare_classes=(1,))

    def epoch(ds, e):
        ds.set_epoch(e)
        return list(DataLoader(ds, batch_size=4, num_workers=0))

    def same(a, b):
        return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("image", "inst_map", "is_synthetic"))

    a, b = make(), make()
    ea0, eb0 = epoch(a, 0), epoch(b, 0)
    assert same(ea0, eb0) and torch.cat([x["is_synthetic"] for x in ea0]).any()
    state = a.state_dict()
    ea1 = epoch(a, 1)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"diffmix_state_{os.getpid()}.pt")
    torch.save(state, path)
    c = make()
    c.load_state_dict(torch.load(path, weights_only=True))
    os.unlink(path)
    assert same(epoch(c, 1), ea1)  # resumed run continues the same sequence
    for ds in (a, b, c):
        ds.close()


def test_producer_failure_surfaces_in_main_process_and_workers():
    ds = DiffMixDataset(DictDataset(8, torch_chw=False), NoiseSynth(fail_after=1), cache_capacity=4,
                        batch_size=4, warmup="block", synthetic_ratio=1.0, rare_classes=(1,))
    try:
        ds.cache.release_credit(4)  # as if 4 fresh patches had been read: the thread makes batch 2
        ds.producer.join(20)  # the second batch fails
        with pytest.raises(ProducerError) as info:
            ds[0]
        assert isinstance(info.value.__cause__, FloatingPointError)
        import traceback
        assert "explode_in_synthesis" in "".join(traceback.format_exception(info.value.__cause__))
        loader = DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="fork")
        with pytest.raises(Exception, match="explode_in_synthesis"):
            next(iter(loader))
    finally:
        ds.close()


def test_producer_never_overwrites_unread_patches():
    ds = DiffMixDataset(DictDataset(8, torch_chw=False), NoiseSynth(), cache_capacity=8, batch_size=4,
                        warmup="block", warmup_items=8, synthetic_ratio=1.0, rare_classes=(1,))
    try:
        ds.producer._stop.wait(0.3)  # give a misbehaving producer time to overwrite
        assert ds.cache.writes == 8
        for i in range(8):
            ds[i]
        fresh = ds.producer.wait_for(8, timeout=0)  # noqa: F841  (re-raises producer errors)
        deadline = time.monotonic() + 20
        while ds.cache.writes < 12 and time.monotonic() < deadline:
            ds.producer._stop.wait(0.05)
        assert ds.cache.writes >= 12  # reads gave credits back
    finally:
        ds.close()


def _resources():
    """Threads, open fds and the shared-memory files this process maps (named semaphores, segments).

    Only this process's own mappings: /dev/shm is shared by every process of the machine, and other
    jobs (a second test suite) create and remove files there at any time."""
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    with open("/proc/self/maps") as fh:
        shm = len({line.split()[-1] for line in fh if "/dev/shm/" in line})
    return threading.active_count(), fds, shm


def _settles_to(expected, timeout=5.0):
    """Resources back to at most ``expected`` within ``timeout`` s (a process ended by close() is
    reaped asynchronously on a loaded machine; a thread of an earlier test may end meanwhile, so
    fewer is fine); a real leak stays above and fails. Returns ``expected`` when settled, else the
    counts seen."""
    end = time.monotonic() + timeout
    while True:
        now = _resources()
        settled = all(a <= b for a, b in zip(now, expected))
        if settled or time.monotonic() > end:
            return expected if settled else now
        time.sleep(0.1)


def test_no_leaks_over_100_cycles_and_shutdown_with_live_workers():
    base = DictDataset(8, torch_chw=False)
    ds = DiffMixDataset(base, NoiseSynth(), cache_capacity=4, batch_size=2, warmup="block", rare_classes=(1,))
    ds.close()
    before = _resources()
    for _ in range(100):
        with DiffMixDataset(base, NoiseSynth(), cache_capacity=4, batch_size=2, warmup="block", rare_classes=(1,)) as ds:
            ds[0]
    assert _settles_to(before) == before
    ds = DiffMixDataset(base, NoiseSynth(), cache_capacity=4, batch_size=2, warmup="block", rare_classes=(1,))
    loader = DataLoader(ds, batch_size=2, num_workers=2, persistent_workers=True, multiprocessing_context="fork")
    it = iter(loader)
    next(it)
    ds.close()  # workers still alive
    assert not ds.producer.alive
    del it, loader
    assert _settles_to(before) == before


def test_yaml_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("diffmix:\n  mode: balance\n  synthetic_ratio: 0.25\n  schedule: {start_epoch: 2}\n")
    config = load_diffmix_config(cfg)
    assert (config.mode, config.synthetic_ratio, config.schedule) == ("balance", 0.25, Schedule(start_epoch=2))
    assert load_diffmix_config(config.to_dict()) == config  # round trip
    with DiffMixDataset(toy(4), NoiseSynth(), cfg, cache_capacity=2, start=False) as ds:
        assert ds.mode == "balance" and ds.ratio(2) == 0.25 and ds.ratio(1) == 0.0
        assert ds.config.rare_classes == (1,) and ds.config.num_classes == 5  # from the toy class table
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['modes'\] in config section `diffmix`; valid keys"):
        load_diffmix_config({"modes": "x"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("diffmix:\n  max_reuse: 0\n")
    with pytest.raises(ValueError, match=r"bad.yaml: `max_reuse`"):
        load_diffmix_config(bad)
    with pytest.raises(ValueError, match="mode"):
        load_diffmix_config({"mode": "DiffMix-X"})


def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ds = DiffMixDataset(DictDataset(16, torch_chw=False), NoiseSynth(), synthetic_ratio=1.0, seed=0,
                            cache_capacity=8, batch_size=4, cooperative=True, cooperative_every=4, rare_classes=(1,))
        sampler = torch.utils.data.distributed.DistributedSampler(ds, shuffle=True, seed=0)
        sampler.set_epoch(0)
        seen = []
        for i in sampler:
            it = ds[i]
            info = ds.item_info(i)
            seen.append((int(i), patch_key(it["image"]), info["meta"]["batch_seed"]))
        gathered = [None] * world
        dist.all_gather_object(gathered, seen)
        if rank == 0:
            torch.save(gathered, os.path.join(out_dir, "seen.pt"))
        ds.close()
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_never_duplicate_patches(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    seen = torch.load(tmp_path / "seen.pt", weights_only=False)
    idx = [{i for i, _, _ in r} for r in seen]
    assert not idx[0] & idx[1] and len(idx[0] | idx[1]) == 16
    keys = [{k for _, k, _ in r} for r in seen]
    seeds = [{s for _, _, s in r} for r in seen]
    assert not keys[0] & keys[1] and not seeds[0] & seeds[1]


@pytest.mark.slow
def test_soak_20k_items_bounded_rss():
    """20k items with a live producer and two persistent workers: RSS grows by < 64 MiB."""
    import resource  # noqa: F401

    def rss():
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) * 1024

    ds = DiffMixDataset(DictDataset(64, torch_chw=False), NoiseSynth(), cache_capacity=32, batch_size=8,
                        warmup="block", synthetic_ratio=0.5, rare_classes=(1,))
    loader = DataLoader(ds, batch_size=32, num_workers=2, persistent_workers=True)
    n, start = 0, None
    epoch = 0
    while n < 20000:
        ds.set_epoch(epoch)
        for b in loader:
            n += len(b["is_synthetic"])
        if epoch == 2:
            start = rss()
        epoch += 1
    assert rss() - start < 64 * 2**20
    ds.close()
