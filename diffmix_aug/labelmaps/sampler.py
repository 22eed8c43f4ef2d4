"""``LabelMapSampler``: draws the custom label map of one sample (balance, enlarge, union or composed).

Modes (:data:`~diffmix_aug.modes.Mode`; the paper's ablations): ``"balance"`` is DiffMix-B
(GradMix label mixing, §6), ``"enlarge"`` is DiffMix-E (shifted nuclei, §5.5), ``"union"`` is the paper's DiffMix: each map is
a balancing or an enlarging one, chosen per map with probability 0.5 (the union of the B and E
pools, as the reference code trains), and ``"composed"`` is this project's enlarge(balance(map)):
the balanced map is enlarged. Parameters are drawn first (:meth:`LabelMapSampler.get_params`), then
applied deterministically (:meth:`LabelMapSampler.apply`), so every map can be replayed from its
:class:`LabelMapParams` (also after a JSON round trip, :meth:`LabelMapParams.from_dict`).

The sampler holds no random state and is picklable: DataLoader workers pass their own generator,
e.g. ``np.random.default_rng([base_seed, index])`` for per-item reproducibility, or one seeded from
``torch.utils.data.get_worker_info().seed`` per worker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._checks import check_positive_int, describe
from ..modes import DEFAULT_MODE, MODES, UNION_P_BALANCE, Mode, check_mode, mode_balances, mode_enlarges
from .balance import BalanceParams, apply_balance, draw_balance_params
from .donors import DonorBank
from .enlarge import EnlargeParams, apply_enlarge, draw_enlarge_params
from .settings import (
    REFERENCE_PATCH,
    BalanceSettings,
    EnlargeSettings,
    borders_for_patch,
    check_settings,
    reject_loose_options,
)

__all__ = ["DEFAULT_MODE", "MODES", "REFERENCE_PATCH", "LabelMapParams", "LabelMapResult", "LabelMapSampler", "Mode",
           "borders_for_patch", "check_label_maps", "check_mode", "mode_balances", "mode_enlarges"]

@dataclass(frozen=True, eq=False)
class LabelMapParams:
    """Everything drawn for one custom map. ``balance`` is None in ``"enlarge"`` mode and
    ``enlarge`` is None in ``"balance"`` mode; a ``"union"`` map has exactly one of them (the kind
    drawn for it); in ``"composed"`` the enlarge parameters refer to the balanced map."""

    mode: str
    balance: BalanceParams | None = None
    enlarge: EnlargeParams | None = None

    @property
    def kind(self) -> str:
        """What was applied: ``"balance"``, ``"enlarge"``, ``"composed"`` (both, in that order) or ``"none"``."""
        if self.balance is not None:
            return "composed" if self.enlarge is not None else "balance"
        return "enlarge" if self.enlarge is not None else "none"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {"mode": self.mode, "balance": None if self.balance is None else self.balance.to_dict(),
                "enlarge": None if self.enlarge is None else self.enlarge.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelMapParams:
        """Inverse of :meth:`to_dict`."""
        return cls(d["mode"], None if d["balance"] is None else BalanceParams.from_dict(d["balance"]),
                   None if d["enlarge"] is None else EnlargeParams.from_dict(d["enlarge"]))


@dataclass(frozen=True, eq=False)
class LabelMapResult:
    """A custom label map.

    Attributes:
        inst_map: ``int32 [H, W]`` ids ``1..n``.
        type_map: ``int32 [H, W]`` one class per instance.
        mode: The sampler's mode.
        report: ``{"balance": ..., "enlarge": ...}`` (the steps that ran).
        params: The parameters that produced it.
    """

    inst_map: np.ndarray
    type_map: np.ndarray
    mode: str
    report: dict[str, Any] = field(default_factory=dict)
    params: LabelMapParams | None = None


def check_label_maps(inst_map: Any, type_map: Any, num_classes: int, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """``(inst_map, type_map)`` as arrays, refused when they cannot be rendered as given: non-integer
    ids, negative instance ids, classes outside ``0..num_classes-1`` (the SDM's one-hot has
    ``num_classes`` channels: a class beyond it would be drawn as another class).

    Args:
        inst_map, type_map: ``int [H, W]``.
        num_classes: Classes counting the background.
        where: Where the maps come from, for the message (e.g. ``" of item 7"``).

    Raises:
        TypeError / ValueError: naming the map, the allowed range, what was found and the fix.
    """
    inst, typ = np.asarray(inst_map), np.asarray(type_map)
    for name, arr in (("inst_map", inst), ("type_map", typ)):
        if arr.dtype.kind not in "iu":
            raise TypeError(f"`{name}`{where} must hold integer ids, got {arr.dtype}; cast it to int32")
    if inst.size and int(inst.min()) < 0:
        raise ValueError(f"`inst_map`{where} ids must be >= 0 (0 = background), got minimum {int(inst.min())}; "
                         "relabel with remap_label")
    if typ.size:
        lo, hi = int(typ.min()), int(typ.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"`type_map`{where} classes must be in 0..{num_classes - 1} (num_classes={num_classes}, background "
                f"included), got {lo}..{hi}; merge the dataset's classes to the model's (data.merge or remap the "
                "types), or use a model and num_classes that cover them")
    return inst, typ


class LabelMapSampler:
    """Custom label maps for DiffMix synthesis.

    Args:
        mode: One of :data:`~diffmix_aug.modes.MODES`: ``"balance"`` (DiffMix-B), ``"enlarge"`` (DiffMix-E), ``"union"``
            (the paper's DiffMix: a balancing or an enlarging map, chosen per map with probability
            0.5) or ``"composed"`` (enlarge(balance(map))).
        donors: The :class:`DonorBank` for balancing; None uses each map's own rare nuclei only.
        num_classes: Classes counting the background (rare classes must be below it).
        rare_classes: Classes balancing pastes in (may be empty for ``"enlarge"``).
        enlarge: How enlarging maps shift nuclei
            (:class:`~diffmix_aug.labelmaps.settings.EnlargeSettings`; default: the reference code's).
        balance: How balancing maps convert majors
            (:class:`~diffmix_aug.labelmaps.settings.BalanceSettings`; default: the reference code's).
            :func:`~diffmix_aug.labelmaps.settings.borders_for_patch` gives both for a patch size.
        source_key: ``sample.meta`` key holding the sample's index in the dataset the bank was
            built from; that source's bank donors are then not used on top of the map's own ones.
            None disables it.

    Examples:
        >>> import numpy as np
        >>> from diffmix_aug.data.sample import NucleiSample
        >>> inst = np.zeros((96, 96), np.int32); inst[40:52, 40:52] = 1; inst[60:64, 60:64] = 2
        >>> typ = np.where(inst == 1, 2, np.where(inst == 2, 1, 0)).astype(np.int32)
        >>> s = NucleiSample(np.zeros((96, 96, 3), np.uint8), inst, typ)
        >>> from diffmix_aug.labelmaps import BalanceSettings
        >>> lms = LabelMapSampler("balance", num_classes=5, rare_classes=(1,),
        ...                       balance=BalanceSettings(major_fraction=1.0))
        >>> out = lms(s, np.random.default_rng(0))
        >>> out.report["balance"]["converted"], np.unique(out.type_map).tolist()
        ({1: 1}, [0, 1])
    """

    def __init__(
        self,
        mode: str = DEFAULT_MODE,
        donors: DonorBank | None = None,
        *,
        num_classes: int,
        rare_classes: Iterable[int] = (),
        enlarge: EnlargeSettings = EnlargeSettings(),
        balance: BalanceSettings = BalanceSettings(),
        source_key: str | None = "index",
        **unexpected: Any,
    ) -> None:
        reject_loose_options(type(self).__name__, unexpected)
        self.mode = check_mode(mode)
        if donors is not None and not isinstance(donors, DonorBank):
            raise TypeError(f"`donors` must be a DonorBank or None, got {type(donors).__name__}; "
                            "build one with DonorBank.from_dataset(dataset)")
        self.donors = donors
        self.num_classes = check_positive_int("num_classes", num_classes)
        if isinstance(rare_classes, (str, bytes)) or not isinstance(rare_classes, Iterable) or not all(
                isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in rare_classes):
            raise TypeError(f"`rare_classes` must be a sequence of class ids (ints in 1..{self.num_classes - 1}), "
                            f"e.g. (1,), got {describe(rare_classes)}")
        self.rare_classes = tuple(int(c) for c in rare_classes)
        bad = [c for c in self.rare_classes if not 0 < c < num_classes]
        if bad or (self.balances and not self.rare_classes):
            raise ValueError(f"`rare_classes` must be {'non-empty ' if self.balances else ''}ids in "
                             f"1..{num_classes - 1} for mode={self.mode!r}, got {self.rare_classes}")
        self.enlarge = check_settings("enlarge", enlarge, EnlargeSettings)
        self.balance = check_settings("balance", balance, BalanceSettings)
        self.source_key = source_key

    @property
    def balances(self) -> bool:
        """Whether this sampler can paste rare nuclei (``"balance"``, ``"union"``, ``"composed"``)."""
        return mode_balances(self.mode)

    @property
    def enlarges(self) -> bool:
        """Whether this sampler can shift nuclei (``"enlarge"``, ``"union"``, ``"composed"``)."""
        return mode_enlarges(self.mode)

    def __repr__(self) -> str:
        return (f"LabelMapSampler(mode={self.mode!r}, donors={None if self.donors is None else len(self.donors)}, "
                f"num_classes={self.num_classes}, rare_classes={self.rare_classes})")

    def _maps(self, sample: Any) -> tuple[np.ndarray, np.ndarray]:
        """The sample's ``(inst_map, type_map)``, checked against this sampler's classes: a class id
        beyond ``num_classes`` would be rendered as another class (the SDM's one-hot has
        ``num_classes`` channels), so it is refused, not served."""
        if isinstance(sample, tuple) and len(sample) == 2:
            inst, typ = sample
        elif hasattr(sample, "inst_map") and hasattr(sample, "type_map"):
            inst, typ = sample.inst_map, sample.type_map
        else:
            raise TypeError(f"`sample` must be a NucleiSample or an (inst_map, type_map) tuple, got {describe(sample)}")
        where = "" if self._source(sample) is None else f" of item {self._source(sample)}"
        return check_label_maps(inst, typ, self.num_classes, where)

    def _source(self, sample: Any) -> int | None:
        meta = getattr(sample, "meta", None)
        if self.source_key is None or not isinstance(meta, dict) or self.source_key not in meta:
            return None
        try:
            return int(meta[self.source_key])
        except (TypeError, ValueError):
            return None

    def _kind(self, rng: np.random.Generator | None, params: LabelMapParams | None) -> tuple[bool, bool]:
        """``(balance, enlarge)``: the steps this map runs (a ``"union"`` map draws its kind first)."""
        if self.mode != "union":
            return self.balances, self.enlarges
        if params is not None:
            return params.balance is not None, params.enlarge is not None
        balance = bool(rng.random() < UNION_P_BALANCE)
        return balance, not balance

    def _run(self, rng: np.random.Generator | None, sample: Any, params: LabelMapParams | None) -> LabelMapResult:
        inst, typ = self._maps(sample)
        report: dict[str, Any] = {}
        bp = ep = None
        balance, enlarge = self._kind(rng, params)
        if balance:
            info = None if isinstance(sample, tuple) else getattr(sample, "info", None)  # NucleiSample caches it
            bp = params.balance if params is not None else draw_balance_params(
                rng, inst, typ, self.donors, self.balance, rare_classes=self.rare_classes,
                exclude_source=self._source(sample), info=info)
            inst, typ, report["balance"] = apply_balance(inst, typ, bp, self.donors, info)
        if enlarge:
            info = None if balance or isinstance(sample, tuple) else getattr(sample, "info", None)
            ep = params.enlarge if params is not None else draw_enlarge_params(rng, inst, self.enlarge, info=info)
            inst, typ, report["enlarge"] = apply_enlarge(inst, typ, ep)
        return LabelMapResult(inst, typ, self.mode, report, LabelMapParams(self.mode, bp, ep))

    def get_params(self, rng: np.random.Generator, sample: Any) -> LabelMapParams:
        """Draw the parameters for ``sample`` (``NucleiSample`` or ``(inst_map, type_map)``).

        In ``"composed"`` mode the balanced map is built to draw the enlarging parameters for it.
        """
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"`rng` must be a numpy.random.Generator, got {type(rng).__name__}; "
                            "use np.random.default_rng(seed)")
        return self._run(rng, sample, None).params  # type: ignore[return-value]

    def apply(self, sample: Any, params: LabelMapParams) -> LabelMapResult:
        """Apply drawn parameters (deterministic)."""
        if not isinstance(params, LabelMapParams) or params.mode != self.mode:
            raise ValueError(f"`params` must be LabelMapParams of mode {self.mode!r}, got "
                             f"{getattr(params, 'mode', type(params).__name__)!r}")
        return self._run(None, sample, params)

    def __call__(self, sample: Any, rng: np.random.Generator) -> LabelMapResult:
        """Draw and apply in one pass (no double work in ``"composed"`` mode)."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"`rng` must be a numpy.random.Generator, got {type(rng).__name__}; "
                            "use np.random.default_rng(seed)")
        return self._run(rng, sample, None)
