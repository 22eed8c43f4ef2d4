"""Issue 32, case 1 end to end: DataLoader workers SIGKILLed at random moments never hang what follows.

One child process builds a ``DiffMixDataset`` (a producer thread with a cheap synthesizer, every
item synthetic, so the workers spend their time in the cache's serve path) and runs epochs with a
real 2-worker DataLoader. In each epoch one worker is SIGKILLed after a random delay (sometimes
after the epoch ended: then nothing is killed). After each epoch the child reads items in the main
process and calls ``state_dict()``; the next epoch builds a new loader; at the end it calls
``close()``. Every step runs under ``faulthandler.dump_traceback_later(..., exit=True)``: a hang
prints every thread's stack and exits 1, and the whole child is bounded by a timeout. The default
suite kills 8 times under fork and 2 under spawn; ``-m slow`` kills 200 times under fork and 30
under spawn (about 5 and 4 minutes on 2 busy cores).

PyTorch's own loader can deadlock when a worker dies inside one of the loader's process-shared
locks (its ``done_event``'s condition, a result queue's write lock; pytorch/pytorch#21554): then the
sibling worker blocks in ``done_event.is_set()`` for ever and the main process in
``_shutdown_workers()``'s ``done_event.set()``. That is the loader of the epoch the kill hit, not
DiffMix's; the child shuts each loader down in a thread bounded by ``SHUTDOWN`` seconds, SIGKILLs
that loader's workers when the bound passes, counts it (``torch_deadlocks=``) and goes on: what must
never hang is the next epoch, ``ds[i]``, ``state_dict()`` and ``close()``. The child runs in its own
session and the test kills that session at the end, so no orphaned worker outlives it.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from diffmix_helpers import run_child_session

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")


_SCRIPT = textwrap.dedent("""
    import faulthandler, os, random, signal, sys, threading, time
    import torch
    from diffmix_helpers import DictDataset, NoiseSynth
    from diffmix_aug import DiffMixDataset

    STEP = 120  # seconds any one step may take before the child dumps its stacks and exits 1
    SHUTDOWN = 20  # seconds a loader's shutdown may take before its workers are SIGKILLed (torch's deadlock)


    def guard():
        faulthandler.dump_traceback_later(STEP, exit=True)


    def killer(workers, delay, rnd, hit):
        time.sleep(delay)
        alive = [w for w in workers if w.is_alive()]
        if alive:
            victim = rnd.choice(alive)
            hit.append(1)  # before the kill: the loader's SIGCHLD handler may raise in the main thread
            try:           # before this thread runs again, and the main thread checks `hit` then
                victim.kill()
            except (ProcessLookupError, AttributeError, ValueError):
                hit.pop()


    def shut_down(it, workers):
        # the loader's own shutdown, bounded: True when it finished, False when torch deadlocked
        # (then every worker of this loader is SIGKILLed, so none is left blocked for ever)
        t = threading.Thread(target=it._shutdown_workers, daemon=True)
        t.start()
        t.join(SHUTDOWN)
        if not t.is_alive():
            return True
        if it._worker_pids_set:  # what the stuck shutdown would do last: else SIGCHLD raises anywhere later
            torch.utils.data._utils.signal_handling._remove_worker_pids(id(it))
            it._worker_pids_set = False
        for w in workers:
            try:
                os.kill(w.pid, signal.SIGKILL)
            except (ProcessLookupError, TypeError):
                pass
        return False


    def main():
        ctx, kills, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        torch.set_num_threads(1)
        rnd = random.Random(seed)
        guard()
        ds = DiffMixDataset(DictDataset(48), NoiseSynth(), mode="enlarge", synthetic_ratio=1.0, max_reuse=10**6,
                            cache_capacity=16, batch_size=4, label_workers=0, warmup="block", warmup_items=8,
                            seed=seed)
        span, errors, killed, deadlocks = None, 0, 0, 0
        for epoch in range(kills + 1):
            ds.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=ctx,
                                                 collate_fn=list, timeout=SHUTDOWN)
            guard()
            t0 = time.monotonic()
            hit, it, workers = [], None, []
            try:
                it = iter(loader)
                workers = list(it._workers)
                if epoch:  # epoch 0 measures how long an epoch takes
                    t = threading.Thread(target=killer, args=(workers, rnd.uniform(0, span), rnd, hit), daemon=True)
                    t.start()
                n = sum(len(b) for b in it)
                assert n == len(ds) or hit, n
            except Exception:  # the loader reports its killed worker (RuntimeError), the torn transfer
                if not hit:    # of a tensor it was sending (ConnectionResetError), or its own timeout
                    raise
                errors += 1
            finally:
                if epoch:
                    try:
                        t.join(STEP)
                    except RuntimeError:  # a kill after the epoch's last batch: the loader's SIGCHLD
                        if not hit:       # handler reports it in the main thread, here
                            raise
                        errors += 1
                if it is not None:  # unregisters the workers (else the loader's SIGCHLD handler raises later)
                    try:
                        deadlocks += not shut_down(it, workers)
                    except Exception:
                        if not hit:
                            raise
                del it
            if epoch == 0:
                span = 1.3 * (time.monotonic() - t0)
            killed += bool(hit)
            for i in rnd.sample(range(len(ds)), 3):  # the main process still serves
                ds[i]
            state = ds.state_dict()
            assert int(state["control"][0]) == epoch
        guard()
        t = time.monotonic()
        ds.close()
        faulthandler.cancel_dump_traceback_later()
        print(f"kills={killed} loader_errors={errors} torch_deadlocks={deadlocks} close_s={time.monotonic() - t:.2f}",
              flush=True)


    if __name__ == "__main__":
        main()
""")


def _run(ctx: str, kills: int, seed: int, timeout: float, tmp: Path) -> dict[str, float]:
    script = tmp / "worker_kills_child.py"  # a file, so spawn workers can re-import the main module
    script.write_text(_SCRIPT)
    stdout = run_child_session(script, [ctx, str(kills), str(seed)], tmp, timeout)
    line = [ln for ln in stdout.splitlines() if ln.startswith("kills=")]
    assert line, stdout
    fields = {k: float(v) for k, v in (kv.split("=") for kv in line[-1].split())}
    assert fields["close_s"] < 2.0, line  # close()'s bound
    assert fields["kills"] > 0, line  # the loop did kill workers
    print(ctx, line[-1])
    return fields


@pytest.mark.parametrize(("ctx", "kills"), [("fork", 8), ("spawn", 2)])
def test_workers_killed_at_random_moments_never_hang(ctx, kills, tmp_path):
    _run(ctx, kills, seed=1, timeout=600, tmp=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("ctx", "kills"), [("fork", 200), ("spawn", 30)])
def test_200_random_worker_kills_never_hang(ctx, kills, tmp_path):
    _run(ctx, kills, seed=2, timeout=1800, tmp=tmp_path)
