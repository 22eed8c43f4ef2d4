"""``LoadPause``: a real child process is stopped inside the context and resumed after it, at most
``max_share`` of the time; ``close()`` resumes; a dead (reaped) child is never signalled; a
producer whose parent dies while it is stopped resumes (``continue_on_parent_death``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from diffmix_aug.load_pause import LoadPause, open_load_pause
from tests.proc_state import wait_state as _wait_state

pytestmark = pytest.mark.skipif(not (sys.platform.startswith("linux") and hasattr(os, "pidfd_open")),
                                reason="LoadPause needs Linux pidfds")


@pytest.fixture
def child():
    proc = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.001)"])
    yield proc
    os.kill(proc.pid, signal.SIGCONT)
    proc.kill()
    proc.wait()


def test_stops_inside_and_resumes_after(child):
    pause = open_load_pause(child.pid)
    assert pause is not None
    with pause:
        assert _wait_state(child.pid, {"T"}) == "T"
    assert _wait_state(child.pid, {"R", "S"}) in {"R", "S"}
    assert pause.pauses == 1 and pause.paused_s > 0
    pause.close()
    assert pause.closed


def test_nested_and_threaded_entries_share_one_pause(child):
    pause = open_load_pause(child.pid)
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with pause:
            inside.set()
            release.wait(5)

    with pause:
        with pause:
            pass
        assert _wait_state(child.pid, {"T"}) == "T"  # the inner exit does not resume it
        t = threading.Thread(target=other)
        t.start()
        inside.wait(5)
    assert _wait_state(child.pid, {"T"}, 0.2) == "T"  # the other thread is still loading
    release.set()
    t.join(5)
    assert _wait_state(child.pid, {"R", "S"}) in {"R", "S"}
    assert pause.pauses == 1
    pause.close()


def test_close_resumes_a_stopped_process_and_ends_pausing(child):
    pause = open_load_pause(child.pid)
    pause.__enter__()
    assert _wait_state(child.pid, {"T"}) == "T"
    pause.close()
    assert _wait_state(child.pid, {"R", "S"}) in {"R", "S"}
    with pause:  # closed: a no-op
        assert _wait_state(child.pid, {"T"}, 0.2) != "T"
    pause.__exit__(None, None, None)  # the exit of the entry close() cut short: harmless
    assert pause.pauses == 1


def test_share_of_time_stopped_is_capped():
    """A loop that loads without a break keeps the process stopped at most max_share of the time."""
    proc = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.001)"])
    try:
        pause = LoadPause(os.pidfd_open(proc.pid), max_share=0.5, burst_s=0.05)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            with pause:
                time.sleep(0.01)
        elapsed = time.monotonic() - t0
        assert pause.skipped > 0
        assert pause.paused_s <= 0.5 * elapsed + 0.05 + 0.02, (pause.paused_s, elapsed)
        assert pause.paused_s >= 0.3 * elapsed  # and it does pause up to the cap
        pause.close()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()


def test_a_reaped_child_is_never_signalled():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    pause = open_load_pause(proc.pid)
    proc.wait()  # reaped: its pid may now be reused, the pidfd still names the dead process
    with pause:
        pass
    assert pause.closed and pause.pauses == 0
    pause.close()


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="max_share"):
        LoadPause(-1, max_share=1.0)
    with pytest.raises(ValueError, match="burst_s"):
        LoadPause(-1, burst_s=0)


_ORPHAN = textwrap.dedent("""
    import os, signal, time
    from diffmix_aug.load_pause import continue_on_parent_death

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        continue_on_parent_death()
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 1)  # let the test's pipe close with the parent
        os.dup2(null, 2)
        os.write(w, b"1")
        time.sleep(30)  # left as an orphan: the test kills it
        os._exit(0)
    os.read(r, 1)  # the child has set its parent-death signal
    os.kill(pid, signal.SIGSTOP)
    while open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T":
        time.sleep(0.01)
    print(pid, flush=True)
    os._exit(0)  # the parent dies while its child is stopped
""")


def test_a_stopped_producer_resumes_when_its_parent_dies(tmp_path):
    """PR_SET_PDEATHSIG = SIGCONT: no stopped orphan is left behind by a killed training process."""
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    gc = int(out.stdout.split()[0])
    try:
        assert _wait_state(gc, {"R", "S", "Z", ""}) in {"R", "S", "Z", ""}, "the orphan stayed stopped"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(gc, signal.SIGKILL)
