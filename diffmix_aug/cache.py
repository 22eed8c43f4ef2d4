"""``ReplayCache``: a fixed-capacity ring of synthetic patches in shared memory.

Every array is a torch tensor moved to shared memory at construction (``share_memory_()``), so
DataLoader workers see the producer's writes whether they were forked or spawned, and whether
they are persistent or not (MONAI's SmartCacheDataset swaps Python lists in the main process,
which never reach its workers). One writer (the producer thread in the main process) and any
number of readers (workers) synchronise per slot with a seqlock: the slot's version counter is
odd while it is being written; a reader copies the slot and retries when the version changed or
was odd. Readers never block: when the cache is empty they get ``None`` and the caller serves an
original item.

Optionally every written patch is also stored on disk in HoVer-Net's patch layout (``int32
[H, W, 5]`` = RGB, instance id, type; a JSON sidecar holds the metadata). The store warm-starts
the cache of the next run; files are written atomically, and corrupt files are skipped with a
warning. When the directory cannot be written (read-only, disk full) the cache continues in
memory only, with a warning.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import stat
import time
import uuid
import warnings
from dataclasses import dataclass, field
from multiprocessing import context as _mp_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._checks import check_choice, check_positive_int, describe
from ._io import atomic_save_npy, atomic_write_text
from ._seeds import key_indices

__all__ = ["CachedPatch", "ReplayCache"]

_INST_DTYPES = {"int32": torch.int32, "int16": torch.int16, torch.int32: torch.int32, torch.int16: torch.int16,
                np.dtype(np.int32): torch.int32, np.dtype(np.int16): torch.int16}
# control counters
_WRITES, _READS, _ERR_LEN = 0, 1, 2
_ERR_BYTES = 16384


@dataclass
class CachedPatch:
    """One patch copied out of the cache (the caller owns the arrays).

    Attributes:
        image: ``uint8 [H, W, 3]``.
        inst_map: ``int32 [H, W]``.
        type_map: ``int32 [H, W]``.
        slot: Slot it was read from.
        seq: Write sequence number of the patch (unique per cache, increases with every write).
        meta: Metadata written with it (label-map parameters, seed, mode, source index).
    """

    image: np.ndarray
    inst_map: np.ndarray
    type_map: np.ndarray
    slot: int
    seq: int
    meta: dict[str, Any] = field(default_factory=dict)


class ReplayCache:
    """Fixed-capacity shared-memory cache of synthetic nuclei patches.

    Args:
        capacity: Number of slots, allocated up front.
        patch_shape: ``(H, W)`` of every patch.
        inst_dtype: ``"int32"`` or ``"int16"`` (half the memory; ids must stay below 32768).
        policy: ``"fifo"`` overwrites the oldest slot; ``"reuse"`` overwrites the most reused slot
            first (oldest among equals), so fresh patches are not evicted before they are read.
        max_reuse: Readers prefer slots served fewer than this many times; when every slot has
            reached it, reused patches are served anyway (the consumer never waits).
        num_classes: Classes counting the background, for the per-slot class histogram that lets
            the producer bias synthesis toward what the cache lacks.
        meta_bytes: Bytes of shared memory per slot for the JSON metadata.
        cache_dir: Optional on-disk store (HoVer-Net ``.npy`` patches) that warm-starts the cache.
        name: File-name prefix of this cache's patches in ``cache_dir`` (make it unique per rank).
        candidates: How many filled slots a reader samples before taking the least reused one.
        warm_start: Load the newest patches of ``cache_dir`` at construction.

    Raises:
        ValueError / TypeError: bad arguments (the message names the field).
    """

    def __init__(
        self,
        capacity: int,
        patch_shape: tuple[int, int],
        *,
        inst_dtype: Any = "int32",
        policy: str = "fifo",
        max_reuse: int = 8,
        num_classes: int = 8,
        meta_bytes: int = 2048,
        cache_dir: str | os.PathLike[str] | None = None,
        name: str = "diffmix",
        candidates: int = 3,
        warm_start: bool = True,
    ) -> None:
        self.capacity = check_positive_int("capacity", capacity)
        if (not isinstance(patch_shape, (tuple, list)) or len(patch_shape) != 2
                or not all(isinstance(v, (int, np.integer)) and v > 0 for v in patch_shape)):
            raise ValueError(f"`patch_shape` must be (H, W) with positive ints, got {describe(patch_shape)}")
        self.patch_shape = (int(patch_shape[0]), int(patch_shape[1]))
        if inst_dtype not in _INST_DTYPES:
            raise ValueError(f"`inst_dtype` must be 'int32' or 'int16', got {inst_dtype!r}")
        self.inst_dtype = _INST_DTYPES[inst_dtype]
        self.policy = check_choice("policy", policy, ("fifo", "reuse"))
        self.max_reuse = check_positive_int("max_reuse", max_reuse)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.meta_bytes = check_positive_int("meta_bytes", meta_bytes)
        self.candidates = check_positive_int("candidates", candidates)
        self.name = str(name)
        c, (h, w) = self.capacity, self.patch_shape
        t = {
            "image": torch.zeros((c, h, w, 3), dtype=torch.uint8),
            "inst": torch.zeros((c, h, w), dtype=self.inst_dtype),
            "type": torch.zeros((c, h, w), dtype=torch.uint8),
            "version": torch.zeros(c, dtype=torch.int64),
            "seq": torch.full((c,), -1, dtype=torch.int64),
            "reuse": torch.zeros(c, dtype=torch.int64),
            "hist": torch.zeros((c, self.num_classes), dtype=torch.int64),
            "meta": torch.zeros((c, self.meta_bytes), dtype=torch.uint8),
            "meta_len": torch.zeros(c, dtype=torch.int64),
            "control": torch.zeros(3, dtype=torch.int64),
            "error": torch.zeros(_ERR_BYTES, dtype=torch.uint8),
        }
        self._tensors = {k: v.share_memory_() for k, v in t.items()}
        # Credits for the producer: one per slot that may be overwritten without losing an unread
        # patch. Readers give one back when they read a fresh patch. A spawn-context semaphore
        # stays valid in forked and spawned workers alike.
        self._credits = multiprocessing.get_context("spawn").Semaphore(self.capacity)
        # serialises the serve accounting of read() across the workers: the claim against max_reuse
        # and the reuse / reads counters (a read-modify-write from two workers at once lost updates)
        self._serve_lock = multiprocessing.get_context("spawn").Lock()
        self._views()
        self.cache_dir: Path | None = None  # where patches are persisted (None: not writable)
        # unique per cache instance, so that a second run with the same seed never overwrites the first
        self.run_id = uuid.uuid4().hex[:10]
        self._persist_failures = 0
        self._persist_retry_at = 0  # write count from which persistence is tried again after a failure
        if cache_dir is not None:
            self.cache_dir = self._probe_dir(Path(cache_dir))
            if warm_start and Path(cache_dir).is_dir():
                self._warm_start(Path(cache_dir))  # reading needs no write access

    # ------------------------------------------------------------------ plumbing
    def _views(self) -> None:
        """numpy views of the shared tensors (same memory; cheaper per-item indexing)."""
        self._np = {k: v.numpy() for k, v in self._tensors.items()}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_np")
        if _mp_context.get_spawning_popen() is None:
            state["_credits"] = None  # a semaphore can only travel to a process being started
            state["_serve_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._views()

    def __len__(self) -> int:
        """Number of filled slots."""
        return int((self._np["seq"] >= 0).sum())

    @property
    def writes(self) -> int:
        """Total patches written so far (the replacement cursor under ``"fifo"``)."""
        return int(self._np["control"][_WRITES])

    @property
    def reads(self) -> int:
        """Total patches served so far, by every process that got the cache when it started."""
        return int(self._np["control"][_READS])

    @property
    def nbytes(self) -> int:
        """Shared memory held by the cache."""
        return sum(t.numel() * t.element_size() for t in self._tensors.values())

    # ------------------------------------------------------------------ writer side
    def _victim(self) -> int:
        seq = self._np["seq"]
        empty = np.flatnonzero(seq < 0)
        if empty.size:
            return int(empty[0])
        if self.policy == "fifo":
            return int(np.argmin(seq))  # oldest write
        # most reused first; among equals the oldest (smallest seq)
        order = np.lexsort((seq, -self._np["reuse"]))
        return int(order[0])

    def acquire_credit(self, timeout: float | None = None) -> bool:
        """Wait until a slot may be overwritten without losing an unread patch (producer only)."""
        if self._credits is None:
            return True
        return bool(self._credits.acquire(timeout=timeout))

    def release_credit(self, n: int = 1) -> None:
        """Give back ``n`` credits (readers after a first read; ``close()`` to wake the producer)."""
        if self._credits is not None:
            for _ in range(n):
                self._credits.release()

    def write(self, image: np.ndarray, inst_map: np.ndarray, type_map: np.ndarray,
              meta: dict[str, Any] | None = None, *, persist: bool = True) -> int:
        """Write one patch into the slot chosen by the replacement policy; returns its seq.

        Only one thread (the producer) may call ``write``.

        Args:
            image: ``uint8 [H, W, 3]``.
            inst_map: ``int [H, W]`` instance ids (must fit ``inst_dtype``).
            type_map: ``int [H, W]`` classes below 256.
            meta: JSON-serialisable metadata (label-map parameters, seed, mode, source index).
            persist: Also store the patch in ``cache_dir`` when there is one.
        """
        h, w = self.patch_shape
        if image.shape != (h, w, 3) or inst_map.shape != (h, w) or type_map.shape != (h, w):
            raise ValueError(f"patch must be image [{h},{w},3], inst/type [{h},{w}], got image {describe(image)}, "
                             f"inst_map {describe(inst_map)}, type_map {describe(type_map)}")
        if type_map.size and (int(type_map.min()) < 0 or int(type_map.max()) > 255):
            raise ValueError(f"`type_map` classes must be in 0..255 (stored as uint8), got range "
                             f"{int(type_map.min())}..{int(type_map.max())}; merge the classes first")
        if inst_map.size and int(inst_map.max()) > torch.iinfo(self.inst_dtype).max:
            raise ValueError(f"`inst_map` ids up to {int(inst_map.max())} do not fit inst_dtype={self.inst_dtype}; "
                             "use inst_dtype='int32' or relabel with remap_label")
        meta = dict(meta or {})
        n = self._np
        seq = int(n["control"][_WRITES])
        meta["seq"] = seq
        blob = json.dumps(meta, default=_json_default).encode()
        if len(blob) > self.meta_bytes:
            blob = json.dumps({"seq": seq, "truncated": True}).encode()
        slot = self._victim()
        v = int(n["version"][slot])
        n["version"][slot] = v + 1  # odd: writing
        n["image"][slot] = image
        n["inst"][slot] = inst_map
        n["type"][slot] = type_map
        n["hist"][slot] = _class_hist(inst_map, type_map, self.num_classes)
        n["meta"][slot, : len(blob)] = np.frombuffer(blob, np.uint8)
        n["meta_len"][slot] = len(blob)
        n["reuse"][slot] = 0
        n["seq"][slot] = seq
        n["version"][slot] = v + 2  # even: stable
        n["control"][_WRITES] = seq + 1
        if persist and self.cache_dir is not None and seq >= self._persist_retry_at:
            self._persist(seq, image, inst_map, type_map, meta)
        return seq

    # ------------------------------------------------------------------ reader side
    def pick(self, rng: np.random.Generator | tuple[int, ...]) -> int | None:
        """Choose a filled slot: among ``candidates`` random filled slots, the least reused one.

        Slots that reached ``max_reuse`` are never picked. Returns None when the cache is empty or
        every filled slot has been served ``max_reuse`` times (the consumer then serves an original).

        Args:
            rng: A generator, or a tuple of integer keys from which the candidates are hashed
                (:func:`~diffmix_aug._seeds.key_indices`; the dataset's per-item path, ~3 us
                against ~15 us for building a generator per item).
        """
        n = self._np
        filled = np.flatnonzero(n["seq"] >= 0)
        if filled.size == 0:
            return None
        fresh = filled[n["reuse"][filled] < self.max_reuse]
        if fresh.size == 0:
            return None  # every patch was served max_reuse times: the caller serves an original
        pool = fresh
        if pool.size <= self.candidates:
            cand = pool
        elif isinstance(rng, tuple):
            cand = pool[key_indices(self.candidates, pool.size, *rng)]
        else:
            cand = pool[rng.integers(0, pool.size, size=self.candidates)]
        return int(cand[np.argmin(n["reuse"][cand])])

    def read(self, slot: int, *, count: bool = True, max_retries: int = 1000) -> CachedPatch | None:
        """Copy slot ``slot`` out with the seqlock protocol (retries while it is being written).

        Args:
            slot: Slot index.
            count: Count this as a serve (reuse counter, producer credit on a first read); a slot
                that reached ``max_reuse`` meanwhile (another worker's serve) gives None.
            max_retries: Give up (return None) after this many torn reads.
        """
        n = self._np
        for attempt in range(max_retries):
            if attempt:
                # let a writer of this process finish: a reader spinning with the GIL held starved a
                # writer thread mid-write (23 consistent reads in 60 s, tests/unit/test_cache.py)
                time.sleep(0)
            v1 = int(n["version"][slot])
            if v1 & 1:
                continue
            seq = int(n["seq"][slot])
            image = n["image"][slot].copy()
            inst = n["inst"][slot].astype(np.int32)
            typ = n["type"][slot].astype(np.int32)
            blob = bytes(n["meta"][slot, : int(n["meta_len"][slot])])
            if int(n["version"][slot]) != v1:
                continue  # torn: the writer touched the slot while we copied
            if seq < 0:
                return None
            if count and not self._claim(slot):
                return None  # another reader took its last serve meanwhile: the caller serves an original
            meta = json.loads(blob.decode()) if blob else {}
            return CachedPatch(image, inst, typ, slot, seq, meta)
        return None

    def _claim(self, slot: int) -> bool:
        """Count one serve of ``slot`` unless it already reached ``max_reuse``; False then.

        Under the serve lock, so concurrent workers neither lose a count nor serve a patch past
        ``max_reuse`` between :meth:`pick` and here (without the lock: a process that got the cache
        other than at its start, the counts are approximate).
        """
        n = self._np
        with self._serve_lock if self._serve_lock is not None else contextlib.nullcontext():
            before = int(n["reuse"][slot])
            if before >= self.max_reuse:
                return False
            n["reuse"][slot] = before + 1
            n["control"][_READS] += 1
        if before == 0:
            self.release_credit()
        return True

    def class_fractions(self) -> np.ndarray:
        """``float64 [num_classes]``: share of each class among the cached nuclei (0 when empty)."""
        n = self._np
        filled = n["seq"] >= 0
        tot = n["hist"][filled].sum(axis=0).astype(np.float64)
        s = tot[1:].sum()
        return tot / s if s > 0 else np.zeros_like(tot)

    def slot_meta(self, slot: int) -> dict[str, Any]:
        """The metadata of ``slot`` (not a counted read)."""
        p = self.read(slot, count=False)
        return {} if p is None else p.meta

    def find_seq(self, seq: int) -> int | None:
        """Slot currently holding patch ``seq``, or None when it has been replaced."""
        hit = np.flatnonzero(self._np["seq"] == seq)
        return int(hit[0]) if hit.size else None

    # ------------------------------------------------------------------ errors (cross-process)
    def set_error(self, text: str) -> None:
        """Publish a producer failure so that workers in any process raise it."""
        blob = text.encode()[-_ERR_BYTES:]
        self._np["error"][: len(blob)] = np.frombuffer(blob, np.uint8)
        self._np["control"][_ERR_LEN] = len(blob)

    def error(self) -> str | None:
        """The published producer failure, or None."""
        k = int(self._np["control"][_ERR_LEN])
        return bytes(self._np["error"][:k]).decode(errors="replace") if k else None

    # ------------------------------------------------------------------ disk store
    def _probe_dir(self, path: Path) -> Path | None:
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".probe-{os.getpid()}"
            atomic_write_text(probe, "ok")
            probe.unlink()
            return path
        except OSError as exc:
            warnings.warn(f"ReplayCache: cannot write to cache_dir {str(path)!r} ({exc}); "
                          "its readable patches are still loaded, new ones stay in memory", RuntimeWarning, stacklevel=3)
            return None

    def _persist(self, seq: int, image: np.ndarray, inst: np.ndarray, typ: np.ndarray, meta: dict) -> None:
        """Store one patch; after a failure (disk full, ...) it is retried after 16 more writes."""
        assert self.cache_dir is not None
        stem = self.cache_dir / f"{self.name}_{self.run_id}_{seq:09d}"
        try:
            patch = np.concatenate([image.astype(np.int32), inst[..., None].astype(np.int32),
                                    typ[..., None].astype(np.int32)], axis=-1)
            atomic_save_npy(stem.with_suffix(".npy"), patch)
            atomic_write_text(stem.with_suffix(".json"), json.dumps(meta, default=_json_default))
        except OSError as exc:
            self._persist_failures += 1
            self._persist_retry_at = seq + 16
            with contextlib.suppress(OSError):
                stem.with_suffix(".npy").unlink(missing_ok=True)  # never a patch without its sidecar
            if self._persist_failures == 1 or self._persist_failures % 100 == 0:
                warnings.warn(f"ReplayCache: writing to cache_dir {str(self.cache_dir)!r} failed ({exc}); "
                              "patches stay in memory and storing is retried after 16 more patches "
                              f"({self._persist_failures} failure(s) so far)", RuntimeWarning, stacklevel=3)
        else:
            self._persist_failures = 0

    def _warm_start(self, directory: Path) -> None:
        """Load the newest ``capacity`` readable patches of ``directory`` into the cache.

        Only regular files are opened (a FIFO or device named ``*.npy`` would block or worse);
        unreadable and malformed files are skipped with a warning.
        """
        files = []
        for p in directory.glob("*.npy"):
            try:
                st = p.stat()
            except OSError:
                continue  # a broken link or a file removed meanwhile
            if stat.S_ISREG(st.st_mode):
                files.append((st.st_mtime, p.name, p))
        files.sort()
        loaded = []
        for _, _, path in reversed(files):
            if len(loaded) == self.capacity:
                break
            patch = load_patch(path, self.patch_shape)
            if patch is not None:
                loaded.append((path, patch))
        for path, patch in reversed(loaded):
            meta: dict[str, Any] = {"source": "disk", "file": path.name}
            side = path.with_suffix(".json")
            with contextlib.suppress(OSError, ValueError):
                if stat.S_ISREG(side.stat().st_mode):
                    meta.update(json.loads(side.read_text()))
            meta.pop("seq", None)
            self.write(patch[..., :3].astype(np.uint8), patch[..., 3], patch[..., 4], meta, persist=False)
            self.acquire_credit(timeout=0)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self, contents: bool = True) -> dict[str, Any]:
        """Everything needed to resume: counters, per-slot records and (optionally) the pixels.

        Args:
            contents: Include the patches themselves. Without them a resumed cache starts empty
                (the producer refills it; an empty slot is never served), and the per-slot
                metadata (seed, label-map parameters, source index) is kept in the state.
        """
        n = self._np
        state: dict[str, Any] = {
            "capacity": self.capacity, "patch_shape": list(self.patch_shape), "policy": self.policy,
            "writes": int(n["control"][_WRITES]), "reads": int(n["control"][_READS]),
            "seq": torch.from_numpy(n["seq"].copy()), "reuse": torch.from_numpy(n["reuse"].copy()),
            "hist": torch.from_numpy(n["hist"].copy()),
            "meta": [self.slot_meta(s) if n["seq"][s] >= 0 else {} for s in range(self.capacity)],
        }
        if contents:
            state.update(image=self._tensors["image"].clone(), inst=self._tensors["inst"].clone(),
                         type=self._tensors["type"].clone())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output into this (same capacity and patch shape) cache."""
        if int(state["capacity"]) != self.capacity or tuple(state["patch_shape"]) != self.patch_shape:
            raise ValueError(f"cache state has capacity {state['capacity']} and patch_shape {state['patch_shape']}, "
                             f"this cache {self.capacity} and {self.patch_shape}; build it with the same sizes")
        n = self._np
        if "image" in state:
            for key in ("image", "inst", "type"):
                self._tensors[key].copy_(torch.as_tensor(state[key]))
        for key in ("seq", "reuse", "hist"):
            self._tensors[key].copy_(torch.as_tensor(state[key]))
        if "image" not in state:
            # saved without the pixels: the slots are empty (never served), the producer refills
            # them; their records stay in the saved state's metadata only
            n["seq"][:] = -1
            n["reuse"][:] = 0
            n["hist"][:] = 0
            if self._credits is not None:
                for _ in range(self.capacity):  # every slot may be written again
                    if not self._credits.acquire(timeout=0):
                        break
                self.release_credit(self.capacity)
        n["version"][:] += n["version"] & 1  # even again
        for s, meta in enumerate(state["meta"]):
            blob = json.dumps(meta, default=_json_default).encode()[: self.meta_bytes]
            n["meta"][s, : len(blob)] = np.frombuffer(blob, np.uint8)
            n["meta_len"][s] = len(blob)
        n["control"][_WRITES] = int(state["writes"])
        n["control"][_READS] = int(state["reads"])

    def close(self) -> None:
        """Drop this process's handle on the shared memory (it is freed with the last handle)."""
        if self._credits is not None:
            self.release_credit(1)  # wake a producer blocked on credits
        self._np = {}
        self._tensors = {}
        self._credits = None


def load_patch(path: str | os.PathLike[str], patch_shape: tuple[int, int] | None = None) -> np.ndarray | None:
    """Read a HoVer-Net patch ``int [H, W, >=5]``; returns None (with a warning) when unusable."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped, never fatal
        warnings.warn(f"skipping unreadable cache file {str(path)!r}: {exc}", RuntimeWarning, stacklevel=2)
        return None
    problem = None
    if arr.ndim != 3 or arr.shape[-1] < 5:
        problem = f"expected [H, W, 5], got shape {arr.shape}"
    elif arr.dtype.kind not in "iu":
        problem = f"expected an integer dtype, got {arr.dtype}"
    elif patch_shape is not None and arr.shape[:2] != tuple(patch_shape):
        problem = f"expected {tuple(patch_shape)} patches, got {arr.shape[:2]}"
    elif arr[..., :3].min() < 0 or arr[..., :3].max() > 255 or arr[..., 3:5].min() < 0 or arr[..., 4].max() > 255:
        problem = "values out of range"
    if problem:
        warnings.warn(f"skipping cache file {str(path)!r}: {problem}", RuntimeWarning, stacklevel=2)
        return None
    return arr.astype(np.int32, copy=False)


def _class_hist(inst: np.ndarray, typ: np.ndarray, k: int) -> np.ndarray:
    """Instances per class (index 0 = untyped), classes >= k clipped into the last bin."""
    fg = inst > 0
    if not fg.any():
        return np.zeros(k, np.int64)
    ids, first = np.unique(inst[fg], return_index=True)
    types = np.minimum(typ[fg][first], k - 1).astype(np.int64)
    return np.bincount(types, minlength=k)[:k].astype(np.int64)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return repr(obj)
