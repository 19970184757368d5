"""The shipped worker (`cutover worker`) as a real process: real probes, JSON logs, no secrets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml
from temporalio.client import Client

from activities.vsphere import ClientPool, find_vms
from cutover.site import SiteConfig
from cutover.vcsim import Vcsim
from tests.conftest import DevServer
from tests.factories import SEED, unique_app
from tests.test_cli import acli
from tests.vcsim_fixtures import VcsimFactory

CUTOVER = str(Path(sys.executable).parent / "cutover")
VM = "DC0_C0_H0_VM0"


def write(tmp: Path, queue: str, pre_ok: bool, sim: Vcsim) -> tuple[str, str, str]:
    app = unique_app("wrk")
    site: dict[str, Any] = {
        "name": "worker-test",
        "taskQueue": queue,
        # never reached: the cutover stops at final_data_sync (not wired into the worker yet)
        "loadBalancer": {"socket": str(tmp / "haproxy.sock")},
        "vcenter": {
            "host": sim.host,
            "port": sim.port,
            "user": sim.user,
            "passwordRef": {"env": "VC_PASSWORD"},
            "caFile": str(sim.ca_file),
        },
        "checks": {
            "migration_concerns": {"type": "vsphere-concerns"},
            "backup_success_last_24h": {
                "type": "command",
                "argv": [sys.executable, "-c", f"raise SystemExit({0 if pre_ok else 4})"],
            },
            "orchestrator_reachable": {
                "type": "tcp",
                "host": "127.0.0.1",
                "port": 1,
                "timeoutSeconds": 1,
            },
        },
    }
    if pre_ok:
        del site["checks"]["orchestrator_reachable"]
    rb = {
        **{k: SEED[k] for k in ("wave", "sourcePlatform", "sourceCluster", "targetPlatform")},
        "application": app,
        "rollbackWindowMinutes": 0.05,
        "preChecks": list(site["checks"]),
        "cutoverSteps": SEED["cutoverSteps"],
        "dataSync": {"warm": False},
        "vms": [VM],
        "quiesce": {"guestShutdownTimeoutSeconds": 10},
    }
    (tmp / f"{app}-site.yaml").write_text(yaml.safe_dump(site))
    (tmp / f"{app}.yaml").write_text(yaml.safe_dump(rb))
    return app, str(tmp / f"{app}.yaml"), str(tmp / f"{app}-site.yaml")


async def test_shipped_worker_runs_real_checks_and_stops_at_unbuilt_adapters(
    client: Client, temporal_server: DevServer, tmp_path: Path, vcsim_factory: VcsimFactory
) -> None:
    sim = vcsim_factory(clusters=1, hosts=1, vms=1)
    queue = f"wrk-{uuid.uuid4().hex[:8]}"
    log, spans = tmp_path / "worker.log", tmp_path / "spans.out"
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": temporal_server.address,
        "VC_PASSWORD": sim.password,
        "CUTOVER_OTEL_EXPORTER": "console",
    }
    with log.open("wb") as err, spans.open("wb") as out:
        worker = subprocess.Popen(
            [CUTOVER, "worker", "--task-queue", queue],
            stderr=err,
            stdout=out,
            env=env,
            start_new_session=True,
        )
    try:
        async with asyncio.timeout(30):
            while b"worker started" not in log.read_bytes():
                assert worker.poll() is None, log.read_text()
                await asyncio.sleep(0.1)

        _, runbook, site = write(tmp_path, queue, pre_ok=False, sim=sim)
        res = await acli(temporal_server, "run", runbook, "--site", site, "--wait", "--json")
        assert res.returncode == 1, res.stderr
        result = json.loads(res.stdout)
        assert result["outcome"] == "FAILED"
        assert result["leftWhere"] == ["nothing was changed: the source still serves"]
        checks = {c["name"]: c for c in result["checks"]}
        assert checks["backup_success_last_24h"]["measured"] == "exit code 4"
        assert checks["orchestrator_reachable"]["measured"] == "no connection"
        assert not [s for s in result["steps"] if s["kind"] != "check"]

        app2, runbook2, site2 = write(tmp_path, queue, pre_ok=True, sim=sim)
        res = await acli(temporal_server, "run", runbook2, "--site", site2, "--wait", "--json")
        assert res.returncode == 1, res.stderr
        result = json.loads(res.stdout)
        assert result["outcome"] == "FAILED"
        # quiesce ran for real against the simulator, then the first step whose adapter
        # is not built stopped the cutover; the undo restarted the source for real
        assert "StepNotImplemented" in result["reason"] and "final_data_sync" in result["reason"]
        steps = {s["name"]: s for s in result["steps"]}
        assert steps["quiesce_application"]["outcome"] == "ok"
        assert steps["quiesce_application"]["changed"] is True
        assert steps["restart_source"]["outcome"] == "ok"
        assert result["compensationFailures"][0].startswith("discard_staging: StepNotImplemented")
        checks = {c["name"]: c for c in result["checks"]}
        assert checks["migration_concerns"]["passed"] is True
        assert checks["migration_concerns"]["measured"].startswith("0 critical")
        vc = SiteConfig.model_validate(yaml.safe_load(Path(site2).read_text())).vcenter
        assert vc is not None
        pool = ClientPool(password=lambda s: sim.password)
        try:
            state = find_vms(pool.get(vc), [VM])[0].runtime.powerState
        finally:
            pool.close()
        assert str(state) == "poweredOn"
        history = await client.get_workflow_handle(f"cutover-{app2}").fetch_history()
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(20)

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(
        e.get("event") == "cutover started" and e.get("workflow_id") == f"cutover-{app2}"
        for e in lines
    )
    assert any(e.get("activity") == "final_data_sync" and e.get("attempt") == 1 for e in lines)
    # OpenTelemetry spans for the workflow and its activities, through the interceptor
    traced = spans.read_text()
    assert '"name": "RunWorkflow:AppCutover"' in traced
    assert '"name": "RunActivity:quiesce_application"' in traced
    assert "Logging error" not in log.read_text()  # every log call rendered, sandbox included
    # the vCenter password was used (logins succeeded) but never logged or recorded
    assert sim.password not in log.read_text() + spans.read_text()
    assert sim.password not in history.to_json()
