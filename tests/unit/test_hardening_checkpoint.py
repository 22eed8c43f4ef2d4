"""Issue 11 hardening: corrupted / non-finite SDM checkpoints fail at load naming the file and parameter;
training / SDM configs reject out-of-range values and unknown keys."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from sampling_helpers import randomize_sdm

from diffmix_aug.sampling import Synthesizer
from diffmix_aug.sdm import SDMConfig, build_sdm, export_sdm, load_sdm, load_sdm_config
from diffmix_aug.train import TrainConfig, load_train_config

KW = dict(steps=2, t_start=200)


@pytest.fixture(scope="module")
def tiny():
    return randomize_sdm(build_sdm("tiny", 6, image_size=64))


def _header(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    return raw, 8 + n, header


def _corrupt_first_float(path):
    """Overwrite the first element of the first floating tensor in the data section with 0xFF bytes (NaN)."""
    raw, base, header = _header(path)
    name = next(k for k in sorted(header) if header[k]["dtype"] in ("F16", "F32", "BF16"))
    start = base + header[name]["data_offsets"][0]
    width = {"F16": 2, "BF16": 2, "F32": 4}[header[name]["dtype"]]
    data = bytearray(raw)
    data[start:start + width] = b"\xff" * width
    path.write_bytes(bytes(data))
    return name


def _maps(n=1, size=16):
    images = np.full((n, size, size, 3), 128, np.uint8)
    inst = np.zeros((n, size, size), np.int32)
    inst[:, 4:10, 4:10] = 1
    return images, inst, inst.copy()


def test_export_with_corrupted_data_bytes_raises_naming_file_and_param(tiny, tmp_path):
    path = export_sdm(tiny, tmp_path / "sdm.safetensors")
    name = _corrupt_first_float(path)
    with pytest.raises(ValueError, match=r"sdm\.safetensors: parameter '" + name.replace(".", r"\.") + r"'.*non-finite"):
        Synthesizer.from_checkpoint(path, device="cpu", **KW)
    with pytest.raises(ValueError, match=r"sdm\.safetensors.*non-finite"):
        load_sdm(path)


def test_export_with_one_nan_parameter_raises(tiny, tmp_path):
    model = build_sdm("tiny", 6, image_size=64)
    model.load_state_dict(tiny.state_dict())
    key = sorted(model.state_dict())[-1]
    with torch.no_grad():
        model.state_dict()[key].view(-1)[0] = float("nan")
    path = export_sdm(model, tmp_path / "nan_param.safetensors")
    with pytest.raises(ValueError, match=r"nan_param\.safetensors: parameter '" + key.replace(".", r"\.") + "'"):
        Synthesizer.from_checkpoint(path, device="cpu", **KW)


def test_export_with_all_nan_weights_raises(tmp_path):
    model = build_sdm("tiny", 6, image_size=64)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    path = export_sdm(model, tmp_path / "all_nan.safetensors", dtype=torch.float32)
    with pytest.raises(ValueError, match=r"all_nan\.safetensors: parameter .* holds \d+ of \d+ non-finite"):
        Synthesizer.from_checkpoint(path, device="cpu", **KW)


def test_fp16_export_overflow_inf_raises(tiny, tmp_path):
    model = build_sdm("tiny", 6, image_size=64)
    model.load_state_dict(tiny.state_dict())
    key = sorted(k for k, v in model.state_dict().items() if v.is_floating_point())[0]
    with torch.no_grad():
        model.state_dict()[key].view(-1)[0] = 1e6  # inf in float16
    path = export_sdm(model, tmp_path / "overflow.safetensors")
    with pytest.raises(ValueError, match=r"overflow\.safetensors: parameter"):
        load_sdm(path)


def test_good_export_still_loads_and_synthesizes(tiny, tmp_path):
    path = export_sdm(tiny, tmp_path / "good.safetensors")
    synth = Synthesizer.from_checkpoint(path, device="cpu", **KW)
    assert synth.checkpoint == str(path)
    out = synth(*_maps())
    assert out.shape == (1, 16, 16, 3) and out.dtype == np.uint8


def test_non_finite_model_output_raises_naming_checkpoint(tiny, tmp_path):
    path = export_sdm(tiny, tmp_path / "good.safetensors")
    synth = Synthesizer.from_checkpoint(path, device="cpu", **KW)
    with torch.no_grad():  # weights go bad after loading (e.g. a later in-place update)
        for p in synth.model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"non-finite.*checkpoint .*good\.safetensors"):
        synth(*_maps())


def test_non_finite_output_without_checkpoint_says_so(tiny):
    model = build_sdm("tiny", 6, image_size=64)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    synth = Synthesizer(model, device="cpu")
    with pytest.raises(ValueError, match=r"non-finite.*no checkpoint path known"):
        synth(*_maps())


# --- training / SDM config ranges and unknown keys -------------------------------------------------

@pytest.mark.parametrize("rate", [1.0, 0.0, 1.5, -0.1])
def test_train_ema_rate_must_be_strictly_between_0_and_1(rate):
    with pytest.raises(ValueError, match=r"`train\.ema_rate` must be in \(0\.0, 1\.0\), got"):
        TrainConfig.from_dict({"train": {"ema_rate": rate}})


@pytest.mark.parametrize("key", ["sample_count", "sample_steps"])
@pytest.mark.parametrize("value", [-4, 0])
def test_train_sample_counts_must_be_positive(key, value):
    with pytest.raises(ValueError, match=rf"`train\.{key}` must be > 0, got {value}"):
        TrainConfig.from_dict({"train": {key: value}})


def test_train_other_bad_values_named():
    with pytest.raises(ValueError, match=r"`train\.sample_guidance`"):
        TrainConfig.from_dict({"train": {"sample_guidance": -1.0}})
    with pytest.raises(TypeError, match=r"`train\.channels_last` must be true or false"):
        TrainConfig.from_dict({"train": {"channels_last": "yes"}})
    with pytest.raises(TypeError, match=r"`train\.stages` must be a list"):
        TrainConfig.from_dict({"train": {"stages": {"name": "a", "steps": 1, "lr": 0.1}}})
    with pytest.raises(ValueError, match=r"`data\.crop_size`=128 must be <= `data\.image_size`=96"):
        TrainConfig.from_dict({"data": {"crop_size": 128}})
    with pytest.raises(ValueError, match=r"`data\.image_size` must be > 0"):
        TrainConfig.from_dict({"data": {"image_size": 0}})
    with pytest.raises(TypeError, match=r"`out_dir` must be a non-empty path string, got NoneType"):
        TrainConfig.from_dict({"out_dir": None})


@pytest.mark.parametrize("section", ["model", "diffusion", "data", "train"])
def test_every_train_section_rejects_unknown_keys_listing_valid_ones(section):
    with pytest.raises(ValueError, match=rf"unknown key\(s\) \['bogus'\] in config section `{section}`; valid keys"):
        TrainConfig.from_dict({section: {"bogus": 1}})


def test_stage_and_model_overrides_reject_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match=r"`train\.stages\[\]`; valid keys are \['name', 'steps', 'lr', 'drop_rate'\]"):
        TrainConfig.from_dict({"train": {"stages": [{"name": "a", "steps": 1, "lr": 0.1, "bogus": 0}]}})
    with pytest.raises(ValueError, match=r"\['model_chanels'\] in config section `model\.overrides`.*model_channels"):
        TrainConfig.from_dict({"model": {"overrides": {"model_chanels": 32}}})
    with pytest.raises(ValueError, match=r"`model\.overrides`.*label_channels: it is set from the dataset"):
        TrainConfig.from_dict({"model": {"overrides": {"label_channels": 4}}})
    path = tmp_path / "t.yaml"
    path.write_text("model: {preset: tiny, overrides: {dropuot: 0.1}}\n")
    with pytest.raises(ValueError, match=r"t\.yaml: unknown key\(s\) \['dropuot'\]"):
        load_train_config(path)


def test_sdm_config_rejects_unknown_keys_and_bad_types(tmp_path):
    with pytest.raises(ValueError, match=r"unknown SDM config key\(s\) \['bogus'\]; valid keys are"):
        SDMConfig.from_dict({"bogus": 1})
    path = tmp_path / "s.yaml"
    path.write_text("preset: tiny\nbogus: 1\n")
    with pytest.raises(ValueError, match=r"\['bogus'\]; valid keys are"):
        load_sdm_config(path)
    with pytest.raises(TypeError, match=r"`learn_sigma` must be true or false, got str"):
        SDMConfig(learn_sigma="no")
    with pytest.raises(TypeError, match=r"`channel_mult` must be a list of positive ints"):
        SDMConfig(channel_mult=(1, 1.5))
    with pytest.raises(TypeError, match=r"`num_head_channels` must be an int"):
        SDMConfig(num_head_channels=64.0)
    assert SDMConfig.from_dict(SDMConfig().to_dict()) == SDMConfig()


def test_training_directory_with_nan_ema_raises_naming_ema_file(tiny, tmp_path):
    from diffmix_aug.train.checkpoint import capture_rng_state, save_training_checkpoint

    model = build_sdm("tiny", 6, image_size=64)
    model.load_state_dict(tiny.state_dict())
    ema = build_sdm("tiny", 6, image_size=64)
    ema.load_state_dict(tiny.state_dict())
    key = sorted(k for k, v in ema.state_dict().items() if v.is_floating_point())[0]
    with torch.no_grad():
        ema.state_dict()[key].view(-1)[0] = float("nan")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_training_checkpoint(tmp_path / "run", model=model, ema=ema, optimizer=opt, scaler=None, step=1,
                             rng=capture_rng_state(), config={"sdm": model.config.to_dict(), "train": {},
                                                              "num_classes": 5, "dataset": "toy"})
    with pytest.raises(ValueError, match=r"ema\.safetensors: parameter '" + key.replace(".", r"\.") + "'"):
        Synthesizer.from_checkpoint(tmp_path / "run", device="cpu", **KW)
    assert load_sdm(tmp_path / "run", use_ema=False) is not None  # model.safetensors is fine
