"""Overlays, type colouring, PNG grids, class histograms and the demo's data part."""

from __future__ import annotations

import numpy as np
import pytest

from diffmix_aug.data import get_dataset_info
from diffmix_aug.data.viz import (
    colorize_types,
    instance_contours,
    label_overlay,
    save_class_histogram,
    save_image_grid,
)

PALETTE = get_dataset_info("toy").palette()


def _maps():
    inst = np.zeros((10, 12), np.int32)
    inst[2:6, 2:6] = 1
    inst[2:6, 6:9] = 2  # touches instance 1
    typ = np.where(inst == 1, 2, np.where(inst == 2, 4, 0)).astype(np.int32)
    return inst, typ


def test_instance_contours_reference():
    inst, _ = _maps()
    edge = instance_contours(inst)
    ref = np.zeros_like(edge)
    h, w = inst.shape
    for y in range(h):
        for x in range(w):
            if inst[y, x] == 0:
                continue
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                yy, xx = y + dy, x + dx
                if not (0 <= yy < h and 0 <= xx < w) or inst[yy, xx] != inst[y, x]:
                    ref[y, x] = True
    np.testing.assert_array_equal(edge, ref)
    assert edge[3, 5] and edge[3, 6]  # the shared boundary of touching nuclei is drawn on both


def test_label_overlay():
    inst, typ = _maps()
    image = np.full((10, 12, 3), 100, np.uint8)
    out = label_overlay(image, inst, typ, PALETTE, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out[inst == 0], image[inst == 0])
    np.testing.assert_array_equal(out[2, 2], PALETTE[2])  # contour pixel: pure class colour
    np.testing.assert_array_equal(out[3, 3], np.round(0.5 * 100 + 0.5 * PALETTE[2].astype(float)))
    plain = label_overlay(image, inst, typ, PALETTE, alpha=0.0, contours=False)
    np.testing.assert_array_equal(plain, image)
    with pytest.raises(ValueError, match="palette"):
        label_overlay(image, inst, typ + 5 * (typ > 0), PALETTE)
    with pytest.raises(ValueError, match="H x W"):
        label_overlay(image[:-1], inst, typ, PALETTE)
    with pytest.raises(ValueError, match="alpha"):
        label_overlay(image, inst, typ, PALETTE, alpha=2)


def test_colorize_types():
    _, typ = _maps()
    col = colorize_types(typ, PALETTE)
    assert col.dtype == np.uint8
    np.testing.assert_array_equal(col[3, 7], PALETTE[4])
    np.testing.assert_array_equal(col[0, 0], PALETTE[0])
    with pytest.raises(ValueError, match="palette"):
        colorize_types(typ, PALETTE[:2])


def test_save_image_grid(tmp_path):
    from PIL import Image

    a = np.zeros((8, 8, 3), np.uint8)
    b = np.full((6, 10, 3), 255, np.uint8)
    path = save_image_grid(tmp_path / "g" / "grid.png", [[a, b], [b]], row_titles=["x", "y"],
                           col_titles=["c1", "c2"], scale=2)
    with Image.open(path) as im:
        assert im.mode == "RGB"
        assert im.width >= 2 * 20 and im.height >= 2 * 16
    plain = save_image_grid(tmp_path / "plain.png", [[a, a, a]])
    with Image.open(plain) as im:
        assert im.size == (3 * (8 + 2) + 2, 8 + 4)
        px = np.asarray(im)
        np.testing.assert_array_equal(px[2:10, 2:10], a)
    with pytest.raises(ValueError, match="rows"):
        save_image_grid(tmp_path / "e.png", [])
    with pytest.raises(ValueError, match="row_titles"):
        save_image_grid(tmp_path / "e.png", [[a]], row_titles=["a", "b"])
    with pytest.raises(TypeError, match=r"rows\[0\]\[0\]"):
        save_image_grid(tmp_path / "e.png", [[a.astype(np.float32)]])


def test_save_class_histogram(tmp_path):
    from PIL import Image

    names = ["misc", "infl", "epi", "spindle"]
    path = save_class_histogram(tmp_path / "h.png", {"before": np.array([3, 30, 40, 28]),
                                                     "after balancing": np.array([20, 30, 40, 28])}, names, "t")
    with Image.open(path) as im:
        assert im.width > 100 and im.height > 100
    with pytest.raises(ValueError, match="before"):
        save_class_histogram(tmp_path / "h.png", {"before": np.array([1, 2])}, names, "t")


def test_grid_titles_are_never_cut(tmp_path):
    """A title wider than the grid widens the canvas; two-line column titles get a taller margin."""
    from PIL import Image

    a = np.zeros((8, 8, 3), np.uint8)
    one = save_image_grid(tmp_path / "one.png", [[a, a]], col_titles=["c1", "c2"])
    two = save_image_grid(tmp_path / "two.png", [[a, a]], col_titles=["c1\n(SDM render)", "c2"])
    titled = save_image_grid(tmp_path / "t.png", [[a, a]], col_titles=["c1", "c2"],
                             title="a title far wider than a grid of two 8 px tiles")
    with Image.open(one) as i1, Image.open(two) as i2, Image.open(titled) as it:
        assert i2.height > i1.height and i2.width == i1.width
        assert it.width > i1.width and it.height > i1.height
        px = np.asarray(it)
        assert (px[:, -1] == 255).all(), "the title reaches the right edge: cut"


def test_long_histogram_title_is_wrapped_not_cut(tmp_path):
    from PIL import Image

    names = ["misc", "infl", "epi", "spindle"]
    title = "nuclei per class in all 96 patches: original maps vs one balancing map each, " * 3
    path = save_class_histogram(tmp_path / "h.png", {"a": np.array([3, 30, 40, 28])}, names, title)
    with Image.open(path) as im:
        px = np.asarray(im.convert("L"))
    band = px[: px.shape[0] // 5]  # the title band, above the axes
    assert band.min() < 128, "no title drawn"
    assert (band[:, :3] > 200).all() and (band[:, -3:] > 200).all(), "the title runs off the figure's edge"


def test_demo_data_part(tmp_path, capsys):
    from diffmix_aug.cli import main

    assert main(["demo", "--out", str(tmp_path), "--n", "6", "--size", "32", "--seed", "1", "--data-only"]) == 0
    for name in ("toy_preview.png", "class_histogram.png", "class_stats.json"):
        assert (tmp_path / name).is_file()
    out = capsys.readouterr().out
    assert "miscellaneous" in out and "spindle" in out and "share" in out
