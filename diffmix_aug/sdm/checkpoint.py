"""SDM weights on disk: safetensors only (no pickles), checked against the config they claim.

Two layouts (``docs/architecture.md``):

* training directory: ``model.safetensors``, ``ema.safetensors``, ``config.json`` (and
  ``train_state.pt``, see :mod:`diffmix_aug.train.checkpoint`);
* inference export: one ``.safetensors`` file whose metadata has ``format = "diffmix_aug.sdm/1"``,
  ``config`` (the :class:`SDMConfig` JSON), ``num_classes`` and ``dataset``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_bytes
from .config import SDMConfig
from .registry import resolve_checkpoint
from .unet import SDMUNet

__all__ = ["EXPORT_FORMAT", "check_finite_state", "export_sdm", "load_sdm", "load_state_dict_checked", "read_safetensors",
           "read_sdm_metadata", "write_safetensors"]

EXPORT_FORMAT = "diffmix_aug.sdm/1"


def write_safetensors(path: str | os.PathLike[str], state: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> None:
    """Atomically write tensors (made contiguous, on CPU) and string metadata."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors and metadata; a missing or corrupt file raises ``ValueError`` naming it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as exc:  # safetensors raises its own error types for truncated / garbled files
        raise ValueError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc}); the file is "
                         "corrupt or truncated: re-export or restore it") from exc
    return tensors, metadata


def load_state_dict_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike[str]
                            ) -> None:
    """``model.load_state_dict`` with an error that names ``source`` and every key / shape mismatch."""
    expected = model.state_dict()
    not_float = [f"{k} ({state[k].dtype})" for k, v in expected.items()
                 if k in state and v.is_floating_point() and not state[k].is_floating_point()]
    if not_float:
        raise ValueError(f"{os.fspath(source)}: {len(not_float)} weight(s) are stored as integers where the network "
                         f"holds floating-point values, e.g. {not_float[:3]}; expected float16/bfloat16/float32 "
                         "tensors: the file was not written by export_sdm or was altered, re-export it")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {unexpected[:3]}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) e.g. {shapes[:3]}")
        raise ValueError(f"{os.fspath(source)}: weights do not match the model config ({'; '.join(parts)}); "
                         "the checkpoint belongs to a different config")
    check_finite_state(state, source)
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(state[k].to(v.dtype))
    check_finite_state(expected, source, what="after casting to the model dtype")


#: Training-run facts carried from ``config.json`` into every export (``metadata["provenance"]``).
PROVENANCE_KEYS = ("data_hash", "num_items", "package_version", "git_commit")


def check_finite_state(state: dict[str, torch.Tensor], source: str | os.PathLike[str], what: str = "") -> None:
    """Raise ``ValueError`` naming ``source`` and the first parameter holding NaN / inf values."""
    for k, v in state.items():
        if v.is_floating_point() or v.is_complex():
            finite = torch.isfinite(v)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise ValueError(f"{os.fspath(source)}: parameter {k!r} {what + ' ' if what else ''}holds {bad} of "
                                 f"{v.numel()} non-finite (NaN/inf) values; expected finite weights: the "
                                 "checkpoint is corrupt or training diverged, restore or re-export a good copy")


def _config_from_json(text: str, source: Path) -> SDMConfig:
    try:
        return SDMConfig.from_dict(json.loads(text))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{source}: invalid SDM config ({exc})") from exc


def _data_facts(num_classes: Any, config: SDMConfig, mpp: Any, class_names: Any, source: Path) -> dict[str, Any]:
    """``num_classes``, ``mpp`` and ``class_names`` of a checkpoint, checked against its config.

    ``num_classes`` counts the background and must equal the network's label channels - 1 (the
    last channel is the instance-edge map); ``mpp`` is the training images' microns per pixel.
    """
    fix = "the metadata contradicts the weights: re-export the checkpoint with diffmix_aug.train.export_sdm"
    if num_classes in (None, ""):
        n = config.label_channels - 1
    else:
        try:
            n = int(str(num_classes).strip())
        except ValueError:
            raise ValueError(f"{source}: metadata `num_classes` must be an integer, got {num_classes!r}; {fix}") from None
        if n != config.label_channels - 1:
            raise ValueError(f"{source}: metadata `num_classes` is {n}, but the network takes {config.label_channels} "
                             f"label channels, i.e. num_classes = {config.label_channels - 1} (classes counting the "
                             f"background, plus one edge channel); {fix}")
    if mpp in (None, ""):
        mpp = None
    else:
        try:
            mpp = float(mpp)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: metadata `mpp` must be microns per pixel (a number), got {mpp!r}") from None
        if not (mpp > 0 and mpp < 1e3):
            raise ValueError(f"{source}: metadata `mpp` must be a positive number of microns per pixel, got {mpp!r}")
    if class_names in (None, "", []):
        class_names = None
    else:
        if isinstance(class_names, str):
            try:
                class_names = json.loads(class_names)
            except json.JSONDecodeError:
                raise ValueError(f"{source}: metadata `class_names` is not a JSON list") from None
        if not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names):
            raise ValueError(f"{source}: metadata `class_names` must be a list of names, got {class_names!r}")
        if len(class_names) != n:
            raise ValueError(f"{source}: metadata lists {len(class_names)} class names {class_names} for "
                             f"num_classes = {n}; {fix}")
    return {"num_classes": n, "mpp": mpp, "class_names": class_names}


def read_sdm_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a training directory or an export file says of itself, without reading the weights.

    Returns:
        ``{"config": SDMConfig, "num_classes": int, "dataset": str | None, "step": int | None,
        "mpp": float | None, "class_names": list[str] | None, "provenance": dict}``. ``mpp`` (microns
        per pixel of the training images) and ``class_names`` are None for files made before
        they were recorded.

    Raises:
        ValueError: unreadable metadata, or metadata that contradicts the network (``num_classes``
            against the label channels, class names against ``num_classes``); naming the file.
    """
    path = resolve_checkpoint(path)
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path}: missing; {path} is not an SDM training directory")
        try:
            data = json.loads(cfg_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{cfg_path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or "sdm" not in data:
            raise ValueError(f"{cfg_path}: expected a training config.json with an 'sdm' section")
        config = _config_from_json(json.dumps(data["sdm"]), cfg_path)
        prov = {k: data[k] for k in PROVENANCE_KEYS if k in data}
        if "train" in data:
            prov["train_config"] = data["train"]
        return {"config": config, **_data_facts(data.get("num_classes"), config, data.get("mpp"),
                                                 data.get("class_names"), cfg_path),
                "dataset": data.get("dataset"), "step": data.get("step"), "provenance": prov}
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such SDM checkpoint (expected a training directory or an export)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = dict(fh.metadata() or {})
    except Exception as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path}: metadata format is {meta.get('format')!r}, expected {EXPORT_FORMAT!r}; "
                         "create the file with diffmix_aug.train.export_sdm")
    config = _config_from_json(meta.get("config", "null"), path)
    step = meta.get("step")
    prov: dict[str, Any] = {}
    if meta.get("provenance"):
        try:
            prov = json.loads(meta["provenance"])
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: metadata 'provenance' is not valid JSON ({exc})") from exc
    if step not in (None, "") and not (str(step).strip().isascii() and str(step).strip().isdigit()):  # not '²'
        raise ValueError(f"{path}: metadata `step` must be a non-negative integer, got {step!r}")
    return {"config": config, **_data_facts(meta.get("num_classes"), config, meta.get("mpp"), meta.get("class_names"),
                                            path),
            "dataset": meta.get("dataset") or None, "step": int(step) if step not in (None, "") else None,
            "provenance": prov}


def load_sdm(path: str | os.PathLike[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             *, use_ema: bool = True) -> SDMUNet:
    """Load an SDM from a training directory (EMA weights by default), an export file or a shipped name.

    Args:
        path: Training directory, ``.safetensors`` export, or the name of a checkpoint shipped with the
            package (``"consep-20x"``, ``"toy"``: :mod:`~diffmix_aug.sdm.registry`).
        device: Target device.
        dtype: Parameter dtype (float32 unless told otherwise, whatever the file stores).
        use_ema: Training directory only: load ``ema.safetensors`` (else ``model.safetensors``).

    Returns:
        The model in eval mode, with ``model.checkpoint_info`` = :func:`read_sdm_metadata`'s dict.
    """
    path = resolve_checkpoint(path)
    info = read_sdm_metadata(path)
    weights = (path / ("ema.safetensors" if use_ema else "model.safetensors")) if path.is_dir() else path
    state, _ = read_safetensors(weights)
    model = SDMUNet(info["config"])
    load_state_dict_checked(model, state, weights)
    model.checkpoint_info = info
    return model.to(device=device, dtype=dtype).eval()


def export_sdm(source: str | os.PathLike[str] | SDMUNet, out: str | os.PathLike[str], *, use_ema: bool = True,
               dtype: torch.dtype = torch.float16, num_classes: int | None = None, dataset: str | None = None,
               mpp: float | None = None, class_names: list[str] | None = None) -> Path:
    """Write an inference export (one safetensors file with ``format = "diffmix_aug.sdm/1"``).

    Args:
        source: Training directory (EMA weights by default) or a model.
        out: Destination ``.safetensors``.
        use_ema: Training directory only: export the EMA weights.
        dtype: Stored floating dtype (float16 halves the size; :func:`load_sdm` returns float32).
        num_classes: Default: the training run's, or ``label_channels - 1``.
        dataset: Dataset name stored in the metadata (default: the training run's).
        mpp: Microns per pixel of the training images (default: the training run's).
        class_names: Class names, background first (default: the training run's).

    Raises:
        ValueError: metadata that contradicts the network (checked as :func:`read_sdm_metadata` does).
    """
    step = None
    info: dict[str, Any] = dict(getattr(source, "checkpoint_info", None) or {}) if isinstance(source, SDMUNet) else {}
    if isinstance(source, SDMUNet):
        model = source
    else:
        model = load_sdm(source, use_ema=use_ema)
        info = model.checkpoint_info
        step = info["step"]
    provenance: dict[str, Any] = dict(info.get("provenance", {}))
    num_classes = num_classes if num_classes is not None else info.get("num_classes")
    dataset = dataset if dataset is not None else info.get("dataset")
    mpp = mpp if mpp is not None else info.get("mpp")
    class_names = class_names if class_names is not None else info.get("class_names")
    provenance["exported_weights"] = "ema" if use_ema and not isinstance(source, SDMUNet) else "model"
    facts = _data_facts(num_classes, model.config, mpp, class_names, Path(out))
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    metadata = {"format": EXPORT_FORMAT, "config": model.config.to_json(), "num_classes": str(facts["num_classes"]),
                "dataset": dataset or "", "step": "" if step is None else str(int(step)),
                "mpp": "" if facts["mpp"] is None else repr(facts["mpp"]),
                "class_names": "" if facts["class_names"] is None else json.dumps(facts["class_names"]),
                "provenance": json.dumps(provenance, sort_keys=True)}
    write_safetensors(out, state, metadata)
    return Path(out)
