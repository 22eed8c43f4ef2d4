"""Process lifecycle of ``DiffMixDataset``: ``close()`` is fast, the process exits 0, nothing hangs.

Each case runs in a fresh subprocess, as a training job would, because the failures it guards
against (SIGABRT at interpreter exit with a producer thread still in torch, a spawn worker that
races a lazy ``cv2`` import) only show at process start and end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CKPT = ROOT / "diffmix_aug" / "weights" / "sdm_tiny_toy.safetensors"

_SCRIPT = textwrap.dedent("""
    import sys, time
    import torch
    from diffmix_aug import DiffMixDataset, Synthesizer, make_toy_dataset


    def main():
        ctx, runs, close, loader = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "close", sys.argv[4] == "loader"
        torch.set_num_threads(1)
        synth = Synthesizer.from_checkpoint({ckpt!r})
        base = make_toy_dataset(8, 64, 0)
        worst = 0.0
        for run in range(runs):
            ds = DiffMixDataset(base, synth, mode="both", synthetic_ratio=0.5, seed=run, rare_classes=(1,))
            if loader:
                dl = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=ctx,
                                                 collate_fn=list, timeout=120)
                n = sum(len(b) for b in dl)
                assert n == len(base), n
            else:
                time.sleep(0.5)
            if close:
                t = time.monotonic()
                ds.close()
                worst = max(worst, time.monotonic() - t)
        print(f"worst_close={{worst:.3f}}", flush=True)


    if __name__ == "__main__":
        main()
""").format(ckpt=str(CKPT))


def _run(ctx: str, runs: int, close: bool, loader: bool, timeout: float,
         tmp: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    script = tmp / "lifecycle_child.py"  # a file, so spawn workers can re-import the main module
    script.write_text(_SCRIPT)
    t = time.monotonic()
    proc = subprocess.run([sys.executable, str(script), ctx, str(runs), "close" if close else "keep",
                           "loader" if loader else "plain"], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)
    return proc, time.monotonic() - t


def _worst_close(proc: subprocess.CompletedProcess) -> float:
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("worst_close=")]
    assert line, proc.stdout + proc.stderr
    return float(line[-1].split("=")[1])


@pytest.mark.parametrize("ctx", ["fork", "spawn"])
def test_close_is_fast_and_process_exits_zero_20_times(ctx, tmp_path):
    """20 one-liners in a row in one process, each ``close()``d while its producer synthesises."""
    proc, _ = _run(ctx, 20, close=True, loader=False, timeout=240, tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _worst_close(proc) < 2.0


def test_process_exits_zero_without_close(tmp_path):
    """A user who never calls ``close()``: the interpreter exit stops the producer cleanly."""
    proc, _ = _run("fork", 2, close=False, loader=False, timeout=120, tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("ctx", ["fork", "spawn"])
def test_dataloader_workers_then_close_exit_zero(ctx, tmp_path):
    """Balancing on (default ``mode="both"``), a real 2-worker DataLoader, fresh runs: no hang, rc 0."""
    proc, _ = _run(ctx, 3, close=True, loader=True, timeout=300, tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _worst_close(proc) < 2.0


@pytest.mark.slow
def test_spawn_50_fresh_runs_never_hang(tmp_path):
    """The acceptance run of the spawn-import race: 50 fresh processes, each bounded by a timeout."""
    for _ in range(50):
        proc, _ = _run("spawn", 1, close=True, loader=True, timeout=180, tmp=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process backend forks (Linux)")
def test_process_producer_forked_beside_a_busy_thread_producer_of_the_same_synthesizer():
    """Two datasets share one Synthesizer: a thread producer synthesises while a process producer is
    forked. Measured before the fix (benchmarks/loader.py, then a 1 s hold): the child inherited the
    Synthesizer's call lock held, and its blocking warm-up made 0 patches in 600 s."""
    import threading

    from diffmix_aug import DiffMixDataset, Synthesizer, make_toy_dataset

    synth = Synthesizer.from_checkpoint(CKPT, steps=4, t_start=150)  # 4 steps: a fast call
    base = make_toy_dataset(8, 64, 0)
    with DiffMixDataset(base, synth, synthetic_ratio=0.5, producer_backend="thread", batch_size=2,
                        rare_classes=(1,)) as busy:
        stop = threading.Event()

        def read():  # keeps the thread producer making batches (reads release its credits)
            while not stop.is_set():
                for i in range(len(busy)):
                    busy[i]
                time.sleep(0.01)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            for run in range(2):
                entered = threading.Event()

                def in_flight(entered=entered):  # a call in flight at the fork, deterministically
                    with synth.paused(timeout=60):
                        entered.set()
                        time.sleep(1.0)

                holder = threading.Thread(target=in_flight)
                holder.start()
                assert entered.wait(60)
                t = time.monotonic()
                with DiffMixDataset(base, synth, synthetic_ratio=0.5, producer_backend="process", batch_size=2,
                                    warmup="block", warmup_items=2, warmup_timeout=60, seed=run,
                                    rare_classes=(1,)) as ds:
                    assert ds.producer.running_in == "process"
                    assert len(ds.cache) >= 2
                assert time.monotonic() - t < 60
                holder.join(10)
        finally:
            stop.set()
            reader.join(10)
