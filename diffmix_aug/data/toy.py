"""The embedded procedural dataset: imbalanced, H&E-like nuclei patches with exact labels.

Each patch is generated from its own generator ``default_rng(SeedSequence([seed, index]))``, so
item ``i`` is identical in every process and can be generated lazily. The classes follow the
merged CoNSeP scheme (``get_dataset_info("toy")``):

====  ==============  ================================================================
id    name            look
====  ==============  ================================================================
1     miscellaneous   rare (~2.5 %); medium-sized, below epithelial and spindle nuclei (so
                      balancing can paste it over them), lobulated/irregular, mottled stain
2     inflammatory    small, round, very dark (lymphocyte-like), scattered or in groups
3     epithelial      larger pale oval vesicular nuclei with a dark rim, in clusters over
                      purple-ish cytoplasm
4     spindle         elongated, oriented along the local stroma fibre direction
====  ==============  ================================================================

The image is formed with a Beer-Lambert stain model (Ruifrok-Johnston hematoxylin and eosin
optical-density vectors): eosin stroma with low-frequency texture, fibres and occasional clear
spaces; hematoxylin nuclei with per-class density, chromatin texture, membrane rim and soft
edges. Nuclei are drawn in random order and may overlap a little; later nuclei occlude earlier
ones and the instance map holds exactly what is visible (fragments split off by occlusion are
dropped to background, so every instance is one connected piece).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .._checks import check_positive_int
from .classes import get_dataset_info
from .sample import NucleiSample

__all__ = ["DEFAULT_CLASS_FREQUENCIES", "ToyGenerator", "make_toy_dataset", "make_toy_sample"]

#: Default nucleus shares of classes 1..4 (miscellaneous, inflammatory, epithelial, spindle), as
#: imbalanced as CoNSeP's merged classes; the rare class ends near 2.5 % of all nuclei.
DEFAULT_CLASS_FREQUENCIES: tuple[float, float, float, float] = (0.023, 0.29, 0.41, 0.277)

_H_OD = np.array([0.650, 0.704, 0.286])  # hematoxylin optical-density direction (RGB)
_E_OD = np.array([0.112, 0.882, 0.456])  # eosin (pinker than Ruifrok's 0.07, 0.99, 0.11)
_BG_OD = np.array([0.07, 0.10, 0.06])  # slide background / light scatter

# Per class: (semi-axis a range, b/a ratio range, boundary roughness, lobes, H density range,
# chromatin amplitude, rim strength). Sizes in pixels, roughly 20x magnification.
_SHAPES = {
    1: ((3.4, 4.8), (0.65, 0.95), 0.12, (2, 4), (0.95, 1.35), 0.45, 0.15),
    2: ((2.8, 3.8), (0.80, 1.00), 0.04, (2, 3), (1.55, 2.00), 0.12, 0.05),
    3: ((5.0, 7.0), (0.55, 0.80), 0.05, (2, 3), (0.55, 0.80), 0.30, 0.45),
    4: ((6.5, 10.5), (0.22, 0.36), 0.05, (2, 3), (1.05, 1.40), 0.20, 0.10),
}
_DENSITY = 12.0 / (64 * 64)  # expected nuclei per pixel before rejection
_MAX_OVERLAP = 0.25  # a new nucleus may cover at most this share of its area over older ones
_MIN_FRAGMENT = 4  # visible pieces smaller than this become background


@dataclass(frozen=True)
class ToyGenerator:
    """Picklable ``index -> NucleiSample`` callable (what :func:`make_toy_dataset` wraps).

    Attributes:
        size: Patch side in pixels.
        seed: Dataset seed; item ``i`` uses ``SeedSequence([seed, i])``.
        class_frequencies: Shares of classes 1..4, summing to 1.
    """

    size: int = 256
    seed: int = 0
    class_frequencies: tuple[float, ...] = DEFAULT_CLASS_FREQUENCIES

    def __call__(self, index: int) -> NucleiSample:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(index)]))
        image, inst, typ = make_toy_sample(rng, self.size, self.class_frequencies)
        return NucleiSample.trusted(image, inst, typ, meta={"source": "toy", "seed": self.seed, "index": int(index)})


def make_toy_dataset(
    n: int,
    size: int = 256,
    seed: int = 0,
    class_frequencies: Sequence[float] | Mapping[int, float] | None = None,
):
    """Build the procedural, class-imbalanced nuclei dataset (generated lazily per item).

    Args:
        n: Number of patches.
        size: Patch side in pixels (nuclei keep their pixel size: a 64x64 patch holds about
            5-20 nuclei, a 256x256 patch about 100-250).
        seed: Dataset seed; item ``i`` depends only on ``(seed, i, size, class_frequencies)``.
        class_frequencies: Shares of classes 1..4 as a sequence of 4 non-negative numbers or a
            ``{class_id: share}`` mapping (missing ids get 0); normalised to sum 1. Default:
            :data:`DEFAULT_CLASS_FREQUENCIES` (miscellaneous ~2.5 %).

    Returns:
        A :class:`~diffmix_aug.data.dataset.NucleiDataset` with ``info = get_dataset_info("toy")``.

    Raises:
        ValueError: non-positive ``n``/``size``, or invalid frequencies.

    Examples:
        >>> ds = make_toy_dataset(4, size=64, seed=0)
        >>> s = ds[0]
        >>> s.image.shape, s.inst_map.dtype.name, int(s.type_map.max()) <= 4
        ((64, 64, 3), 'int32', True)
    """
    from .dataset import NucleiDataset

    n = check_positive_int("n", n)
    size = check_positive_int("size", size)
    if not 16 <= size <= _MAX_SIZE:
        raise ValueError(f"`size` must be in [16, {_MAX_SIZE}] pixels (nuclei are up to ~20 px long), got {size}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, got {seed!r}")
    freqs = _normalise_frequencies(class_frequencies)
    gen = ToyGenerator(size=size, seed=int(seed), class_frequencies=freqs)
    return NucleiDataset.from_generator(gen, n, get_dataset_info("toy"))


def _normalise_frequencies(value: Sequence[float] | Mapping[int, float] | None) -> tuple[float, ...]:
    if value is None:
        return DEFAULT_CLASS_FREQUENCIES
    if isinstance(value, Mapping):
        bad = [k for k in value if k not in (1, 2, 3, 4)]
        if bad:
            raise ValueError(f"`class_frequencies` keys must be class ids 1..4, got {bad}")
        value = [float(value.get(k, 0.0)) for k in (1, 2, 3, 4)]
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (4,):
        raise ValueError(f"`class_frequencies` must hold 4 shares (classes 1..4: miscellaneous, inflammatory, "
                         f"epithelial, spindle), got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any() or arr.sum() <= 0:
        raise ValueError(f"`class_frequencies` must be finite, >= 0 and not all 0, got {arr.tolist()}")
    return tuple(float(x) for x in arr / arr.sum())


# ----------------------------------------------------------------------------------- fields
def _interp_axis(grid: np.ndarray, n_out: int, cell: float, axis: int) -> np.ndarray:
    """Upsample ``grid`` along ``axis`` to ``n_out`` samples with smoothstep interpolation."""
    pos = np.arange(n_out) / cell
    i0 = np.minimum(pos.astype(np.int64), grid.shape[axis] - 2)
    f = (pos - i0).astype(np.float32)
    f = f * f * (3 - 2 * f)  # C1-continuous: no creases at the coarse-grid lines
    lo, hi = np.take(grid, i0, axis=axis), np.take(grid, i0 + 1, axis=axis)
    shape = [1, 1]
    shape[axis] = n_out
    f = f.reshape(shape)
    return lo * (1 - f) + hi * f


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Value noise: a standard-normal coarse grid with spacing ``cell``, upsampled to ``float64 [h, w]``."""
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    return _interp_axis(_interp_axis(grid, h, cell, 0), w, cell, 1)


def _blur3(x: np.ndarray) -> np.ndarray:
    """3x3 binomial blur with edge replication (soft nucleus edges)."""
    p = np.pad(x, 1, mode="edge")
    r = p[:, :-2] * 0.25 + p[:, 1:-1] * 0.5 + p[:, 2:] * 0.25
    return r[:-2] * 0.25 + r[1:-1] * 0.5 + r[2:] * 0.25


# ----------------------------------------------------------------------------------- nuclei
_HARM_K = np.arange(2, 6)
_N_ANGLES = 128
_MAX_SIZE = 4096
_ANGLES = (np.arange(_N_ANGLES) + 0.5) * (2 * np.pi / _N_ANGLES) - np.pi
_TABLE = {  # per-class parameter columns, indexed by class id (row 0 unused)
    name: np.array([0.0] + [_SHAPES[c][i] if np.isscalar(_SHAPES[c][i]) else 0.0 for c in (1, 2, 3, 4)])
    for i, name in ((2, "rough"), (5, "chromatin"), (6, "rim"))
}
for _i, _name in ((0, "a"), (1, "ratio"), (3, "lobes"), (4, "h")):
    _TABLE[_name + "_lo"] = np.array([0.0] + [float(_SHAPES[c][_i][0]) for c in (1, 2, 3, 4)])
    _TABLE[_name + "_hi"] = np.array([0.0] + [float(_SHAPES[c][_i][1]) for c in (1, 2, 3, 4)])

_TABLE32 = {k: v.astype(np.float32) for k, v in _TABLE.items()}
# Largest distance of a boundary point from the centre: a * (1 + sum of harmonic amplitudes) + 1.
_HALF = int(np.ceil(max(
    _TABLE["a_hi"][c] * (1 + _TABLE["rough"][c] * (np.sum(1 / np.sqrt(_HARM_K - 1)) + (1.0 if c == 1 else 0.0))) + 1
    for c in (1, 2, 3, 4)))) + 1


def _uniform(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return lo + (hi - lo) * rng.random(lo.shape)


def _draw_candidates(rng: np.random.Generator, classes: np.ndarray, size: int, clusters: np.ndarray,
                     sigma: float, angle: np.ndarray) -> dict[str, np.ndarray]:
    """Draw all candidate nuclei at once: centre, axes, orientation, boundary harmonics, stain.

    Returns:
        Arrays of length ``m = len(classes)``: ``cls, cy, cx, a, b, theta, h`` and ``amp, phase [m, 4]``.
    """
    m = classes.size
    # Positions: epithelial nuclei gather around cluster centres; the others prefer the stroma
    # (first of 4 uniform draws outside the epithelium; the miscellaneous class goes anywhere).
    pos = rng.uniform(-2, size + 2, (m, 4, 2))
    if len(clusters):
        d2 = ((pos[:, :, None, :] - clusters[None, None]) ** 2).sum(-1)
        in_epi = np.exp(-d2.min(-1) / (2 * sigma**2)) >= 0.5
    else:
        in_epi = np.zeros((m, 4), bool)
    first_ok = np.where((~in_epi).any(1), np.argmax(~in_epi, 1), 3)
    first_ok[classes == 1] = 0
    centre = pos[np.arange(m), first_ok]
    near = rng.integers(0, max(len(clusters), 1), m)
    jitter = rng.normal(0, sigma * 0.75, (m, 2))
    epi_mask = (classes == 3) & (len(clusters) > 0)
    if len(clusters):
        centre[epi_mask] = clusters[near[epi_mask]] + jitter[epi_mask]
    iy = np.clip(centre[:, 0].astype(np.int64), 0, size - 1)
    ix = np.clip(centre[:, 1].astype(np.int64), 0, size - 1)
    theta = np.where(classes == 4, angle[iy, ix] + rng.normal(0, 0.15, m), rng.uniform(0, np.pi, m))
    a = _uniform(rng, _TABLE["a_lo"][classes], _TABLE["a_hi"][classes])
    b = a * _uniform(rng, _TABLE["ratio_lo"][classes], _TABLE["ratio_hi"][classes])
    amp = _TABLE["rough"][classes, None] * rng.uniform(0.2, 1.0, (m, 4)) / np.sqrt(_HARM_K - 1)
    lobe = np.floor(_uniform(rng, _TABLE["lobes_lo"][classes], _TABLE["lobes_hi"][classes] + 1)).astype(np.int64)
    misc = np.flatnonzero(classes == 1)
    amp[misc, lobe[misc] - 2] += 1.0 * _TABLE["rough"][1]  # lobulated: one dominant lobe frequency
    return {"cls": classes, "cy": centre[:, 0], "cx": centre[:, 1], "a": a, "b": b, "theta": theta,
            "amp": amp, "phase": rng.uniform(0, 2 * np.pi, (m, 4)),
            "h": _uniform(rng, _TABLE["h_lo"][classes], _TABLE["h_hi"][classes])}


def _candidate_masks(cand: dict[str, np.ndarray], sel: np.ndarray | slice = slice(None),
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise the candidates ``sel`` at once, each on its own ``R x R`` window (``R = 2 * _HALF + 1``).

    Returns:
        ``(y0 int64 [m], x0 int64 [m], masks bool [m, R, R])``: window corners (may lie outside the
        patch) and the nucleus masks inside them.
    """
    cand = {k: v[sel] for k, v in cand.items()}
    m = cand["a"].size
    size = 2 * _HALF + 1
    if m == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros((0, size, size), dtype=bool)
    y0 = np.floor(cand["cy"]).astype(np.int64) - _HALF
    x0 = np.floor(cand["cx"]).astype(np.int64) - _HALF
    ramp = np.arange(size, dtype=np.float64)
    yy = (y0 - cand["cy"])[:, None, None] + ramp[None, :, None]
    xx = (x0 - cand["cx"])[:, None, None] + ramp[None, None, :]
    c, s = np.cos(cand["theta"])[:, None, None], np.sin(cand["theta"])[:, None, None]
    a, b = cand["a"][:, None, None], cand["b"][:, None, None]
    u = xx * (c / a) + yy * (s / a)
    v = yy * (c / b) - xx * (s / b)
    # Boundary radius r(phi) = 1 + sum_k amp_k cos(k phi + phase_k), tabulated on _N_ANGLES angles.
    table = 1 + np.einsum("mk,mkn->mn", cand["amp"],
                          np.cos(_HARM_K[None, :, None] * _ANGLES[None, None] + cand["phase"][:, :, None]))
    idx = ((np.arctan2(v, u) + np.pi) * (_N_ANGLES / (2 * np.pi))).astype(np.int64) % _N_ANGLES
    bound = np.take_along_axis(table, idx.reshape(m, -1), 1).reshape(idx.shape)
    return y0, x0, u * u + v * v < bound * bound


def make_toy_sample(rng: np.random.Generator, size: int, class_frequencies: Sequence[float] = DEFAULT_CLASS_FREQUENCIES,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate one patch. All random parameters are drawn from ``rng`` first, then rendered.

    Args:
        rng: The patch's generator.
        size: Side in pixels.
        class_frequencies: Shares of classes 1..4 (normalised).

    Returns:
        ``(image uint8 [size, size, 3], inst_map int32 [size, size] ids 1..n, type_map int32)``.
    """
    h = w = size
    freqs = np.asarray(class_frequencies, np.float64)
    freqs = freqs / freqs.sum()
    # --- tissue layout: epithelial clusters, fibre direction, clear spaces, textures
    n_clusters = rng.poisson(size * size / 4096 * 0.55) if freqs[2] > 0 else 0
    clusters = rng.uniform(0, size, (n_clusters, 2))
    sigma = size * 0.02 + 9
    base_angle = rng.uniform(0, np.pi)
    angle = base_angle + 0.35 * _smooth_noise(rng, h, w, 64.0)  # local spindle direction
    stroma_tex = _smooth_noise(rng, h, w, 24.0)
    fine_tex = _smooth_noise(rng, h, w, 5.0)
    warp = _smooth_noise(rng, h, w, 28.0)
    bundles = np.clip(_smooth_noise(rng, h, w, 36.0) + 0.4, 0, 1)
    period = rng.uniform(9.0, 14.0)
    clear = _smooth_noise(rng, h, w, 40.0) + rng.uniform(-2.6, -1.3)
    chromatin = _blur3(rng.standard_normal((h, w), dtype=np.float32)) * 2.2
    eosin_level = rng.uniform(0.45, 0.7)
    stain_jitter = rng.normal(0, 0.03, 3)
    noise = rng.standard_normal((h, w, 3), dtype=np.float32) * 2.0
    # --- nuclei: classes, then two candidate placements each
    n_target = rng.poisson(_DENSITY * h * w * rng.uniform(0.6, 1.4))
    patch_freqs = freqs * rng.gamma(6.0, 1 / 6.0, 4)
    patch_freqs = patch_freqs / patch_freqs.sum() if patch_freqs.sum() > 0 else freqs
    classes = rng.choice(4, size=n_target, p=patch_freqs) + 1
    cand = _draw_candidates(rng, np.repeat(classes, 2), size, clusters, sigma, angle)
    # --- rasterise in drawing order; a candidate covering > _MAX_OVERLAP of older nuclei is rejected
    inst = np.zeros((h, w), np.int32)
    kept: list[int] = []
    occluded: dict[int, tuple[int, int, int, int]] = {}
    boxes: list[tuple[int, int, int, int]] = []
    first_y0, first_x0, first_masks = _candidate_masks(cand, slice(0, None, 2))  # second tries: on demand
    span = 2 * _HALF + 1
    for j in range(n_target * 2):
        if j % 2 == 1 and kept and kept[-1] == j - 1:
            continue  # the first try of this nucleus was placed
        if j % 2 == 0:
            gy, gx, window = int(first_y0[j // 2]), int(first_x0[j // 2]), first_masks[j // 2]
        else:
            wy, wx, wm = _candidate_masks(cand, slice(j, j + 1))
            gy, gx, window = int(wy[0]), int(wx[0]), wm[0]
        y0, y1, x0, x1 = max(gy, 0), min(gy + span, h), max(gx, 0), min(gx + span, w)
        if y1 <= y0 or x1 <= x0:
            continue
        mask = window[y0 - gy:y1 - gy, x0 - gx:x1 - gx]
        if not mask.any():
            continue
        box = (y0, x0, y1, x1)
        local = inst[box[0]:box[2], box[1]:box[3]]
        under = local[mask]
        hit = under[under > 0]
        if hit.size > _MAX_OVERLAP * under.size:
            continue
        kept.append(j)
        boxes.append(box)
        for i in np.unique(hit).tolist():
            occluded[i] = boxes[i - 1]
        local[mask] = len(kept)
    _clean_occluded(inst, occluded)
    # --- relabel to 1..n, per-instance attributes as lookup tables
    kept_arr = np.asarray(kept, np.int64)
    present = np.unique(inst)
    present = present[present > 0]
    lut = np.zeros(len(kept) + 1, np.int32)
    lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
    inst = lut[inst]
    src = kept_arr[present - 1]
    cls_lut = np.r_[0, cand["cls"][src]].astype(np.int32)
    dens_lut = np.r_[0.0, cand["h"][src]].astype(np.float32)
    typ = cls_lut[inst]
    # --- render with the stain model
    yy, xx = np.ogrid[0:h, 0:w]
    cy_c, cx_c = np.arange(0, h + 4, 4.0), np.arange(0, w + 4, 4.0)
    epi_c = np.zeros((cy_c.size, cx_c.size))
    for cy, cx in clusters:
        epi_c = np.maximum(epi_c, np.exp(-((cy_c[:, None] - cy) ** 2 + (cx_c[None] - cx) ** 2) / (2 * sigma**2)))
    epi = _interp_axis(_interp_axis(epi_c.astype(np.float32), h, 4.0, 0), w, 4.0, 1)
    phase = (xx * np.float32(np.cos(base_angle) / period) + yy * np.float32(np.sin(base_angle) / period)) + 0.8 * warp
    fibres = (0.5 + 0.5 * np.sin(2 * np.pi * phase)) ** 2 * bundles
    clear_alpha = np.clip(clear * 2.0, 0, 1)
    e_conc = eosin_level * (1 + 0.22 * stroma_tex + 0.08 * fine_tex - 0.35 * bundles + 0.35 * fibres)
    e_conc = e_conc * (1 - 0.85 * clear_alpha)
    h_conc = 0.05 + 0.22 * epi * (1 - clear_alpha) + 0.02 * fine_tex  # purple-ish cytoplasm in epithelium
    fg = inst > 0
    pad = np.pad(inst, 1, mode="edge")
    rim = fg & ((pad[:-2, 1:-1] != inst) | (pad[2:, 1:-1] != inst) | (pad[1:-1, :-2] != inst) | (pad[1:-1, 2:] != inst))
    nuc_h = dens_lut[inst] * (1 + _TABLE32["chromatin"][typ] * chromatin) * (1 + _TABLE32["rim"][typ] * rim)
    alpha = _blur3(fg.astype(np.float32)) * np.float32(0.6) + fg * np.float32(0.4)
    h_conc = h_conc * (1 - alpha) + np.clip(nuc_h, 0.1, None) * alpha
    e_conc = e_conc * (1 - 0.7 * alpha)
    h_vec = (_H_OD + stain_jitter).astype(np.float32)
    od = h_conc[..., None] * h_vec + e_conc[..., None] * _E_OD.astype(np.float32) + _BG_OD.astype(np.float32)
    image = np.clip(np.float32(245.0) * np.exp(-od) + noise, 0, 255).astype(np.uint8)
    return image, inst, typ


def _clean_occluded(inst: np.ndarray, occluded: dict[int, tuple[int, int, int, int]]) -> None:
    """In place: keep the largest connected piece of every occluded nucleus; drop tiny remains."""
    if not occluded:
        return
    from scipy import ndimage

    for i, (y0, x0, y1, x1) in occluded.items():
        local = inst[y0:y1, x0:x1]
        mask = local == i
        lab, n = ndimage.label(mask)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())[1:]
        keep = int(np.argmax(sizes)) + 1
        drop = mask & (lab != keep) if sizes.max() >= _MIN_FRAGMENT else mask
        local[drop] = 0
