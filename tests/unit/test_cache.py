"""ReplayCache: slots, replacement policies, seqlock reads, whole metadata, checkpoints."""

from __future__ import annotations

import multiprocessing
import pickle
import sys
import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffmix_aug.cache import ReplayCache

H = W = 8
K = 4  # classes counting the background (the pipeline's ClassTable gives it; the cache has no default)


def patch(value: int, k: int = 3):
    img = np.full((H, W, 3), value % 256, np.uint8)
    inst = np.zeros((H, W), np.int32)
    inst[: value % H + 1, :2] = value + 1
    typ = (inst > 0).astype(np.int32) * (value % k + 1)
    return img, inst, typ


def test_write_read_roundtrip_and_dtypes():
    c = ReplayCache(4, (H, W), inst_dtype="int16", num_classes=4)
    img, inst, typ = patch(5)
    seq = c.write(img, inst, typ, {"mode": "balance", "params": {"a": np.int64(3)}})
    assert seq == 0 and len(c) == 1 and c.writes == 1
    p = c.read(c.pick(np.random.default_rng(0)))
    assert p.image.dtype == np.uint8 and p.inst_map.dtype == np.int32 and p.type_map.dtype == np.int32
    np.testing.assert_array_equal(p.image, img)
    np.testing.assert_array_equal(p.inst_map, inst)
    np.testing.assert_array_equal(p.type_map, typ)
    assert c.meta(0) == {"mode": "balance", "params": {"a": np.int64(3)}, "seq": 0}
    assert c.reads == 1
    with pytest.raises(ValueError, match="inst_dtype"):
        c.write(img, inst * 0 + 40000, typ)
    with pytest.raises(ValueError, match="patch must be"):
        c.write(img[:4], inst, typ)


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="policy"):
        ReplayCache(2, (H, W), policy="lru", num_classes=K)
    with pytest.raises(ValueError, match="patch_shape"):
        ReplayCache(2, (H,), num_classes=K)
    with pytest.raises(ValueError, match="inst_dtype"):
        ReplayCache(2, (H, W), inst_dtype="float32", num_classes=K)
    with pytest.raises(ValueError, match="capacity"):
        ReplayCache(0, (H, W), num_classes=K)


def _reference_victim(seq, reuse, policy):
    empty = [i for i, s in enumerate(seq) if s < 0]
    if empty:
        return empty[0]
    if policy == "fifo":
        return min(range(len(seq)), key=lambda i: seq[i])
    return min(range(len(seq)), key=lambda i: (-reuse[i], seq[i]))


@settings(max_examples=25, deadline=None)
@given(policy=st.sampled_from(["fifo", "reuse"]), cap=st.integers(1, 5),
       ops=st.lists(st.tuples(st.booleans(), st.integers(0, 10)), min_size=1, max_size=30))
def test_replacement_matches_reference(policy, cap, ops):
    """Interleaved writes and reads choose the same victims as a plain reference model."""
    c = ReplayCache(cap, (H, W), policy=policy, num_classes=K)
    seq, reuse, n = [-1] * cap, [0] * cap, 0
    for is_write, arg in ops:
        if is_write:
            v = _reference_victim(seq, reuse, policy)
            c.write(*patch(n))
            seq[v], reuse[v] = n, 0
            n += 1
        elif n:
            filled = [i for i in range(cap) if seq[i] >= 0]
            slot = filled[arg % len(filled)]
            assert c.read(slot).seq == seq[slot]
            reuse[slot] += 1
        assert c._np["seq"].tolist() == seq
        assert c._np["reuse"].tolist() == reuse


def test_pick_prefers_fresh_and_respects_max_reuse():
    c = ReplayCache(3, (H, W), max_reuse=2, candidates=3, num_classes=K)
    for v in range(3):
        c.write(*patch(v))
    rng = np.random.default_rng(0)
    for _ in range(6):  # spreads reuse evenly: never serves a slot twice before all once
        c.read(c.pick(rng))
    assert c._np["reuse"].tolist() == [2, 2, 2]
    assert c.pick(rng) is None  # everything at max_reuse: the consumer serves an original, never blocks
    c._np["reuse"][1] = 0
    assert all(c.pick(rng) == 1 for _ in range(5))
    assert ReplayCache(2, (H, W), num_classes=K).pick(rng) is None


def _another_reader_between_pick_and_read(c: ReplayCache, action) -> list[int]:
    """Wrap ``c.pick`` so that ``action(slot)`` runs once, right after the first pick returns ``slot``
    (another DataLoader worker's serve, or the writer, landing in the window before the claim)."""
    picked, pick = [], c.pick

    def racing_pick(rng):
        slot = pick(rng)
        if not picked and slot is not None:
            action(slot)
        picked.append(slot)
        return slot

    c.pick = racing_pick
    return picked


def test_a_serve_lost_to_another_reader_picks_again():
    """Two readers picked the same slot for its last serve: the loser of the claim is served another
    fresh patch, not an original (CI: 25 of 26 asks served with a fresh pool patch left)."""
    c = ReplayCache(2, (H, W), max_reuse=1, candidates=1, num_classes=K)
    for v in range(2):
        c.write(*patch(v))
    picked = _another_reader_between_pick_and_read(c, lambda slot: c.read(slot))  # its last serve
    got = c.serve((0, 1, 2))
    assert got is not None, "an ask went unserved although a patch below max_reuse remained"
    assert picked[1] != picked[0] and got.slot == picked[1] and got.seq == picked[1]
    assert c._np["reuse"].tolist() == [1, 1] and c.reads == 2
    assert c.serve((0, 1, 3)) is None  # nothing below max_reuse is left: now the caller serves an original


def test_a_claim_for_a_patch_replaced_after_its_copy_is_refused():
    """The writer replaced the copied patch before the claim: the count must not land on the new
    patch (served 0 times, counted once); the serve picks again and gets the new one."""
    c = ReplayCache(1, (H, W), max_reuse=2, num_classes=K)
    c.write(*patch(1))
    claim, writes = c._claim, []

    def write_then_claim(slot, seq):
        if not writes:
            writes.append(c.write(*patch(7)))
        return claim(slot, seq)

    c._claim = write_then_claim
    got = c.serve((4,))
    assert got is not None and got.seq == writes[0] == 1 and int(got.image[0, 0, 0]) == 7
    assert c._np["reuse"].tolist() == [1] and c.reads == 1


def test_torn_read_is_detected_and_retried():
    c = ReplayCache(1, (H, W), num_classes=K)
    c.write(*patch(1))
    c._np["version"][0] += 1  # a writer is "in the middle" forever
    assert c.read(0, max_retries=10) is None
    c._np["version"][0] += 1
    assert c.read(0).seq == 0


def test_concurrent_writer_never_yields_mixed_patches():
    """A reader racing one writer only ever sees patches whose parts belong together."""
    c = ReplayCache(2, (64, 64), num_classes=K)
    stop = threading.Event()

    def writer():
        v = 0
        while not stop.is_set():
            img = np.full((64, 64, 3), v % 256, np.uint8)
            inst = np.full((64, 64), v, np.int32)
            c.write(img, inst, np.full((64, 64), v % 7, np.int32), {"v": v})
            v += 1
            # a few writes per reader pass: a writer spinning without a pause starves the reader's
            # retries under the GIL (202 s on a CI machine), which no producer (seconds per patch) does
            time.sleep(1e-4)

    t = threading.Thread(target=writer)
    t.start()
    try:
        rng = np.random.default_rng(0)
        seen, deadline = 0, time.monotonic() + 60
        while seen < 300:
            assert time.monotonic() < deadline, f"only {seen} of 300 consistent reads in 60 s"
            slot = c.pick(rng)
            if slot is None:
                continue
            p = c.read(slot, count=False)
            if p is None:
                continue
            v = int(p.inst_map[0, 0])
            assert (p.inst_map == v).all() and (p.image == v % 256).all() and (p.type_map == v % 7).all()
            seen += 1
    finally:
        stop.set()
        t.join()


def test_class_fractions_follow_contents():
    c = ReplayCache(4, (H, W), num_classes=4)
    assert c.class_fractions().sum() == 0
    c.write(*patch(0))  # one class-1 nucleus
    c.write(*patch(1))  # one class-2 nucleus
    np.testing.assert_allclose(c.class_fractions(), [0, 0.5, 0.5, 0])


def test_type_above_255_is_rejected_not_wrapped():
    c = ReplayCache(2, (H, W), num_classes=K)
    img, inst, typ = patch(0)
    typ = typ.copy()
    typ[0, 0] = 300
    with pytest.raises(ValueError, match="type_map"):
        c.write(img, inst, typ)


def test_state_dict_roundtrip_through_weights_only_load(tmp_path):
    c = ReplayCache(3, (H, W), policy="reuse", num_classes=K)
    for v in range(5):
        c.write(*patch(v), {"v": v})
    c.read(0)
    torch.save(c.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    d = ReplayCache(3, (H, W), policy="reuse", num_classes=K)
    d.load_state_dict(state)
    for key in ("image", "inst", "type", "seq", "reuse", "hist"):
        np.testing.assert_array_equal(c._np[key], d._np[key])
    assert d.writes == 5 and d.reads == 1
    assert [d.slot_meta(s) for s in range(3)] == [c.slot_meta(s) for s in range(3)]
    assert d.write(*patch(9)) == c.write(*patch(9))
    with pytest.raises(ValueError, match="capacity"):
        ReplayCache(4, (H, W), num_classes=K).load_state_dict(state)


def test_metadata_is_whole_kept_in_the_writer_and_never_pickled():
    """No truncation (metadata used to be cut to {'seq', 'truncated'} past 2048 bytes); bounded history."""
    c = ReplayCache(2, (H, W), num_classes=K)
    big = {"params": list(range(5000)), "mode": "union"}  # ~30 kB of JSON
    seq = c.write(*patch(0), big)
    assert c.meta(seq)["params"] == big["params"] and c.slot_meta(c.find_seq(seq))["mode"] == "union"
    clone = pickle.loads(pickle.dumps(c))  # what a spawned worker gets: the pixels, not the metadata
    assert clone.meta(seq) is None and clone.read(0, count=False).seq == seq
    for i in range(1, 40):
        c.write(*patch(i), {"i": i})
    assert len(c._meta) <= 4 * c.capacity and c.meta(39) == {"i": 39, "seq": 39}
    assert c.meta(0) is None  # evicted long ago and forgotten


def test_error_channel_and_close():
    c = ReplayCache(1, (H, W), num_classes=K)
    assert c.error() is None
    c.set_error("Traceback ...\nValueError: boom")
    assert "boom" in c.error()
    c.close()
    assert c._tensors == {}


def _serve_all(cache: ReplayCache, tries: int, got: torch.Tensor, who: int) -> None:
    for _ in range(tries):
        if cache.read(0) is not None:
            got[who] += 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forked readers")
def test_concurrent_readers_never_serve_past_max_reuse_and_lose_no_count():
    """Two processes reading one slot at once: exactly max_reuse serves in all, each counted (the
    reuse and reads counters were a read-modify-write that lost updates across workers)."""
    cache = ReplayCache(1, (H, W), max_reuse=300, num_classes=4)
    cache.write(*patch(5))
    got = torch.zeros(2, dtype=torch.int64).share_memory_()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_serve_all, args=(cache, 400, got, k)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert int(got.sum()) == 300
    assert cache.reads == 300 and int(cache._np["reuse"][0]) == 300


@pytest.mark.parametrize(("image", "inst", "typ", "error", "words"), [
    (np.full((H, W, 3), 0.7), None, None, TypeError, ["`image` must be uint8", "got float64", "np.clip(np.rint("]),
    (None, np.full((H, W), 1.5), None, TypeError, ["`inst_map` must hold integer ids", "got float64", "np.rint"]),
    (None, None, np.full((H, W), 2.0), TypeError, ["`type_map` must hold integer ids", "got float64"]),
    (None, np.full((H, W), -1, np.int32), None, ValueError, ["`inst_map` ids must be >= 0", "minimum -1",
                                                             "remap_label"]),
    (None, np.full((H, W), -40000, np.int32), None, ValueError, ["`inst_map` ids must be >= 0", "minimum -40000"]),
    (None, np.full((H, W), 40000, np.int32), None, ValueError, ["do not fit inst_dtype", "inst_dtype='int32'"]),
])
def test_write_refuses_what_it_would_store_wrong(image, inst, typ, error, words):
    """Issue 32, case 9: negative ids, int16 overflow and float images or maps were stored as garbage
    (-40000 wrapped, 0.7 stored as 0); each is refused naming the field, what was got and the fix."""
    c = ReplayCache(2, (H, W), inst_dtype="int16", num_classes=K)
    img0, inst0, typ0 = patch(1)
    with pytest.raises(error) as err:
        c.write(img0 if image is None else image, inst0 if inst is None else inst, typ0 if typ is None else typ)
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    assert c.writes == 0 and len(c) == 0  # nothing stored
