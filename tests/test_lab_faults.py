"""Faults at a bad moment, in the lab (every real component: Temporal, the vSphere simulator,
libvirt/QEMU, HAProxy, BIND, the lab services) with the shipped worker and CLI.

The lab listens on its fixed ports (7233, 8233, 18443, 15353, 18100): run under
`flock /tmp/cutover-libvirt.lock`, with no lab left up (`cutover lab down`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import Client

from cutover.lab import demo as labdemo
from cutover.lab import stack as lab
from cutover.models import CutoverResult, CutoverStatus, Outcome, Phase
from cutover.temporal import connect

CUTOVER = str(Path(sys.executable).parent / "cutover")
ENV = {
    **os.environ,
    # the console script runs this checkout's code, whatever the venv's install points at
    "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    "TEMPORAL_ADDRESS": f"127.0.0.1:{lab.TEMPORAL_PORT}",
}
#: A window post-check that takes long, as a real backup job of the target does (the seed's
#: `backup_job_succeeds`): the worker is killed while it runs. Longer than the bound, so
#: that waiting for the round (even on a live worker) cannot pass.
SLOW_CHECK = "backup_job_succeeds"
SLOW_SECONDS = 120
#: Rollback request to ROLLED_BACK. Before the fix the rollback waited for the round, whose
#: check (no heartbeat timeout, 2 h start-to-close) had died with the worker: the issue saw
#: it still RUNNING 230 s after the request; with the workflow and worker from before the fix
#: this test saw it still in ROLLBACK_WINDOW at 60 s. After: ~13 s, ~10 of them the dead
#: worker's sticky queue timing out before the new worker takes the workflow task.
ROLLBACK_BOUND = 60.0


def start_worker(log: Path, site: Path) -> subprocess.Popen[bytes]:
    """The shipped worker, as an operator runs it, serving `site` with the lab's worker key;
    returns once it polls."""
    before = log.read_bytes().count(b"worker started") if log.exists() else 0
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                CUTOVER,
                "worker",
                "--site",
                str(site),
                "--key",
                str(lab.key_file(lab.WORKER)),
                "--audit-log",
                str(lab.audit_log_file()),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
            start_new_session=True,  # its own group: kill -9 takes its probes with it
        )
    deadline = time.monotonic() + 30
    while log.read_bytes().count(b"worker started") <= before:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.1)
    return proc


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CUTOVER, *args], capture_output=True, text=True, env=ENV, timeout=90, check=False
    )


async def window_check_in_flight(client: Client, wf_id: str) -> str:
    """Wait until the rollback window's check round has a check running for a while (the
    slow one: the others finish in about a second); returns its activity ID."""
    handle = client.get_workflow_handle(wf_id)
    async with asyncio.timeout(240):
        while True:
            st = await handle.query("status", result_type=CutoverStatus)
            assert st.outcome == Outcome.RUNNING, st
            if st.phase == Phase.ROLLBACK_WINDOW:
                desc = await handle.describe()
                for pa in desc.raw_description.pending_activities:
                    running = time.time() - pa.last_started_time.ToSeconds()
                    if pa.activity_type.name == "run_check" and pa.attempt == 1 and running > 3:
                        return str(pa.activity_id)
            await asyncio.sleep(0.5)


async def test_rollback_after_a_worker_killed_during_a_window_check_ends_within_a_minute(
    tmp_path: Path, qemu_dir: Path, libvirtd_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab, "LAB", tmp_path / "lab")
    monkeypatch.setattr(lab, "DATA", qemu_dir / "lab")
    app = lab.APPS[0]
    try:
        state = lab.up(
            apps=[app], disk_mib=64, libvirt_uri=libvirtd_uri, window_minutes=10, day_two=False
        )
    except lab.LabError as exc:
        pytest.fail(f"the lab did not come up: {exc}", pytrace=False)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        site: dict[str, Any] = yaml.safe_load(Path(state["site"]).read_text())
        site["checks"][SLOW_CHECK] = {
            "type": "command",
            "argv": ["sleep", str(SLOW_SECONDS)],
            "timeoutSeconds": 300,
            "description": "a backup of the target completes (a real one takes a while)",
        }
        site_file = tmp_path / "site.yaml"
        site_file.write_text(yaml.safe_dump(site))
        rb: dict[str, Any] = yaml.safe_load((lab.LAB / "runbooks" / f"{app.name}.yaml").read_text())
        assert rb["rollbackWindowMinutes"] == 10
        rb["postChecks"].append(SLOW_CHECK)
        runbook = tmp_path / f"{app.name}.yaml"
        runbook.write_text(yaml.safe_dump(rb))

        log = tmp_path / "worker.log"
        workers.append(start_worker(log, site_file))
        # signed by the lab's operator (the lab site's access policy names its key)
        key = str(lab.key_file(lab.OPERATOR))
        started = cli("run", str(runbook), "--site", str(site_file), "--key", key)
        assert started.returncode == 0, started.stderr
        wf_id = started.stdout.strip()
        client = await connect(f"127.0.0.1:{lab.TEMPORAL_PORT}", "default", wait_seconds=10)
        in_flight = await window_check_in_flight(client, wf_id)

        # kill -9 the worker (and the probe it runs) in the middle of the window's check
        os.killpg(workers[0].pid, signal.SIGKILL)
        workers[0].wait()
        handle = client.get_workflow_handle(wf_id, result_type=CutoverResult)
        pending = (await handle.describe()).raw_description.pending_activities
        assert in_flight in [pa.activity_id for pa in pending], "the check was not in flight"
        workers.append(start_worker(log, site_file))

        asked, asked_at = time.monotonic(), time.time()
        rollback = await asyncio.to_thread(
            cli, "rollback", app.name, "--reason", "lab fault", "--key", key
        )
        assert rollback.returncode == 0, rollback.stderr
        try:
            result = await asyncio.wait_for(handle.result(), ROLLBACK_BOUND)
        except TimeoutError:
            st = await handle.query("status", result_type=CutoverStatus)
            pytest.fail(
                f"still {st.phase.value} {ROLLBACK_BOUND:g} s after the rollback request "
                f"(current step {st.currentStep})\n{log.read_text()[-4000:]}",
                pytrace=False,
            )
        took = time.monotonic() - asked
        undos = [s for s in result.steps if s.kind == "compensation"]
        first = undos[0].startedAt.timestamp() - asked_at if undos else float("nan")
        print(
            f"rollback request to {result.outcome.value}: {took:.1f} s (first undo after "
            f"{first:.1f} s; " + ", ".join(f"{s.name} {s.seconds or 0:.1f}s" for s in undos) + ")",
            file=sys.stderr,
        )
        assert result.outcome == Outcome.ROLLED_BACK, (result.reason, result.leftWhere)
        assert result.reason == f"rollback requested by {_who(rollback)}: lab fault"
        assert took < ROLLBACK_BOUND
        undo = [s.name for s in result.steps if s.kind == "compensation"]
        assert {"restore_load_balancer", "restore_dns", "restart_source"} <= set(undo)
        # one writer: the lab's real domain is paused before the source starts
        assert undo.index("fence_target") < undo.index("restart_source") < undo.index("restore_dns")
        assert {"remove_target_domain", "detach_target_storage"} <= set(undo)
        # LB and DNS on the source alone, users served by the (running) source VM from its
        # unchanged disk
        outcomes = {app.name: "ROLLED_BACK"}
        expected = {app.name: state["apps"][0]["seedDigest"]}
        assert labdemo.check_world(state, outcomes, expected) == []
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGTERM)
                w.wait(20)
        lab.down(quiet=True)
    assert labdemo.leftovers(state) == []


def _who(rollback: subprocess.CompletedProcess[str]) -> str:
    """The requester `cutover rollback` recorded (its reply names it)."""
    return rollback.stdout.strip().removeprefix("rollback requested by ")
