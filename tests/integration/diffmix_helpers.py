"""Small real pieces for the DiffMixDataset tests: the tiny SDM synthesizer, dict / tuple
datasets over the toy data, and a few deliberately simple synthesizers for fault tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from diffmix_aug.data.toy import make_toy_dataset

SIZE = 32  # tiny patches: the tiny SDM makes a batch of 4 in ~0.2 s on one CPU core


def tiny_synthesizer(seed: int = 0):
    """The real tiny SDM (random weights) behind the real Synthesizer, 4 DDIM steps on CPU."""
    from diffmix_aug.sampling.ddim import DDIMSampler
    from diffmix_aug.sampling.synthesizer import Synthesizer
    from diffmix_aug.sdm import build_sdm

    torch.manual_seed(seed)
    model = build_sdm("tiny", num_label_channels=6, image_size=SIZE)
    return Synthesizer(model, DDIMSampler(steps=2, t_start=250), device="cpu")


def toy(n: int = 16, seed: int = 0):
    return make_toy_dataset(n, SIZE, seed)


class DictDataset(torch.utils.data.Dataset):
    """Dict items like many user datasets: CHW float tensor image in [0, 1], int64 maps, a name."""

    def __init__(self, n: int = 16, seed: int = 0, torch_chw: bool = True):
        self.data = toy(n, seed)
        self.torch_chw = torch_chw

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        s = self.data[i]
        if self.torch_chw:
            img = torch.from_numpy(s.image).permute(2, 0, 1).float() / 255.0
            return {"image": img, "inst_map": torch.from_numpy(s.inst_map.astype(np.int64)),
                    "type_map": torch.from_numpy(s.type_map.astype(np.int64)), "name": "toy"}
        return {"image": s.image, "inst_map": s.inst_map, "type_map": s.type_map}


class TupleDataset(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, seed: int = 0):
        self.data = toy(n, seed)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        s = self.data[i]
        return (s.type_map.astype(np.int64), s.image, s.inst_map)


class NoiseSynth:
    """A cheap deterministic synthesizer: the input image plus generator noise (for fault tests)."""

    num_classes = 5

    def __init__(self, fail_after: int | None = None):
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, images, inst_maps, type_maps, generator=None):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            explode_in_synthesis()
        noise = torch.randint(0, 50, images.shape, generator=generator, dtype=torch.int16).numpy()
        return np.clip(images.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def explode_in_synthesis():
    raise FloatingPointError("synthetic failure inside the synthesizer")


def patch_key(x) -> bytes:
    """Hashable identity of an image (numpy or tensor)."""
    a = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return a.tobytes()


def run_child_session(script: Path, args: list[str], tmp: Path, timeout: float) -> str:
    """Run ``python script *args`` in its own session with the package and these helpers importable;
    return its stdout once it exits 0 (an assertion otherwise, with its output).

    Output goes to files, not pipes: a process the child left behind would hold a pipe open and make
    the wait unbounded. The whole session is SIGKILLed afterwards, so nothing outlives the test.
    """
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests" / "integration")])}
    out, err = tmp / "stdout.txt", tmp / "stderr.txt"
    with out.open("w") as fo, err.open("w") as fe:
        proc = subprocess.Popen([sys.executable, str(script), *args], stdout=fo, stderr=fe, env=env, cwd=root,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stdout, stderr = out.read_text(), err.read_text()
    assert rc is not None, f"{script.name} {args}: no exit within {timeout:.0f} s (a hang): {stderr[-3000:]}"
    assert rc == 0, f"{script.name} {args}: rc {rc}\n{stdout[-2000:]}\n{stderr[-6000:]}"
    return stdout
