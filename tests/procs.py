"""Worker processes the crash tests start and kill -9 (by their process group)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def spawn_worker(module: str, *args: str, state: Path) -> subprocess.Popen[bytes]:
    """`python -m module args...`; wait until it touches `state/worker_ready`."""
    (state / "worker_ready").unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 30
    while not (state / "worker_ready").exists():
        assert proc.poll() is None, "test worker exited"
        assert time.monotonic() < deadline, "test worker did not start"
        time.sleep(0.05)
    return proc


def kill9(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to this PID, then SIGKILL after 10 s: a fixture's server, gone."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
