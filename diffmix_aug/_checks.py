"""Input validation helpers shared by the whole package.

Every failure is a ``ValueError`` or ``TypeError`` whose message names the field, what was
expected, what was received and, where one exists, the fix (MONAI / diffusers style).
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "check_array",
    "check_choice",
    "check_in_range",
    "check_positive_int",
    "check_probability",
    "describe",
]


def describe(value: Any) -> str:
    """Short description of ``value`` for error messages (shape and dtype for arrays)."""
    if isinstance(value, np.ndarray):
        return f"ndarray(shape={value.shape}, dtype={value.dtype})"
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return f"Tensor(shape={tuple(value.shape)}, dtype={value.dtype}, device={value.device})"
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    # reprlib bounds the work (items per container, depth), not only the text: a value expanded
    # from nested references (a YAML alias bomb) is never walked in full
    text = _REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bounded_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother = 3, 60, 60
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 8
    return r


_REPR = _bounded_repr()


def check_array(
    name: str,
    value: Any,
    *,
    ndim: int | None = None,
    dtype_kind: str | None = None,
    channels: int | None = None,
) -> np.ndarray:
    """Check that ``value`` is a numpy array with the given rank, dtype kind and channel count.

    Args:
        name: Field name used in the error message.
        value: The object to check.
        ndim: Required number of dimensions, or None for any.
        dtype_kind: Allowed numpy dtype kinds, e.g. ``"iu"`` for integers, ``"u"`` for unsigned.
        channels: Required size of the last axis, or None.

    Returns:
        The array itself (not copied).

    Raises:
        TypeError: ``value`` is not an ndarray or has the wrong dtype kind.
        ValueError: wrong rank or channel count.
    """
    if not isinstance(value, np.ndarray):
        raise TypeError(f"`{name}` must be a numpy.ndarray, got {type(value).__name__}; "
                        "convert with np.asarray(...) first")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimensions, got shape {value.shape}")
    if dtype_kind is not None and value.dtype.kind not in dtype_kind:
        raise TypeError(f"`{name}` must have a dtype of kind {dtype_kind!r} "
                        f"({_KIND_NAMES.get(dtype_kind, dtype_kind)}), got {value.dtype}")
    if channels is not None and (value.ndim == 0 or value.shape[-1] != channels):
        raise ValueError(f"`{name}` must have {channels} channels in its last axis, got shape {value.shape}")
    return value


_KIND_NAMES = {"iu": "integer", "u": "unsigned integer", "f": "floating", "fiu": "numeric", "b": "bool"}


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Check ``value`` is one of ``choices`` (the list in the message is generated, it cannot drift)."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}")
    return value


def check_in_range(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Check a real number lies in an interval; returns it as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    ok_low = v >= low if low_inclusive else v > low
    ok_high = v <= high if high_inclusive else v < high
    if not (ok_low and ok_high) or v != v:
        lb = "[" if low_inclusive else "("
        hb = "]" if high_inclusive else ")"
        raise ValueError(f"`{name}` must be in {lb}{low}, {high}{hb}, got {value!r}")
    return v


def check_probability(name: str, value: Any) -> float:
    """Check ``value`` is a probability in [0, 1]."""
    return check_in_range(name, value, 0.0, 1.0)


def check_positive_int(name: str, value: Any, *, allow_zero: bool = False) -> int:
    """Check ``value`` is a (non-bool) integer > 0 (or >= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be {bound}, got {value!r}")
    return int(value)
