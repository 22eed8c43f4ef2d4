"""Visualisation: class-coloured overlays, type maps, PNG grids and class histograms.

Pillow and matplotlib (Agg backend) are imported inside the functions; every file is written
atomically.
"""

from __future__ import annotations

import io
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import check_array, check_in_range
from .._io import atomic_write_bytes

__all__ = ["class_legend", "colorize_types", "instance_contours", "label_overlay", "save_class_histogram",
           "save_image_grid"]


def _check_palette(palette: np.ndarray, type_map: np.ndarray) -> np.ndarray:
    palette = np.asarray(palette)
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"`palette` must be [K, 3] RGB, got shape {palette.shape}")
    if type_map.size and int(type_map.max()) >= palette.shape[0]:
        raise ValueError(f"`type_map` holds class {int(type_map.max())} but `palette` has only {palette.shape[0]} "
                         "colours; pass DatasetInfo.palette() of the right dataset")
    return palette.astype(np.uint8)


def instance_contours(inst_map: np.ndarray) -> np.ndarray:
    """``bool [H, W]``: nucleus pixels with a 4-neighbour of another id (or background, or the border)."""
    check_array("inst_map", inst_map, ndim=2, dtype_kind="iu")
    pad = np.pad(inst_map, 1, mode="constant")
    c = pad[1:-1, 1:-1]
    edge = (pad[:-2, 1:-1] != c) | (pad[2:, 1:-1] != c) | (pad[1:-1, :-2] != c) | (pad[1:-1, 2:] != c)
    return edge & (c > 0)


def colorize_types(type_map: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``uint8 [H, W, 3]``: each pixel coloured by its class (``palette[type_map]``)."""
    check_array("type_map", type_map, ndim=2, dtype_kind="iu")
    if type_map.size and type_map.min() < 0:
        raise ValueError(f"`type_map` must be >= 0, got minimum {type_map.min()}")
    return _check_palette(palette, type_map)[type_map]


def label_overlay(
    image: np.ndarray,
    inst_map: np.ndarray,
    type_map: np.ndarray,
    palette: np.ndarray,
    alpha: float = 0.5,
    contours: bool = True,
) -> np.ndarray:
    """Blend class colours over the nuclei of ``image``, with class-coloured instance contours.

    Args:
        image: ``uint8 [H, W, 3]``.
        inst_map: ``int [H, W]``, 0 = background.
        type_map: ``int [H, W]`` classes indexing ``palette``.
        palette: ``uint8 [K, 3]`` (e.g. ``DatasetInfo.palette()``).
        alpha: Fill opacity inside nuclei (0 = contours only).
        contours: Draw each instance's boundary in its class colour (touching nuclei stay apart).

    Returns:
        ``uint8 [H, W, 3]``; background pixels are unchanged.
    """
    check_array("image", image, ndim=3, dtype_kind="u", channels=3)
    check_array("inst_map", inst_map, ndim=2, dtype_kind="iu")
    check_array("type_map", type_map, ndim=2, dtype_kind="iu")
    if inst_map.shape != image.shape[:2] or type_map.shape != image.shape[:2]:
        raise ValueError(f"`image`, `inst_map` and `type_map` must share H x W, got {image.shape[:2]}, "
                         f"{inst_map.shape}, {type_map.shape}")
    alpha = check_in_range("alpha", alpha, 0.0, 1.0)
    colors = _check_palette(palette, type_map)[type_map].astype(np.float32)
    out = image.astype(np.float32)
    fg = inst_map > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colors[fg]
    if contours:
        edge = instance_contours(inst_map)
        out[edge] = colors[edge]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def save_image_grid(
    path: str | os.PathLike[str],
    rows: Sequence[Sequence[np.ndarray]],
    row_titles: Sequence[str] | None = None,
    col_titles: Sequence[str] | None = None,
    scale: int = 1,
    legend: Sequence[tuple[str, Sequence[int]]] | None = None,
    title: str | None = None,
) -> Path:
    """Write a grid of ``uint8 [H, W, 3]`` tiles as one PNG (Pillow), atomically.

    Tiles may differ in size: each cell is as large as the largest tile; smaller ones are
    centred on white. Titles are drawn with Pillow's default font in margins sized to the text
    (a title may hold several lines, split by ``"\\n"``); the canvas widens when the title is
    wider than the grid, so no text is cut.

    Args:
        path: Output ``.png``.
        rows: ``rows[r][c]`` tiles; rows may have different lengths.
        row_titles: One label per row (left margin), or None.
        col_titles: One label per column (top margin), or None.
        scale: Integer nearest-neighbour magnification of every tile.
        legend: ``[(class name, (r, g, b)), ...]`` drawn as colour swatches under the grid (use
            :func:`class_legend` for a dataset's classes), or None.
        title: A title above the grid, or None.

    Returns:
        The written path.
    """
    from PIL import Image, ImageDraw

    if not rows or not any(len(r) for r in rows):
        raise ValueError("`rows` must hold at least one image")
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"`scale` must be a positive int, got {scale!r}")
    n_cols = max(len(r) for r in rows)
    if row_titles is not None and len(row_titles) != len(rows):
        raise ValueError(f"`row_titles` must have one entry per row ({len(rows)}), got {len(row_titles)}")
    if col_titles is not None and len(col_titles) != n_cols:
        raise ValueError(f"`col_titles` must have one entry per column ({n_cols}), got {len(col_titles)}")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            check_array(f"rows[{r}][{c}]", tile, ndim=3, dtype_kind="u", channels=3)
    cell_h = max(t.shape[0] for row in rows for t in row) * scale
    cell_w = max(t.shape[1] for row in rows for t in row) * scale
    gap = 2
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(text: str) -> tuple[int, int]:
        x0, y0, x1, y1 = measure.multiline_textbbox((0, 0), str(text))
        return x1 - min(x0, 0), y1 - min(y0, 0)

    left = 8 + max(size(t)[0] for t in row_titles) if row_titles else 0
    title_h = size(title)[1] + 8 if title else 0
    col_h = max(size(t)[1] for t in col_titles) + 6 if col_titles else 0
    top = title_h + col_h
    width = max(left + n_cols * (cell_w + gap) + gap, size(title)[0] + 8 if title else 0)
    grid_h = top + len(rows) * (cell_h + gap) + gap
    legend = list(legend or [])
    height = grid_h + (18 if legend else 0)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 4
    for name, rgb in legend:
        draw.rectangle([x, grid_h + 4, x + 10, grid_h + 14], fill=tuple(int(v) for v in rgb), outline=(0, 0, 0))
        draw.text((x + 14, grid_h + 3), str(name), fill=(0, 0, 0))
        x += 14 + 7 * len(str(name)) + 12
    for r, row in enumerate(rows):
        y = top + gap + r * (cell_h + gap)
        if row_titles:
            draw.text((4, y + cell_h // 2 - 5), str(row_titles[r]), fill=(0, 0, 0))
        for c, tile in enumerate(row):
            x = left + gap + c * (cell_w + gap)
            img = Image.fromarray(np.ascontiguousarray(tile))
            if scale > 1:
                img = img.resize((tile.shape[1] * scale, tile.shape[0] * scale), Image.NEAREST)
            canvas.paste(img, (x + (cell_w - img.width) // 2, y + (cell_h - img.height) // 2))
    if title:
        draw.multiline_text((4, 4), str(title), fill=(0, 0, 0))
    if col_titles:
        for c, col_title in enumerate(col_titles):
            draw.multiline_text((left + gap + c * (cell_w + gap) + 2, title_h + 2), str(col_title), fill=(0, 0, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def class_legend(info: Any) -> list[tuple[str, tuple[int, int, int]]]:
    """``[(name, rgb), ...]`` of a :class:`~diffmix_aug.data.classes.DatasetInfo`'s foreground classes
    (the colours :func:`label_overlay` paints), for ``save_image_grid(..., legend=...)``."""
    return [(str(n), tuple(int(v) for v in c)) for n, c in zip(info.class_names[1:], info.colors[1:])]


def save_class_histogram(
    path: str | os.PathLike[str],
    counts: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    title: str = "",
) -> Path:
    """Grouped bar chart of per-class counts (e.g. ``{"before": ..., "after balancing": ...}``).

    Args:
        path: Output image (format from the suffix, e.g. ``.png``).
        counts: Series label -> per-class counts ``[len(class_names)]``.
        class_names: Names of the bars' classes (pass ``info.class_names[1:]`` with
            ``counts[1:]`` to leave the background out).
        title: Figure title.

    Returns:
        The written path.
    """
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, leaves the user's backend alone

    if not counts:
        raise ValueError("`counts` must hold at least one series")
    k = len(class_names)
    series = {}
    for label, values in counts.items():
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if arr.shape != (k,):
            raise ValueError(f"`counts[{label!r}]` must hold {k} values (one per class name), got {arr.shape}")
        series[str(label)] = arr
    fig = Figure(figsize=(max(4.0, 1.2 * k + 2), 3.2), dpi=100)
    ax = fig.subplots()
    width = 0.8 / len(series)
    x = np.arange(k)
    for j, (label, arr) in enumerate(series.items()):
        bars = ax.bar(x - 0.4 + width * (j + 0.5), arr, width, label=label)
        ax.bar_label(bars, labels=[f"{v:g}" for v in arr], fontsize=7)
    ax.set_xticks(x, [str(n) for n in class_names], fontsize=8)
    ax.set_ylabel("nuclei")
    if title:  # wrapped to the figure's width: a long title is never cut at the edges
        fontsize = 10
        chars = max(20, int(fig.get_figwidth() * 72 / (0.6 * fontsize)))
        ax.set_title("\n".join(textwrap.wrap(title, chars)), fontsize=fontsize)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png")
    atomic_write_bytes(path, buf.getvalue())
    return path
