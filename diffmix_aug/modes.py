"""The label-map modes of DiffMix: one ``Literal`` type, the one check, what each mode does.

Defined here, with no heavy import, so that the config, the label-map sampler, the CLI's
``--mode`` choices and the generated options reference all take the same names.

- ``"balance"``: DiffMix-B, GradMix-style balancing maps (rare nuclei pasted over abundant ones).
- ``"enlarge"``: DiffMix-E, enlarging maps (nuclei shifted).
- ``"union"``: the paper's DiffMix: every map is a balancing or an enlarging one, chosen per map with
  probability :data:`UNION_P_BALANCE` (the union of the B and E pools, as the reference code trains).
- ``"composed"``: this project's composition enlarge(balance(map)): the balanced map is enlarged.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

__all__ = ["DEFAULT_MODE", "MODES", "Mode", "UNION_P_BALANCE", "check_mode", "mode_balances", "mode_enlarges"]

Mode = Literal["balance", "enlarge", "union", "composed"]
MODES: tuple[str, ...] = get_args(Mode)
#: the interim default: the paper's and the reference code's composition
DEFAULT_MODE: Mode = "union"
#: probability that a ``"union"`` map is a balancing one (the reference trains on both pools, equally)
UNION_P_BALANCE = 0.5
_BALANCING = frozenset({"balance", "union", "composed"})
_ENLARGING = frozenset({"enlarge", "union", "composed"})


def check_mode(mode: Any, name: str = "mode") -> str:
    """``mode`` when it is one of :data:`MODES`, else ``ValueError`` naming the choices.

    The removed ``"both"`` is refused with its two replacements and what each means.
    """
    if mode == "both":
        raise ValueError(f"`{name}`='both' was removed (it was ambiguous); use {name}='union' for the paper's "
                         "DiffMix (every synthetic patch comes from a balancing or an enlarging map, chosen per "
                         f"patch with probability 0.5) or {name}='composed' for this project's former 'both' "
                         "(the balanced map is enlarged: enlarge(balance(map)))")
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"`{name}` must be one of {list(MODES)}, got {mode!r}")
    return mode


def mode_balances(mode: str) -> bool:
    """Whether ``mode`` pastes rare nuclei (it needs rare classes and a donor bank)."""
    return check_mode(mode) in _BALANCING


def mode_enlarges(mode: str) -> bool:
    """Whether ``mode`` shifts nuclei."""
    return check_mode(mode) in _ENLARGING
