"""The options of the two label-map kinds, each owned once: :class:`EnlargeSettings` (DiffMix-E)
and :class:`BalanceSettings` (DiffMix-B, GradMix label mixing).

Each class names, defaults, validates and documents its options; the functions and classes that
use them (:func:`~diffmix_aug.labelmaps.enlarge.draw_enlarge_params`,
:func:`~diffmix_aug.labelmaps.balance.draw_balance_params`,
:class:`~diffmix_aug.labelmaps.sampler.LabelMapSampler`,
:class:`~diffmix_aug.baselines.gradmix.GradMix`) take one settings object instead of repeating the
list. The defaults are the reference code's, set for 256 px patches (:data:`REFERENCE_PATCH`);
:func:`borders_for_patch` scales the border bands to smaller patches.

Examples:
    >>> EnlargeSettings(max_shift=3, symmetric=True).max_shift
    3
    >>> BalanceSettings(target_distribution=[0, 0.2]).target_distribution
    {0: 0.0, 1: 0.2}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from .._checks import check_choice, check_in_range, check_positive_int, check_probability, describe

__all__ = ["OVERLAP_MODES", "REFERENCE_PATCH", "BalanceSettings", "EnlargeSettings", "borders_for_patch",
           "check_settings"]

OVERLAP_MODES = ("overwrite", "avoid")
REFERENCE_PATCH = 256  # the reference code's patch side, for which the border bands are set

_S = TypeVar("_S")


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a bool, got {describe(value)}")
    return bool(value)


def _check_shares(name: str, value: Any) -> dict[int, float] | None:
    """``{class: share}`` from a mapping class -> share or a sequence indexed by class (None stays None)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes)):
        items = list(enumerate(value))
    else:
        raise TypeError(f"`{name}` must be a mapping class -> share or a sequence indexed by class, "
                        f"got {describe(value)}")
    for c, _ in items:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise TypeError(f"`{name}` keys must be class ids (ints), got {describe(c)}")
    return {int(c): check_in_range(f"{name}[{int(c)}]", v, 0.0, 1.0) for c, v in items}


def _validate(settings: Any, checks: Mapping[str, Callable[[str, Any], Any]]) -> None:
    """Check and normalise every field of a frozen settings object; a failure names the class, the
    field and its default (the fix when unsure)."""
    cls = type(settings)
    for f in dataclasses.fields(settings):
        try:
            value = checks[f.name](f.name, getattr(settings, f.name))
        except (TypeError, ValueError) as err:
            raise type(err)(f"{cls.__name__}.{f.name}: {err}; pass a valid value or leave it out for the "
                            f"default ({f.default!r})") from None
        object.__setattr__(settings, f.name, value)


def check_settings(name: str, value: Any, cls: type[_S]) -> _S:
    """``value`` if it is a ``cls``, else a TypeError naming ``name`` and how to build one."""
    if not isinstance(value, cls):
        raise TypeError(f"`{name}` must be of type {cls.__name__}, got {describe(value)}; build one with "
                        f"{cls.__name__}(...) (keywords: {', '.join(f.name for f in dataclasses.fields(cls))})")
    return value


def reject_loose_options(where: str, given: Mapping[str, Any],
                         accepts: tuple[str, ...] = ("enlarge", "balance")) -> None:
    """A TypeError for keywords ``where`` does not take, naming the settings object that owns each option.

    Args:
        where: The callable, e.g. ``"LabelMapSampler"``.
        given: The unexpected keyword arguments (empty: nothing happens).
        accepts: The settings arguments ``where`` takes (``"enlarge"``, ``"balance"``).

    Raises:
        TypeError: ``given`` is not empty.
    """
    if not given:
        return
    owners = {f.name: ("enlarge", "EnlargeSettings") for f in dataclasses.fields(EnlargeSettings)}
    owners.update({f.name: ("balance", "BalanceSettings") for f in dataclasses.fields(BalanceSettings)})
    key = sorted(given)[0]
    arg, cls = owners.get(key, (None, None))
    if arg in accepts:
        raise TypeError(f"{where}() takes label-map options in a settings object: got `{key}={given[key]!r}`; "
                        f"pass `{arg}={cls}({key}={given[key]!r})`")
    why = f" (`{key}` belongs to {cls}, which {where} does not use)" if cls else ""
    raise TypeError(f"{where}() got an unexpected keyword argument `{key}`{why}")


@dataclass(frozen=True)
class EnlargeSettings:
    """How an enlarging map shifts nuclei (defaults: the reference code's, ±15 px, p = 0.3, margin 32).

    Attributes:
        max_shift: Shifts are drawn from ``randint(-max_shift, max_shift)`` per axis (``-15..14``
            for the reference's 15), or ``-max_shift..max_shift`` with ``symmetric``. ``>= 0``.
        p_shift: Probability that each axis' draw is kept (independently); else that axis is 0.
        border_margin: Width in px of the band whose nuclei stay fixed (32 at 256 px; see
            :func:`borders_for_patch`). ``>= 0``.
        symmetric: Draw ``-max_shift..max_shift`` inclusive (the maintainers' "0-3 px" is
            ``max_shift=3, symmetric=True``).
        overlap: ``"overwrite"`` (reference: later nuclei overwrite earlier ones) or ``"avoid"``
            (first writer wins; a shift that covers too much is re-drawn).
        max_overlap: With ``"avoid"``, the largest fraction of a moved nucleus' own area that may
            be covered by nuclei placed before it (or pushed out of the image), in ``[0, 1]``.
        max_tries: With ``"avoid"``, draws per nucleus before it is put back (or dropped). ``> 0``.

    Raises:
        TypeError / ValueError: a field of the wrong type or out of range, named with its default.
    """

    max_shift: int = 15
    p_shift: float = 0.3
    border_margin: int = 32
    symmetric: bool = False
    overlap: str = "overwrite"
    max_overlap: float = 0.2
    max_tries: int = 10

    def __post_init__(self) -> None:
        _validate(self, {
            "max_shift": lambda n, v: check_positive_int(n, v, allow_zero=True),
            "p_shift": check_probability,
            "border_margin": lambda n, v: check_positive_int(n, v, allow_zero=True),
            "symmetric": _check_bool,
            "overlap": lambda n, v: check_choice(n, v, OVERLAP_MODES),
            "max_overlap": lambda n, v: check_in_range(n, v, 0.0, 1.0),
            "max_tries": check_positive_int,
        })


@dataclass(frozen=True)
class BalanceSettings:
    """How a balancing map converts majors (defaults: the reference GradMix code's).

    The rare classes are not a setting: they come from the dataset's class table and are passed
    separately (``rare_classes=``), with no default.

    Attributes:
        major_fraction: Fraction of the interior majors drawn (``int(f * n)``), in ``[0, 1]``.
        size_ratio: A donor fits when ``dilated major area >= size_ratio * donor area``. ``> 0``.
        border: Centroid distance in px to the border below which nuclei take no part (30 at
            256 px; see :func:`borders_for_patch`). ``>= 0``.
        target_distribution: None (reference: convert every major that finds a donor), or the
            wanted share of nuclei per class (mapping class -> share, or a sequence indexed by
            class; stored as ``{class: share}``); only as many majors are converted as needed for
            each rare class to reach it.
        use_own_donors: Put the map's own interior rare nuclei first in the pool (reference).

    Raises:
        TypeError / ValueError: a field of the wrong type or out of range, named with its default.
    """

    major_fraction: float = 0.8
    size_ratio: float = 2.3
    border: int = 30
    target_distribution: Mapping[int, float] | Sequence[float] | None = None
    use_own_donors: bool = True

    def __post_init__(self) -> None:
        _validate(self, {
            "major_fraction": lambda n, v: check_in_range(n, v, 0.0, 1.0),
            "size_ratio": lambda n, v: check_in_range(n, v, 0.0, float("inf"), low_inclusive=False),
            "border": lambda n, v: check_positive_int(n, v, allow_zero=True),
            "target_distribution": _check_shares,
            "use_own_donors": _check_bool,
        })


def borders_for_patch(patch_size: int) -> dict[str, Any]:
    """The reference settings with their border bands (30 px balancing, 32 px enlarging at 256 px)
    scaled to ``patch_size``.

    The reference values leave no interior on small patches (a 64 px patch minus 30 px on each
    side), so balancing and enlarging become no-ops there. The result's keys are
    :class:`~diffmix_aug.labelmaps.sampler.LabelMapSampler`'s
    (``LabelMapSampler(mode, num_classes=..., **borders_for_patch(64))``); pass
    ``["balance"].border`` to :meth:`DonorBank.from_dataset`.

    Returns:
        ``{"balance": BalanceSettings, "enlarge": EnlargeSettings}``, each band at least 2 px.

    Examples:
        >>> b = borders_for_patch(64)
        >>> b["balance"].border, b["enlarge"].border_margin
        (8, 8)
    """
    size = check_positive_int("patch_size", patch_size)

    def scaled(reference: int) -> int:
        return max(2, round(reference * size / REFERENCE_PATCH))

    return {"balance": BalanceSettings(border=scaled(BalanceSettings.border)),
            "enlarge": EnlargeSettings(border_margin=scaled(EnlargeSettings.border_margin))}
