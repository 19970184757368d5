"""The seed article's runbook, unedited, in the lab: its eleven checks bound to the landing
zone's real services (restic, Prometheus, Alertmanager and a webhook receiver, nftables in
a network namespace, HTTP through HAProxy), through `lab up`, the shipped worker and CLI.

- a knob deletes the application's network-policy rule: the pre-check refuses, naming it;
- the cutover reaches its 90-minute window with all eleven checks evaluated and passing,
  each with its measured value and threshold in `status`; a live resize of the target
  passes; the backup knob then makes the rollback criterion `target_backup_failure` fire:
  ROLLED_BACK, naming it;
- the backup repository gone before a run: the pre-check refuses, naming it;
- run again: the alert route broken in the window fails the post-check and finalize is
  refused naming it; fixed, the window is ended by the operator: COMPLETED.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from activities.checks import CheckActivities
from cutover.lab import stack as lab
from cutover.models import CheckInput
from cutover.site import load_site

CUTOVER = str(Path(sys.executable).parent / "cutover")
SEED = lab.SEED_RUNBOOK
APP = lab.DAY_TWO
ELEVEN = [
    "backup_success_last_24h", "target_monitoring_ready", "target_network_policy_validated",
    "dns_ttl_lowered", "p95_latency_within_slo", "error_rate_below_threshold",
    "backup_job_succeeds", "alerting_signals_present", "app_health_check_failure",
    "sustained_latency_regression", "target_backup_failure",
]  # fmt: skip


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TEMPORAL_ADDRESS": f"127.0.0.1:{lab.TEMPORAL_PORT}"}
    done = subprocess.run([CUTOVER, *args], capture_output=True, text=True, env=env,
                          check=False, timeout=600)  # fmt: skip
    if check and done.returncode != 0:
        pytest.fail(f"cutover {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def status(site: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(cli("status", APP, "--json").stdout)
    return doc


def wait_for(what: str, pred: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}", pytrace=False)


def test_the_seed_runbook_runs_unedited_with_its_day_two_checks(
    tmp_path: Path, qemu_dir: Path, libvirtd_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab, "LAB", tmp_path / "lab")
    monkeypatch.setattr(lab, "DATA", qemu_dir / "lab")
    # the seed's file, byte for byte: nothing of the lab is written into it
    assert "vms:" not in SEED.read_text() and "endpoint" not in SEED.read_text()
    try:
        state = lab.up(disk_mib=64, libvirt_uri=libvirtd_uri)
    except lab.LabError as exc:
        pytest.fail(f"the lab did not come up: {exc}", pytrace=False)
    site = state["site"]
    monkeypatch.setenv("CUTOVER_SITE", site)
    # every request signed by the lab's operator; the worker: the lab's key and audit log
    monkeypatch.setenv("CUTOVER_KEY", str(lab.key_file(lab.OPERATOR)))
    monkeypatch.setenv("CUTOVER_WORKER_KEY", str(lab.key_file(lab.WORKER)))
    monkeypatch.setenv("CUTOVER_AUDIT_LOG", str(lab.audit_log_file()))
    worker: subprocess.Popen[bytes] | None = None
    log = tmp_path / "worker.log"
    try:
        assert cli("validate", str(SEED), "--site", site).returncode == 0
        with log.open("wb") as wlog:
            worker = subprocess.Popen(
                [CUTOVER, "worker"], stdout=wlog, stderr=subprocess.STDOUT,
                env={**os.environ, "TEMPORAL_ADDRESS": f"127.0.0.1:{lab.TEMPORAL_PORT}"},
                start_new_session=True,
            )  # fmt: skip
        wait_for("the worker", lambda: b"worker started" in log.read_bytes(), 30)

        # 1. A network-policy rule missing: the pre-check refuses, naming the check.
        lab.day_two_knob("network-policy", broken=True)  # `cutover lab break network-policy`
        refused = json.loads(cli("run", str(SEED), "--site", site, "--wait", "--json",
                                 check=False).stdout)  # fmt: skip
        assert refused["outcome"] != "COMPLETED", refused
        assert "target_network_policy_validated" in refused["reason"], refused["reason"]
        lab.day_two_knob("network-policy", broken=False)

        # 2. Run as written: the window, every check evaluated and passing, with the
        # measured value and threshold; then the target's backup breaks: rolled back.
        cli("run", str(SEED), "--site", site)

        def all_passing() -> dict[str, Any] | None:
            st = status(site)
            seen = {c["name"]: c for c in st.get("checks", [])}
            ok = st["phase"] == "ROLLBACK_WINDOW" and all(
                n in seen and seen[n]["passed"] for n in ELEVEN
            )
            assert st["outcome"] == "RUNNING", (
                st.get("rollbackReason"),
                st.get("leftWhere"),
                log.read_text()[-1500:],
            )
            return st if ok else None

        st = wait_for("the window with all eleven checks passing", all_passing, 600)
        checks = {c["name"]: c for c in st["checks"]}
        for name in ELEVEN:
            assert checks[name].get("measured") not in (None, ""), checks[name]
            assert checks[name].get("threshold") not in (None, ""), checks[name]
        # resize, a day-two check the seed does not list: the running target takes a live
        # memory change (balloon) and still serves, then gets its memory back
        probe = load_site(site).checks["target_resize_survived"]
        inp = CheckInput(name="target_resize_survived", phase="post", application=APP,
                         probe=probe)  # fmt: skip
        resized = asyncio.run(CheckActivities().run_check(inp))
        assert resized.passed, resized.describe()
        closes = datetime.fromisoformat(st["windowClosesAt"])
        assert closes - datetime.now(UTC) > timedelta(minutes=80)  # the seed's 90 minutes
        lab.day_two_knob("backup", broken=True)

        def finished() -> dict[str, Any] | None:
            doc = status(site)
            return doc if doc["outcome"] != "RUNNING" else None

        result = wait_for("the rollback criterion", finished, 300)
        assert result["outcome"] == "ROLLED_BACK", result
        assert "target_backup_failure" in (result["rollbackReason"] or ""), result
        lab.day_two_knob("backup", broken=False)

        # 3. The backup repository gone before a run: the pre-check refuses, naming it.
        lab.day_two_knob("backup", broken=True)
        refused = json.loads(cli("run", str(SEED), "--site", site, "--wait", "--json",
                                 check=False).stdout)  # fmt: skip
        assert "backup_success_last_24h" in refused["reason"], refused["reason"]
        lab.day_two_knob("backup", broken=False)

        # 4. Again: the alert route breaks in the window: the post-check fails in a round
        # (its measurement says where the alert went), finalize is refused naming it;
        # fixed, a passing round lets the operator end the window: COMPLETED.
        cli("run", str(SEED), "--site", site)
        wait_for("the window with all eleven checks passing", all_passing, 600)
        lab.day_two_knob("alert-routing", broken=True)

        def alert_failing() -> dict[str, Any] | None:
            last = [c for c in status(site)["checks"] if c["name"] == "alerting_signals_present"]
            return last[-1] if last and not last[-1]["passed"] else None

        failing = wait_for("a round with the alert route broken", alert_failing, 180)
        assert "not to ops-webhook" in failing["detail"], failing
        no = cli("finalize", APP, check=False)
        assert no.returncode != 0 and "alerting_signals_present" in no.stdout + no.stderr, no
        lab.day_two_knob("alert-routing", broken=False)
        wait_for("a passing round", all_passing, 180)
        wait_for("finalize", lambda: cli("finalize", APP, check=False).returncode == 0, 180)
        done = wait_for("the end", finished, 300)
        assert done["outcome"] == "COMPLETED", (done, log.read_text()[-3000:])
        audit = cli("audit", APP).stdout
        for name in ELEVEN:
            assert name in audit
        # what was measured, against what: in the audit too
        assert "digests equal" in audit and "routed to ops-webhook" in audit, audit[-3000:]
        assert "policy drop, 1 of 1 required flows accepted" in audit, audit[-3000:]
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            worker.wait(10)
        lab.down(quiet=True)
    leftover = yaml.safe_load(SEED.read_text())
    assert "vms" not in leftover and "endpoint" not in leftover
