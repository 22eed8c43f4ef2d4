"""Training-directory checkpoints: weights as safetensors, state as a weights-only ``torch.save``.

Files (each written atomically, every one stamped with the step so that a crash between two
writes is detected on resume):

* ``model.safetensors``, ``ema.safetensors``: fp32 weights, metadata ``step``;
* ``config.json``: ``{"sdm": SDMConfig, "train": TrainConfig, "num_classes", "dataset", "step"}``;
* ``train_state.pt``: optimizer, scaler, step, the RNG states (torch, numpy, python, cuda, and the
  trainer's own generator); loaded with ``torch.load(weights_only=True)``, so no pickle can run code.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_open, atomic_write_text
from ..sdm.checkpoint import load_state_dict_checked, read_safetensors, write_safetensors

__all__ = ["TRAIN_FILES", "capture_rng_state", "has_checkpoint", "load_training_checkpoint",
           "restore_rng_state", "save_training_checkpoint"]

TRAIN_FILES = ("model.safetensors", "ema.safetensors", "config.json", "train_state.pt")


def capture_rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Global torch / numpy / python / CUDA RNG states plus ``generator``'s, as weights-only-loadable data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, py_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def has_checkpoint(out_dir: str | os.PathLike[str]) -> bool:
    return all((Path(out_dir) / f).is_file() for f in TRAIN_FILES)


def save_training_checkpoint(out_dir: str | os.PathLike[str], *, model: torch.nn.Module, ema: torch.nn.Module,
                             optimizer: torch.optim.Optimizer, scaler: Any, step: int, rng: dict[str, Any],
                             config: dict[str, Any]) -> None:
    """Write the four files of a training directory at ``step``.

    Args:
        out_dir: Training directory.
        model, ema: The raw (unwrapped) model and its EMA copy.
        optimizer: Optimizer whose state is saved.
        scaler: ``torch.amp.GradScaler`` or None.
        step: Optimizer steps done.
        rng: From :func:`capture_rng_state`.
        config: JSON-able ``{"sdm", "train", "num_classes", "dataset"}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"step": str(int(step))}
    write_safetensors(out / "model.safetensors", {k: v.float() for k, v in model.state_dict().items()}, meta)
    write_safetensors(out / "ema.safetensors", {k: v.float() for k, v in ema.state_dict().items()}, meta)
    atomic_write_text(out / "config.json", json.dumps({**config, "step": int(step)}, indent=2, sort_keys=True))
    state = {"step": int(step), "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else {}, "rng": rng}
    with atomic_open(out / "train_state.pt", "wb") as fh:
        torch.save(state, fh)


def _file_step(path: Path, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: missing or invalid step stamp {value!r}; the checkpoint is incomplete") from exc


def load_training_checkpoint(out_dir: str | os.PathLike[str], *, model: torch.nn.Module, ema: torch.nn.Module,
                             optimizer: torch.optim.Optimizer, scaler: Any, sdm_config: dict[str, Any]
                             ) -> dict[str, Any]:
    """Restore a training directory into ``model``, ``ema``, ``optimizer`` and ``scaler``.

    Args:
        sdm_config: The current run's SDM config dict; it must equal the saved one.

    Returns:
        ``{"step": int, "rng": dict}``.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a corrupt file, a config mismatch or files from different steps (names the file).
    """
    out = Path(out_dir)
    for name in TRAIN_FILES:
        if not (out / name).is_file():
            raise FileNotFoundError(f"{out / name}: missing; cannot resume from {out}")
    cfg_path = out / "config.json"
    try:
        saved = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{cfg_path}: not valid JSON ({exc}); the checkpoint is corrupt") from exc
    if saved.get("sdm") != sdm_config:
        diff = sorted(k for k in set(sdm_config) | set(saved.get("sdm") or {})
                      if (saved.get("sdm") or {}).get(k) != sdm_config.get(k))
        raise ValueError(f"{cfg_path}: saved SDM config differs from this run's in {diff}; resume with the same "
                         "model settings or start a new --out directory")
    state_path = out / "train_state.pt"
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{state_path}: cannot be read with weights_only=True ({type(exc).__name__}: {exc}); "
                         "the file is corrupt or not a diffmix_aug training state") from exc
    step = _file_step(state_path, state.get("step") if isinstance(state, dict) else None)
    steps = {cfg_path: _file_step(cfg_path, saved.get("step"))}
    for name, target in (("model.safetensors", model), ("ema.safetensors", ema)):
        tensors, meta = read_safetensors(out / name)
        steps[out / name] = _file_step(out / name, meta.get("step"))
        load_state_dict_checked(target, tensors, out / name)
    bad = {str(p): s for p, s in steps.items() if s != step}
    if bad:
        raise ValueError(f"{state_path}: is at step {step} but {bad} are not; the checkpoint was interrupted "
                         "mid-write: restore a consistent copy")
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{state_path}: optimizer/scaler state does not match this run ({exc})") from exc
    return {"step": step, "rng": state["rng"]}
