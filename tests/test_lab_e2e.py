"""The lab, end to end: `lab up`, the shipped worker, the three-application wave through
every real component (Temporal, the vSphere simulator, libvirt/QEMU, HAProxy, BIND, the lab
services), each outcome and every world-facing invariant, then `lab down` leaves nothing.

The lab listens on its fixed ports (7233, 8233, 18443, 15353, 18100): this test fails with
a clear message when something else holds them (a lab left up: `cutover lab down`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cutover.lab import demo as labdemo
from cutover.lab import stack as lab

CUTOVER = str(Path(sys.executable).parent / "cutover")


async def test_wave_of_three_through_the_lab(
    tmp_path: Path, qemu_dir: Path, libvirtd_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab, "LAB", tmp_path / "lab")
    monkeypatch.setattr(lab, "DATA", qemu_dir / "lab")
    try:
        crashed = lab.up(disk_mib=64, libvirt_uri=libvirtd_uri)
        # a crash: some processes die, the state file stays; `up` cleans up first
        for name in ("haproxy", "apps"):
            os.kill(crashed["pids"][name], signal.SIGKILL)
        state = lab.up(disk_mib=64, libvirt_uri=libvirtd_uri)
    except lab.LabError as exc:
        pytest.fail(f"the lab did not come up: {exc}", pytrace=False)
    old = [p for v in crashed["pids"].values() for p in (v if isinstance(v, list) else [v])]
    assert not [p for p in old if lab._alive(p)], "a crashed lab's process survived `up`"
    worker: subprocess.Popen[bytes] | None = None
    try:
        assert lab.status()["up"]
        log = tmp_path / "worker.log"
        with log.open("wb") as wlog:
            # the lab's site, worker key and audit log (`cutover worker` finds them itself
            # when the lab is the checkout's; this one lives under tmp_path)
            worker = subprocess.Popen(
                [
                    CUTOVER,
                    "worker",
                    "--site",
                    state["site"],
                    "--key",
                    str(lab.key_file(lab.WORKER)),
                    "--audit-log",
                    str(lab.audit_log_file()),
                ],
                stdout=wlog,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TEMPORAL_ADDRESS": f"127.0.0.1:{lab.TEMPORAL_PORT}"},
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while b"worker started" not in log.read_bytes():
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.1)

        ran = await labdemo.run_wave(state, CUTOVER, out=sys.stderr)
        results = ran["results"]
        outcomes = {n: r.outcome.value for n, r in results.items()}
        reasons = {n: r.reason for n, r in results.items()}
        expected = {"shop": "COMPLETED", "billing": "ROLLED_BACK", "search": "ROLLED_BACK"}
        tail = log.read_text()[-4000:]
        assert outcomes == expected, f"outcomes {outcomes}, reasons {reasons}\n{tail}"
        assert labdemo.summary(state, results) == []  # each rolled back for its own reason
        assert "data_consistency_confirmed" in results["billing"].reason
        assert "smoke_test" in results["search"].reason
        undo = [s.name for s in results["search"].steps if s.kind == "compensation"]
        assert {"remove_target_domain", "detach_target_storage", "restart_source"} <= set(undo)
        for r in results.values():
            assert r.downtimeSeconds is not None and r.downtimeSeconds > 0
        # LB and DNS on exactly one healthy backend; data where it belongs (digests)
        # the targets wrote (their guests' journals): shop's merged at finalize, billing's
        # written back into its source disk (check_world reads its journal there)
        written = {n: r.targetWrittenBytes or 0 for n, r in results.items()}
        assert written["shop"] > 0 and written["billing"] > 0, written
        assert "merged" in (results["shop"].targetWrites or "")
        assert "written back" in (results["billing"].targetWrites or "")
        kept = labdemo.kept_writes(results)
        assert labdemo.check_world(state, outcomes, ran["expected_source"], kept) == []
        # billing's approval signed by ops-lead (lab-operator, who started the wave, may not)
        assert results["billing"].approvedBy == lab.APPROVER
        # every finished cutover and the wave recorded, the chain whole, each report derived
        # again from its history
        assert labdemo.verify_audit(CUTOVER, len(results) + 1, out=sys.stderr) == []
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(20)
        lab.down(quiet=True)
    # nothing the run created is left: processes, domains, pools, volumes, staging
    assert labdemo.leftovers(state) == []
    assert not lab.state_file().exists()
