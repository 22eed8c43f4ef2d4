"""SDM training under real 2-process DDP (gloo, CPU): ranks split the data, end with identical weights,
and only rank 0 writes the training directory."""

from __future__ import annotations

import json
import os
import socket
import time

import torch

from diffmix_aug.train import TrainConfig
from diffmix_aug.train.data import epoch_indices

WORLD = 2
BATCH = 2
N_IMAGES = 2  # x 6 variants = 12 items; 6 per rank = 3 batches per epoch, so 4 steps cross an epoch
STAGES = ((3, 1e-3, 0.0), (1, 5e-4, 0.5))
STEPS = sum(s for s, _, _ in STAGES)
DEADLINE_S = 120.0  # a hung collective fails the test instead of hanging the session


def _config() -> TrainConfig:
    stages = [{"name": f"s{i}", "steps": s, "lr": lr, "drop_rate": d} for i, (s, lr, d) in enumerate(STAGES)]
    return TrainConfig.from_dict({
        "model": {"preset": "tiny", "image_size": 32},
        "data": {"dataset": "toy", "num_images": N_IMAGES, "image_size": 48, "crop_size": 32},
        "train": {"batch_size": BATCH, "stages": stages, "ema_rate": 0.9, "grad_clip": 1.0, "device": "cpu",
                  "sample_interval": 0, "save_interval": 2, "log_interval": 3},
    })


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    """One torchrun-like rank: env vars set, so ``train_sdm`` starts (and must destroy) the gloo group."""
    import torch.distributed as dist

    import diffmix_aug.train.loop as loop
    from diffmix_aug.train import train_sdm

    torch.set_num_threads(1)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)})
    seen: list[tuple[int, int]] = []

    class Recording(loop.SDMTrainData):
        """Records ``(epoch, item)`` of every item this rank loads (num_workers=0: in this process)."""

        def __getitem__(self, index):
            seen.append((self.epoch, int(index)))
            return super().__getitem__(index)

    loop.SDMTrainData = Recording
    try:
        # each rank gets its own directory: anything rank 1 writes shows up in out_rank1
        result = train_sdm(_config(), out_dir=os.path.join(tmp, f"out_rank{rank}"), progress=False)
        group_left = dist.is_initialized()
        torch.save({"model": result.model.state_dict(), "ema": result.ema.state_dict(), "step": result.step,
                    "losses": result.losses, "seen": seen, "group_left": group_left},
                   os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawn(tmp) -> None:
    import torch.multiprocessing as mp

    ctx = mp.spawn(_worker, args=(WORLD, _free_port(), str(tmp)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + DEADLINE_S
    while not ctx.join(timeout=1.0):  # raises ProcessRaisedException / ProcessExitedException on failure
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            for p in ctx.processes:
                p.join(5)
            raise AssertionError(f"DDP training did not finish within {DEADLINE_S:.0f} s")


def test_ddp_two_ranks_sync_weights_split_data_rank0_writes(tmp_path):
    from safetensors.torch import load_file

    from diffmix_aug.sdm import build_sdm

    _spawn(tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    cfg = _config()

    # the loop destroyed the process group it created
    assert [r["group_left"] for r in ranks] == [False, False]
    assert [r["step"] for r in ranks] == [STEPS, STEPS] and [len(r["losses"]) for r in ranks] == [STEPS, STEPS]

    # identical weights (raw and EMA) on both ranks, and they moved away from the seeded init
    for name in ("model", "ema"):
        a, b = ranks[0][name], ranks[1][name]
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    torch.manual_seed(cfg.train.seed)
    init = build_sdm("tiny", 6, 32).state_dict()
    assert init.keys() == ranks[0]["model"].keys()
    assert any(not torch.equal(init[k], v) for k, v in ranks[0]["model"].items())

    # different data: per epoch, each rank loaded a prefix of its own epoch_indices order covering the
    # batches it trained on (and nothing past the last step), disjoint from the other's
    n_items = N_IMAGES * 6
    per_epoch = n_items // WORLD // BATCH  # batches per epoch per rank
    by_rank = []
    for r, res in enumerate(ranks):
        epochs: dict[int, list[int]] = {}
        for e, i in res["seen"]:
            epochs.setdefault(e, []).append(i)
        used: dict[int, int] = {}
        for step in range(STEPS):
            used[step // per_epoch] = used.get(step // per_epoch, 0) + BATCH
        assert sorted(epochs) == sorted(used), (r, epochs)
        for e, loaded in epochs.items():
            order = epoch_indices(n_items, e, cfg.train.seed, rank=r, world_size=WORLD, batch_size=BATCH)
            assert loaded == order[:len(loaded)], (r, e, loaded, order)
            assert len(loaded) == used[e], (r, e, loaded, used[e])
        by_rank.append(epochs)
    assert sorted(by_rank[0]) == [0, 1]  # 4 steps of 3 batches per epoch: the second epoch was reached
    for e in by_rank[0]:
        assert not set(by_rank[0][e]) & set(by_rank[1][e]), e
    assert ranks[0]["losses"] != ranks[1]["losses"]  # different batches / noise, yet the same weights

    # rank 0 alone wrote: rank 1's directory was never created
    assert not (tmp_path / "out_rank1").exists(), sorted(p.name for p in (tmp_path / "out_rank1").rglob("*"))
    out = tmp_path / "out_rank0"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "ema.safetensors", "log.jsonl",
                                                     "model.safetensors", "train_state.pt"]
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1))
    assert [row["loss"] for row in rows] == ranks[0]["losses"]
    saved = load_file(out / "model.safetensors")
    saved_ema = load_file(out / "ema.safetensors")
    for k, v in ranks[0]["model"].items():
        assert torch.equal(saved[k], v.float()), k
    for k, v in ranks[0]["ema"].items():
        assert torch.equal(saved_ema[k], v.float()), k
    run_config = json.loads((out / "config.json").read_text())
    assert run_config["step"] == STEPS
    # the toy set has no physical resolution; its class table travels to every export
    assert run_config["mpp"] is None and run_config["class_names"][1] == "miscellaneous"
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["step"] == STEPS
    rng = state["rng"]  # every rank's generator gathered, so each rank can resume its own stream
    assert isinstance(rng, list) and len(rng) == WORLD
    assert not torch.equal(rng[0]["generator"], rng[1]["generator"])
