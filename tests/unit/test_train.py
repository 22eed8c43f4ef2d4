"""SDM training: loss falls on the toy data, label-branch gradients, exact resume, checkpoints, export, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffmix_aug.diffusion import DiffusionTables, drop_labels, training_losses
from diffmix_aug.sdm import EXPORT_FORMAT, load_sdm, read_sdm_metadata
from diffmix_aug.train import TrainConfig, export_sdm, load_train_config, train_sdm
from diffmix_aug.train.data import SDMTrainData, apply_variant, epoch_indices


@pytest.fixture
def one_thread():
    """Training on a shared 2-core box: one intra-op thread avoids OpenMP oversubscription stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(steps=((4, 1e-3, 0.0),), *, crop=32, batch=4, n_images=6, **train) -> TrainConfig:
    stages = [{"name": f"s{i}", "steps": s, "lr": lr, "drop_rate": d} for i, (s, lr, d) in enumerate(steps)]
    return TrainConfig.from_dict({
        "model": {"preset": "tiny", "image_size": 32},
        "data": {"dataset": "toy", "num_images": n_images, "image_size": 48, "crop_size": crop},
        "train": {"batch_size": batch, "stages": stages, "ema_rate": 0.9, "sample_interval": 0, "save_interval": 0,
                  "log_interval": 1, **train},
    })


def _fixed_eval_loss(model, data: SDMTrainData) -> float:
    """Hybrid loss on a fixed batch with timesteps spread over the whole range (deterministic)."""
    tables = DiffusionTables.from_schedule()
    items = [data[i] for i in range(8)]
    x = torch.stack([a for a, _ in items])
    y = torch.stack([b for _, b in items])
    t = torch.linspace(50, 950, 8).long()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return float(training_losses(model.eval(), tables, x, y, t, noise)["loss"].mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = _config(((30, 1e-3, 0.0),), n_images=8)
        out = tmp_path_factory.mktemp("train")
        result = train_sdm(cfg, out_dir=out, progress=False)
    finally:
        torch.set_num_threads(before)
    return cfg, result


def test_loss_falls_on_toy_data(trained, one_thread):
    from diffmix_aug.data.toy import make_toy_dataset
    from diffmix_aug.sdm import build_sdm

    cfg, result = trained
    ds = make_toy_dataset(8, size=48, seed=0)
    data = SDMTrainData(ds, 32, seed=99)
    torch.manual_seed(cfg.train.seed)  # the same init as the run
    fresh = build_sdm("tiny", ds.num_classes + 1, 32)
    before = _fixed_eval_loss(fresh, data)
    after = _fixed_eval_loss(result.model, data)
    assert result.step == 30 and len(result.losses) == 30
    assert after < 0.7 * before, (before, after)
    assert np.mean(result.losses[-5:]) < 0.7 * np.mean(result.losses[:5])
    rows = [json.loads(line) for line in (result.out_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 31))


def test_label_branch_gets_gradients(trained, one_thread):
    _, result = trained
    model = result.model.train()
    tables = DiffusionTables.from_schedule()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    y = torch.zeros(4, 6, 32, 32)
    y[:, 0] = 1
    y[:, 0, 8:16, 8:16] = 0
    y[:, 3, 8:16, 8:16] = 1
    t = torch.tensor([10, 200, 500, 900])
    noise = torch.randn(x.shape, generator=g)
    spade = model.spade_layers()[0].mlp_shared.weight
    for rate, nonzero in ((0.0, True), (1.0, False)):
        model.zero_grad()
        yd = drop_labels(y, rate, generator=torch.Generator().manual_seed(1))
        training_losses(model, tables, x, yd, t, noise)["loss"].mean().backward()
        # an all-zero (null) label gives the SPADE input conv no weight gradient at all
        assert bool(spade.grad.abs().sum() > 0) is nonzero
    model.zero_grad()


def test_resume_is_exact(tmp_path, one_thread):
    cfg = _config(((3, 1e-3, 0.0), (2, 5e-4, 0.5)), batch=2, n_images=2)
    full = train_sdm(cfg, out_dir=tmp_path / "full", progress=False)
    part = train_sdm(cfg, out_dir=tmp_path / "part", max_steps=2, progress=False)
    assert part.step == 2
    resumed = train_sdm(cfg, out_dir=tmp_path / "part", resume=True, progress=False)
    assert resumed.step == 5 and len(resumed.losses) == 3
    np.testing.assert_array_equal(full.losses[2:], resumed.losses)
    for name in ("model.safetensors", "ema.safetensors"):
        from safetensors.torch import load_file

        a = load_file(tmp_path / "full" / name)
        b = load_file(tmp_path / "part" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    state = torch.load(tmp_path / "part" / "train_state.pt", weights_only=True)
    assert state["step"] == 5 and {"torch", "numpy", "python", "cuda", "generator"} <= set(state["rng"])
    steps = [json.loads(line)["step"] for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_bad_checkpoints_name_the_file(tmp_path, one_thread):
    cfg = _config(((1, 1e-3, 0.0),), batch=2, n_images=1)
    run = tmp_path / "run"
    train_sdm(cfg, out_dir=run, progress=False)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train_sdm(cfg, out_dir=tmp_path / "empty", resume=True, progress=False)
    other = TrainConfig.from_dict({**cfg.to_dict(), "model": {"preset": "tiny", "image_size": 32,
                                                              "overrides": {"spade_hidden": 16}}})
    with pytest.raises(ValueError, match=r"config\.json.*spade_hidden"):
        train_sdm(other, out_dir=run, resume=True, progress=False)
    good = (run / "ema.safetensors").read_bytes()
    (run / "ema.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="ema.safetensors"):
        train_sdm(cfg, out_dir=run, resume=True, progress=False)
    (run / "ema.safetensors").write_bytes(good)
    (run / "train_state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="train_state.pt"):
        train_sdm(cfg, out_dir=run, resume=True, progress=False)
    (run / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError):
        load_sdm(tmp_path / "nope.safetensors")


def test_export_and_load(trained, tmp_path, one_thread):
    _, result = trained
    path = export_sdm(result.out_dir, tmp_path / "sdm.safetensors")
    meta = read_sdm_metadata(path)
    assert meta["num_classes"] == 5 and meta["dataset"] == "toy" and meta["step"] == 30
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        assert fh.metadata()["format"] == EXPORT_FORMAT
        assert fh.get_tensor("out_conv.weight").dtype == torch.float16
    loaded = load_sdm(path)
    from_dir = load_sdm(result.out_dir)
    assert next(loaded.parameters()).dtype == torch.float32 and not loaded.training
    for (k, a), b, e in zip(loaded.state_dict().items(), from_dir.state_dict().values(),
                            result.ema.state_dict().values()):
        torch.testing.assert_close(b, e, msg=k)
        torch.testing.assert_close(a, e.half().float(), msg=k)
    raw = load_sdm(result.out_dir, use_ema=False)
    torch.testing.assert_close(raw.out_conv.weight, result.model.out_conv.weight)
    bad = tmp_path / "bad.safetensors"
    from diffmix_aug.sdm.checkpoint import write_safetensors

    write_safetensors(bad, {"w": torch.zeros(1)}, {"format": "other"})
    with pytest.raises(ValueError, match="bad.safetensors.*format"):
        load_sdm(bad)


def test_config_errors_name_valid_keys(tmp_path):
    with pytest.raises(ValueError, match=r"`train`.*valid keys are.*batch_size"):
        TrainConfig.from_dict({"train": {"batch": 3}})
    with pytest.raises(ValueError, match="valid keys are.*model"):
        TrainConfig.from_dict({"modle": {}})
    with pytest.raises(ValueError, match="data_root"):
        TrainConfig.from_dict({"data": {"dataset": "consep"}})
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  stages: [{name: a, steps: 1, lr: 0.1, drop: 0.2}]\n")
    with pytest.raises(ValueError, match=r"c\.yaml.*drop_rate"):
        load_train_config(path)
    cfg = load_train_config("diffmix_aug/configs/sdm_tiny.yaml")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for name in ("consep", "glysac"):
        paper = load_train_config(f"diffmix_aug/configs/sdm_paper_{name}.yaml")
        assert paper.train.batch_size == 16 and paper.data.crop_size == 256 and paper.model.preset == "paper"
        assert [(s.lr, s.drop_rate) for s in paper.train.stages] == [(1e-4, 0.0), (2e-5, 0.2)]


def test_data_variants_and_rank_split():
    a = np.arange(12).reshape(3, 4)
    outs = [apply_variant(a, v) for v in range(6)]
    assert outs[1].shape == (4, 3) and np.array_equal(outs[2], a[::-1, ::-1])
    assert np.array_equal(outs[4], a[:, ::-1]) and np.array_equal(outs[5], a[::-1])
    assert len({o.tobytes() for o in outs}) == 6
    r0 = epoch_indices(50, 3, 0, rank=0, world_size=2, batch_size=4)
    r1 = epoch_indices(50, 3, 0, rank=1, world_size=2, batch_size=4)
    assert len(r0) == len(r1) == 24 and not set(r0) & set(r1)
    assert epoch_indices(50, 3, 0) != epoch_indices(50, 4, 0)


def test_train_item_ranges():
    from diffmix_aug.data.toy import make_toy_dataset

    data = SDMTrainData(make_toy_dataset(2, size=48, seed=0), 32, seed=0)
    assert len(data) == 12
    x, y = data[5]
    assert x.shape == (3, 32, 32) and y.shape == (6, 32, 32)
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(y[:5].sum(0), torch.ones(32, 32))  # one-hot types
    x2, _ = data[5]
    assert torch.equal(x, x2)
    data.set_epoch(1)
    assert not torch.equal(data[5][0], x)  # a fresh crop every epoch


def test_cli_trains_and_writes_grid(tmp_path, one_thread):
    from diffmix_aug.cli import main

    cfg = _config(((2, 1e-3, 0.0),), batch=2, n_images=2, sample_interval=1, sample_count=2, sample_steps=3,
                  sample_guidance=1.5).to_dict()
    import yaml

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["train-sdm", "--config", str(path), "--out", str(out), "--no-progress",
                 "--export", str(tmp_path / "e.safetensors")]) == 0
    assert (out / "samples" / "step_0000002.png").is_file() and (out / "samples" / "step_0000001.png").is_file()
    assert (tmp_path / "e.safetensors").is_file()
    from matplotlib.image import imread

    grid = imread(out / "samples" / "step_0000002.png")
    assert grid.shape[:2] == (3 * 32, 2 * 32)


def test_ema_warmup_ramps_the_decay_and_forgets_the_initial_weights():
    from diffmix_aug.train.loop import ema_decay

    assert ema_decay(0.999, 0, True) == pytest.approx(0.1)
    assert ema_decay(0.999, 10, True) == pytest.approx(11 / 20)
    assert ema_decay(0.999, 10**6, True) == 0.999
    assert ema_decay(0.999, 0, False) == 0.999
    # the weight the initial parameters keep after 2,000 updates: plain EMA vs warmup
    plain = np.prod([ema_decay(0.999, s, False) for s in range(2000)])
    ramped = np.prod([ema_decay(0.999, s, True) for s in range(2000)])
    assert plain == pytest.approx(0.999**2000) and plain > 0.13
    assert ramped < 1e-6
    with pytest.raises(TypeError, match="ema_warmup"):
        TrainConfig.from_dict({"train": {"ema_warmup": "yes"}})
    assert load_train_config("diffmix_aug/configs/sdm_paper_consep.yaml").train.ema_warmup is False
    assert load_train_config("diffmix_aug/configs/sdm_tiny.yaml").train.ema_warmup is True


def test_ctrl_c_saves_a_checkpoint_exits_130_and_says_how_to_resume(tmp_path):
    """SIGINT mid-run: the loop stops at the next step boundary, saves, exits 130 with a resume line;
    the resumed run continues from that step. Every wait is bounded."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    cfg = _config(((100000, 1e-3, 0.0),), batch=2, n_images=2, save_interval=0).to_dict()
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "diffmix_aug.cli", "train-sdm", "--config", str(path), "--out",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        log = out / "log.jsonl"
        while not (log.is_file() and log.read_text().count("\n") >= 2):  # two steps done: the handler is in
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no training step in 300 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert "train-sdm: reading the toy training data" in stdout  # progress before the bar
    assert "checkpoint saved in" in stderr and f"--config {path} --resume --out {out}" in stderr
    assert "Traceback" not in stderr
    step = json.loads((out / "config.json").read_text())["step"]
    assert step >= 2
    result = train_sdm(TrainConfig.from_dict(cfg), out_dir=out, resume=True, max_steps=step + 1, progress=False)
    assert result.step == step + 1 and not result.interrupted
