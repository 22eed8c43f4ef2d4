"""``PatchStore``: the one on-disk format of synthetic patches.

A store is a folder::

    manifest.json                     what made the patches: format, mode, class table, patch shape,
                                      checkpoint (path, sha256), sampler (type, settings)
    <name>.json                       one patch's metadata (label-map parameters, seeds, source index,
                                      checkpoint hash, sampler settings)
    <name>.npy                        the patch in HoVer-Net's layout: int32 [H, W, 5] = R, G, B, inst, type

``diffmix-aug synthesize`` writes one, a :class:`~diffmix_aug.dataset.DiffMixDataset` with
``cache_dir=`` warm-starts from one (and, with a synthesizer, adds its patches to it). The
sidecar is written before the ``.npy`` (both atomically), so a patch file always has its
metadata; a folder written by another configuration is refused with the mismatch named
(:meth:`PatchStore.open`). The ``.npy`` files are read and written by the package's one HoVer-Net
patch reader / writer (:mod:`diffmix_aug.data.readers`), so a store folder also goes straight into
HoVer-Net's ``train_dir_list``.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._checks import describe
from ._io import atomic_write_text
from .class_table import ClassTable

__all__ = ["FORMAT", "MANIFEST", "Patch", "PatchStore", "jsonable", "store_identity"]

FORMAT = "diffmix_aug.patch_store/1"
MANIFEST = "manifest.json"
#: the parts of a manifest that say which configuration made the patches (compared on open)
IDENTITY_KEYS = ("mode", "classes", "patch_shape", "checkpoint", "sampler")
#: what a store read without a synthesizer can check (nothing is rendered: no checkpoint, no sampler)
REPLAY_KEYS = ("mode", "classes", "patch_shape")
_RETRY_AFTER = 16  # patches after a failed write before a store write is tried again


@dataclass
class Patch:
    """One synthetic patch.

    Attributes:
        image: ``uint8 [H, W, 3]``.
        inst_map: ``int32 [H, W]`` instance ids (0 = background).
        type_map: ``int32 [H, W]`` classes (0 = background).
        meta: JSON-able metadata (label-map parameters, seeds, source index, checkpoint hash, sampler).
    """

    image: np.ndarray
    inst_map: np.ndarray
    type_map: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars / arrays, tuples, sets and ``to_dict()`` objects made JSON types."""
    return json.loads(json.dumps(obj, default=_json_default))


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


def store_identity(mode: str, classes: ClassTable, patch_shape: tuple[int, int],
                   synthesizer: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The configuration a store's patches belong to (the manifest without its format line).

    Args:
        mode: The label-map mode.
        classes: The class table.
        patch_shape: ``(H, W)``.
        synthesizer: ``{"checkpoint": ..., "sampler": ...}`` from
            :func:`~diffmix_aug.generator.synthesizer_identity`; None when nothing is rendered.
    """
    synthesizer = synthesizer or {}
    return jsonable({"mode": mode, "classes": classes.to_dict(), "patch_shape": list(patch_shape),
                     "checkpoint": synthesizer.get("checkpoint"), "sampler": synthesizer.get("sampler")})


def _differences(there: Mapping[str, Any], here: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    """``"key: A there, B here"`` for every compared part that differs."""
    out = []
    for key in keys:
        a, b = there.get(key), here.get(key)
        if key == "checkpoint":
            a, b = ((v or {}).get("sha256") or (v or {}).get("callable") for v in (a, b))
            key = "checkpoint (sha256 of the weights)"
        elif key == "classes" and a is not None and b is not None:
            # names compared only when both sides know them; rare classes only when balancing
            a, b = dict(a), dict(b)
            if a.get("names") is None or b.get("names") is None:
                a.pop("names", None)
                b.pop("names", None)
            if there.get("mode") == "enlarge" and here.get("mode") == "enlarge":
                a.pop("rare_classes", None)
                b.pop("rare_classes", None)
        elif key == "sampler" and isinstance(a, Mapping) and isinstance(b, Mapping):
            sa, sb = a.get("settings") or {}, b.get("settings") or {}
            diff = sorted(k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k))
            if a.get("type") != b.get("type"):
                out.append(f"sampler {a.get('type')!r} there, {b.get('type')!r} here")
            out += [f"sampler.{k} {sa.get(k)!r} there, {sb.get(k)!r} here" for k in diff]
            continue
        if a != b:
            out.append(f"{key} {a!r} there, {b!r} here")
    return out


class PatchStore:
    """A folder of synthetic patches with its manifest (see the module).

    Build it with :meth:`open` (an existing store, checked against a configuration) or
    :meth:`create` (new or matching). ``store.manifest`` is the manifest's content.
    """

    def __init__(self, path: str | os.PathLike[str], manifest: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.manifest = dict(manifest)
        #: False when the folder cannot be written (read-only, full): patches are then only read
        self.writable = True
        self._failures = 0
        self._retry_at = 0
        self._writes = 0

    @property
    def patch_shape(self) -> tuple[int, int]:
        h, w = self.manifest["patch_shape"]
        return int(h), int(w)

    @property
    def classes(self) -> ClassTable:
        return ClassTable.from_dict(self.manifest["classes"])

    # ------------------------------------------------------------------ opening
    @classmethod
    def read_manifest(cls, path: str | os.PathLike[str]) -> dict[str, Any]:
        """The manifest of the store at ``path``.

        Raises:
            FileNotFoundError: no such folder.
            ValueError: the folder has no readable manifest of this format (not a patch store).
        """
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"patch store {str(path)!r} does not exist; render one with `diffmix-aug "
                                    "synthesize --out DIR` (or pass a synthesizer, which fills a new folder)")
        file = path / MANIFEST
        try:
            manifest = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{str(path)!r} is not a patch store: it has no {MANIFEST} (expected a folder made by "
                             "`diffmix-aug synthesize` or by a DiffMixDataset with cache_dir=); use such a folder "
                             "or a new, empty one") from None
        except (OSError, ValueError) as exc:
            raise ValueError(f"{str(file)!r} is not a readable patch-store manifest ({exc})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            got = manifest.get("format") if isinstance(manifest, dict) else describe(manifest)
            raise ValueError(f"{str(file)!r}: expected format {FORMAT!r}, got {got!r}")
        return manifest

    @classmethod
    def open(cls, path: str | os.PathLike[str], expect: Mapping[str, Any] | None = None,
             keys: Iterable[str] = IDENTITY_KEYS, what: str = "cache_dir") -> PatchStore:
        """An existing store; with ``expect`` (a :func:`store_identity`), refused when it differs.

        Args:
            path: The folder.
            expect: The configuration that will use the patches.
            keys: The parts of ``expect`` compared (:data:`IDENTITY_KEYS`; a store read without a
                synthesizer compares :data:`REPLAY_KEYS`).
            what: The option's name, for messages.

        Raises:
            FileNotFoundError, ValueError: see :meth:`read_manifest`; ``ValueError`` naming every
                difference when the store was made by another configuration.
        """
        manifest = cls.read_manifest(path)
        if expect is not None:
            diff = _differences(manifest, expect, keys)
            if diff:
                raise ValueError(f"{what} {str(path)!r} holds patches made by another configuration: "
                                 + "; ".join(diff) + ". Use a folder made with this configuration (or a new one), "
                                 "or change the options to match the folder's manifest")
        return cls(path, manifest)

    @classmethod
    def create(cls, path: str | os.PathLike[str], identity: Mapping[str, Any], *, what: str = "cache_dir",
               **info: Any) -> PatchStore:
        """A store to write into: a new (or empty) folder gets a manifest; an existing store must match.

        Args:
            path: The folder (made if missing).
            identity: :func:`store_identity` of the configuration that writes.
            what: The option's name, for messages.
            **info: Extra manifest fields (who made it), JSON-able.

        A folder that cannot be written (read-only) is still opened for reading, with a warning;
        :attr:`writable` is then False.
        """
        path = Path(path)
        if path.is_dir() and (path / MANIFEST).exists():
            store = cls.open(path, identity, IDENTITY_KEYS, what)
        else:
            if path.is_dir() and any(not p.name.startswith(".") for p in path.iterdir()):
                cls.read_manifest(path)  # raises: files but no manifest, not a store
            store = cls(path, {"format": FORMAT, **jsonable(dict(identity)), **jsonable(info)})
            try:
                atomic_write_text(path / MANIFEST, json.dumps(store.manifest, indent=1) + "\n")
            except OSError as exc:
                raise OSError(f"cannot write the patch store {str(path)!r}: {exc}") from exc
        store.writable = _writable(path)
        if not store.writable:
            warnings.warn(f"patch store {str(path)!r} is not writable: its patches are read, new ones stay in "
                          "memory", RuntimeWarning, stacklevel=2)
        return store

    # ------------------------------------------------------------------ patches
    def names(self) -> list[str]:
        """Names of the stored patches (regular ``.npy`` files), sorted; other files are never opened."""
        out = []
        for p in self.path.glob("*.npy"):
            with contextlib.suppress(OSError):  # a broken link or a file removed meanwhile
                if stat.S_ISREG(p.stat().st_mode):
                    out.append(p.stem)
        return sorted(out)

    def __len__(self) -> int:
        return len(self.names())

    def read(self, name: str) -> Patch:
        """Patch ``name``, validated (shape, dtypes, value ranges, classes, metadata).

        Raises:
            ValueError: the patch or its sidecar is missing, unreadable or does not fit the manifest.
        """
        from .data.readers import read_hovernet_npy

        npy, side = self.path / f"{name}.npy", self.path / f"{name}.json"
        try:
            meta = json.loads(side.read_text(encoding="utf-8")) if stat.S_ISREG(side.stat().st_mode) else None
        except (OSError, ValueError) as exc:
            raise ValueError(f"{str(side)!r}: the patch's metadata is missing or unreadable ({exc})") from exc
        if not isinstance(meta, dict):
            raise ValueError(f"{str(side)!r}: expected a JSON object of patch metadata, got {describe(meta)}")
        sample = read_hovernet_npy(npy, num_classes=self.classes.num_classes)
        if sample.shape != self.patch_shape:
            raise ValueError(f"{str(npy)!r}: a {sample.shape} patch in a store of {self.patch_shape} patches")
        return Patch(sample.image, sample.inst_map.astype(np.int32, copy=False),
                     sample.type_map.astype(np.int32, copy=False), meta)

    def write(self, name: str, patch: Patch) -> Path:
        """Store ``patch`` as ``name`` (sidecar first, then the ``.npy``; each atomic). Raises ``OSError``."""
        from .data.readers import write_hovernet_npy
        from .data.sample import NucleiSample

        if tuple(patch.image.shape[:2]) != self.patch_shape:
            raise ValueError(f"patch {name!r} is {patch.image.shape[:2]}, the store holds {self.patch_shape} patches")
        atomic_write_text(self.path / f"{name}.json", json.dumps(patch.meta, default=_json_default))
        sample = NucleiSample.trusted(patch.image, patch.inst_map.astype(np.int32, copy=False),
                                      patch.type_map.astype(np.int32, copy=False))
        try:
            return write_hovernet_npy(self.path / f"{name}.npy", sample)
        except BaseException:
            with contextlib.suppress(OSError):
                (self.path / f"{name}.json").unlink()  # never a sidecar without its patch
            raise

    def keep(self, name: str, patch: Patch) -> bool:
        """:meth:`write` for the producer: a failure (disk full, read-only) never stops training.

        It warns (the first time and every 100th) and the patch stays in memory only; writing is
        tried again after 16 more patches. Returns whether the patch was stored.
        """
        self._writes += 1
        if not self.writable or self._writes < self._retry_at:
            return False
        try:
            self.write(name, patch)
        except OSError as exc:
            self._failures += 1
            self._retry_at = self._writes + _RETRY_AFTER
            if self._failures == 1 or self._failures % 100 == 0:
                warnings.warn(f"patch store {str(self.path)!r}: writing failed ({exc}); patches stay in memory and "
                              f"writing is tried again after {_RETRY_AFTER} more ({self._failures} failure(s) so far)",
                              RuntimeWarning, stacklevel=2)
            return False
        self._failures = 0
        return True


def _writable(path: Path) -> bool:
    probe = path / f".probe-{os.getpid()}"
    try:
        atomic_write_text(probe, "ok")
        probe.unlink()
        return True
    except OSError:
        return False
