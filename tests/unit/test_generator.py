"""PatchGenerator: pure in its seed, whole metadata, the synthesizer's identity, biased picks, stops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffmix_aug.class_table import ClassTable
from diffmix_aug.data.toy import make_toy_dataset
from diffmix_aug.generator import GenerationStopped, PatchGenerator, model_sha256, synthesizer_identity
from diffmix_aug.pipeline import build_label_sampler
from diffmix_aug.sampling._base import SamplingInterrupted

SIZE = 32


def noise_synth(images, inst, types, generator=None):
    noise = torch.randint(0, 40, images.shape, generator=generator, dtype=torch.int16).numpy()
    return np.clip(images.astype(np.int16) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def source():
    return make_toy_dataset(12, SIZE, 0)


def make(source, mode="union", seed=0, rank=0, synth=noise_synth):
    classes = ClassTable(5, source.info.rare_classes)
    labels = build_label_sampler(source, mode, 5, classes.rare_classes, patch_size=SIZE)
    return PatchGenerator(source, labels, synth, mode=mode, classes=classes, patch_shape=(SIZE, SIZE), seed=seed,
                          rank=rank)


def _same(a, b):
    return all(np.array_equal(x.image, y.image) and np.array_equal(x.inst_map, y.inst_map)
               and np.array_equal(x.type_map, y.type_map) and x.meta == y.meta for x, y in zip(a, b))


def test_a_batch_is_pure_in_seed_rank_and_key(source):
    gen = make(source)
    a = gen.batch(3, 4)
    assert _same(a, make(source).batch(3, 4))  # another generator object, same seed: the same patches
    assert _same(a, gen.render(3, gen.maps(gen.job_list(3, 4))))  # the three steps, as label workers split them
    for other in (gen.batch(4, 4), make(source, seed=1).batch(3, 4), make(source, rank=1).batch(3, 4)):
        assert not any(np.array_equal(x.image, y.image) for x, y in zip(a, other))
    m = a[0].meta
    assert {"map_seed", "source_index", "params", "map_kind", "mode", "seed", "batch_seed", "batch_index",
            "position", "checkpoint_sha256", "sampler"} <= set(m)
    assert m["mode"] == "union" and m["batch_index"] == 3 and [p.meta["position"] for p in a] == [0, 1, 2, 3]
    assert a[0].image.dtype == np.uint8 and a[0].inst_map.shape == (SIZE, SIZE)


def test_the_rare_class_bias_follows_the_fractions_given():
    source = make_toy_dataset(12, 64, 0)  # 3 of its patches hold a rare nucleus
    classes = ClassTable(5, source.info.rare_classes)
    gen = PatchGenerator(source, None, noise_synth, mode="balance", classes=classes, patch_shape=(64, 64))
    rare = source.info.rare_classes[0]
    rng_picks = [gen.pick_source(np.random.default_rng(i)) for i in range(200)]
    lacking = np.zeros(5)
    lacking[2:] = 0.25  # what was made has no rare nuclei
    biased = [gen.pick_source(np.random.default_rng(i), lacking) for i in range(200)]
    count = [source[i].class_counts(5)[rare] for i in range(len(source))]
    assert np.mean([count[i] for i in biased]) > np.mean([count[i] for i in rng_picks])
    assert make(source, mode="enlarge").bias_classes == ()  # enlarging has nothing to favour


def test_identity_names_the_weights_and_the_sampler():
    from diffmix_aug.sampling.ddim import DDIMSampler
    from diffmix_aug.sampling.synthesizer import Synthesizer
    from diffmix_aug.sdm import build_sdm

    torch.manual_seed(0)
    model = build_sdm("tiny", num_label_channels=6, image_size=SIZE)
    synth = Synthesizer(model, DDIMSampler(steps=2, t_start=250))
    ident = synthesizer_identity(synth)
    assert ident["checkpoint"]["sha256"] == model_sha256(model) and len(model_sha256(model)) == 64
    assert ident["sampler"]["type"] == "DDIMSampler" and ident["sampler"]["settings"]["t_start"] == 250
    assert ident["sampler"]["settings"] == synth.sampler_settings
    torch.manual_seed(1)
    other = build_sdm("tiny", num_label_channels=6, image_size=SIZE)
    assert model_sha256(other) != model_sha256(model)
    assert synthesizer_identity(noise_synth)["checkpoint"]["callable"].endswith("function")


def test_a_stop_request_ends_the_render(source):
    def interruptible(images, inst, types, generator=None, should_stop=None):
        if should_stop is not None and should_stop():
            raise SamplingInterrupted("stopped between two steps")
        return images

    def uninterruptible(images, inst, types, generator=None):
        return images

    for synth in (interruptible, uninterruptible):
        gen = make(source, synth=synth)
        with pytest.raises(GenerationStopped):
            gen.batch(0, 2, should_stop=lambda: True)
        assert len(gen.batch(0, 2, should_stop=lambda: False)) == 2


def test_a_synthesizer_returning_the_wrong_thing_is_named(source):
    gen = make(source, synth=lambda images, inst, types, generator=None: images.astype(np.float32))
    with pytest.raises(ValueError, match="must return uint8"):
        gen.batch(0, 2)
