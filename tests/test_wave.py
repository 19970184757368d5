"""WaveWorkflow against a real Temporal dev server: AppCutover children with test activities."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio import activity
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities.wave import WaveActivities
from cutover import search_attributes as sa
from cutover.catalog import BUILTIN_CHECKS
from cutover.models import ApprovalRequest, Phase, Tuning
from cutover.runbook import Runbook
from cutover.wave import (
    REQUEST_ROLLBACK,
    AppState,
    CancelRequest,
    CutoverRollback,
    PauseRequest,
    WaveApp,
    WaveApproval,
    WaveInput,
    WaveOutcome,
    WavePhase,
    WaveResult,
    workflow_id_for_wave,
)
from tests.conftest import DevServer
from tests.factories import UNSIGNED, site, unique_app
from tests.site_refs import serve
from tests.world import World
from workers.worker import build_worker
from workflows.cutover import AppCutoverWorkflow
from workflows.wave import WaveWorkflow

WaveHandle = WorkflowHandle[WaveWorkflow, WaveResult]


def runbook(app: str, **over: Any) -> Runbook:
    data: dict[str, Any] = {
        "application": app,
        "wave": 0,
        "sourcePlatform": "vmware-vsphere",
        "sourceCluster": "c1",
        "targetPlatform": "kvm-libvirt",
        # the window closes at once: evaluated once, no timer
        "rollbackWindowMinutes": 0.000001,
        "checkIntervalSeconds": 60,
        "cutoverSteps": ["quiesce_application"],
        **over,
    }
    return Runbook.model_validate(data)


def wave_input(
    queue: str, apps: list[str], deps: dict[str, list[str]] | None = None, **kw: Any
) -> WaveInput:
    deps = deps or {}
    name = kw.pop("name", f"w-{uuid.uuid4().hex[:8]}")
    rb_over = kw.pop("runbook", {})
    return WaveInput(
        name=name,
        site=site(taskQueue=queue),
        apps=[
            WaveApp(
                application=a,
                runbook=runbook(a, wave=name, **rb_over),
                dependsOn=deps.get(a, []),
            )
            for a in apps
        ],
        requestedBy="pytest",
        tuning=Tuning(
            maxAttempts=2, initialRetrySeconds=0.1, compensationAttempts=2, stepTimeoutMinutes=0.5
        ),
        **kw,
    )


@asynccontextmanager
async def running(client: Client, world: World) -> AsyncIterator[str]:
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    acts = [*world.activities(), *WaveActivities(client).activities()]
    async with build_worker(client, queue, activities=acts, max_concurrent_workflow_tasks=50):
        yield queue


async def start(client: Client, inp: WaveInput) -> WaveHandle:
    return await client.start_workflow(
        WaveWorkflow.run,
        inp,
        id=workflow_id_for_wave(inp.name),
        task_queue=inp.resolved_site.taskQueue,
    )


def apps(n: int) -> list[str]:
    return [unique_app("w") for _ in range(n)]


async def child_times(client: Client, names: list[str]) -> dict[str, tuple[datetime, datetime]]:
    out: dict[str, tuple[datetime, datetime]] = {}
    for n in names:
        d = await client.get_workflow_handle(f"cutover-{n}").describe()
        assert d.close_time is not None, n
        out[n] = (d.start_time, d.close_time)
    return out


def max_overlap(times: dict[str, tuple[datetime, datetime]]) -> int:
    events = sorted(
        [(s, 1) for s, _ in times.values()] + [(e, -1) for _, e in times.values()],
        key=lambda x: (x[0], x[1]),  # a close before a start at the same instant
    )
    cur = peak = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return peak


async def wait_for(handle: WaveHandle, pred: Any, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not pred(await handle.query(WaveWorkflow.status)):
            await asyncio.sleep(0.05)


@contextmanager
def refused(text: str) -> Iterator[None]:
    """An update refused by its validator, with this text in the reason."""
    with pytest.raises(WorkflowUpdateFailedError) as exc:
        yield
    assert text in str(exc.value.cause)


# ------------------------------------------------------------------- tests


async def test_concurrency_cap_is_never_exceeded(client: Client) -> None:
    world = World(delay=0.05)
    names = apps(9)
    async with running(client, world) as queue:
        handle = await start(client, wave_input(queue, names, concurrency=3))
        result = await handle.result()
    assert result.outcome == WaveOutcome.COMPLETED, result.reason
    assert result.counts.completed == 9
    assert result.changeFailureRate == 0
    assert result.downtime.count == 9 and result.downtime.maxSeconds is not None
    peak = max_overlap(await child_times(client, names))
    assert 2 <= peak <= 3
    desc = await handle.describe()
    assert desc.typed_search_attributes.get(sa.WAVE) == result.wave
    assert desc.typed_search_attributes.get(sa.OUTCOME) == "COMPLETED"
    child = await client.get_workflow_handle(f"cutover-{names[0]}").describe()
    assert child.typed_search_attributes.get(sa.WAVE) == result.wave
    assert child.parent_id == handle.id


async def test_dependents_wait_for_dependencies_to_complete(client: Client) -> None:
    world = World(delay=0.02)
    a, b, c, d = apps(4)
    deps = {b: [a], c: [b, a], d: []}
    async with running(client, world) as queue:
        handle = await start(client, wave_input(queue, [c, b, a, d], deps, concurrency=4))
        result = await handle.result()
    assert result.outcome == WaveOutcome.COMPLETED, result.reason
    t = await child_times(client, [a, b, c, d])
    assert t[b][0] >= t[a][1]
    assert t[c][0] >= t[b][1]
    assert t[d][0] < t[b][0]  # independent: started with the first batch


async def test_failed_dependency_skips_dependents_with_a_reason(client: Client) -> None:
    a, b, c, d = apps(4)
    world = World(fail_for={a: {"quiesce_application"}})
    async with running(client, world) as queue:
        inp = wave_input(queue, [a, b, c, d], {b: [a], c: [b]}, concurrency=2,
                         failureThreshold=5)  # fmt: skip
        result = await (await start(client, inp)).result()
    by = {x.application: x for x in result.applications}
    assert by[a].state == AppState.ROLLED_BACK
    assert "quiesce_application" in by[a].reason
    assert by[b].state == AppState.SKIPPED and a in by[b].reason
    assert by[c].state == AppState.SKIPPED and b in by[c].reason
    assert by[d].state == AppState.COMPLETED
    assert result.outcome == WaveOutcome.PARTIAL
    assert result.changeFailureRate == 0.5
    # MTTR: failure detected (quiesce failed) -> source serving again (restart_source)
    assert by[a].recoverySeconds is not None and result.mttrSeconds == by[a].recoverySeconds
    with pytest.raises(Exception):  # noqa: B017 - the cutover never started
        await client.get_workflow_handle(f"cutover-{b}").describe()


async def test_failure_threshold_stops_new_starts(client: Client) -> None:
    names = apps(6)
    world = World(fail_for={names[1]: {"quiesce_application"}, names[3]: {"quiesce_application"}})
    async with running(client, world) as queue:
        inp = wave_input(queue, names, concurrency=1, failureThreshold=1)
        result = await (await start(client, inp)).result()
    states = [a.state for a in result.applications]
    assert states == [
        AppState.COMPLETED,
        AppState.ROLLED_BACK,
        AppState.COMPLETED,
        AppState.ROLLED_BACK,
        AppState.NOT_STARTED,
        AppState.NOT_STARTED,
    ]
    assert result.outcome == WaveOutcome.STOPPED
    assert "failure threshold exceeded: 2" in result.reason
    assert result.counts.notStarted == 2
    assert result.changeFailureRate == 0.5


async def test_approval_pause_resume(client: Client) -> None:
    world = World(delay=0.15)
    names = apps(3)
    async with running(client, world) as queue:
        inp = wave_input(queue, names, concurrency=1,
                         approval=WaveApproval(required=True, approvers=["alice"]))  # fmt: skip
        handle = await start(client, inp)
        await wait_for(handle, lambda s: s.phase == WavePhase.AWAITING_APPROVAL)
        with refused("not an allowed approver"):
            await handle.execute_update(WaveWorkflow.approve, ApprovalRequest(approver="mallory"))
        with refused("is not paused"):
            await handle.execute_update(WaveWorkflow.resume, PauseRequest())
        await handle.execute_update(WaveWorkflow.approve, ApprovalRequest(approver="alice"))
        await wait_for(handle, lambda s: s.counts.running == 1)
        msg = await handle.execute_update(WaveWorkflow.pause, PauseRequest(requestedBy="bob"))
        assert "paused by bob" in msg
        with refused("already paused"):
            await handle.execute_update(WaveWorkflow.pause, PauseRequest())
        # the running cutover finishes; nothing new starts while paused
        await wait_for(handle, lambda s: s.counts.running == 0)
        await asyncio.sleep(1.0)
        st = await handle.query(WaveWorkflow.status)
        assert st.phase == WavePhase.PAUSED
        assert (st.counts.completed, st.counts.pending) == (1, 2)
        await handle.execute_update(WaveWorkflow.resume, PauseRequest(requestedBy="bob"))
        result = await handle.result()
    assert result.outcome == WaveOutcome.COMPLETED
    assert result.approvedBy == "alice"
    with pytest.raises(RPCError, match="already completed"):
        await handle.execute_update(WaveWorkflow.pause, PauseRequest())


async def test_cancel_finish_lets_running_cutovers_finish(client: Client) -> None:
    world = World(delay=0.2)
    names = apps(5)
    async with running(client, world) as queue:
        handle = await start(client, wave_input(queue, names, concurrency=2))
        await wait_for(handle, lambda s: s.counts.running == 2)
        msg = await handle.execute_update(
            WaveWorkflow.cancel, CancelRequest(requestedBy="carol", policy="finish")
        )
        assert "3 application(s) will not start" in msg
        with refused("already cancelled"):
            await handle.execute_update(WaveWorkflow.cancel, CancelRequest())
        result = await handle.result()
    assert result.outcome == WaveOutcome.CANCELLED
    assert (result.counts.completed, result.counts.notStarted) == (2, 3)


async def test_cancel_rollback_rolls_running_cutovers_back(client: Client) -> None:
    world = World()
    names = apps(4)
    async with running(client, world) as queue:
        inp = wave_input(queue, names, concurrency=2, onCancel="rollback",
                         runbook={"rollbackWindowMinutes": 5})  # fmt: skip
        handle = await start(client, inp)
        await wait_for(handle, lambda s: s.counts.running == 2)
        for n in names[:2]:  # both in their rollback windows
            child = client.get_workflow_handle_for(AppCutoverWorkflow.run, f"cutover-{n}")
            async with asyncio.timeout(20):
                while True:
                    with contextlib.suppress(RPCError):  # not started yet
                        st = await child.query(AppCutoverWorkflow.status)
                        if st.phase == Phase.ROLLBACK_WINDOW:
                            break
                    await asyncio.sleep(0.05)
        msg = await handle.execute_update(WaveWorkflow.cancel, CancelRequest(requestedBy="dave"))
        assert "rollback requested for 2 running cutover(s)" in msg
        result = await handle.result()
    assert result.outcome == WaveOutcome.CANCELLED
    by = {a.application: a for a in result.applications}
    assert [by[n].state for n in names] == [AppState.ROLLED_BACK] * 2 + [AppState.NOT_STARTED] * 2
    assert "cancelled by dave" in by[names[0]].reason
    assert "restart_source" in world.calls


async def test_large_wave_continues_as_new_and_accounts_for_every_child(client: Client) -> None:
    world = World()
    names = apps(300)
    async with running(client, world) as queue:
        inp = wave_input(queue, names, {names[299]: [names[0]]}, concurrency=40,
                         continueAsNewAfter=100)  # fmt: skip
        handle = await start(client, inp)
        result = await handle.result()
    assert result.outcome == WaveOutcome.COMPLETED, result.reason
    assert result.counts.completed == 300 and len(result.applications) == 300
    assert {a.application for a in result.applications} == set(names)
    assert result.runs >= 3
    assert world.calls.count("mark_source_migrated") == 300
    # the last run continued from earlier ones: the first run's ID, a later run ID
    desc = await handle.describe()
    assert desc.run_id != handle.first_execution_run_id


async def test_continue_as_new_leaves_no_slot_idle_and_awaits_the_running_cutover(
    client: Client,
) -> None:
    """Issue 17: at continue-as-new the wave does not drain its running cutovers: the next
    run starts new ones at once and awaits the one still running by its ID. Before: the
    wave waited for the slow cutover to end before any cutover of its next run started."""
    names = apps(4)
    slow = names[1]
    world = World(slow_for={slow: 0.5})  # seconds longer than the others
    async with running(client, world) as queue:
        inp = wave_input(queue, names, concurrency=2, continueAsNewAfter=1)
        handle = await start(client, inp)
        result = await handle.result()
    assert result.outcome == WaveOutcome.COMPLETED, result.reason
    assert result.counts.completed == 4 and result.runs >= 2
    by = {a.application: a for a in result.applications}
    assert all(a.startedAt and a.endedAt for a in by.values())
    # the slow one was awaited across the boundary: the next cutover started (in the next
    # run, the first finishing made it due) while it still ran
    t0 = min(a.startedAt for a in by.values() if a.startedAt)
    spans = {
        n: ((by[n].startedAt - t0).total_seconds(), (by[n].endedAt - t0).total_seconds())  # type: ignore[operator]
        for n in names
    }
    assert spans[names[2]][0] < spans[slow][1], (slow, spans, result.runs)
    assert by[slow].downtimeSeconds is not None  # its result, read by ID, is accounted


# --------------------------------------------------------------------- CLI

CUTOVER = str(Path(sys.executable).parent / "cutover")
ROOT = str(Path(__file__).parent.parent)


def cli(server: DevServer, *args: str) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH: this checkout's packages, also when another one is installed editable
    env = {**os.environ, "TEMPORAL_ADDRESS": server.address, "PYTHONPATH": ROOT}
    return subprocess.run(
        [CUTOVER, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


async def acli(server: DevServer, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, server, *args)


def write_wave(tmp: Path, queue: str, names: list[str], **wave: Any) -> tuple[str, str, str]:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    checks = {n: {"type": "command", "argv": ["true"]} for n in BUILTIN_CHECKS}
    s = {
        "name": "cli-test",
        "taskQueue": queue,
        "checks": checks,
        "access": UNSIGNED,
        "vcenter": {"host": "127.0.0.1", "user": "svc", "passwordRef": {"env": "UNUSED"}},
    }
    apps: list[dict[str, Any]] = [
        {"runbook": runbook(n).model_dump(mode="json", exclude_defaults=True)} for n in names
    ]
    for entry in apps[1:]:
        entry["dependsOn"] = [names[0]]
    (tmp / "site.yaml").write_text(yaml.safe_dump(s))
    (tmp / "wave.yaml").write_text(yaml.safe_dump({"wave": name, "applications": apps, **wave}))
    return name, str(tmp / "wave.yaml"), serve(str(tmp / "site.yaml"))


async def running_waves(client: Client, name: str) -> list[str]:
    q = f'WorkflowType = "Wave" AND CutoverWave = "{name}" AND ExecutionStatus = "Running"'
    return [wf.id async for wf in client.list_workflows(q)]


async def test_cli_wave_run_steer_and_watch(
    client: Client, temporal_server: DevServer, tmp_path: Path
) -> None:
    queue = f"cli-{uuid.uuid4().hex[:8]}"
    names = apps(3)
    name, wave, site_file = write_wave(
        tmp_path, queue, names, concurrency=2,
        approval={"required": True, "approvers": ["alice"]},
    )  # fmt: skip
    async with build_worker(client, queue, activities=World(delay=0.05).activities()):
        res = await acli(temporal_server, "wave", "validate", wave, "--site", site_file)
        assert res.returncode == 0 and "3 application(s) valid" in res.stdout, res.stderr
        res = await acli(temporal_server, "wave", "run", wave, "--site", site_file)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == f"wave-{name}"
        again = await acli(temporal_server, "wave", "run", wave, "--site", site_file)
        assert again.returncode == 1 and "already running" in again.stderr
        res = await acli(temporal_server, "wave", "status", name)
        assert res.returncode == 0 and "AWAITING_APPROVAL" in res.stdout, res.stderr
        res = await acli(temporal_server, "wave", "approve", name, "--as", "mallory")
        assert res.returncode == 1 and "not an allowed approver" in res.stderr
        res = await acli(temporal_server, "wave", "pause", name, "--reason", "lunch")
        assert res.returncode == 0 and "paused" in res.stdout, res.stderr
        res = await acli(temporal_server, "wave", "resume", f"wave-{name}")
        assert res.returncode == 0 and "resumed" in res.stdout, res.stderr
        res = await acli(temporal_server, "wave", "approve", name, "--as", "alice")
        assert res.returncode == 0, res.stderr
        res = await acli(temporal_server, "wave", "status", name, "--watch", "--interval", "0.2")
        assert res.returncode == 0, res.stderr
        assert f"wave {name} (wave-{name}): DONE, outcome COMPLETED" in res.stdout
        assert all(n in res.stdout for n in names)
        res = await acli(temporal_server, "wave", "status", name, "--json")
        data = json.loads(res.stdout)
        assert data["counts"]["completed"] == 3
        res = await acli(temporal_server, "wave", "status")
        assert f"wave-{name}" in res.stdout
        res = await acli(temporal_server, "wave", "cancel", name)
        assert res.returncode == 1 and "already finished" in res.stderr


async def test_cli_wave_wait_exit_codes_and_bad_input(
    client: Client, temporal_server: DevServer, tmp_path: Path
) -> None:
    queue = f"cli-{uuid.uuid4().hex[:8]}"
    names = apps(3)
    _, wave, site_file = write_wave(tmp_path, queue, names, concurrency=2)
    world = World(fail_for={names[0]: {"quiesce_application"}})
    async with build_worker(client, queue, activities=world.activities()):
        res = await acli(temporal_server, "wave", "run", wave, "--site", site_file, "--wait",
                         "--json")  # fmt: skip
    assert res.returncode == 1, res.stderr
    result = json.loads(res.stdout)
    assert result["outcome"] == "STOPPED"  # failureThreshold 0
    assert result["counts"] == {**result["counts"], "rolledBack": 1, "skipped": 2}
    assert result["changeFailureRate"] == 1.0
    doc = yaml.safe_load(Path(wave).read_text())
    doc["applications"][0]["dependsOn"] = [names[1]]
    Path(wave).write_text(yaml.safe_dump(doc))
    res = await acli(temporal_server, "wave", "run", wave, "--site", site_file)
    assert res.returncode == 2
    assert f"dependency cycle: {names[0]} -> {names[1]} -> {names[0]}" in res.stderr
    assert "Traceback" not in res.stderr
    res = await acli(temporal_server, "wave", "pause", "no-such-wave")
    assert res.returncode == 1 and "no wave" in res.stderr
    res = await acli(temporal_server, "wave", "run", wave)  # --site missing
    assert res.returncode == 2 and "--site" in res.stderr
    res = await acli(temporal_server, "wave", "status", "x", "--watch", "--interval", "0")
    assert res.returncode == 2 and "--interval" in res.stderr
    for cmd in (["wave", "--help"], ["wave", "status", "--help"], ["schedule", "create", "--help"]):
        res = await acli(temporal_server, *cmd)
        assert res.returncode == 0 and "usage: cutover" in res.stdout


async def test_schedule_starts_a_wave_never_two_at_once(
    client: Client, temporal_server: DevServer, tmp_path: Path
) -> None:
    queue = f"cli-{uuid.uuid4().hex[:8]}"
    names = apps(2)
    name, wave, site_file = write_wave(
        tmp_path, queue, names, approval={"required": True, "approvers": ["alice"]}
    )
    base = ["schedule", "create", wave, "--site", site_file]
    for bad, why in (
        (["--at", "2001-01-01T00:00:00Z"], "in the past"),
        (["--at", "tomorrow"], "ISO 8601"),
        (["--cron", "every day"], "--cron"),
        (["--cron", "0 3 * * *", "--window", "soon"], "--window"),
    ):
        res = await acli(temporal_server, *base, *bad)
        assert res.returncode == 2 and why in res.stderr, (bad, res.stderr)
    async with build_worker(client, queue, activities=World().activities()):
        res = await acli(temporal_server, *base, "--cron", "0 3 1 1 *", "--window", "2h")
        assert res.returncode == 0 and f"wave-{name}: starts wave {name}" in res.stdout, res.stderr
        res = await acli(temporal_server, *base, "--cron", "0 3 1 1 *")
        assert res.returncode == 1 and "already exists" in res.stderr
        res = await acli(temporal_server, "schedule", "trigger", name)
        assert res.returncode == 0, res.stderr
        async with asyncio.timeout(20):
            while not await running_waves(client, name):
                await asyncio.sleep(0.1)
        # the wave waits for approval; a second trigger meanwhile is skipped (overlap SKIP)
        res = await acli(temporal_server, "schedule", "trigger", name)
        assert res.returncode == 0, res.stderr
        sched = client.get_schedule_handle(f"wave-{name}")
        async with asyncio.timeout(20):
            while (await sched.describe()).info.num_actions_skipped_overlap < 1:
                await asyncio.sleep(0.1)
        running_ids = await running_waves(client, name)
        assert len(running_ids) == 1 and running_ids[0].startswith(f"wave-{name}-")
        desc = await sched.describe()
        assert len(desc.info.running_actions) == 1
        res = await acli(temporal_server, "schedule", "list", "--json")
        assert any(r["scheduleId"] == f"wave-{name}" for r in json.loads(res.stdout))
        # operator commands find the scheduled run by the wave's name
        res = await acli(temporal_server, "wave", "approve", name, "--as", "alice")
        assert res.returncode == 0, res.stderr
        scheduled = client.get_workflow_handle_for(WaveWorkflow.run, running_ids[0])
        assert (await scheduled.result()).outcome == WaveOutcome.COMPLETED
        res = await acli(temporal_server, "schedule", "pause", name)
        assert res.returncode == 0 and "paused" in res.stdout
        assert (await sched.describe()).schedule.state.paused
        res = await acli(temporal_server, "schedule", "delete", name)
        assert res.returncode == 0, res.stderr
        res = await acli(temporal_server, "schedule", "trigger", name)
        assert res.returncode == 1 and "no schedule" in res.stderr


async def test_maintenance_window_stops_new_starts(client: Client) -> None:
    world = World(delay=0.05)
    names = apps(4)
    async with running(client, world) as queue:
        inp = wave_input(queue, names, concurrency=1, windowSeconds=0.001)
        result = await (await start(client, inp)).result()
    assert result.outcome == WaveOutcome.WINDOW_CLOSED
    assert "maintenance window closed" in result.reason
    assert [a.state for a in result.applications] == [AppState.COMPLETED] + [
        AppState.NOT_STARTED
    ] * 3


async def test_a_temporal_cancel_request_follows_on_cancel(client: Client) -> None:
    world = World(delay=0.2)
    names = apps(4)
    async with running(client, world) as queue:
        handle = await start(client, wave_input(queue, names, concurrency=2))
        await wait_for(handle, lambda s: s.counts.running == 2)
        await handle.cancel()  # e.g. from the Temporal UI
        result = await handle.result()
    assert result.outcome == WaveOutcome.CANCELLED
    assert "a Temporal cancel request" in result.reason
    assert (result.counts.completed, result.counts.notStarted) == (2, 2)


async def test_bad_input_from_the_ui_fails_the_wave_with_fields_named(client: Client) -> None:
    world = World()
    async with running(client, world) as queue:
        raw = wave_input(queue, apps(1)).model_dump(mode="json")
        raw["concurrency"] = "lots"
        del raw["apps"][0]["runbook"]["cutoverSteps"]
        handle = await client.start_workflow(
            "Wave", raw, id=f"wave-ui-{uuid.uuid4().hex[:8]}", task_queue=queue
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), 30)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ConfigError"
    assert "concurrency" in cause.message and "apps[0].runbook.cutoverSteps" in cause.message
    assert world.calls == []


async def ui_start(client: Client, queue: str, raw: dict[str, Any]) -> ApplicationError:
    """Start "Wave" with a raw input, as the Temporal UI does; the failure it ends with
    within 15 s (a wave still running then is terminated and the test fails)."""
    handle = await client.start_workflow(
        "Wave", raw, id=f"wave-ui-{uuid.uuid4().hex[:8]}", task_queue=queue
    )
    try:
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), 15)
    except TimeoutError:
        with contextlib.suppress(RPCError):
            await handle.terminate("test: the wave did not fail at once")
        pytest.fail("the wave did not fail at once: still running after 15 s")
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ConfigError", cause
    return cause


@pytest.mark.parametrize("field", ["concurrency", "continueAsNewAfter"])
async def test_a_wave_started_from_the_ui_with_zero_fails_at_once_naming_the_field(
    client: Client, field: str
) -> None:
    """Before: concurrency 0 never started a cutover (the wave hung); continueAsNewAfter 0
    continued-as-new before starting any, forever. The wave file's rules now apply."""
    world = World()
    async with running(client, world) as queue:
        raw = wave_input(queue, apps(2)).model_dump(mode="json")
        raw[field] = 0
        cause = await ui_start(client, queue, raw)
    assert f"{field}: 0 is out of range: must be between 1 and" in cause.message
    assert world.calls == []


async def test_a_wave_from_the_ui_names_every_bad_field_and_dependency(client: Client) -> None:
    """Every bounded field at once; then the applications: an unknown dependency, one
    listed twice, a runbook check without a probe, a cycle (each as the wave file's)."""
    world = World()
    async with running(client, world) as queue:
        a, b = apps(2)
        raw = wave_input(queue, [a, b]).model_dump(mode="json")
        raw |= {"concurrency": 0, "continueAsNewAfter": 0, "failureThreshold": -1}
        cause = await ui_start(client, queue, raw)
        for field in ("concurrency", "continueAsNewAfter", "failureThreshold"):
            assert f"{field}: " in cause.message, field
        raw = wave_input(queue, [a, b]).model_dump(mode="json")
        raw["apps"][0]["dependsOn"] = ["nope"]
        raw["apps"].append(raw["apps"][1])
        raw["apps"][1]["runbook"]["preChecks"] = ["no_probe_here"]
        cause = await ui_start(client, queue, raw)
        assert "apps[0].dependsOn[0]: unknown application 'nope'" in cause.message
        assert f"apps[2].application: application '{b}' is listed twice" in cause.message
        assert "apps[1]" in cause.message and "no_probe_here" in cause.message
        raw = wave_input(queue, [a, b]).model_dump(mode="json")
        raw["apps"][0]["dependsOn"], raw["apps"][1]["dependsOn"] = [b], [a]
        cause = await ui_start(client, queue, raw)
        assert f"apps[0].dependsOn: dependency cycle: {a} -> {b} -> {a}" in cause.message
    assert world.calls == []


async def test_a_cancelled_wave_returns_only_after_its_cancel_handler_finished(
    client: Client,
) -> None:
    """`wave cancel` (rollback): the cutover rolls back and finishes while the rollback
    request is still being answered. Before, the wave returned then, abandoning the
    handler (its caller got an error); now it waits: the caller gets its answer and the
    wave closes after the last request was answered."""
    world = World()
    names = apps(1)
    answered: list[datetime] = []
    real = WaveActivities(client)

    @activity.defn(name=REQUEST_ROLLBACK)
    async def slow_request_rollback(req: CutoverRollback) -> str:
        answer = await real.request_rollback(req)
        child = client.get_workflow_handle(req.workflowId)
        async with asyncio.timeout(30):  # the cutover finished its rollback meanwhile
            while (await child.describe()).status == WorkflowExecutionStatus.RUNNING:
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        answered.append(datetime.now(UTC))
        return answer

    queue = f"tq-{uuid.uuid4().hex[:8]}"
    acts = [*world.activities(), slow_request_rollback]
    async with build_worker(client, queue, activities=acts):
        inp = wave_input(queue, names, onCancel="rollback", runbook={"rollbackWindowMinutes": 5})
        handle = await start(client, inp)
        child = client.get_workflow_handle_for(AppCutoverWorkflow.run, f"cutover-{names[0]}")
        async with asyncio.timeout(20):
            while True:
                with contextlib.suppress(RPCError):  # not started yet
                    if (await child.query(AppCutoverWorkflow.status)).phase == (
                        Phase.ROLLBACK_WINDOW
                    ):
                        break
                await asyncio.sleep(0.05)
        msg = await handle.execute_update(WaveWorkflow.cancel, CancelRequest(requestedBy="erin"))
        assert "rollback requested for 1 running cutover(s)" in msg
        assert f"{names[0]}: " in msg
        result = await handle.result()
    assert result.outcome == WaveOutcome.CANCELLED
    assert result.applications[0].state == AppState.ROLLED_BACK
    closed = (await handle.describe()).close_time
    assert answered and closed is not None and closed >= answered[0]
