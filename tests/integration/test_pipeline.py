"""The assembly: DiffMixConfig, build_pipeline, classes resolved once, label maps in workers, item fields."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from diffmix_helpers import DictDataset, NoiseSynth, toy

from diffmix_aug.class_table import ClassTable, resolve_classes
from diffmix_aug.config import MODES, DiffMixConfig, load_diffmix_config
from diffmix_aug.dataset import DiffMixDataset
from diffmix_aug.labelmaps.jobs import LabelMapJobs
from diffmix_aug.labelmaps.sampler import LabelMapSampler
from diffmix_aug.pipeline import build_label_sampler, build_pipeline


class IndexedDicts(DictDataset):
    """Dict items with fields a user loop reads: an index and a per-item weight."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        return {**item, "index": i, "weight": float(i) / 10}


def test_config_rejects_unknown_keys_listing_valid_ones():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['mod'\] in config section `diffmix`; valid keys are"):
        DiffMixConfig.from_dict({"mod": "union"})
    with pytest.raises(ValueError, match="mode"):
        DiffMixConfig(mode="DiffMix-B")
    with pytest.raises(TypeError, match="cooperative"):
        DiffMixConfig(cooperative="no")
    with pytest.raises(ValueError, match="label_workers"):
        DiffMixConfig(label_workers=-1)
    assert MODES == ("balance", "enlarge", "union", "composed") and DiffMixConfig().mode == "union"
    assert [DiffMixConfig(mode=m).balances for m in MODES] == [True, False, True, True]
    assert [LabelMapSampler(m, num_classes=5, rare_classes=(1,)).balances for m in MODES] == [True, False, True, True]
    assert [LabelMapSampler(m, num_classes=5, rare_classes=(1,)).enlarges for m in MODES] == [False, True, True, True]
    cfg = DiffMixConfig(mode="enlarge", patch_size=32, rare_classes=2)
    assert cfg.patch_size == (32, 32) and cfg.rare_classes == (2,)
    assert load_diffmix_config(cfg.to_dict()) == cfg


def test_classes_have_one_source_checked_against_the_synthesizer():
    base = toy(4)
    table = resolve_classes(None, None, base.info, NoiseSynth(), balances=True)
    assert table == ClassTable(5, base.info.rare_classes, tuple(base.info.class_names))

    class Synth8(NoiseSynth):
        num_classes = 8

    with pytest.raises(ValueError, match="trained with num_classes=8"):
        DiffMixDataset(base, Synth8(), start=False)
    with pytest.raises(ValueError, match="`rare_classes` is required for mode='union'"):
        DiffMixDataset(DictDataset(4), NoiseSynth(), start=False)
    with pytest.raises(ValueError, match="`num_classes` is unknown"):
        resolve_classes(None, None, None, None, balances=False)
    with pytest.raises(ValueError, match="not foreground classes"):
        ClassTable(5, (5,))
    # enlarging needs no rare classes; a dict base gets num_classes from the synthesizer or the argument
    ds = DiffMixDataset(DictDataset(4), NoiseSynth(), mode="enlarge", num_classes=5, start=False)
    assert ds.config.num_classes == 5 and ds.rare_classes == () and ds.classes.names is None
    assert ds.producer.generator.bias_classes == ()  # no source bias without balancing
    assert ds.label_sampler.rare_classes == ()  # no placeholder class below the table
    ds.close()


def test_jobs_build_each_map_once_and_reproducibly():
    base = toy(6)
    calls = []

    class Counting(LabelMapSampler):
        def __call__(self, sample, rng):
            calls.append(1)
            return super().__call__(sample, rng)

        def get_params(self, *a, **k):  # the old double pass must not come back
            raise AssertionError("get_params + apply builds every map twice")

    from diffmix_aug.labelmaps.donors import DonorBank
    from diffmix_aug.labelmaps.settings import BalanceSettings, EnlargeSettings

    sampler = Counting("composed", donors=DonorBank.from_dataset(base), num_classes=5, rare_classes=(1,),
                       balance=BalanceSettings(border=8), enlarge=EnlargeSettings(border_margin=8))
    jobs = LabelMapJobs(base, sampler, (64, 64), seed=3, rank=1)
    a, b = jobs[(7, 2, 4)], jobs[(7, 2, 4)]
    assert len(calls) == 2  # one per build
    for k in ("image", "inst", "type"):
        assert np.array_equal(a[k], b[k])
    assert a["meta"]["source_index"] == 4 and a["meta"]["map_stream"] == 7
    assert a["inst"].dtype == np.int32 and a["inst"].shape == (64, 64)


@pytest.mark.parametrize("label_workers", [0, 1])
def test_producer_with_and_without_label_workers(label_workers):
    """The thread builds its maps in label workers (or itself with 0); union maps are of both kinds."""
    base = toy(8)
    with DiffMixDataset(base, NoiseSynth(), synthetic_ratio=1.0, cache_capacity=8, batch_size=4, warmup="block",
                        warmup_items=8, label_workers=label_workers, warmup_timeout=120) as ds:
        assert len(ds.cache) == 8
        assert ds.producer.alive
        assert len(ds.producer._labels.processes if ds.producer._labels else []) == label_workers
        metas = [ds.cache.slot_meta(i) for i in range(8)]
        assert all(m["mode"] == "union" and m["params"]["mode"] == "union" for m in metas)
        assert {m["map_kind"] for m in metas} <= {"balance", "enlarge"}
        assert len({m["map_seed"] for m in metas}) == 8
        assert all(m["checkpoint_sha256"] is None and "NoiseSynth" in ds.producer.generator.identity[
            "checkpoint"]["callable"] for m in metas)
    assert not ds.producer.alive
    assert ds.producer._labels is None or not ds.producer._labels.processes  # workers ended by close()


def test_synthetic_dict_items_keep_their_own_fields():
    base = IndexedDicts(8, torch_chw=False)
    with DiffMixDataset(base, NoiseSynth(), mode="enlarge", num_classes=5, synthetic_ratio=1.0, cache_capacity=4,
                        batch_size=4, warmup="block", warmup_items=4) as ds:
        items = [ds[i] for i in range(8)]
    assert sum(it["is_synthetic"] for it in items) >= 4
    for i, it in enumerate(items):
        assert it["index"] == i and it["weight"] == float(i) / 10  # never another item's
        assert set(it) == {"image", "inst_map", "type_map", "index", "weight", "is_synthetic"}
    batch = torch.utils.data.default_collate(items)
    assert batch["index"].tolist() == list(range(8))


def test_build_pipeline_is_shared_by_the_dataset_and_synthesize():
    base = toy(4)
    pipe = build_pipeline(DiffMixConfig(mode="balance", cache_capacity=2, batch_size=2, label_workers=0), base,
                          NoiseSynth(), info=base.info, raw_shape=lambda: (64, 64))
    assert pipe.cache.patch_shape == (64, 64) and pipe.label_sampler.balances
    assert pipe.config.num_classes == 5 and pipe.config.rare_classes == base.info.rare_classes
    assert pipe.classes.num_classes == pipe.cache.num_classes == pipe.label_sampler.num_classes == 5
    assert pipe.config.patch_size == (64, 64) and pipe.store is None
    assert pipe.producer.step() == 2
    pipe.producer.close()
    pipe.cache.close()
    sampler = build_label_sampler(base, "enlarge", 5, ())
    assert sampler.donors is None and not sampler.balances


def test_warmup_shows_progress_and_the_producers_rate(capsys):
    """warmup='block' shows a bar on stderr from its first second, with the producer's rate."""
    class SlowSynth(NoiseSynth):
        def __call__(self, *args, **kwargs):
            time.sleep(0.6)
            return super().__call__(*args, **kwargs)

    with DiffMixDataset(toy(8), SlowSynth(), synthetic_ratio=1.0, cache_capacity=4, batch_size=1, warmup="block",
                        warmup_items=4, label_workers=0, warmup_timeout=120) as ds:
        assert len(ds.cache) >= 4
    err = capsys.readouterr().err
    assert "DiffMix warm-up" in err and "/4" in err
    assert "patches/s" in err or "measuring" in err
