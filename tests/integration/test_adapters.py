"""Adapters: HoVer-Net FileLoader and SONNET-port replicas with the tiny SDM on CPU, generic bases,
and SONNET's ordinal map against a plain transcription of the port's loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffmix_helpers import SIZE, DictDataset, NoiseSynth, tiny_synthesizer
from hovernet_replica import FileLoader, SonnetFileLoader, gen_targets, write_patches
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from diffmix_aug.adapters import HoVerNetAdapter, SonnetAdapter, select_adapter, sonnet_ordinal_map
from diffmix_aug.adapters.base import fit_to_shape
from diffmix_aug.data.toy import make_toy_dataset
from diffmix_aug.dataset import DiffMixDataset

RAW, INPUT, MASK = 48, 40, 24  # HoVer-Net: 540 / 270 / 80; same relations, tiny


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def synth():
    return tiny_synthesizer()


@pytest.fixture(scope="module")
def raw_samples():
    ds = make_toy_dataset(8, RAW, 0)
    return [ds[i] for i in range(len(ds))]


def hovernet(paths, mode="train", setup=True):
    return FileLoader(paths, with_type=True, input_shape=(INPUT, INPUT), mask_shape=(MASK, MASK), mode=mode,
                      setup_augmentor=setup, target_gen=(gen_targets, {}))


def sonnet(paths, mode="train", setup=True):
    return SonnetFileLoader(paths, with_type=True, input_shape=(INPUT, INPUT), mask_shape=(MASK, MASK),
                            mode=mode, setup_augmentor=setup)


def spec(item):
    return [(k, v.dtype, v.shape) for k, v in item.items() if k != "is_synthetic"]


# ---------------------------------------------------------------- SONNET ordinal map
def port_ordinal_map(inst_map):
    """The port's dataset.py loop, transcribed (float centroid, per-instance max, tk_labelize)."""
    tk = [math.exp(math.log(2) - math.log(2) * (j / 8)) - 1 for j in range(9)]
    out = np.zeros(inst_map.shape, np.float32)
    for uid in np.unique(inst_map):
        if uid == 0:
            continue
        mask = inst_map == uid
        rows, cols = np.nonzero(mask)
        cy, cx = rows.mean(), cols.mean()  # .mat inst_centroid is the centre of mass (x, y)
        with np.errstate(invalid="ignore", divide="ignore"):
            d = np.sqrt((rows - cy) ** 2 + (cols - cx) ** 2)
            d = d / d.max()
        lab = np.zeros_like(d)
        for i, v in enumerate(d):
            if v == 1:
                lab[i] = 1
                continue
            for idx in range(len(tk) - 1):
                if tk[idx] > v >= tk[idx + 1]:
                    lab[i] = idx + 1
        out[rows, cols] = lab
    return out.astype(np.int32)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(0, 12))
def test_ordinal_map_matches_port_loop(seed, n):
    rng = np.random.default_rng(seed)
    inst = np.zeros((40, 40), np.int32)
    for k in range(1, n + 1):
        y, x = rng.integers(0, 36, 2)
        h, w = rng.integers(1, 9, 2)
        inst[y:y + h, x:x + w] = k
    inst[0, 0] = n + 1  # a one-pixel instance: 0/0 matches no bin in the port -> 0
    ref = port_ordinal_map(inst)
    got = sonnet_ordinal_map(inst)
    np.testing.assert_array_equal(got, ref)
    assert got[inst == 0].max(initial=0) == 0 and got.max() <= 8


# ---------------------------------------------------------------- HoVer-Net / SONNET replicas
@pytest.mark.parametrize("kind", ["hovernet", "sonnet", "hovernet-type5"])
def test_synthetic_item_equals_loader_on_the_same_patch_file(kind, tmp_path, raw_samples, synth):
    """With deterministic (valid-mode) augs, a synthetic item is exactly what the loader itself
    returns for that patch saved as its .npy file: same pipeline, keys, dtypes, values.
    ``hovernet-type5``: a type 5 in the map stays 5 (HoVer-Net's master no longer merges 5 -> 1)."""
    make, sonnet_flag = (sonnet, True) if kind == "sonnet" else (hovernet, False)
    paths = write_patches(raw_samples, tmp_path / "train", sonnet=sonnet_flag)
    base = make(paths, mode="valid")
    adapter = select_adapter(base)
    assert isinstance(adapter, SonnetAdapter if kind == "sonnet" else HoVerNetAdapter)
    src = adapter.read_raw(base, 3).crop(8, 8, SIZE, SIZE)
    img = synth(src.image[None], src.inst_map[None], src.type_map[None], generator=torch.Generator().manual_seed(0))[0]
    types = src.type_map
    if kind == "hovernet-type5":  # the 4-class SDM cannot render a 5; the adapter only carries the map
        types = np.where(types == types.max(), 5, types).astype(types.dtype)
        assert (types == 5).any()
    item = adapter.synthetic_item(base, 0, img, src.inst_map, types)
    # the same patch, fitted to the raw size the way the adapter does, written as the loader's file
    fitted = np.concatenate([fit_to_shape(img, (RAW, RAW)).astype(np.int32),
                             fit_to_shape(np.stack([src.inst_map, types], -1), (RAW, RAW))], -1)
    if sonnet_flag:
        ordinal = fit_to_shape(sonnet_ordinal_map(src.inst_map), (RAW, RAW))
        fitted = np.concatenate([fitted, ordinal[..., None]], -1)
    np.save(tmp_path / "synthetic.npy", fitted)
    ref = make([str(tmp_path / "synthetic.npy")], mode="valid")[0]
    assert list(item) == list(ref)
    for k in ref:
        assert item[k].dtype == ref[k].dtype and item[k].shape == ref[k].shape, k
        np.testing.assert_array_equal(item[k], ref[k], err_msg=k)
    assert not np.array_equal(item["img"], cropped_source(src, base))  # the SDM changed the image
    if kind == "hovernet-type5":
        assert (item["tp_map"] == 5).any()


def cropped_source(src, base):
    return fit_to_shape(src.image, (RAW, RAW))[(RAW - INPUT) // 2:(RAW + INPUT) // 2, (RAW - INPUT) // 2:(RAW + INPUT) // 2]


def _hovernet_worker_init_fn(worker_id):
    # HoVer-Net run_train.py: worker_info.dataset.setup_augmentor(worker_id, worker_seed)
    info = torch.utils.data.get_worker_info()
    seed = torch.randint(0, 2**32, (1,))[0].cpu().item() + worker_id
    info.dataset.setup_augmentor(worker_id, seed)


@pytest.mark.parametrize("kind", ["hovernet", "sonnet"])
def test_one_line_wrap_in_the_unchanged_training_loader(kind, tmp_path, raw_samples, synth):
    """run_train.py's DataLoader (workers built with setup_augmentor=False, worker_init_fn) over
    the wrapped loader: every batch keeps the loader's keys, dtypes and shapes."""
    make = hovernet if kind == "hovernet" else sonnet
    paths = write_patches(raw_samples, tmp_path / "train", sonnet=kind == "sonnet")
    base = make(paths, setup=False)
    ds = DiffMixDataset(base, synth, mode="union", synthetic_ratio=0.5, seed=0, cache_capacity=4, batch_size=4,
                        warmup="block", rare_classes=(1,))
    try:
        with pytest.raises(AttributeError, match="setup_augmentor"):
            ds[next(i for i in range(8) if ds.wants_synthetic(i))]
        ds.setup_augmentor(0, 7)
        assert hasattr(base, "shape_augs")
        ref = spec(base[0])
        loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=True, drop_last=True,
                            worker_init_fn=_hovernet_worker_init_fn, multiprocessing_context="fork")
        flags = []
        for batch in loader:
            assert [(k, v.dtype, tuple(v.shape[1:])) for k, v in batch.items() if k != "is_synthetic"] == \
                [(k, torch.from_numpy(np.zeros(0, d)).dtype, s) for k, d, s in ref]
            flags += batch["is_synthetic"].tolist()
        assert any(flags) and not all(flags)
        for i in range(8):
            assert spec(ds[i]) == ref
        expected = {"hovernet": ["img", "tp_map", "hv_map", "np_map"], "sonnet": ["img", "no_map", "nf_map", "tp_map"]}
        assert [k for k, _, _ in ref] == expected[kind]
    finally:
        ds.close()


def test_adapter_can_be_forced_and_rejects_unknown(tmp_path, raw_samples):
    paths = write_patches(raw_samples[:2], tmp_path)
    base = hovernet(paths)
    assert isinstance(select_adapter(base, "sonnet"), SonnetAdapter)
    with pytest.raises(ValueError, match="adapter"):
        select_adapter(base, "monai")


# ---------------------------------------------------------------- generic bases
def test_nuclei_dataset_with_albumentations_transform(synth):
    import albumentations as A

    base = make_toy_dataset(8, SIZE, 1)
    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    with DiffMixDataset(base, synth, mode="enlarge", synthetic_ratio=0.5, transform=flip, cache_capacity=4,
                        batch_size=4, warmup="block", cooperative=True) as ds:
        for i in range(8):
            s = ds[i]
            assert s.meta["is_synthetic"] == ds.item_info(i)["is_synthetic"]
            assert s.image.dtype == np.uint8 and s.inst_map.shape == (SIZE, SIZE)
            if not s.meta["is_synthetic"]:
                np.testing.assert_array_equal(s.image, base[i].image[:, ::-1])
                np.testing.assert_array_equal(s.inst_map, base[i].inst_map[:, ::-1])
            else:
                p = ds.cache.read(ds.cache.find_seq(ds.item_info(i)["seq"]), count=False)
                np.testing.assert_array_equal(s.image, p.image[:, ::-1])


def test_dict_dataset_with_torchvision_transforms_v2():
    """A torchvision ``transforms.v2`` pipeline on dict items: image and maps flipped together, for
    original and synthetic items alike (the synthetic item has the base item's structure)."""
    v2 = pytest.importorskip("torchvision.transforms.v2")
    from torchvision import tv_tensors

    flip = v2.RandomHorizontalFlip(p=1.0)

    def transform(item):
        wrapped = {"image": tv_tensors.Image(item["image"]), "inst_map": tv_tensors.Mask(item["inst_map"]),
                   "type_map": tv_tensors.Mask(item["type_map"])}
        return {**item, **flip(wrapped)}

    base = DictDataset(8)
    with DiffMixDataset(base, NoiseSynth(), mode="enlarge", num_classes=5, synthetic_ratio=0.5, transform=transform,
                        cache_capacity=4, batch_size=4, warmup="block", cooperative=True) as ds:
        for i in range(8):
            item = ds[i]
            info = ds.item_info(i)
            if info["is_synthetic"]:
                p = ds.cache.read(ds.cache.find_seq(info["seq"]), count=False)
                src_img, src_inst = torch.from_numpy(p.image).permute(2, 0, 1).float() / 255, p.inst_map
            else:
                src_img, src_inst = base[i]["image"], base[i]["inst_map"].numpy()
            assert torch.allclose(item["image"], src_img.flip(-1))
            np.testing.assert_array_equal(np.asarray(item["inst_map"]), src_inst[:, ::-1])
            assert item["is_synthetic"] == info["is_synthetic"] and item["name"] == "toy"
