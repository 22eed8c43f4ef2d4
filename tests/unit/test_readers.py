"""Readers: files written in the real on-disk formats, and the three real H&E patches."""

from __future__ import annotations

import numpy as np
import pytest

from diffmix_aug.data import NucleiSample, get_dataset_info
from diffmix_aug.data.readers import (
    conic_to_maps,
    find_consep_pairs,
    hovernet_array_to_sample,
    image_shape,
    pannuke_to_maps,
    read_consep_label,
    read_consep_tile,
    read_hovernet_npy,
    read_image,
    to_uint8_image,
    write_hovernet_npy,
)

CONSEP = get_dataset_info("consep")


def _write_png(path, rgb_or_rgba):
    import cv2

    arr = rgb_or_rgba
    if arr.ndim == 3:
        arr = arr[..., [2, 1, 0, 3]] if arr.shape[-1] == 4 else arr[..., ::-1]
    assert cv2.imwrite(str(path), np.ascontiguousarray(arr))


def _labels(rng, h=20, w=24):
    inst = np.zeros((h, w), np.int32)
    inst[2:6, 3:8] = 4
    inst[10:15, 10:14] = 9
    inst[15:18, 1:4] = 2
    raw = np.zeros((h, w), np.int32)
    raw[inst == 4] = 4  # dysplastic epithelial -> 3
    raw[inst == 9] = 6  # muscle -> 4 (spindle)
    raw[inst == 2] = 2  # inflammatory
    return inst, raw


# ------------------------------------------------------------------------------ images
def test_read_image_png_rgba_grey_tif(tmp_path, rng):
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    _write_png(tmp_path / "a.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    rgba = np.concatenate([rgb, np.full((9, 11, 1), 200, np.uint8)], -1)
    _write_png(tmp_path / "b.png", rgba)
    out = read_image(tmp_path / "b.png")
    assert out.shape == (9, 11, 3)
    np.testing.assert_array_equal(out, rgb)
    _write_png(tmp_path / "g.png", rgb[..., 0])
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(rgb[..., :1], 3, -1))
    _write_png(tmp_path / "c.tif", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "c.tif"), rgb)
    assert image_shape(tmp_path / "c.tif") == (9, 11)


def test_read_image_errors(tmp_path):
    import cv2

    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="junk.png"):
        read_image(tmp_path / "junk.png")
    cv2.imwrite(str(tmp_path / "deep.png"), np.zeros((4, 4, 3), np.uint16))
    with pytest.raises(ValueError, match="8-bit"):
        read_image(tmp_path / "deep.png")


def test_to_uint8_image():
    f = np.array([[[0.0, 128.0, 255.0]]])
    assert to_uint8_image(f).dtype == np.uint8
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        to_uint8_image(f / 255 + 0.001)
    with pytest.raises(ValueError, match="RGB"):
        to_uint8_image(np.zeros((4, 4, 2)))


# ------------------------------------------------------------------------------ .mat
def test_consep_label_merge_and_fallbacks(tmp_path, rng):
    from scipy.io import savemat

    inst, raw = _labels(rng)
    savemat(tmp_path / "t.mat", {"inst_map": inst.astype(np.float64), "type_map": raw})
    i2, t2 = read_consep_label(tmp_path / "t.mat", CONSEP)
    np.testing.assert_array_equal(i2, inst)
    assert i2.dtype == np.int32 and t2.dtype == np.int32
    assert t2[inst == 4].tolist() == [3] * 20 and set(t2[inst == 9]) == {4} and set(t2[inst == 2]) == {2}
    _, raw_back = read_consep_label(tmp_path / "t.mat", CONSEP, merge=False)
    np.testing.assert_array_equal(raw_back, raw)
    # inst_type only, CoNSeP convention: row k-1 types id k (ids 1..N contiguous)
    contiguous = np.zeros_like(inst)
    contiguous[inst == 2], contiguous[inst == 4], contiguous[inst == 9] = 1, 2, 3
    savemat(tmp_path / "c.mat", {"inst_map": contiguous, "inst_type": np.array([[2], [4], [6]])})
    _, tc = read_consep_label(tmp_path / "c.mat", CONSEP)
    assert set(tc[contiguous == 1]) == {2} and set(tc[contiguous == 2]) == {3} and set(tc[contiguous == 3]) == {4}
    # non-contiguous ids: row r types the r-th id in ascending order
    savemat(tmp_path / "n.mat", {"inst_map": inst, "inst_type": np.array([[2], [4], [6]])})
    _, tn = read_consep_label(tmp_path / "n.mat", CONSEP)
    np.testing.assert_array_equal(tn, CONSEP.merge(raw))
    savemat(tmp_path / "u.mat", {"inst_map": inst})
    assert not read_consep_label(tmp_path / "u.mat", CONSEP)[1].any()


def test_consep_label_errors_name_the_file(tmp_path, rng):
    from scipy.io import savemat

    inst, raw = _labels(rng)
    savemat(tmp_path / "nokey.mat", {"instances": inst})
    with pytest.raises(ValueError, match=r"nokey\.mat.*inst_map.*instances"):
        read_consep_label(tmp_path / "nokey.mat", CONSEP)
    savemat(tmp_path / "shape.mat", {"inst_map": inst, "type_map": raw[:-1]})
    with pytest.raises(ValueError, match=r"shape\.mat.*type_map"):
        read_consep_label(tmp_path / "shape.mat", CONSEP)
    savemat(tmp_path / "raw.mat", {"inst_map": inst, "type_map": np.where(inst > 0, 8, 0)})
    with pytest.raises(ValueError, match=r"raw\.mat.*\[8\]"):
        read_consep_label(tmp_path / "raw.mat", CONSEP)
    savemat(tmp_path / "rows.mat", {"inst_map": inst, "inst_type": np.array([[1]])})
    with pytest.raises(ValueError, match=r"rows\.mat.*inst_type"):
        read_consep_label(tmp_path / "rows.mat", CONSEP)
    savemat(tmp_path / "neg.mat", {"inst_map": -inst})
    with pytest.raises(ValueError, match=r"neg\.mat.*>= 0"):
        read_consep_label(tmp_path / "neg.mat", CONSEP)
    (tmp_path / "bad.mat").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"bad\.mat"):
        read_consep_label(tmp_path / "bad.mat", CONSEP)


def test_consep_dir_layout(tmp_path, rng):
    from scipy.io import savemat

    (tmp_path / "Images").mkdir()
    (tmp_path / "Labels").mkdir()
    inst, raw = _labels(rng)
    rgba = rng.integers(0, 256, (20, 24, 4), dtype=np.uint8)
    _write_png(tmp_path / "Images" / "train_1.png", rgba)
    _write_png(tmp_path / "Images" / "train_2.tif", rgba[..., :3])
    savemat(tmp_path / "Labels" / "train_1.mat", {"inst_map": inst, "type_map": raw})
    savemat(tmp_path / "Labels" / "train_2.mat", {"inst_map": inst, "type_map": raw})
    pairs = find_consep_pairs(tmp_path)
    assert [p.name for p, _ in pairs] == ["train_1.png", "train_2.tif"]
    s = read_consep_tile(*pairs[0], info=CONSEP)
    assert isinstance(s, NucleiSample)
    np.testing.assert_array_equal(s.image, rgba[..., :3])
    np.testing.assert_array_equal(s.type_map, CONSEP.merge(raw))
    (tmp_path / "Labels" / "train_2.mat").unlink()
    with pytest.raises(FileNotFoundError, match="train_2"):
        find_consep_pairs(tmp_path)
    with pytest.raises(FileNotFoundError, match="Images"):
        find_consep_pairs(tmp_path / "Labels")


# ------------------------------------------------------------------------------ HoVer-Net npy
def test_hovernet_npy_roundtrip_and_four_channels(tmp_path, rng):
    inst, raw = _labels(rng)
    s = NucleiSample(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), inst, CONSEP.merge(raw))
    path = write_hovernet_npy(tmp_path / "p_000.npy", s)
    arr = np.load(path)
    assert arr.dtype == np.int32 and arr.shape == (20, 24, 5)
    back = read_hovernet_npy(path)
    for a, b in ((back.image, s.image), (back.inst_map, s.inst_map), (back.type_map, s.type_map)):
        np.testing.assert_array_equal(a, b)
    mm = read_hovernet_npy(path, mmap=True)
    np.testing.assert_array_equal(mm.inst_map, s.inst_map)
    np.save(tmp_path / "four.npy", arr[..., :4])
    four = read_hovernet_npy(tmp_path / "four.npy")
    assert not four.type_map.any()
    np.testing.assert_array_equal(four.inst_map, inst)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary behind


def test_hovernet_npy_errors(tmp_path):
    np.save(tmp_path / "wrong.npy", np.zeros((8, 8, 3), np.int32))
    with pytest.raises(ValueError, match=r"wrong\.npy.*\[H, W, 5\]"):
        read_hovernet_npy(tmp_path / "wrong.npy")
    bad = np.zeros((8, 8, 5), np.int32)
    bad[0, 0, 0] = 300
    np.save(tmp_path / "range.npy", bad)
    with pytest.raises(ValueError, match=r"range\.npy.*\[0, 255\]"):
        read_hovernet_npy(tmp_path / "range.npy")
    bad[0, 0, 0] = 0
    bad[0, 0, 4] = 2  # typed pixel outside every instance
    with pytest.raises(ValueError, match="outside every instance"):
        hovernet_array_to_sample(bad)
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk\.npy"):
        read_hovernet_npy(tmp_path / "junk.npy")
    with pytest.raises(TypeError, match="NucleiSample"):
        write_hovernet_npy(tmp_path / "x.npy", np.zeros((4, 4, 5)))


# ------------------------------------------------------------------------------ real patches
@pytest.mark.parametrize("k", [1, 2, 3])
def test_real_patches_roundtrip(k, data_dir, tmp_path):
    from PIL import Image
    from scipy.io import loadmat

    d = data_dir / "he_patches"
    pannuke = get_dataset_info("pannuke")
    s = read_consep_tile(d / f"patch{k}.png", d / f"patch{k}.mat", info=pannuke)
    mat = loadmat(d / f"patch{k}.mat")
    np.testing.assert_array_equal(s.image, np.asarray(Image.open(d / f"patch{k}.png").convert("RGB")))
    np.testing.assert_array_equal(s.inst_map, mat["inst_map"])
    np.testing.assert_array_equal(s.type_map, mat["type_map"])
    assert len(s.info) == mat["inst_type"].shape[0]
    assert set(np.unique(s.info.types)) <= {1, 2, 3, 5}
    back = read_hovernet_npy(write_hovernet_npy(tmp_path / f"patch{k}.npy", s))
    for a, b in ((back.image, s.image), (back.inst_map, s.inst_map), (back.type_map, s.type_map)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    # centroids agree with the stored inst_centroid (x, y)
    np.testing.assert_allclose(s.info.centroids, mat["inst_centroid"], atol=1e-6)


# ------------------------------------------------------------------------------ PanNuke / CoNIC
def _pannuke_reference(mask):
    """Plain loops: every (channel, id) pair is one instance, numbered in channel then id order."""
    h, w = mask.shape[:2]
    inst = np.zeros((h, w), np.int32)
    typ = np.zeros((h, w), np.int32)
    new = 0
    for c in range(5):
        for i in sorted(set(np.unique(mask[..., c]).tolist()) - {0}):
            new += 1
            sel = mask[..., c] == i
            inst[sel] = new
            typ[sel] = c + 1
    return inst, typ


def test_pannuke_to_maps_matches_reference(rng):
    for _ in range(5):
        mask = np.zeros((16, 16, 6))
        for c in range(5):
            for i in rng.choice(np.arange(1, 50), 3, replace=False):
                y, x = rng.integers(0, 13, 2)
                free = mask[y:y + 3, x:x + 3, :5].sum(-1) == 0
                mask[y:y + 3, x:x + 3, c][free] = i
        mask[..., 5] = (mask[..., :5].sum(-1) == 0)
        inst, typ = pannuke_to_maps(mask)
        ref_inst, ref_typ = _pannuke_reference(mask)
        np.testing.assert_array_equal(inst, ref_inst)
        np.testing.assert_array_equal(typ, ref_typ)
        assert inst.dtype == np.int32 and typ.dtype == np.int32


def test_pannuke_same_id_in_two_channels_becomes_two_instances():
    mask = np.zeros((4, 4, 6))
    mask[0, :2, 0] = 7
    mask[2, :2, 2] = 7
    inst, typ = pannuke_to_maps(mask)
    assert inst[0, 0] != inst[2, 0] and inst.max() == 2
    assert typ[0, 0] == 1 and typ[2, 0] == 3
    with pytest.raises(ValueError, match="6"):
        pannuke_to_maps(np.zeros((4, 4, 5)), "fold1/masks.npy[3]")


def test_conic_to_maps():
    lab = np.zeros((5, 5, 2), np.int32)
    lab[1:3, 1:3] = (3, 6)
    inst, typ = conic_to_maps(lab)
    assert inst[1, 1] == 3 and typ[1, 1] == 6 and inst.dtype == np.int32
    with pytest.raises(ValueError, match=r"labels.npy\[0\].*\[H, W, 2\]"):
        conic_to_maps(np.zeros((5, 5, 3)), "labels.npy[0]")
