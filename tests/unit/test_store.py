"""PatchStore: the one on-disk format (HoVer-Net .npy + sidecar + manifest), its checks and its writes."""

from __future__ import annotations

import errno
import json
import os
import warnings

import numpy as np
import pytest

from diffmix_aug.cache import ReplayCache
from diffmix_aug.class_table import ClassTable
from diffmix_aug.pipeline import warm_start
from diffmix_aug.store import MANIFEST, Patch, PatchStore, store_identity

H = W = 8
CLASSES = ClassTable(4, (1,), ("background", "a", "b", "c"))
SYNTH = {"checkpoint": {"path": "x.safetensors", "sha256": "ab" * 32},
         "sampler": {"type": "DDIMSampler", "settings": {"steps": 55, "t_start": 540}}}


def ident(**changes):
    base = {"mode": "balance", "classes": CLASSES, "patch_shape": (H, W), "synthesizer": SYNTH}
    base.update(changes)
    return store_identity(base["mode"], base["classes"], base["patch_shape"], base["synthesizer"])


def patch(v: int) -> Patch:
    img = np.full((H, W, 3), v % 256, np.uint8)
    inst = np.zeros((H, W), np.int32)
    inst[: v % H + 1, :2] = 1
    return Patch(img, inst, (inst > 0).astype(np.int32) * (v % 3 + 1), {"v": v, "params": {"mode": "balance"}})


def test_write_read_roundtrip_in_hovernet_layout(tmp_path):
    store = PatchStore.create(tmp_path / "s", ident(), created_by="test")
    for v in (2, 0, 1):
        store.write(f"p{v}", patch(v))
    assert store.names() == ["p0", "p1", "p2"] and len(store) == 3
    arr = np.load(tmp_path / "s" / "p1.npy")
    assert arr.shape == (H, W, 5) and arr.dtype == np.int32  # what HoVer-Net's FileLoader reads
    got = store.read("p1")
    want = patch(1)
    for a, b in ((got.image, want.image), (got.inst_map, want.inst_map), (got.type_map, want.type_map)):
        np.testing.assert_array_equal(a, b)
    assert got.image.dtype == np.uint8 and got.inst_map.dtype == np.int32 and got.meta == want.meta
    manifest = json.loads((tmp_path / "s" / MANIFEST).read_text())
    assert manifest["format"] == "diffmix_aug.patch_store/1" and manifest["created_by"] == "test"
    assert manifest["classes"] == CLASSES.to_dict() and manifest["patch_shape"] == [H, W]
    assert PatchStore.open(tmp_path / "s", ident()).names() == store.names()


def test_a_store_made_by_another_configuration_is_refused_with_every_difference_named(tmp_path):
    PatchStore.create(tmp_path, ident())
    other = {"checkpoint": {"path": "y", "sha256": "cd" * 32},
             "sampler": {"type": "DDIMSampler", "settings": {"steps": 55, "t_start": 400}}}
    with pytest.raises(ValueError) as info:
        PatchStore.open(tmp_path, ident(mode="union", patch_shape=(16, 16), synthesizer=other))
    msg = str(info.value)
    for part in ("made by another configuration", "mode 'balance' there, 'union' here",
                 "patch_shape [8, 8] there, [16, 16] here", "checkpoint (sha256 of the weights)",
                 "sampler.t_start 540 there, 400 here"):
        assert part in msg, msg
    with pytest.raises(ValueError, match="classes"):
        PatchStore.create(tmp_path, ident(classes=ClassTable(5, (1,))))
    # a checkpoint path elsewhere with the same weights is the same checkpoint; replay compares no synthesizer
    moved = {**SYNTH, "checkpoint": {"path": "/elsewhere.safetensors", "sha256": "ab" * 32}}
    PatchStore.open(tmp_path, ident(synthesizer=moved))
    PatchStore.open(tmp_path, ident(synthesizer=None), keys=("mode", "classes", "patch_shape"))
    # class names are compared only when both sides know them
    PatchStore.open(tmp_path, ident(classes=ClassTable(4, (1,))))


def test_not_a_store_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PatchStore.read_manifest(tmp_path / "missing")
    (tmp_path / "old").mkdir()
    np.save(tmp_path / "old" / "x.npy", np.zeros((H, W, 5), np.int32))
    with pytest.raises(ValueError, match="no manifest.json"):
        PatchStore.create(tmp_path / "old", ident())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MANIFEST).write_text('{"format": "something/9"}')
    with pytest.raises(ValueError, match="expected format"):
        PatchStore.open(tmp_path / "bad")


def test_warm_start_skips_broken_patches_never_opens_a_fifo_and_cuts_at_capacity(tmp_path):
    store = PatchStore.create(tmp_path, ident())
    for v in range(5):
        store.write(f"p{v}", patch(v))
    (tmp_path / "p1.json").unlink()  # a patch without its sidecar
    (tmp_path / "p3.npy").write_bytes(b"\x93NUMPY truncated")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "trap.npy")  # opening it for reading would block for ever
    cache = ReplayCache(8, (H, W), num_classes=4)
    with pytest.warns(RuntimeWarning, match="skipping patch") as rec:
        assert warm_start(cache, store) == 3
    assert len(rec) == 2
    assert sorted(cache.slot_meta(s)["store"] for s in range(3)) == ["p0", "p2", "p4"]
    small = ReplayCache(2, (H, W), num_classes=4)
    with pytest.warns(RuntimeWarning) as rec:
        assert warm_start(small, store) == 2
    assert any("more than cache_capacity=2" in str(r.message) and "cache_capacity=5" in str(r.message)
               for r in rec)
    # ranks take disjoint shares
    good = PatchStore.create(tmp_path / "good", ident())
    for v in range(5):
        good.write(f"p{v}", patch(v))
    shares = []
    for rank in (0, 1):
        c = ReplayCache(8, (H, W), num_classes=4)
        warm_start(c, good, rank=rank, world=2)
        shares.append({c.slot_meta(s)["store"] for s in range(len(c))})
    assert shares == [{"p0", "p2", "p4"}, {"p1", "p3"}]


def test_producer_writes_survive_a_full_disk(tmp_path, monkeypatch):
    import diffmix_aug.data.readers as readers

    store = PatchStore.create(tmp_path, ident())
    real = readers.write_hovernet_npy
    full = {"on": True}

    def maybe_full(*a, **k):
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(readers, "write_hovernet_npy", maybe_full)
    with pytest.warns(RuntimeWarning, match="No space left"):
        assert not store.keep("p0", patch(0))
    assert not list(tmp_path.glob("p0.*"))  # never a sidecar without its patch
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(1, 16):
            assert not store.keep(f"p{i}", patch(i))  # warned once; no retry within the back-off
    full["on"] = False
    assert [store.keep(f"q{i}", patch(i)) for i in range(3)] == [True] * 3
    assert store.names() == ["q0", "q1", "q2"]


def test_read_only_store_is_read_and_says_so(tmp_path, monkeypatch):
    store = PatchStore.create(tmp_path, ident())
    store.write("p0", patch(0))
    import diffmix_aug.store as store_mod

    monkeypatch.setattr(store_mod, "_writable", lambda path: False)  # root ignores permission bits
    with pytest.warns(RuntimeWarning, match="not writable"):
        ro = PatchStore.create(tmp_path, ident())
    assert not ro.writable and not ro.keep("p1", patch(1)) and ro.names() == ["p0"]
