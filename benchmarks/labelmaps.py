"""Label-map throughput: enlarge, balance and encode vs the reference code's per-nucleus approach.

Run::

    python -m benchmarks.labelmaps                  # table + benchmarks/results/labelmaps.json
    python -m benchmarks.labelmaps --figure         # also benchmarks/results/labelmaps.png
    python -m benchmarks.labelmaps --real           # real 256 px patches vs the previous implementation

Everything runs on one core (``torch.set_num_threads(1)``) on 256x256 toy maps (100-250 nuclei).
The baselines below are plain, readable re-implementations of the reference code (one full-image
mask per nucleus, ``scipy.ndimage.binary_dilation`` on the whole image, as in DiffMix's
``image_datasets_pathology_paper`` and ``GradMix/grad_mix.py``); they are also the oracles the unit
tests compare the fast paths against, given the same drawn parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffmix_aug.data.remap import remap_label
from diffmix_aug.labelmaps.balance import BalanceParams, apply_balance, balance_label_map, draw_balance_params
from diffmix_aug.labelmaps.donors import DonorBank
from diffmix_aug.labelmaps.encode import encode_condition
from diffmix_aug.labelmaps.enlarge import EnlargeParams, apply_enlarge, draw_enlarge_params
from diffmix_aug.labelmaps.settings import BalanceSettings, EnlargeSettings

RESULTS = Path(__file__).parent / "results"

# --------------------------------------------------------------------------------------------
# Plain reference implementations (per-nucleus full-image masks)
# --------------------------------------------------------------------------------------------


def reference_encode(type_map: np.ndarray, inst_map: np.ndarray, num_classes: int) -> np.ndarray:
    """One full-image mask per class and per instance id (background included)."""
    h, w = type_map.shape
    out = np.zeros((num_classes + 1, h, w), np.float32)
    for c in range(num_classes):
        out[c] = type_map == c
    edge = np.zeros((h, w), bool)
    for i in np.unique(inst_map):
        m = inst_map == i
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            nb = np.zeros((h, w), bool)  # nb[y, x] = m[y + dy, x + dx], False outside the image
            nb[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)] = \
                m[max(dy, 0):h - max(-dy, 0), max(dx, 0):w - max(-dx, 0)]
            inside = np.zeros((h, w), bool)
            inside[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)] = True
            edge |= m & inside & ~nb
    out[num_classes] = edge
    return out


def reference_enlarge(inst_map: np.ndarray, type_map: np.ndarray, params: EnlargeParams) -> np.ndarray:
    """DiffMix's enlarging loop: fixed nuclei first, then each nucleus' full mask shifted, in id order.

    Returns ``(inst_map, type_map)`` with ids remapped by ``remap_label``.
    """
    h, w = inst_map.shape
    out_i = np.zeros((h, w), np.int64)
    out_t = np.zeros((h, w), np.int64)
    avoid = params.overlap == "avoid"
    order = [k for k in range(params.ids.size) if params.fixed[k]] + \
            [k for k in range(params.ids.size) if not params.fixed[k]]
    for k in order:
        if params.dropped[k]:
            continue
        ys, xs = np.nonzero(inst_map == params.ids[k])
        t = type_map[ys[0], xs[0]]
        ys, xs = ys + params.shifts[k, 0], xs + params.shifts[k, 1]
        ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        ys, xs = ys[ok], xs[ok]
        if avoid:
            free = out_i[ys, xs] == 0
            ys, xs = ys[free], xs[free]
        out_i[ys, xs] = params.ids[k]
        out_t[ys, xs] = t
    return remap_label(out_i).astype(np.int32), out_t.astype(np.int32)


def reference_balance(inst_map: np.ndarray, type_map: np.ndarray, donors: DonorBank | None,
                      params: BalanceParams, size_ratio: float = BalanceSettings.size_ratio
                      ) -> tuple[np.ndarray, np.ndarray, list]:
    """``GradMix/grad_mix.py`` label mixing with full-image masks, from the drawn selection and pool.

    Only ``params.selected`` (the random draw) and ``params.pool`` (the random pool order) are
    used; the area sort, the greedy donor walk and the pastes are recomputed here.

    Returns:
        ``(inst_map, type_map, [(major_id, donor_ref), ...])``.
    """
    from scipy.ndimage import binary_dilation, center_of_mass

    h, w = inst_map.shape
    out = inst_map.astype(np.int64).copy()
    ids = [int(i) for i in np.unique(inst_map) if i]
    cls = {i: int(type_map[inst_map == i][0]) for i in ids}
    majors = sorted(params.selected.tolist(), key=lambda m: int((inst_map == m).sum()))
    pool = params.pool.tolist()
    used = []
    for m in majors:
        mask0 = inst_map == m
        mask = binary_dilation(mask0, iterations=2)
        size1 = int(mask.sum())
        cy, cx = center_of_mass(mask0)
        pick = None
        for ref in pool:
            if ref >= 0:
                d_mask = donors.masks[ref]
                d_type = int(donors.types[ref])
            else:
                full = inst_map == -ref
                rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
                d_mask = full[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
                d_type = cls[-ref]
            if size1 >= size_ratio * int(d_mask.sum()):
                pick = (ref, d_mask, d_type)
                break
        if pick is None:
            continue
        pool.remove(pick[0])
        used.append((m, pick[0]))
        out[mask0] = 0
        h2, w2 = pick[1].shape
        r0, c0 = int(np.floor(np.round(cy) - h2 / 2)), int(np.floor(np.round(cx) - w2 / 2))
        big = np.zeros((h + 2 * max(h2, w2), w + 2 * max(h2, w2)), bool)  # room for pastes over the edge
        p = max(h2, w2)
        big[r0 + p:r0 + p + h2, c0 + p:c0 + p + w2] = pick[1]
        out[big[p:p + h, p:p + w]] = m
        cls[m] = pick[2]
    out_t = np.zeros((h, w), np.int64)
    for i in np.unique(out):
        if i:
            out_t[out == i] = cls[int(i)]
    return remap_label(out).astype(np.int32), out_t.astype(np.int32), used


def reference_gradmix_image(image: np.ndarray, inst_map: np.ndarray, params: BalanceParams, donors: DonorBank,
                             source_images: list[np.ndarray], metric: str = "chessboard") -> np.ndarray:
    """``GradMix/grad_mix.py``'s image mixing on full images (no inpainting), for given parameters.

    ``source_images[s]`` is the full image of bank source ``s`` (the bank keeps only crops).
    """
    from scipy.ndimage import binary_dilation, center_of_mass, distance_transform_cdt
    from skimage.filters import median
    from skimage.morphology import disk

    h, w = inst_map.shape
    nuc = image * (inst_map[..., None] > 0)
    avg = [np.sum(nuc[..., c]) / max(np.sum(nuc[..., c] > 0), 1) for c in range(3)]
    final = image.copy()
    big = 64
    for m, ref in zip(params.assign_major.tolist(), params.assign_donor.tolist()):
        mask0 = inst_map == m
        mask = binary_dilation(mask0, iterations=2).astype(np.uint8)
        cy1, cx1 = center_of_mass(mask0)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        b1 = (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)
        h1, w1 = b1[1] - b1[0], b1[3] - b1[2]
        if ref >= 0:
            src = source_images[int(donors.sources[ref])]
            y0, x0, y1, x1 = donors.bboxes[ref]
            mask2 = np.zeros(src.shape[:2], bool)
            mask2[y0:y1, x0:x1] = donors.masks[ref]
        else:
            src, mask2 = image, inst_map == -ref
        cy2, cx2 = center_of_mass(mask2)
        img2 = src.copy()
        for c in range(3):
            img2[..., c][mask2] = (src[..., c][mask2] + avg[c]) / 2
        img2 = np.pad(img2, ((big, big), (big, big), (0, 0)), mode="edge")
        img_copy = image.copy()
        ty0, tx0 = int(np.floor(np.round(cy2) - h1 / 2)) + big, int(np.floor(np.round(cx2) - w1 / 2)) + big
        img_copy[b1[0]:b1[1], b1[2]:b1[3]] = img2[ty0:ty0 + h1, tx0:tx0 + w1]
        rows2, cols2 = np.flatnonzero(mask2.any(1)), np.flatnonzero(mask2.any(0))
        crop2 = mask2[rows2[0]:rows2[-1] + 1, cols2[0]:cols2[-1] + 1]
        h2, w2 = crop2.shape
        r0, c0 = int(np.floor(np.round(cy1) - h2 / 2)), int(np.floor(np.round(cx1) - w2 / 2))
        canvas = np.zeros((h + 2 * big, w + 2 * big), np.uint8)
        canvas[r0 + big:r0 + big + h2, c0 + big:c0 + big + w2] = crop2
        translated = canvas[big:big + h, big:big + w]
        mask = ((mask + translated) > 0).astype(np.uint8)
        ring = mask - translated
        cdt = distance_transform_cdt(1 - translated, metric=metric).astype("float32")
        cdt[mask == 0] = 0
        if ring.any():
            cdt[ring > 0] -= 1
            top = np.amax(cdt[ring > 0])
            cdt[ring > 0] = 1 - cdt[ring > 0] / top if top > 0 else 1.0
        cdt[translated > 0] = 1
        final = final * (1 - mask[..., None]) + img_copy * translated[..., None] + \
            (img_copy * (cdt * ring)[..., None]).astype(np.uint8) + \
            (final * ((1 - cdt) * ring)[..., None]).astype(np.uint8)
        final = (img_copy * cdt[..., None]).astype(np.uint8) + (final * (1 - cdt)[..., None]).astype(np.uint8)
        smooth = np.stack([median(final[..., 0], disk(1)), median(final[..., 1], disk(1)),
                           median(final[..., 2], disk(5))], axis=2)
        final = (final * (1 - ring[..., None])).astype(np.uint8) + \
            (smooth.astype(np.float32) * ring[..., None]).astype(np.uint8)
    return final


def random_label_map(rng: np.random.Generator, size: int = 64, n_nuclei: int = 12, num_classes: int = 5,
                     rare_share: float = 0.2, radius: tuple[int, int] = (2, 7)) -> tuple[np.ndarray, np.ndarray]:
    """Random ellipse nuclei (later ones overwrite earlier ones), ids remapped 1..n, one type each.

    Class 1 is drawn with probability ``rare_share``, the others uniformly. Returns ``(inst, type)``.
    """
    inst = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    types = np.zeros(n_nuclei + 1, np.int32)
    for i in range(1, n_nuclei + 1):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(*radius, 2)
        inst[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = i
        types[i] = 1 if rng.random() < rare_share else int(rng.integers(2, max(num_classes, 3)))
    typ = types[inst]
    inst = remap_label(inst)
    return inst, typ * (inst > 0)


# --------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------


def _time_per_map(fn, items, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds per map, one value per (repeat, map): (thread CPU time, wall time)."""
    cpu, wall = [], []
    for _ in range(repeats):
        for it in items:
            c0, t0 = time.thread_time(), time.perf_counter()
            fn(*it)
            cpu.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - t0)
    return cpu, wall


def _stats(times: tuple[list[float], list[float]]) -> dict[str, float]:
    """CPU time is the headline (the machine may be shared); wall time is kept alongside."""
    cpu, wall = times
    q = np.percentile(cpu, [25, 75])
    med = statistics.median(cpu)
    return {"median_ms": med * 1e3, "p25_ms": float(q[0]) * 1e3, "p75_ms": float(q[1]) * 1e3,
            "maps_per_s": 1.0 / med, "wall_median_ms": statistics.median(wall) * 1e3, "n": len(cpu)}


def run(n_maps: int, repeats: int, size: int, seed: int) -> dict[str, Any]:
    from tqdm import tqdm

    from diffmix_aug.data.toy import make_toy_dataset

    torch.set_num_threads(1)
    ds = make_toy_dataset(n_maps, size, seed)
    samples = [ds[i] for i in range(n_maps)]
    bank = DonorBank.from_dataset(ds)
    rng = np.random.default_rng(seed)
    e_params = [draw_enlarge_params(rng, s.inst_map) for s in samples]
    b_params = [draw_balance_params(rng, s.inst_map, s.type_map, bank, rare_classes=(1,), exclude_source=i)
                for i, s in enumerate(samples)]
    # The toy's rare class 1 nuclei are large, so few fit the 2.3 size ratio; "balance_many" makes
    # the small inflammatory class 2 the rare one, so that about 30 majors per map are pasted over.
    bank2 = DonorBank.from_dataset(ds, rare_classes=(2,))
    b2_params = [draw_balance_params(rng, s.inst_map, s.type_map, bank2, rare_classes=(2,), exclude_source=i)
                 for i, s in enumerate(samples)]
    nc = ds.info.num_classes
    cases = {
        "enlarge": (lambda i, t: apply_enlarge(i, t, draw_enlarge_params(rng, i)),
                    lambda i, t, p: reference_enlarge(i, t, p),
                    [(s.inst_map, s.type_map) for s in samples],
                    [(s.inst_map, s.type_map, p) for s, p in zip(samples, e_params)]),
        "balance": (lambda i, t, k: balance_label_map(i, t, bank, rng, (1,), exclude_source=k),
                    lambda i, t, p: reference_balance(i, t, bank, p),
                    [(s.inst_map, s.type_map, k) for k, s in enumerate(samples)],
                    [(s.inst_map, s.type_map, p) for s, p in zip(samples, b_params)]),
        "balance_many": (lambda i, t, k: balance_label_map(i, t, bank2, rng, rare_classes=(2,), exclude_source=k),
                         lambda i, t, p: reference_balance(i, t, bank2, p),
                         [(s.inst_map, s.type_map, k) for k, s in enumerate(samples)],
                         [(s.inst_map, s.type_map, p) for s, p in zip(samples, b2_params)]),
        "encode": (lambda i, t: encode_condition(t, i, nc), lambda i, t: reference_encode(t, i, nc),
                   [(s.inst_map, s.type_map) for s in samples], [(s.inst_map, s.type_map) for s in samples]),
    }
    results: dict[str, Any] = {}
    for name, (fast, ref, fast_items, ref_items) in tqdm(cases.items(), desc="labelmaps", unit="case"):
        fast(*fast_items[0])  # warm-up
        f = _stats(_time_per_map(fast, fast_items, repeats))
        r = _stats(_time_per_map(ref, ref_items, max(1, repeats // 2)))
        results[name] = {"fast": f, "baseline": r, "speedup": r["median_ms"] / f["median_ms"]}
    nuclei = [len(s.info) for s in samples]
    enl, bal = EnlargeSettings(), BalanceSettings()  # the defaults every case above runs with
    return {
        "benchmark": "labelmaps",
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
                    "load_average_1min": os.getloadavg()[0]},
        "timing": "per map, thread CPU time (time.thread_time) median and quartiles; wall median alongside",
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "config": {"maps": n_maps, "repeats": repeats, "size": size, "seed": seed, "threads": 1,
                   "dataset": "toy", "nuclei_per_map_mean": float(np.mean(nuclei)),
                   "nuclei_per_map_range": [int(min(nuclei)), int(max(nuclei))], "donors": len(bank),
                   "converted_per_map_mean": {"balance": float(np.mean([p.assign_major.size for p in b_params])),
                                              "balance_many": float(np.mean([p.assign_major.size
                                                                             for p in b2_params]))},
                   "donors_balance_many": len(bank2),
                   "enlarge": f"max_shift={enl.max_shift} p_shift={enl.p_shift} border_margin={enl.border_margin} "
                              f"{enl.overlap} (params drawn in the timed call)",
                   "balance": f"major_fraction={bal.major_fraction} size_ratio={bal.size_ratio} border={bal.border} "
                              "(params drawn in the timed call; baseline recomputes sort, greedy walk and pastes "
                              "from the same draws)"},
        "goals_ms": {"enlarge": 2.0, "encode": 2.0, "balance": 5.0, "balance_many": 5.0, "speedup": 10.0},
        "results": results,
    }


def _table(res: dict[str, Any]) -> str:
    lines = [f"{'case':<12} {'fast ms/map':>12} {'(p25-p75)':>15} {'maps/s':>9} {'wall ms':>8} {'baseline ms':>12} "
             f"{'speedup':>8} goal"]
    for name, r in res["results"].items():
        f, b = r["fast"], r["baseline"]
        goal = res["goals_ms"][name]
        ok = f["median_ms"] < goal and r["speedup"] >= res["goals_ms"]["speedup"]
        lines.append(f"{name:<12} {f['median_ms']:>12.3f} {f['p25_ms']:>7.3f}-{f['p75_ms']:<7.3f} {f['maps_per_s']:>9.0f} "
                     f"{f['wall_median_ms']:>8.3f} {b['median_ms']:>12.2f} {r['speedup']:>7.1f}x {'ok' if ok else 'MISSED'} "
                     f"(<{goal} ms, >=10x)")
    lines.append(f"(CPU time per map, one thread; load average {res['machine']['load_average_1min']:.1f} "
                 f"on {res['machine']['cpu_count']} cores)")
    return "\n".join(lines)


def figure(path: Path, size: int = 256, seed: int = 0) -> Path:
    """Image / original / enlarged / balanced / both maps of three toy patches (toy class colours,
    white instance contours). Balancing uses the toy's rare class 1 (large nuclei: few fit the 2.3
    size ratio); the last column makes the small inflammatory class 2 the rare one. The patches
    shown are the three of the first 12 with the most class-1 conversions."""
    from diffmix_aug.data.classes import get_dataset_info
    from diffmix_aug.data.toy import make_toy_dataset
    from diffmix_aug.data.viz import (
        class_legend,
        colorize_types,
        instance_contours,
        label_overlay,
        save_image_grid,
    )
    from diffmix_aug.labelmaps.sampler import LabelMapSampler

    ds = make_toy_dataset(12, size, seed)
    bank = DonorBank.from_dataset(ds)
    bank2 = DonorBank.from_dataset(ds, rare_classes=(2,))
    palette = get_dataset_info("toy").palette()

    def tile(inst, typ):
        out = colorize_types(typ, palette)
        out[instance_contours(inst)] = 255
        return out

    def sampler(mode):
        return LabelMapSampler(mode, donors=bank, num_classes=ds.num_classes, rare_classes=ds.info.rare_classes)

    def converted(k):
        return sampler("balance")(ds[k], np.random.default_rng([seed, k])).report["balance"]["converted_total"]

    picks = sorted(range(len(ds)), key=converted, reverse=True)[:3]
    rows, titles = [], []
    for k in picks:
        s = ds[k]
        row = [label_overlay(s.image, s.inst_map, s.type_map, palette, alpha=0.5, contours=True),
               tile(s.inst_map, s.type_map)]
        n = 0
        for mode in ("enlarge", "balance", "composed"):
            out = sampler(mode)(s, np.random.default_rng([seed, k]))
            row.append(tile(out.inst_map, out.type_map))
            n = out.report.get("balance", {}).get("converted_total", n)
        out = LabelMapSampler("balance", donors=bank2, num_classes=ds.num_classes, rare_classes=(2,))(
            s, np.random.default_rng([seed, k]))
        row.append(tile(out.inst_map, out.type_map))
        rows.append(row)
        titles.append(f"toy {k}: {n} converted")
    return save_image_grid(path, rows, row_titles=titles,
                           col_titles=["image", "original", "enlarged", "balanced", "composed", "balanced, rare=2"],
                           legend=class_legend(ds.info))


# --------------------------------------------------------------------------------------------
# Real patches: the linear-time grouping against the previous (comparison-sort, group-twice) path
# --------------------------------------------------------------------------------------------

HE_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "he_patches"
CONSEP_256 = Path(__file__).resolve().parents[2] / "shared" / "data" / "consep_256" / "train"


def real_samples(max_consep: int = 48, seed: int = 0) -> dict[str, list]:
    """``{"he_patches": [3 samples], "consep_256": [up to max_consep samples]}`` (256 px, real labels)."""
    from diffmix_aug.data.classes import get_dataset_info
    from diffmix_aug.data.dataset import NucleiDataset
    from diffmix_aug.data.readers import read_consep_tile

    info = get_dataset_info("consep")
    out = {"he_patches": [read_consep_tile(HE_DIR / f"patch{k}.png", HE_DIR / f"patch{k}.mat", info=info,
                                           merge=False) for k in (1, 2, 3)]}
    if CONSEP_256.is_dir():
        ds = NucleiDataset.from_consep_dir(CONSEP_256, merge=False)
        idx = np.random.default_rng(seed).permutation(len(ds))[:max_consep]
        out["consep_256"] = [ds[int(i)] for i in idx]
    return out


def _oracles_importable() -> None:
    """The plain oracles live with the tests (``tests/unit``), never in the library."""
    where = str(Path(__file__).resolve().parents[1] / "tests" / "unit")
    if where not in sys.path:
        sys.path.insert(0, where)


def _previous_enlarge(inst, types, rng):
    """What ``enlarge_label_map`` did before: an argsort grouping in the draw, and again in the paint."""
    _oracles_importable()
    from grouping_reference import group_pixels_reference

    params = draw_enlarge_params(rng, inst, info=group_pixels_reference(inst))
    return apply_enlarge(inst, types, params, group_pixels_reference(inst, types))[:2]


def _previous_balance(inst, types, bank, rng, exclude_source):
    """What ``balance_label_map`` did before: a pixel-sort ``instance_info``, and one ``cv2.dilate``
    per major inside the greedy donor loop (``draw_balance_params_reference``)."""
    _oracles_importable()
    from balance_reference import draw_balance_params_reference
    from grouping_reference import instance_info_reference

    info = instance_info_reference(inst, types)
    params = draw_balance_params_reference(rng, inst, types, bank, rare_classes=(1,), exclude_source=exclude_source,
                                           info=info)
    return apply_balance(inst, types, params, bank, info)


def run_real(repeats: int, seed: int) -> dict[str, Any]:
    from diffmix_aug.data.sample import NucleiSample
    from diffmix_aug.labelmaps.enlarge import enlarge_label_map

    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    for name, samples in real_samples(seed=seed).items():
        samples = [NucleiSample.trusted(s.image, s.inst_map, s.type_map) for s in samples]
        bank = DonorBank.from_dataset(samples, (1,), border=BalanceSettings.border)
        # same maps as the previous implementation (same draws), checked before timing
        same = all(
            all(np.array_equal(a, b) for a, b in zip(
                enlarge_label_map(s.inst_map, s.type_map, np.random.default_rng([seed, k])),
                _previous_enlarge(s.inst_map, s.type_map, np.random.default_rng([seed, k]))))
            for k, s in enumerate(samples))
        same_balance = all(
            all(np.array_equal(a, b) for a, b in zip(
                balance_label_map(s.inst_map, s.type_map, bank, np.random.default_rng([seed, k]), (1,),
                                  exclude_source=k)[:2],
                _previous_balance(s.inst_map, s.type_map, bank, np.random.default_rng([seed, k]), k)[:2]))
            for k, s in enumerate(samples))
        rng = np.random.default_rng(seed)
        items = [(s.inst_map, s.type_map, k) for k, s in enumerate(samples)]
        cases = {
            "enlarge": (lambda i, t, k, rng=rng: enlarge_label_map(i, t, rng),
                        lambda i, t, k, rng=rng: _previous_enlarge(i, t, rng)),
            "balance": (lambda i, t, k, rng=rng, bank=bank: balance_label_map(i, t, bank, rng, (1,), exclude_source=k),
                        lambda i, t, k, rng=rng, bank=bank: _previous_balance(i, t, bank, rng, k)),
        }
        out = {"maps": len(samples), "nuclei_per_map_mean": float(np.mean([len(s.info) for s in samples])),
               "nuclei_per_map_range": [int(min(len(s.info) for s in samples)),
                                        int(max(len(s.info) for s in samples))],
               "donors": len(bank), "identical_to_previous_enlarge": bool(same),
               "identical_to_previous_balance": bool(same_balance)}
        for case, (fast, prev) in cases.items():
            fast(*items[0])
            out[case] = _stats(_time_per_map(fast, items, repeats))
            if prev is not None:
                out[case + "_previous"] = _stats(_time_per_map(prev, items, repeats))
                out[case + "_speedup"] = out[case + "_previous"]["median_ms"] / out[case]["median_ms"]
        results[name] = out
    enl, bal = EnlargeSettings(), BalanceSettings()  # the defaults every case above runs with
    return {"benchmark": "labelmaps_real", "goal_ms": 1.0,
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "load_average_1min": os.getloadavg()[0]},
            "versions": {"torch": torch.__version__, "numpy": np.__version__},
            "config": {"repeats": repeats, "seed": seed, "threads": 1, "size": 256,
                       "enlarge": f"reference defaults (max_shift {enl.max_shift}, p {enl.p_shift}, margin "
                                  f"{enl.border_margin}, {enl.overlap}); draw + paint, one pixel grouping",
                       "balance": f"reference defaults, rare class 1, border {bal.border}; draw + paste, one "
                                  "group_runs for instance_info and the dilated areas"},
            "results": results}


def _real_table(res: dict[str, Any]) -> str:
    lines = [f"{'data':<12} {'maps':>5} {'nuclei':>8} {'enlarge ms':>11} {'previous':>9} {'speedup':>8} "
             f"{'balance ms':>11} {'previous':>9} {'speedup':>8} goal <{res['goal_ms']} ms"]
    for name, r in res["results"].items():
        e, b = r["enlarge"]["median_ms"], r["balance"]["median_ms"]
        ok = "ok" if max(e, b) < res["goal_ms"] else "MISSED"
        lines.append(f"{name:<12} {r['maps']:>5} {r['nuclei_per_map_mean']:>8.1f} {e:>11.3f} "
                     f"{r['enlarge_previous']['median_ms']:>9.3f} {r['enlarge_speedup']:>7.2f}x {b:>11.3f} "
                     f"{r['balance_previous']['median_ms']:>9.3f} {r['balance_speedup']:>7.2f}x {ok}"
                     f"{'' if r['identical_to_previous_enlarge'] and r['identical_to_previous_balance'] else '  (MAPS DIFFER)'}")
    lines.append(f"(CPU time per map, one thread; load average {res['machine']['load_average_1min']:.1f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maps", type=int, default=16, help="toy maps timed (each once per repeat)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "labelmaps.json")
    ap.add_argument("--real", action="store_true",
                    help="time the real 256 px patches (tests/data/he_patches, and consep_256 when present) "
                         "against the previous implementation; writes labelmaps_real.json")
    ap.add_argument("--figure", nargs="?", const=RESULTS / "labelmaps.png", type=Path, default=None,
                    help="also write a PNG of original / enlarged / balanced maps (default path: %(const)s)")
    args = ap.parse_args(argv)
    from diffmix_aug._io import atomic_write_text

    if args.real:
        res = run_real(args.repeats, args.seed)
        print(_real_table(res))
        path = args.out.with_name("labelmaps_real.json")
        atomic_write_text(path, json.dumps(res, indent=2) + "\n")
        print(f"wrote {path}")
        return 0
    res = run(args.maps, args.repeats, args.size, args.seed)
    print(_table(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    if args.figure is not None:
        print(f"wrote {figure(args.figure, args.size, args.seed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
