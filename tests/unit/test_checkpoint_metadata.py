"""Checkpoints that contradict themselves are refused: integer weights, ``num_classes`` against the
label channels, class names, resolution; fuzzed metadata, ``.npy`` patches and images never get
past the readers as anything but a clear ``ValueError`` / ``TypeError``."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffmix_aug.data.readers import read_hovernet_npy, read_image
from diffmix_aug.data.sample import NucleiSample
from diffmix_aug.sdm import build_sdm, export_sdm, load_sdm
from diffmix_aug.sdm.checkpoint import read_safetensors, read_sdm_metadata, write_safetensors

NAMES = ["background", "miscellaneous", "inflammatory", "epithelial", "spindle"]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    export_sdm(build_sdm("tiny", 6, image_size=32), path, mpp=0.5, class_names=NAMES, dataset="consep")
    return path


def _rewrite(src, dst, *, meta=None, cast=None):
    tensors, metadata = read_safetensors(src)
    if cast is not None:
        key = next(k for k, v in sorted(tensors.items()) if v.is_floating_point() and v.numel() > 1)
        tensors[key] = tensors[key].to(cast)
    metadata.update(meta or {})
    write_safetensors(dst, tensors, metadata)
    return dst


def test_resolution_and_class_table_round_trip(export):
    meta = read_sdm_metadata(export)
    assert meta["mpp"] == 0.5 and meta["class_names"] == NAMES and meta["num_classes"] == 5
    model = load_sdm(export)
    assert model.checkpoint_info["mpp"] == 0.5
    again = export_sdm(model, export.parent / "again.safetensors")  # carried through a re-export
    assert read_sdm_metadata(again)["class_names"] == NAMES


@pytest.mark.parametrize("dtype", [torch.int32, torch.int8, torch.uint8, torch.bool])
def test_integer_weights_are_refused(export, tmp_path, dtype):
    bad = _rewrite(export, tmp_path / "int.safetensors", cast=dtype)
    with pytest.raises(ValueError, match=r"int\.safetensors: 1 weight\(s\) are stored as integers.*re-export"):
        load_sdm(bad)


@pytest.mark.parametrize("value", ["9", "4", "1", "0", "-3", "abc", "5.0"])
def test_num_classes_that_contradicts_the_weights_is_refused(export, tmp_path, value):
    bad = _rewrite(export, tmp_path / "n.safetensors", meta={"num_classes": value})
    match = r"num_classes` must be an integer" if not value.lstrip("-").isdigit() else \
        r"num_classes` is .*takes 6 label channels, i\.e\. num_classes = 5"
    with pytest.raises(ValueError, match=match):
        read_sdm_metadata(bad)
    with pytest.raises(ValueError, match="n.safetensors"):
        load_sdm(bad)


@pytest.mark.parametrize("meta, match", [
    ({"class_names": json.dumps(NAMES[:3])}, r"lists 3 class names .* num_classes = 5"),
    ({"class_names": "[1, 2"}, "not a JSON list"),
    ({"mpp": "-1"}, "positive number of microns"),
    ({"mpp": "fast"}, "microns per pixel"),
    ({"step": "x"}, "`step` must be a non-negative integer"),
])
def test_other_contradicting_metadata_is_refused(export, tmp_path, meta, match):
    with pytest.raises(ValueError, match=match):
        read_sdm_metadata(_rewrite(export, tmp_path / "m.safetensors", meta=meta))


def test_old_exports_without_resolution_still_load(export, tmp_path):
    old = _rewrite(export, tmp_path / "old.safetensors", meta={"mpp": "", "class_names": ""})
    meta = read_sdm_metadata(old)
    assert meta["mpp"] is None and meta["class_names"] is None and meta["num_classes"] == 5


@pytest.mark.parametrize("step", ["²", "٣", "-1", "1.5", "x"])
def test_a_step_that_is_not_an_ascii_integer_is_refused_naming_the_file(export, tmp_path, step):
    """``str.isdigit`` accepts superscripts and other scripts' digits that ``int`` refuses (found by hypothesis)."""
    path = _rewrite(export, tmp_path / "s.safetensors", meta={"step": step})
    with pytest.raises(ValueError, match=r"s\.safetensors: metadata `step` must be a non-negative integer"):
        read_sdm_metadata(path)


@settings(max_examples=40, deadline=timedelta(seconds=20), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["num_classes", "mpp", "class_names", "step", "dataset", "provenance"]),
                       st.text(max_size=40), max_size=4))
def test_fuzzed_metadata_loads_or_raises_a_value_error(export, tmp_path, meta):
    path = _rewrite(export, tmp_path / "f.safetensors", meta=meta)
    try:
        read_sdm_metadata(path)
    except ValueError as exc:
        assert "f.safetensors" in str(exc)


def _np_arrays():
    shapes = st.one_of(st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 6)),
                       st.tuples(st.integers(0, 5), st.integers(0, 5)),
                       st.just((4, 4, 5)), st.just((6, 6, 4)))
    dtypes = st.sampled_from(["int32", "int64", "uint16", "float32", "float64", "bool", "int8", "complex64"])
    return st.tuples(shapes, dtypes, st.integers(0, 2**31 - 1))


@settings(max_examples=80, deadline=timedelta(seconds=20), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_np_arrays(), st.sampled_from([None, 5]))
def test_fuzzed_npy_patches_read_or_raise_naming_the_file(tmp_path, spec, num_classes):
    shape, dtype, seed = spec
    rng = np.random.default_rng(seed)
    scale = rng.choice([1, 3, 300, 2**33])
    data = (rng.integers(-2, 4, size=shape) * scale).astype(dtype) if dtype != "bool" else rng.random(shape) > 0.5
    path = tmp_path / "p.npy"
    np.save(path, data)
    t0 = time.perf_counter()
    try:
        sample = read_hovernet_npy(path, num_classes=num_classes)
    except (ValueError, TypeError) as exc:
        assert "p.npy" in str(exc) or "`" in str(exc), exc
    else:
        assert isinstance(sample, NucleiSample) and sample.image.dtype == np.uint8
        assert (sample.inst_map >= 0).all() and (num_classes is None or sample.type_map.max() < num_classes)
    assert time.perf_counter() - t0 < 5.0  # a bound per case


def test_pickled_npy_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"obj\.npy: not a readable \.npy file"):
        read_hovernet_npy(path)


@settings(max_examples=60, deadline=timedelta(seconds=20), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200), st.sampled_from([".png", ".jpg", ".tif", ".bmp"]))
def test_fuzzed_image_bytes_decode_or_raise_naming_the_file(tmp_path, payload, suffix):
    header = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff", ".tif": b"II*\x00", ".bmp": b"BM"}[suffix]
    path = tmp_path / f"x{suffix}"
    path.write_bytes(header + payload)
    try:
        img = read_image(path)
    except ValueError as exc:
        assert f"x{suffix}" in str(exc)
    else:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3


def test_a_png_whose_header_pillow_refuses_is_not_handed_to_opencv(tmp_path, monkeypatch):
    """A corrupt PNG (a chunk declaring 4 GB) is refused from its header; OpenCV never sees it."""
    import cv2

    path = tmp_path / "bad.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\xff\xff\xff\xf0IHDR" + b"\0" * 40)
    monkeypatch.setattr(cv2, "imread", lambda *a, **k: pytest.fail("OpenCV was asked to decode a corrupt PNG"))
    with pytest.raises(ValueError, match=r"bad\.png: cannot read the image header"):
        read_image(path)


def test_image_whose_header_declares_a_huge_size_is_refused_before_decoding(tmp_path):
    import struct
    import zlib

    from diffmix_aug.data.dataset import NucleiDataset

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    (tmp_path / "Images").mkdir()
    (tmp_path / "Labels").mkdir()
    (tmp_path / "Images" / "big.png").write_bytes(png)
    with pytest.raises(ValueError, match=r"big\.png: the image header declares .*tiles first"):
        read_image(tmp_path / "Images" / "big.png")
    from scipy.io import savemat

    savemat(tmp_path / "Labels" / "big.mat", {"inst_map": np.zeros((4, 4), np.int32)})
    ds = NucleiDataset.from_consep_dir(tmp_path)
    with pytest.raises(ValueError, match=r"big\.png: the image header declares"):
        ds[0]
    with pytest.raises(ValueError, match=r"big\.png"):
        ds.tiled(256)
