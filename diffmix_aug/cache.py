"""``ReplayCache``: a fixed-capacity ring of synthetic patches in shared memory.

Every array is a torch tensor moved to shared memory at construction (``share_memory_()``), so
DataLoader workers see the producer's writes whether they were forked or spawned, and whether
they are persistent or not (MONAI's SmartCacheDataset swaps Python lists in the main process,
which never reach its workers). One writer (the producer thread in the main process) and any
number of readers (workers) synchronise per slot with a seqlock: the slot's version counter is
odd while it is being written; a reader copies the slot and retries when the version changed or
was odd. Readers never block: when the cache is empty they get ``None`` and the caller serves an
original item. A serve is claimed under a cross-process lock against ``max_reuse``
(:class:`~diffmix_aug._proclock.ProcessLock`: released by the kernel when its holder dies, so a
DataLoader worker SIGKILLed inside a claim blocks nobody; the wait for a live holder is bounded by
``claim_timeout``); the writer waits on credits (one per slot whose patch was already served)
instead of overwriting unread patches.

The cache does no disk I/O (the on-disk format is :class:`~diffmix_aug.store.PatchStore`'s). Each
patch's metadata is kept, whole, in the writer's process (:meth:`ReplayCache.meta`): the workers
need only the pixels.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections import OrderedDict
from dataclasses import dataclass
from multiprocessing import context as _mp_context
from typing import Any

import numpy as np
import torch

from ._checks import check_choice, check_positive_int, describe
from ._proclock import ProcessLock
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
    """

    image: np.ndarray
    inst_map: np.ndarray
    type_map: np.ndarray
    slot: int
    seq: int


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
        num_classes: Classes counting the background (the pipeline's ``ClassTable.num_classes``), for
            the per-slot class histogram that lets the producer bias synthesis toward what the cache lacks.
        candidates: How many filled slots a reader samples before taking the least reused one.
        claim_timeout: Seconds a serve waits for the claim held by another process (one stopped
            while it held it: SIGSTOP, a debugger) before ``TimeoutError`` naming that process.

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
        num_classes: int,
        candidates: int = 3,
        claim_timeout: float = 10.0,
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
        self.candidates = check_positive_int("candidates", candidates)
        if isinstance(claim_timeout, bool) or not isinstance(claim_timeout, (int, float)) \
                or not 0 < claim_timeout < float("inf"):
            raise ValueError(f"`claim_timeout` must be a positive number of seconds, got {describe(claim_timeout)}")
        c, (h, w) = self.capacity, self.patch_shape
        t = {
            "image": torch.zeros((c, h, w, 3), dtype=torch.uint8),
            "inst": torch.zeros((c, h, w), dtype=self.inst_dtype),
            "type": torch.zeros((c, h, w), dtype=torch.uint8),
            "version": torch.zeros(c, dtype=torch.int64),
            "seq": torch.full((c,), -1, dtype=torch.int64),
            "reuse": torch.zeros(c, dtype=torch.int64),
            "hist": torch.zeros((c, self.num_classes), dtype=torch.int64),
            "control": torch.zeros(3, dtype=torch.int64),
            "error": torch.zeros(_ERR_BYTES, dtype=torch.uint8),
        }
        self._tensors = {k: v.share_memory_() for k, v in t.items()}
        # Credits for the producer: one per slot that may be overwritten without losing an unread
        # patch. Readers give one back when they read a fresh patch. A spawn-context semaphore
        # stays valid in forked and spawned workers alike.
        self._credits = multiprocessing.get_context("spawn").Semaphore(self.capacity)
        # serialises the serve accounting of read() across the workers: the claim against max_reuse
        # and the reuse / reads counters (a read-modify-write from two workers at once lost updates);
        # a holder's death releases it (a semaphore stayed taken for ever after a SIGKILL)
        self._serve_lock = ProcessLock("ReplayCache serve claim", timeout=claim_timeout)
        self._views()
        #: seq -> metadata, in the writer's process only (never pickled to workers): the patches held
        #: and at least the last ``4 * capacity`` written
        self._meta: OrderedDict[int, dict[str, Any]] = OrderedDict()

    # ------------------------------------------------------------------ plumbing
    def _views(self) -> None:
        """numpy views of the shared tensors (same memory; cheaper per-item indexing)."""
        self._np = {k: v.numpy() for k, v in self._tensors.items()}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_np")
        state["_meta"] = OrderedDict()  # metadata stays in the writer's process
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
              meta: dict[str, Any] | None = None) -> int:
        """Write one patch into the slot chosen by the replacement policy; returns its seq.

        Only one thread (the producer) may call ``write``.

        Args:
            image: ``uint8 [H, W, 3]``.
            inst_map: ``int [H, W]`` instance ids (must fit ``inst_dtype``).
            type_map: ``int [H, W]`` classes below 256.
            meta: Metadata (label-map parameters, seeds, mode, source index), kept whole in this
                process (:meth:`meta`).
        """
        h, w = self.patch_shape
        if image.shape != (h, w, 3) or inst_map.shape != (h, w) or type_map.shape != (h, w):
            raise ValueError(f"patch must be image [{h},{w},3], inst/type [{h},{w}], got image {describe(image)}, "
                             f"inst_map {describe(inst_map)}, type_map {describe(type_map)}")
        if image.dtype != np.uint8:
            raise TypeError(f"`image` must be uint8 RGB in 0..255, got {image.dtype} (stored as uint8, a float image in "
                            "[0, 1] would become 0 and 1); convert it with np.clip(np.rint(image * 255), 0, 255)"
                            ".astype(np.uint8) (for [0, 1] floats) or render uint8 patches")
        for name, arr in (("inst_map", inst_map), ("type_map", type_map)):
            if arr.dtype.kind not in "iu":
                raise TypeError(f"`{name}` must hold integer ids, got {arr.dtype}; a float map would be truncated "
                                f"(1.5 -> 1): round it deliberately (np.rint) and cast to int32 first")
        if inst_map.size and int(inst_map.min()) < 0:
            raise ValueError(f"`inst_map` ids must be >= 0 (0 = background), got minimum {int(inst_map.min())}; "
                             "relabel with remap_label")
        if type_map.size and (int(type_map.min()) < 0 or int(type_map.max()) > 255):
            raise ValueError(f"`type_map` classes must be in 0..255 (stored as uint8), got range "
                             f"{int(type_map.min())}..{int(type_map.max())}; merge the classes first")
        if inst_map.size and int(inst_map.max()) > torch.iinfo(self.inst_dtype).max:
            raise ValueError(f"`inst_map` ids up to {int(inst_map.max())} do not fit inst_dtype={self.inst_dtype}; "
                             "use inst_dtype='int32' or relabel with remap_label")
        n = self._np
        seq = int(n["control"][_WRITES])
        slot = self._victim()
        v = int(n["version"][slot])
        n["version"][slot] = v + 1  # odd: writing
        n["image"][slot] = image
        n["inst"][slot] = inst_map
        n["type"][slot] = type_map
        n["hist"][slot] = _class_hist(inst_map, type_map, self.num_classes)
        n["reuse"][slot] = 0
        n["seq"][slot] = seq
        n["version"][slot] = v + 2  # even: stable
        n["control"][_WRITES] = seq + 1
        self._remember(seq, {**(meta or {}), "seq": seq})
        return seq

    def _remember(self, seq: int, meta: dict[str, Any]) -> None:
        """Keep ``meta``; forget the oldest metadata of patches no longer held beyond ``4 * capacity``."""
        self._meta[seq] = meta
        if len(self._meta) > 4 * self.capacity:
            held = set(self._np["seq"].tolist())
            for old in [s for s in self._meta if s not in held][: len(self._meta) - 4 * self.capacity]:
                del self._meta[old]

    def meta(self, seq: int) -> dict[str, Any] | None:
        """The whole metadata of patch ``seq`` (in the writer's process; None elsewhere or once forgotten)."""
        return self._meta.get(int(seq))

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

    def serve(self, keys: tuple[int, ...]) -> CachedPatch | None:
        """One serve: :meth:`pick` a slot and :meth:`read` it, picking again when another reader took
        the picked slot's last serve (or the writer replaced its patch) in between.

        Returns None only when no filled slot is below ``max_reuse`` (or, after ``capacity + 8``
        lost claims in a row, a bound no reader reaches in practice; or torn reads past
        :meth:`read`'s bound): an ask is served whenever a patch under ``max_reuse`` remains.

        Args:
            keys: Integer keys the candidates are hashed from (the first pick uses them as given,
                a repeat appends the attempt number).
        """
        for attempt in range(self.capacity + 8):
            slot = self.pick(keys if attempt == 0 else (*keys, attempt))
            if slot is None:
                return None
            patch = self.read(slot)
            if patch is not None:
                return patch
        return None

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
            if int(n["version"][slot]) != v1:
                continue  # torn: the writer touched the slot while we copied
            if seq < 0:
                return None
            if count and not self._claim(slot, seq):
                return None  # another reader took its last serve meanwhile (serve() picks again)
            return CachedPatch(image, inst, typ, slot, seq)
        return None

    def _claim(self, slot: int, seq: int) -> bool:
        """Count one serve of patch ``seq`` in ``slot`` unless it reached ``max_reuse`` or was replaced
        since it was copied; False then.

        Under the serve lock, so concurrent workers neither lose a count nor serve a patch past
        ``max_reuse`` between :meth:`pick` and here (without the lock: a process that got the cache
        other than at its start, the counts are approximate).
        """
        n = self._np
        with self._serve_lock if self._serve_lock is not None else contextlib.nullcontext():  # bounded wait
            if int(n["seq"][slot]) != seq:
                return False  # the writer replaced the patch after it was copied: its count would go astray
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
        """The metadata of the patch in ``slot`` (writer's process; ``{}`` for an empty slot)."""
        seq = int(self._np["seq"][slot])
        return (self.meta(seq) or {}) if seq >= 0 else {}

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

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self, contents: bool = True) -> dict[str, Any]:
        """Everything needed to resume: counters, per-slot records and (optionally) the pixels.

        Args:
            contents: Include the patches themselves. Without them a resumed cache starts empty
                (the producer refills it; an empty slot is never served); the per-slot metadata
                (seeds, label-map parameters, source index) is kept in the state either way.
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
        self._meta = OrderedDict()
        for slot, meta in enumerate(state["meta"]):
            if meta and "image" in state:
                self._meta[int(n["seq"][slot])] = dict(meta)
        n["control"][_WRITES] = int(state["writes"])
        n["control"][_READS] = int(state["reads"])

    def close(self) -> None:
        """Drop this process's handle on the shared memory (it is freed with the last handle)."""
        if self._credits is not None:
            self.release_credit(1)  # wake a producer blocked on credits
        if self._serve_lock is not None:
            self._serve_lock.close()
        self._np = {}
        self._tensors = {}
        self._credits = None
        self._serve_lock = None


def _class_hist(inst: np.ndarray, typ: np.ndarray, k: int) -> np.ndarray:
    """Instances per class (index 0 = untyped), classes >= k clipped into the last bin."""
    fg = inst > 0
    if not fg.any():
        return np.zeros(k, np.int64)
    ids, first = np.unique(inst[fg], return_index=True)
    types = np.minimum(typ[fg][first], k - 1).astype(np.int64)
    return np.bincount(types, minlength=k)[:k].astype(np.int64)
