"""Issue 11 hardening: corrupted / non-finite SDM checkpoints fail at load, naming the file and parameter."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from sampling_helpers import randomize_sdm

from diffmix_aug.sampling import Synthesizer
from diffmix_aug.sdm import build_sdm, export_sdm, load_sdm

KW = dict(num_steps=5, strength=0.4)


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
