"""Synthesizer: uint8 in/out, equals the sampler on the encoded maps, thread use, validation."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch
from sampling_helpers import ConvModel, make_inputs, randomize_sdm

from diffmix_aug.labelmaps.encode import encode_condition
from diffmix_aug.sampling import DDIMSampler, ReferenceDDIMSampler, Synthesizer
from diffmix_aug.sdm import build_sdm

KW = dict(steps=2, t_start=100)


def _maps(n=2, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    inst = np.zeros((n, size, size), np.int32)
    types = np.zeros((n, size, size), np.int32)
    for i in range(n):
        for j, (y, x) in enumerate(rng.integers(2, size - 10, (3, 2))):
            inst[i, y:y + 7, x:x + 7] = j + 1
            types[i, y:y + 7, x:x + 7] = 1 + (i + j) % 4
    return images, inst, types


@pytest.fixture(scope="module")
def model():
    return randomize_sdm(build_sdm("tiny", 6, image_size=64))


def test_synth_equals_sampler_on_encoded_maps(model):
    images, inst, types = _maps()
    synth = Synthesizer(model, DDIMSampler(**KW))
    assert synth.num_classes == 5
    out = synth(images, inst, types, generator=torch.Generator().manual_seed(0))
    assert out.dtype == np.uint8 and out.shape == images.shape
    x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    cond = torch.from_numpy(np.stack([encode_condition(t, i, 5) for t, i in zip(types, inst)]))
    ref = ReferenceDDIMSampler(**KW).sample(model, x0, cond, generator=torch.Generator().manual_seed(0))
    ref_u8 = ((ref + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(out.astype(int) - ref_u8.astype(int)).max() <= 1
    again = synth(images, inst, types, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(out, again)
    assert not np.array_equal(out, images)


def test_synth_from_a_background_thread(model):
    images, inst, types = _maps(1)
    synth = Synthesizer(model, DDIMSampler(**KW), cuda_graph=True)  # CPU: graphs are ignored
    expected = synth(images, inst, types, generator=torch.Generator().manual_seed(3))
    result = {}

    def work():
        result["out"] = synth(images, inst, types, generator=torch.Generator().manual_seed(3))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert np.array_equal(result["out"], expected)
    assert synth.sampler.last_run["path"] == "eager"


def test_synth_validation(model):
    images, inst, types = _maps(2)
    synth = Synthesizer(model, DDIMSampler(**KW))
    with pytest.raises(TypeError, match="images"):
        synth(images.astype(np.float32), inst, types)
    with pytest.raises(ValueError, match="inst_maps"):
        synth(images, inst[:1], types)
    with pytest.raises(ValueError, match="type_maps"):
        synth(images, inst, types + 5)
    with pytest.raises(ValueError, match="divisible"):
        synth(images[:, :14, :14], inst[:, :14, :14], types[:, :14, :14])
    with pytest.raises(ValueError, match="precision"):
        Synthesizer(model, DDIMSampler(**KW), precision="fp64")
    with pytest.raises(ValueError, match="fp32 only"):
        Synthesizer(model, ReferenceDDIMSampler(**KW), precision="bf16")
    with pytest.raises(TypeError, match="label_channels"):
        Synthesizer(torch.nn.Conv2d(3, 3, 1), DDIMSampler(**KW))
    assert synth(images[:0], inst[:0], types[:0]).shape == (0, 16, 16, 3)


def test_graph_request_on_cpu_falls_back_and_logs_once(caplog):
    model, (x0, cond) = ConvModel(), make_inputs(2, 8)
    s = DDIMSampler(steps=3, t_start=200, cuda_graph=True)
    ref = DDIMSampler(steps=3, t_start=200).sample(model, x0, cond, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING, logger="diffmix_aug.sampling.graph"):
        for _ in range(2):
            out = s.sample(model, x0, cond, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, ref) and s.last_run["path"] == "eager"
    messages = [r.getMessage() for r in caplog.records if "CUDA graphs need a CUDA device" in r.getMessage()]
    assert len(messages) <= 1  # logged once per process (an earlier test may have logged it already)


def test_sampler_presets_and_reported_settings(model):
    import json

    from diffmix_aug.sampling import DEFAULT_PRESET, PRESETS, make_sampler

    synth = Synthesizer(model, "reference")
    settings = synth.sampler_settings
    assert settings["preset"] == "reference" and settings["solver"] == "ddim"
    assert settings["steps"] == 55 and settings["t_start"] == 540 and settings["guidance_scale"] == 1.5
    assert settings["timesteps"] == list(range(540, -1, -10)) and settings["precision"] == "fp32"
    assert json.loads(json.dumps(settings)) == settings  # JSON-able, for metadata and result files
    assert Synthesizer(model).sampler_settings["preset"] == DEFAULT_PRESET
    custom = Synthesizer(model, DDIMSampler(**KW)).sampler_settings
    assert custom["preset"] is None and custom["steps"] == 2 and custom["t_start"] == 100
    # a preset value can be overridden by name; the result reproduces from its settings
    s = make_sampler("reference", steps=20)
    assert s.timesteps[0] == 540 and len(s.timesteps) == 20
    assert set(PRESETS) >= {"reference", "fast"}
    fast = Synthesizer(model, "fast")
    assert fast.sampler_settings["preset"] == "fast" and fast.sampler_settings["solver"] == "unipc"
    assert fast.sampler_settings["timesteps"][0] == 540 and len(fast.sampler_settings["timesteps"]) == 10
    images, inst, types = _maps(1)
    assert fast(images, inst, types, generator=torch.Generator().manual_seed(0)).shape == images.shape
    with pytest.raises(ValueError, match="preset"):
        make_sampler("fastest")
    with pytest.raises(ValueError, match="`strength` was removed: .*t_start"):
        make_sampler("reference", strength=0.55)
    with pytest.raises(TypeError, match="stepz"):
        make_sampler(stepz=3)
