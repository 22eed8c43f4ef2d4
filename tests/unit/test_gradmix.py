"""Image-level GradMix: real patches, label parity with balance, blending invariants, options."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
from labelmap_helpers import HE_RARE, load_he_patches

from benchmarks.labelmaps import reference_gradmix_image
from diffmix_aug.baselines.gradmix import GradMix, average_nucleus_color
from diffmix_aug.data.sample import NucleiSample
from diffmix_aug.labelmaps.balance import apply_balance
from diffmix_aug.labelmaps.donors import DonorBank


@pytest.fixture(scope="module")
def real():
    patches = load_he_patches()
    samples = [NucleiSample(im, i, t, meta={"index": k}) for k, (im, i, t) in enumerate(patches)]
    bank = DonorBank.from_maps([(s.inst_map, s.type_map, s.image) for s in samples], rare_classes=HE_RARE,
                               keep_images=True)
    return samples, bank


def _valid_maps(s: NucleiSample):
    ids = np.unique(s.inst_map[s.inst_map > 0])
    assert ids.tolist() == list(range(1, ids.size + 1))
    pairs = np.unique(np.stack([s.inst_map[s.inst_map > 0], s.type_map[s.inst_map > 0]]), axis=1)
    assert pairs.shape[1] == ids.size


@pytest.mark.parametrize("inpaint", ["telea", None])
def test_real_patches_give_uint8_images_and_valid_maps(real, inpaint):
    samples, bank = real
    gm = GradMix(bank, rare_classes=HE_RARE, inpaint=inpaint)
    total = 0
    for k, s in enumerate(samples):
        params = gm.get_params(np.random.default_rng(k), s)
        out = gm.apply(s, params)
        assert out.image.dtype == np.uint8 and out.image.shape == s.image.shape
        assert np.isfinite(out.image.astype(np.float64)).all()
        _valid_maps(out)
        # labels are exactly the balance map
        ri, rt, rep = apply_balance(s.inst_map, s.type_map, params, bank)
        np.testing.assert_array_equal(out.inst_map, ri)
        np.testing.assert_array_equal(out.type_map, rt)
        assert out.meta["gradmix"]["converted_total"] == rep["converted_total"]
        total += rep["converted_total"]
        if rep["converted_total"]:
            assert (out.image != s.image).any()
        # pixels far from every changed nucleus are untouched
        changed = (out.inst_map > 0) != (s.inst_map > 0)
        for m in params.assign_major:
            changed |= s.inst_map == m
        from scipy.ndimage import binary_dilation

        far = ~binary_dilation(changed, iterations=40)
        np.testing.assert_array_equal(out.image[far], s.image[far])
    assert total > 0


@pytest.mark.parametrize("metric", ["chessboard", "taxicab"])
def test_image_blend_matches_full_image_reference(real, metric):
    samples, bank = real
    sources = [s.image for s in samples]
    # the bank keeps crops; with a margin wider than any major's half-box, nothing is edge-padded
    bank = DonorBank.from_maps([(s.inst_map, s.type_map, s.image) for s in samples], rare_classes=HE_RARE,
                               keep_images=True, image_margin=48)
    gm = GradMix(bank, rare_classes=HE_RARE, inpaint=None, metric=metric)
    n = 0
    for k, s in enumerate(samples):
        p = gm.get_params(np.random.default_rng(k + 10), s)
        # the full-image reference costs ~0.1 s per paste: keep two pastes per patch
        p = dataclasses.replace(p, assign_major=p.assign_major[:2], assign_donor=p.assign_donor[:2],
                                assign_type=p.assign_type[:2])
        n += p.assign_major.size
        out = gm.apply(s, p)
        np.testing.assert_array_equal(out.image, reference_gradmix_image(s.image, s.inst_map, p, bank, sources,
                                                                         metric))
    assert n > 0


def test_fixed_seed_reproduces_and_pickles(real):
    samples, bank = real
    gm = GradMix(bank, rare_classes=HE_RARE)
    a = gm(samples[0], np.random.default_rng(3))
    b = pickle.loads(pickle.dumps(gm))(samples[0], np.random.default_rng(3))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.inst_map, b.inst_map)


def test_biharmonic_and_taxicab_options(real):
    samples, bank = real
    s = samples[0]
    p = GradMix(bank, rare_classes=HE_RARE).get_params(np.random.default_rng(1), s)
    outs = [GradMix(bank, rare_classes=HE_RARE, inpaint=i, metric=m).apply(s, p)
            for i, m in (("telea", "chessboard"), ("biharmonic", "chessboard"), (None, "taxicab"))]
    for o in outs:
        assert o.image.dtype == np.uint8
        np.testing.assert_array_equal(o.inst_map, outs[0].inst_map)
    assert not np.array_equal(outs[0].image, outs[2].image)


def test_degenerate_maps_return_input(real):
    _, bank = real
    z = np.zeros((64, 64), np.int32)
    img = np.full((64, 64, 3), 200, np.uint8)
    out = GradMix(bank, rare_classes=HE_RARE)(NucleiSample(img, z, z), np.random.default_rng(0))
    np.testing.assert_array_equal(out.image, img)
    assert out.meta["gradmix"]["reason"]


def test_average_nucleus_color_matches_reference_formula():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    img[3, 3, 1] = 0
    inst = np.zeros((16, 16), np.int32)
    inst[2:6, 2:6] = 1
    nuc = img * (inst[..., None] > 0)
    want = [nuc[..., c].sum() / (nuc[..., c] > 0).sum() for c in range(3)]
    np.testing.assert_allclose(average_nucleus_color(img, inst), want)


def test_bad_arguments(real):
    samples, _ = real
    no_images = DonorBank.from_maps([(s.inst_map, s.type_map) for s in samples], rare_classes=HE_RARE)
    with pytest.raises(ValueError, match="keep_images"):
        GradMix(no_images, rare_classes=HE_RARE)
    with pytest.raises(ValueError, match="inpaint"):
        GradMix(None, HE_RARE, inpaint="navier")
    with pytest.raises(ValueError, match="metric"):
        GradMix(None, HE_RARE, metric="euclidean")
