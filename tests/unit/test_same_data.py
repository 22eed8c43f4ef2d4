"""A base of another resolution or class table than the SDM's is refused at construction, with the fix named."""

from __future__ import annotations

import pytest

from diffmix_aug import DiffMixDataset
from diffmix_aug.data import NucleiDataset, get_dataset_info
from diffmix_aug.data.toy import make_toy_dataset
from diffmix_aug.sampling import Synthesizer

CONSEP = get_dataset_info("consep")


@pytest.fixture(scope="module")
def consep_sdm():
    return Synthesizer.from_checkpoint("consep-20x", device="cpu")


@pytest.fixture(scope="module")
def base_40x():
    return NucleiDataset.from_samples(list(make_toy_dataset(4, size=64, seed=0)), CONSEP)  # CoNSeP: 0.25 um/px


def test_a_40x_base_with_the_20x_sdm_is_refused_naming_downsampled(consep_sdm, base_40x):
    with pytest.raises(ValueError, match=r"0\.25 um/px but .*sdm_consep_20x\.safetensors was trained at 0\.5 "
                                         r"um/px.*base\.downsampled\(2\)"):
        DiffMixDataset(base_40x, consep_sdm, mode="enlarge", start=False)


def test_the_same_base_at_20x_is_accepted(consep_sdm, base_40x):
    ds = DiffMixDataset(base_40x.downsampled(2), consep_sdm, mode="enlarge", start=False)
    try:
        assert len(ds) == 4
    finally:
        ds.close()


def test_another_class_table_is_refused(consep_sdm):
    import dataclasses

    pannuke_20x = dataclasses.replace(get_dataset_info("pannuke"), mpp=0.5)  # 6 classes against the SDM's 5
    base = NucleiDataset.from_samples(list(make_toy_dataset(2, size=32, seed=0)), pannuke_20x)
    with pytest.raises(ValueError, match=r"classes \['background', 'neoplastic'.* differ from those"):
        DiffMixDataset(base, consep_sdm, mode="enlarge", start=False)

    renamed = dataclasses.replace(CONSEP, class_names=("background", "a", "b", "c", "d"), mpp=0.5)
    base = NucleiDataset.from_samples(list(make_toy_dataset(2, size=32, seed=0)), renamed)
    with pytest.raises(ValueError, match=r"classes \['background', 'a', 'b', 'c', 'd'\] differ from those"):
        DiffMixDataset(base, consep_sdm, mode="enlarge", start=False)


def test_bases_of_unknown_resolution_are_not_checked(consep_sdm):
    toy = make_toy_dataset(2, size=32, seed=0)  # the toy table has no mpp; its names are CoNSeP's
    assert toy.info.mpp is None
    ds = DiffMixDataset(toy, consep_sdm, mode="enlarge", start=False)
    ds.close()
