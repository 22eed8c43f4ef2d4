"""``ClassTable``: the classes of one online pipeline, resolved once and passed down.

Every part below :func:`~diffmix_aug.pipeline.build_pipeline` (label sampler, patch generator,
replay cache, patch store) takes this one value; none of them has a default of its own for the
number of classes or the rare classes. :func:`resolve_classes` settles it from the config, the
base dataset's class table (:class:`~diffmix_aug.data.classes.DatasetInfo`) and the synthesizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._checks import describe

__all__ = ["ClassTable", "check_same_data", "resolve_classes"]


@dataclass(frozen=True)
class ClassTable:
    """Classes of the label maps and of the synthesizer.

    Attributes:
        num_classes: Classes counting the background (CoNSeP merged: 5).
        rare_classes: Minority classes balancing pastes in (``()`` when nothing balances).
        names: Class names, background first, when the base has a class table; else None.
    """

    num_classes: int
    rare_classes: tuple[int, ...] = ()
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        k = self.num_classes
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"`num_classes` counts the background and must be an int >= 2, got {describe(k)}")
        rare = tuple(int(c) for c in self.rare_classes)
        bad = [c for c in rare if not 0 < c < k]
        if bad:
            raise ValueError(f"`rare_classes` {bad} are not foreground classes of a {k}-class label map "
                             f"(1..{k - 1})")
        object.__setattr__(self, "rare_classes", rare)
        if self.names is not None:
            names = tuple(str(n) for n in self.names)
            if len(names) != k:
                raise ValueError(f"`names` must name all {k} classes (background first), got {len(names)}: {names}")
            object.__setattr__(self, "names", names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the patch store's manifest holds it)."""
        return {"num_classes": self.num_classes, "rare_classes": list(self.rare_classes),
                "names": None if self.names is None else list(self.names)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClassTable:
        """Inverse of :meth:`to_dict`."""
        names = d.get("names")
        return cls(int(d["num_classes"]), tuple(d.get("rare_classes") or ()), None if names is None else tuple(names))


def resolve_classes(num_classes: int | None, rare_classes: Sequence[int] | None, info: Any, synthesizer: Any,
                    *, balances: bool, mode: str = "", fallback: ClassTable | None = None) -> ClassTable:
    """The one :class:`ClassTable` of a pipeline.

    Args:
        num_classes: The config's value (background included), or None.
        rare_classes: The config's value, or None.
        info: The base's class table (``DatasetInfo``: ``num_classes``, ``rare_classes``,
            ``class_names``), or None.
        synthesizer: The synthesizer (its ``num_classes`` must agree), or None.
        balances: Whether label maps that paste rare nuclei are built (then rare classes are required).
        mode: The mode, for messages.
        fallback: The class table of a patch store read without a synthesizer: the last source.

    ``num_classes`` comes from the config, else the base's class table, else the synthesizer,
    else ``fallback``; ``rare_classes`` from the config, else the base's class table, else ``fallback``.

    Raises:
        ValueError: no source for ``num_classes``; the synthesizer's differs; a balancing mode
            without rare classes; a rare class outside ``1..num_classes-1``.
    """
    check_same_data(info, synthesizer)
    synth_k = getattr(synthesizer, "num_classes", None)
    info_k = getattr(info, "num_classes", None)
    fb_k = None if fallback is None else fallback.num_classes
    k = next((v for v in (num_classes, info_k, synth_k, fb_k) if v is not None), None)
    if k is None:
        raise ValueError("`num_classes` is unknown: the base has no class table (`info`) and the synthesizer does "
                         "not say; pass num_classes= (classes counting the background, e.g. 5 for CoNSeP)")
    k = int(k)
    if synth_k is not None and int(synth_k) != k:
        where = "num_classes=" if num_classes is not None else f"the base's class table ({info.name!r})"
        raise ValueError(f"the synthesizer was trained with num_classes={int(synth_k)} (background included) but "
                         f"{where} gives {k}; use the SDM trained on this dataset's classes")
    rare = rare_classes if rare_classes is not None else getattr(info, "rare_classes", None)
    if rare is None and fallback is not None:
        rare = fallback.rare_classes
    if not rare and balances:
        raise ValueError(f"`rare_classes` is required for mode={mode!r}: the base has no class table to take it "
                         "from; pass the minority classes, e.g. rare_classes=(1,) for CoNSeP's miscellaneous (see "
                         "diffmix_aug.data.classes for the known datasets)")
    names = getattr(info, "class_names", None) or (None if fallback is None else fallback.names)
    if names is not None and len(names) != k:
        names = None  # a class table of another size than the one in use (refused above when the synthesizer knows)
    return ClassTable(k, tuple(rare or ()), None if names is None else tuple(names))


def check_same_data(info: Any, synthesizer: Any) -> None:
    """Refuse a base whose resolution or class names differ from what the synthesizer was trained on.

    The checkpoint's facts (``mpp``, ``class_names``; see
    :func:`~diffmix_aug.sdm.checkpoint.read_sdm_metadata`) are compared with the base's class table
    (``DatasetInfo.mpp``, ``class_names``) where both sides know them: an SDM trained at 20x renders
    20x nuclei, and wrapping 40x patches with it would silently train on nuclei of the wrong size.

    Raises:
        ValueError: the resolutions differ by more than 10 %, or the class names differ; naming both
            sides and the fix.
    """
    facts = getattr(getattr(synthesizer, "model", None), "checkpoint_info", None) or {}
    where = getattr(synthesizer, "checkpoint", None) or "the synthesizer's checkpoint"
    base_mpp, sdm_mpp = getattr(info, "mpp", None), facts.get("mpp")
    if base_mpp is not None and sdm_mpp is not None and abs(base_mpp / sdm_mpp - 1) > 0.1:
        ratio = sdm_mpp / base_mpp
        fix = (f"Wrap the base at the SDM's resolution (NucleiDataset: base.downsampled({round(ratio)})) or use "
               if ratio > 1 and abs(ratio - round(ratio)) < 0.05 else "Use ")
        raise ValueError(f"the base dataset is at {base_mpp:g} um/px but {where} was trained at {sdm_mpp:g} um/px: "
                         f"its nuclei would be rendered {ratio:.2g}x the size of the base's. {fix}an SDM trained at "
                         f"{base_mpp:g} um/px (diffmix-aug train-sdm with data.downsample set to match)")
    base_names, sdm_names = getattr(info, "class_names", None), facts.get("class_names")
    if base_names is not None and sdm_names is not None and tuple(base_names) != tuple(sdm_names):
        raise ValueError(f"the base dataset's classes {list(base_names)} differ from those {where} was trained on "
                         f"{list(sdm_names)}: the SDM would render class ids under other meanings; use the SDM "
                         "trained on this dataset's class table, or map the base's types to the SDM's first")
