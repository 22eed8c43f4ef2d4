"""NucleiSample: one bad-input test per validation rule, property tests, derived info."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from diffmix_aug.data import NucleiSample, instance_info


def _ok(h=6, w=7):
    image = np.zeros((h, w, 3), np.uint8)
    inst = np.zeros((h, w), np.int32)
    inst[1:3, 1:3] = 4
    inst[3:5, 4:6] = 9
    typ = np.where(inst == 4, 1, np.where(inst == 9, 3, 0)).astype(np.int32)
    return image, inst, typ


# ------------------------------------------------------------------------------ image
def test_image_not_an_array():
    _, inst, typ = _ok()
    with pytest.raises(TypeError, match="`image`.*ndarray.*list"):
        NucleiSample([[0]], inst, typ)


def test_image_rank():
    _, inst, typ = _ok()
    with pytest.raises(ValueError, match=r"`image`.*\[H, W, 3\].*\(6, 7\)"):
        NucleiSample(np.zeros((6, 7), np.uint8), inst, typ)


def test_image_rgba_names_the_fix():
    _, inst, typ = _ok()
    with pytest.raises(ValueError, match=r"RGBA.*image\[\.\.\., :3\]"):
        NucleiSample(np.zeros((6, 7, 4), np.uint8), inst, typ)


def test_image_channels():
    _, inst, typ = _ok()
    with pytest.raises(ValueError, match="3 channels"):
        NucleiSample(np.zeros((6, 7, 2), np.uint8), inst, typ)


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint16])
def test_image_dtype(dtype):
    _, inst, typ = _ok()
    with pytest.raises(TypeError, match=f"uint8, got {np.dtype(dtype).name}"):
        NucleiSample(np.zeros((6, 7, 3), dtype), inst, typ)


def test_float_image_hint():
    _, inst, typ = _ok()
    with pytest.raises(TypeError, match=r"\* 255"):
        NucleiSample(np.zeros((6, 7, 3), np.float64), inst, typ)


# ------------------------------------------------------------------------------ maps
@pytest.mark.parametrize("field", ["inst_map", "type_map"])
def test_map_not_an_array(field):
    image, inst, typ = _ok()
    kwargs = {"inst_map": inst, "type_map": typ, field: inst.tolist()}
    with pytest.raises(TypeError, match=f"`{field}`.*list"):
        NucleiSample(image, **kwargs)


@pytest.mark.parametrize("field", ["inst_map", "type_map"])
def test_map_rank_and_channels(field):
    image, inst, typ = _ok()
    kwargs = {"inst_map": inst, "type_map": typ, field: np.zeros((6, 7, 2), np.int32)}
    with pytest.raises(ValueError, match=f"`{field}`.*2-D"):
        NucleiSample(image, **kwargs)
    # a trailing singleton channel is accepted
    s = NucleiSample(image, inst[..., None], typ[..., None])
    assert s.inst_map.shape == (6, 7)


@pytest.mark.parametrize("field", ["inst_map", "type_map"])
def test_map_dtype(field):
    image, inst, typ = _ok()
    kwargs = {"inst_map": inst, "type_map": typ, field: inst.astype("U3")}
    with pytest.raises(TypeError, match=f"`{field}`.*integer dtype"):
        NucleiSample(image, **kwargs)


@pytest.mark.parametrize("field", ["inst_map", "type_map"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_map_nan_inf(field, bad):
    image, inst, typ = _ok()
    arr = (inst if field == "inst_map" else typ).astype(np.float64)
    arr[0, 0] = bad
    kwargs = {"inst_map": inst, "type_map": typ, field: arr}
    with pytest.raises(ValueError, match=f"`{field}`.*NaN or inf"):
        NucleiSample(image, **kwargs)


def test_map_non_integral_float():
    image, inst, typ = _ok()
    with pytest.raises(ValueError, match="`inst_map`.*non-integer"):
        NucleiSample(image, inst + 0.5, typ)
    s = NucleiSample(image, inst.astype(np.float64), typ.astype(np.float32))  # integral floats are fine
    assert s.inst_map.dtype == np.int32 and s.type_map.dtype == np.int32


@pytest.mark.parametrize("field", ["inst_map", "type_map"])
def test_negative_values(field):
    image, inst, typ = _ok()
    arr = (inst if field == "inst_map" else typ).copy()
    arr[1, 1] = -3
    kwargs = {"inst_map": inst, "type_map": typ, field: arr}
    with pytest.raises(ValueError, match=f"`{field}`.*negative.*-3"):
        NucleiSample(image, **kwargs)


def test_values_beyond_int32():
    image, inst, typ = _ok()
    big = inst.astype(np.int64)
    big[1, 1] = 2**40
    with pytest.raises(ValueError, match="int32"):
        NucleiSample(image, big, typ)


def test_shape_mismatch():
    image, inst, typ = _ok()
    with pytest.raises(ValueError, match=r"share H x W.*\(6, 7\).*\(5, 7\)"):
        NucleiSample(image, inst[:5], typ[:5])
    with pytest.raises(ValueError, match="share H x W"):
        NucleiSample(image, inst, typ[:, :6])


def test_type_out_of_range_with_num_classes():
    image, inst, typ = _ok()
    NucleiSample(image, inst, typ, num_classes=4)
    with pytest.raises(ValueError, match="num_classes=3.*maximum 3"):
        NucleiSample(image, inst, typ, num_classes=3)


def test_typed_pixels_outside_instances():
    image, inst, typ = _ok()
    typ = typ.copy()
    typ[0, 0] = 2
    with pytest.raises(ValueError, match=r"1 typed pixels outside every instance.*type_map\[inst_map == 0\] = 0"):
        NucleiSample(image, inst, typ)


def test_multi_type_instance_warns_then_votes_and_strict_raises():
    image, inst, typ = _ok()
    typ = typ.copy()
    typ[1, 1] = 2  # instance 4: three pixels of class 1, one of class 2
    typ[3, 4] = 0  # instance 9: an untyped hole; non-zero types win over 0
    with pytest.warns(UserWarning, match=r"instances \[4, 9\].*majority vote"):
        s = NucleiSample(image, inst, typ)
    assert set(s.type_map[inst == 4]) == {1} and set(s.type_map[inst == 9]) == {3}
    assert typ[1, 1] == 2  # the input is not modified
    with pytest.raises(ValueError, match=r"instances \[4, 9\].*more than one type.*strict=False"):
        NucleiSample(image, inst, typ, strict=True)


# ------------------------------------------------------------------------------ properties
def _vote_reference(inst, typ):
    out = typ.copy()
    for i in np.unique(inst):
        if i == 0:
            continue
        sel = inst == i
        counts = np.bincount(typ[sel])
        nz = counts[1:]
        out[sel] = 0 if nz.sum() == 0 else int(np.argmax(nz)) + 1
    return out


small_maps = st.tuples(st.integers(1, 10), st.integers(1, 10)).flatmap(
    lambda hw: st.tuples(arrays(np.int32, hw, elements=st.integers(0, 4)),
                         arrays(np.int32, hw, elements=st.integers(0, 3))))


@settings(max_examples=60, deadline=None)
@given(maps=small_maps)
def test_majority_vote_property(maps):
    inst, typ = maps
    typ = np.where(inst > 0, typ, 0).astype(np.int32)
    image = np.zeros((*inst.shape, 3), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = NucleiSample(image, inst, typ)
    np.testing.assert_array_equal(s.type_map, _vote_reference(inst, typ))
    # every instance now has one type, so strict validation accepts the result without warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NucleiSample(image, s.inst_map, s.type_map, strict=True)


@settings(max_examples=60, deadline=None)
@given(maps=small_maps, orphan=st.booleans())
def test_orphan_rule_property(maps, orphan):
    inst, typ = maps
    has_orphans = bool(((typ > 0) & (inst == 0)).any())
    image = np.zeros((*inst.shape, 3), np.uint8)
    if has_orphans:
        with pytest.raises(ValueError, match="outside every instance"):
            NucleiSample(image, inst, typ)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            NucleiSample(image, inst, typ)


@settings(max_examples=40, deadline=None)
@given(maps=small_maps)
def test_instance_info_matches_loops(maps):
    inst, _ = maps
    info = instance_info(inst, inst % 3 + (inst > 0))
    ids = [i for i in np.unique(inst) if i]
    assert info.ids.tolist() == ids
    for k, i in enumerate(ids):
        ys, xs = np.nonzero(inst == i)
        assert info.areas[k] == ys.size
        np.testing.assert_allclose(info.centroids[k], [xs.mean(), ys.mean()])
        assert info.bboxes[k].tolist() == [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
        assert info.types[k] == i % 3 + 1


# ------------------------------------------------------------------------------ behaviour
def test_derived_info_crop_hovernet_pickle():
    image, inst, typ = _ok()
    s = NucleiSample(image, inst.astype(np.uint8), typ, meta={"src": "x"})
    assert s.info.ids.tolist() == [4, 9] and s.info.types.tolist() == [1, 3]
    assert s.class_counts(4).tolist() == [0, 1, 0, 1] and s.class_areas(4).tolist() == [0, 4, 0, 4]
    hv = s.to_hovernet()
    assert hv.dtype == np.int32 and hv.shape == (6, 7, 5)
    c = s.crop(1, 1, 2, 2)
    assert c.info.ids.tolist() == [4] and c.meta["crop"] == (1, 1, 2, 2)
    with pytest.raises(ValueError, match="outside"):
        s.crop(5, 5, 3, 3)
    back = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(back.inst_map, s.inst_map)
    assert back.meta == {"src": "x"} and back.info.ids.tolist() == [4, 9]
