"""The `cutover` console script against a real Temporal server.

Test activities (tests/world.py) serve the steps in-process; the CLI runs as a real
subprocess, so exit codes and stderr are what an operator sees.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from cutover.catalog import BUILTIN_CHECKS
from cutover.models import CutoverInput, CutoverResult, Outcome
from cutover.site import load_site, site_ref
from tests.conftest import DevServer
from tests.factories import SEED, UNSIGNED, cutover_input, unique_app
from tests.site_refs import serve
from tests.world import World
from workers.worker import build_worker
from workflows.cutover import AppCutoverWorkflow

CUTOVER = str(Path(sys.executable).parent / "cutover")
#: The console script runs this checkout's code, also when the venv's editable install
#: points at another checkout (a git worktree).
CHECKOUT = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def cli(server: DevServer, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **CHECKOUT, "TEMPORAL_ADDRESS": server.address}
    return subprocess.run(
        [CUTOVER, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


async def acli(server: DevServer, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, server, *args)


def write_files(tmp: Path, queue: str, **runbook: Any) -> tuple[str, str, str]:
    app = unique_app("cli")
    checks = {n: {"type": "command", "argv": ["true"]} for n in BUILTIN_CHECKS}
    site = {
        "name": "cli-test",
        "taskQueue": queue,
        "checks": checks,
        "access": UNSIGNED,
        # test activities stand in for the load balancer and vCenter
        "loadBalancer": {"socket": str(tmp / "haproxy.sock")},
        "vcenter": {"host": "127.0.0.1", "user": "svc", "passwordRef": {"env": "UNUSED"}},
    }
    rb = {**SEED, "application": app, "rollbackWindowMinutes": 0.05, "checkIntervalSeconds": 0.3}
    rb.update(runbook)
    (tmp / "site.yaml").write_text(yaml.safe_dump(site))
    (tmp / "runbook.yaml").write_text(yaml.safe_dump(rb))
    return app, str(tmp / "runbook.yaml"), serve(str(tmp / "site.yaml"))


async def wait_phase_cli(server: DevServer, app: str, phase: str) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            res = await acli(server, "status", app, "--json")
            if res.returncode == 0:
                status: dict[str, Any] = json.loads(res.stdout)
                if status["phase"] == phase:
                    return status
            await asyncio.sleep(0.2)


async def test_cli_drives_a_cutover(
    client: Client, temporal_server: DevServer, tmp_path: Path
) -> None:
    queue = f"cli-{uuid.uuid4().hex[:8]}"
    app, runbook, site = write_files(
        tmp_path,
        queue,
        rollbackWindowMinutes=5,
        approval={"required": True, "approvers": ["alice"]},
    )
    world = World()
    async with build_worker(client, queue, activities=world.activities()):
        res = await acli(temporal_server, "run", runbook, "--site", site)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == f"cutover-{app}"

        again = await acli(temporal_server, "run", runbook, "--site", site)
        assert again.returncode == 1
        assert f"a cutover of {app} is already running" in again.stderr

        await wait_phase_cli(temporal_server, app, "AWAITING_APPROVAL")
        bad = await acli(temporal_server, "approve", app, "--as", "mallory")
        assert bad.returncode == 1
        assert "'mallory' is not an allowed approver" in bad.stderr
        assert "Traceback" not in bad.stderr
        ok = await acli(temporal_server, "approve", f"cutover-{app}", "--as", "alice")
        assert ok.returncode == 0, ok.stderr
        assert "approved by alice" in ok.stdout

        status = await wait_phase_cli(temporal_server, app, "ROLLBACK_WINDOW")
        assert status["approvedBy"] == "alice"
        ext = await acli(temporal_server, "extend", app, "--minutes", "2")
        assert ext.returncode == 0, ext.stderr
        zero = await acli(temporal_server, "extend", app, "--minutes", "0")
        assert zero.returncode == 2 and "--minutes" in zero.stderr

        rb = await acli(temporal_server, "rollback", app, "--reason", "latency up")
        assert rb.returncode == 0, rb.stderr
        handle = client.get_workflow_handle_for(AppCutoverWorkflow.run, f"cutover-{app}")
        result = await handle.result()
        assert result.outcome == Outcome.ROLLED_BACK
        assert result.reason.startswith("rollback requested by ") and "latency up" in result.reason

        late = await acli(temporal_server, "finalize", app)
        assert late.returncode == 1
        assert "has already finished (ROLLED_BACK)" in late.stderr


async def test_cli_run_wait_and_finalize_refusal(
    client: Client, temporal_server: DevServer, tmp_path: Path
) -> None:
    queue = f"cli-{uuid.uuid4().hex[:8]}"
    app, runbook, site = write_files(tmp_path, queue)
    world = World()
    async with build_worker(client, queue, activities=world.activities()):
        res = await acli(temporal_server, "run", runbook, "--site", site, "--wait", "--json")
        assert res.returncode == 0, res.stderr
        result = json.loads(res.stdout)
        assert result["outcome"] == "COMPLETED"
        assert [s["name"] for s in result["steps"] if s["kind"] == "step"] == SEED["cutoverSteps"]
        refused = await acli(temporal_server, "rollback", app, "--reason", "too late")
        assert refused.returncode == 1
        assert "after finalize the source is retired" in refused.stderr

        world.fail = {"smoke_test"}
        # a completed application runs again only deliberately (tests/test_remigration.py)
        failed = await acli(
            temporal_server, "run", runbook, "--site", site, "--wait", "--remigrate", "test"
        )
        assert failed.returncode == 1
        assert "ROLLED_BACK - step smoke_test failed" in failed.stdout


async def test_cli_status_shows_a_blocked_rollback_and_resume_ends_it(
    client: Client, temporal_server: DevServer
) -> None:
    """An undo that fails for good blocks the rollback: `cutover status` names the phase and
    where each side is left; `cutover resume` once the cause is fixed ends it ROLLED_BACK.
    Started through the client with the tests' short retry tuning (`cutover run` would retry
    the broken undo ten times, minutes)."""
    world = World(fail={"power_on_target"}, broken={"detach_target_storage"})
    queue = f"cli-{uuid.uuid4().hex[:8]}"
    inp = cutover_input(queue)
    app = inp.runbook.application
    async with build_worker(client, queue, activities=world.activities()):
        handle = await client.start_workflow(
            AppCutoverWorkflow.run, inp, id=f"cutover-{app}", task_queue=queue
        )
        await wait_phase_cli(temporal_server, app, "ROLLBACK_BLOCKED")
        shown = await acli(temporal_server, "status", app)
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0] == f"cutover-{app}: phase ROLLBACK_BLOCKED, outcome FAILED"
        assert lines[1] == "  left where:"
        left = [line.strip() for line in lines[2:] if line.startswith("    ")]
        assert "the target's volumes are kept: they hold what the target wrote" in left
        assert any(line.startswith("detach_target_storage: failed") for line in left)
        assert any(f"cutover resume {app}" in line for line in left)

        world.broken.clear()
        res = await acli(
            temporal_server, "resume", app, "--as", "ops-oncall", "--reason", "array back"
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "rollback blocked: resumed by ops-oncall"
        result = await asyncio.wait_for(handle.result(), 30)
        assert result.outcome == Outcome.ROLLED_BACK, result.leftWhere
        assert world.calls[-1] == "detach_target_storage"

        again = await acli(temporal_server, "resume", app)
        assert again.returncode == 1
        assert f"cutover-{app} has already finished (ROLLED_BACK)" in again.stderr
    # who resumed and why are in the history (the accepted update's input)
    updates = [
        event.workflow_execution_update_accepted_event_attributes.accepted_request.input
        for event in (await handle.fetch_history()).events
        if event.HasField("workflow_execution_update_accepted_event_attributes")
    ]
    accepted = [json.loads(p.data) for u in updates if u.name == "resume" for p in u.args.payloads]
    assert {
        "requestedBy": "ops-oncall",
        "reason": "array back",
        "discardTargetWrites": False,
        "signature": None,
    } in accepted


async def test_cli_resume_of_a_cutover_that_is_not_blocked_is_refused_naming_its_phase(
    client: Client, temporal_server: DevServer
) -> None:
    """Also: status shows the snapshot-age warning and the window's check rounds."""
    world = World(slow={"incremental_sync": 1.5})
    queue = f"cli-{uuid.uuid4().hex[:8]}"
    inp = cutover_input(
        queue,
        rollbackWindowMinutes=5,
        approval={"required": True, "approvers": ["alice"]},
        # 0.36 s: the snapshot is older than that once the warm phase has waited 1.5 s
        dataSync={"warm": True, "maxSnapshotAgeHours": 0.0001},
    )
    app = inp.runbook.application
    async with build_worker(client, queue, activities=world.activities()):
        handle = await client.start_workflow(
            AppCutoverWorkflow.run, inp, id=f"cutover-{app}", task_queue=queue
        )
        await wait_phase_cli(temporal_server, app, "AWAITING_APPROVAL")
        shown = await acli(temporal_server, "status", app)
        assert shown.returncode == 0, shown.stderr
        assert "  warning: the source snapshot is " in shown.stdout
        assert "dataSync.maxSnapshotAgeHours" in shown.stdout

        early = await acli(temporal_server, "resume", app, "--reason", "nothing")
        assert early.returncode == 1, early.stdout
        assert early.stderr.strip() == (
            "cutover resume: nothing to resume: the cutover is in phase AWAITING_APPROVAL"
        )

        ok = await acli(temporal_server, "approve", app, "--as", "alice")
        assert ok.returncode == 0, ok.stderr
        async with asyncio.timeout(30):
            while True:
                shown = await acli(temporal_server, "status", app)
                if "window check rounds: " in shown.stdout:
                    break
                await asyncio.sleep(0.3)
        assert "phase ROLLBACK_WINDOW" in shown.stdout and "left where" not in shown.stdout
        late = await acli(temporal_server, "resume", app)
        assert late.returncode == 1
        assert "nothing to resume: the cutover is in phase ROLLBACK_WINDOW" in late.stderr
        assert "Traceback" not in late.stderr

        rb = await acli(temporal_server, "rollback", app, "--reason", "test over")
        assert rb.returncode == 0, rb.stderr
        assert (await asyncio.wait_for(handle.result(), 30)).outcome == Outcome.ROLLED_BACK


async def test_cli_print_input_is_what_the_ui_start_form_takes(
    client: Client, temporal_server: DevServer, tmp_path: Path
) -> None:
    queue = f"cli-{uuid.uuid4().hex[:8]}"
    app, runbook, site = write_files(tmp_path, queue)
    # No server needed: it starts nothing.
    down = {"TEMPORAL_ADDRESS": "127.0.0.1:1"}
    res = await asyncio.to_thread(
        subprocess.run,
        [CUTOVER, "run", runbook, "--site", site, "--print-input"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **CHECKOUT, **down},
    )
    assert res.returncode == 0, res.stderr
    printed = json.loads(res.stdout)
    inp = CutoverInput.model_validate(printed)
    # the site by name and digest only: the worker runs its own copy (issue 13)
    assert "site" not in printed and inp.siteRef == site_ref(load_site(site))
    assert inp.runbook.application == app
    assert "@" in inp.requestedBy  # who printed it, as `run` records who started
    for field in (f"Workflow ID cutover-{app}", f"Task Queue {queue}", "Workflow Type AppCutover"):
        assert field in res.stderr
    with pytest.raises(RPCError):  # nothing was started
        await client.get_workflow_handle(f"cutover-{app}").describe()
    # The printed JSON, started as the UI starts it (a raw JSON payload by type name).
    world = World()
    async with build_worker(client, queue, activities=world.activities()):
        handle = await client.start_workflow(
            "AppCutover", printed, id=f"cutover-{app}", task_queue=queue, result_type=CutoverResult
        )
        result = await asyncio.wait_for(handle.result(), 30)
    assert result.outcome == Outcome.COMPLETED, result.reason


async def test_cli_errors_are_messages_not_tracebacks(
    temporal_server: DevServer, tmp_path: Path
) -> None:
    missing = await acli(temporal_server, "status", "no-such-app")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    _, runbook, _ = write_files(tmp_path, "q")
    bad_site = tmp_path / "bad-site.yaml"
    bad_site.write_text("vcenter:\n  host: vc\n  user: u\n  password: hunter2\n")
    res = await acli(temporal_server, "run", runbook, "--site", str(bad_site))
    assert res.returncode == 2
    assert f"{bad_site}: vcenter" in res.stderr and "hunter2" not in res.stderr


def test_cli_without_server_and_help_everywhere() -> None:
    down = subprocess.run(
        [CUTOVER, "status", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "TEMPORAL_ADDRESS": "127.0.0.1:1"},
    )
    assert down.returncode == 1 and "cannot reach Temporal" in down.stderr
    for cmd in (
        "validate",
        "run",
        "status",
        "approve",
        "rollback",
        "extend",
        "finalize",
        "resume",
        "server",
        "worker",
    ):
        h = subprocess.run([CUTOVER, cmd, "--help"], capture_output=True, text=True, check=False)
        assert h.returncode == 0 and "usage: cutover" in h.stdout


async def test_bad_input_from_the_ui_fails_the_workflow_with_fields_named(client: Client) -> None:
    # The Temporal UI's start form sends raw JSON: it must fail clearly, not loop forever.
    world = World()
    queue = f"ui-{uuid.uuid4().hex[:8]}"
    raw = cutover_input(queue).model_dump(mode="json")
    raw["runbook"]["application"] = "Bad_Name"
    raw["runbook"]["cutoverSteps"] = ["smoke_test"]
    async with build_worker(client, queue, activities=world.activities()):
        handle = await client.start_workflow(
            "AppCutover", raw, id=f"ui-{uuid.uuid4().hex[:8]}", task_queue=queue
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), 30)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ConfigError"
    assert "runbook.application" in cause.message and "runbook.cutoverSteps" in cause.message
    assert world.calls == [] and world.check_calls == []


async def test_a_cutover_started_under_another_workflow_id_fails_before_any_step(
    client: Client,
) -> None:
    # The UI's start form takes any workflow ID (it offers a random UUID).
    world = World()
    queue = f"ui-{uuid.uuid4().hex[:8]}"
    raw = cutover_input(queue).model_dump(mode="json")
    app = raw["runbook"]["application"]
    wid = str(uuid.uuid4())
    async with build_worker(client, queue, activities=world.activities()):
        handle = await client.start_workflow("AppCutover", raw, id=wid, task_queue=queue)
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), 30)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ConfigError"
    assert f"must run as workflow ID cutover-{app}, not {wid}" in cause.message
    assert world.calls == [] and world.check_calls == []
