"""The SDM checkpoints shipped inside the package, by name, so configs and code work from any folder.

::

    Synthesizer.from_checkpoint("consep-20x")      # the CoNSeP SDM at 20x (0.5 um/px)
    Synthesizer.from_checkpoint("toy")             # the procedural toy SDM of the demo
    Synthesizer.from_checkpoint("runs/my_sdm.safetensors")   # any path works as before

Each file has a model card beside it (``diffmix_aug/weights/<file>.md``): data, resolution,
classes, how it was trained, measured quality, licence and intended use.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SHIPPED_CHECKPOINTS", "resolve_checkpoint", "shipped_checkpoint_path"]

#: name -> file in ``diffmix_aug/weights/``
SHIPPED_CHECKPOINTS: dict[str, str] = {
    "toy": "sdm_tiny_toy.safetensors",
    "consep-20x": "sdm_consep_20x.safetensors",
}


def shipped_checkpoint_path(name: str) -> Path:
    """The installed file of a shipped checkpoint.

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    if name not in SHIPPED_CHECKPOINTS:
        raise ValueError(f"unknown shipped checkpoint {name!r}; choose one of {sorted(SHIPPED_CHECKPOINTS)} or "
                         "give a path")
    from importlib.resources import files

    return Path(str(files("diffmix_aug") / "weights" / SHIPPED_CHECKPOINTS[name]))


def resolve_checkpoint(spec: str | os.PathLike[str]) -> Path:
    """A checkpoint path from a path or a shipped name (``"consep-20x"``, ``"toy"``).

    An existing path wins over a name; a string that is neither raises.

    Raises:
        TypeError: ``spec`` is not a string or path.
        FileNotFoundError: neither an existing file / directory nor a shipped name, listing the names.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"a checkpoint must be a path or a shipped name ({sorted(SHIPPED_CHECKPOINTS)}), got "
                        f"{type(spec).__name__}")
    path = Path(spec)
    if path.exists():
        return path
    if isinstance(spec, str) and spec in SHIPPED_CHECKPOINTS:
        return shipped_checkpoint_path(spec)
    raise FileNotFoundError(f"checkpoint {os.fspath(spec)!r} does not exist; give a .safetensors export, an SDM "
                            f"training directory, or a shipped name: {sorted(SHIPPED_CHECKPOINTS)}")
