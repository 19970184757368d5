"""Faults at any instant (issue 11): each finding of the review, against a real Temporal server.

Each test is named after what it proves; each fails on the workflow before the `safety-v2`
patch (see the docstrings for how it failed there).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError

from cutover import search_attributes as sa
from cutover.audit import audit
from cutover.models import (
    ApprovalRequest,
    CutoverInput,
    CutoverResult,
    FinalizeRequest,
    Outcome,
    Phase,
    ResumeRequest,
    RollbackRequest,
    Tuning,
)
from cutover.site import Dns
from tests import procs
from tests.conftest import DevServer
from tests.factories import SEED, cutover_input
from tests.test_workflow import running, start, wait_phase, wait_post_checks
from tests.world import World
from workflows.cutover import AppCutoverWorkflow

Handle = WorkflowHandle[AppCutoverWorkflow, CutoverResult]
DESTRUCTIVE = {"remove_target_domain", "detach_target_storage", "discard_staging"}


def window_input(queue: str, **runbook: object) -> CutoverInput:
    """A cutover whose window stays open until something acts on it."""
    return cutover_input(queue, rollbackWindowMinutes=10, checkIntervalSeconds=0.3, **runbook)


async def wait_until(predicate: object, timeout: float = 20) -> None:
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def status_of(handle: Handle) -> tuple[Phase, list[str]]:
    st = await handle.query(AppCutoverWorkflow.status)
    return st.phase, st.leftWhere


# ------------------------------------------------------------ finding 1: undo preconditions


async def test_an_undo_that_cannot_move_traffic_back_never_destroys_the_target(
    client: Client,
) -> None:
    """Before: remove_target_domain and detach_target_storage ran after restore_load_balancer
    failed for good, destroying the target while the LB still sent users to it."""
    world = World(
        check_plan={"app_health_check_failure": [False]}, broken={"restore_load_balancer"}
    )
    async with running(client, world) as queue:
        handle = await start(client, window_input(queue))
        await wait_phase(handle, Phase.ROLLBACK_BLOCKED)
        _, left = await status_of(handle)
        assert not DESTRUCTIVE & set(world.calls), world.calls
        assert "remove_source_snapshot" not in world.calls  # the source's recovery point stays
        # one writer: the source started only after the target was fenced; no path could
        # move back, so no user reached the source: it is stopped again and the target
        # unfenced (users are served, by one side), and a resume starts over
        assert world.calls.index("fence_target") < world.calls.index("restart_source")
        assert world.calls[-2:] == ["quiesce_application", "unfence_target"], world.calls
        assert any("traffic still goes to the target" in line for line in left), left
        assert any("the target is kept running" in line for line in left), left
        assert "the source is not running again" in left, left
        assert any(line.startswith("remove_target_domain: held back") for line in left), left
        assert left[-1].endswith(
            "in order: fence_target, reverse_sync, restart_source, restore_load_balancer, "
            "remove_target_domain, detach_target_storage, remove_converted_image, "
            "discard_staging, remove_source_snapshot"
        ), left[-1]
        attrs = (await handle.describe()).typed_search_attributes
        assert attrs.get(sa.OUTCOME) == Outcome.FAILED.value
        assert attrs.get(sa.PHASE) == Phase.ROLLBACK_BLOCKED.value
        # the operator fixes the LB and resumes: the rest of the rollback runs, in order
        world.broken.clear()
        await handle.execute_update(AppCutoverWorkflow.resume, ResumeRequest(requestedBy="ops"))
        result = await handle.result()
    assert result.outcome == Outcome.ROLLED_BACK, result.leftWhere
    resumed = world.calls[world.calls.index("unfence_target") + 1 :]
    assert resumed[:5] == [
        "fence_target",
        "reverse_sync",
        "restart_source",
        "restore_load_balancer",
        "remove_target_domain",
    ], resumed
    assert set(resumed) >= DESTRUCTIVE


async def test_a_source_that_does_not_restart_keeps_traffic_on_the_target(client: Client) -> None:
    """Before: with restart_source failing, restore_load_balancer still pointed users at a
    powered-off source, and then the serving target was removed."""
    world = World(check_plan={"app_health_check_failure": [False]}, broken={"restart_source"})
    async with running(client, world) as queue:
        inp = window_input(queue)
        tuning = inp.tuning.model_copy(update={"blockedWaitHours": 0.001})  # 3.6 s
        result = await (await start(client, inp.model_copy(update={"tuning": tuning}))).result()
    assert result.outcome == Outcome.FAILED
    assert "restore_load_balancer" not in world.calls
    assert not DESTRUCTIVE & set(world.calls)
    assert any("the source is not running again" in line for line in result.leftWhere)
    assert any("traffic still goes to the target" in line for line in result.leftWhere)
    assert any("nobody resumed within" in line for line in result.leftWhere)
    # one restart per pass (its 2 attempts): registered again above the switch, it is not
    # retried there, so no later success can move one traffic path back and not another
    assert world.calls.count("restart_source") == 2
    failures = {f.split(":")[0] for f in result.compensationFailures}
    assert {"restart_source", "restore_load_balancer", "remove_target_domain"} <= failures
    # the target was fenced for the source's start, and unfenced when it did not start:
    # the side holding the data serves while nobody fixes the source
    assert world.calls.index("fence_target") < world.calls.index("restart_source")
    # a start that failed may have landed: the source is stopped before the target resumes
    # (never two running VMs with one address)
    assert world.calls[-2:] == ["quiesce_application", "unfence_target"]
    assert any("the target runs (not fenced)" in line for line in result.leftWhere)


async def test_a_traffic_undo_that_landed_before_it_failed_never_gets_the_source_stopped(
    client: Client,
) -> None:
    """Before: restore_load_balancer moved users back to the source, then failed; the
    workflow, believing every path still on the target, stopped the source again and
    unfenced the target: users on the source got errors (bench.chaos found it). Now a
    traffic undo that failed without saying traffic stayed on the target (the load
    balancer's say where it is) leaves the source running and the target fenced."""
    world = World(
        check_plan={"app_health_check_failure": [False]},
        landed_then_failed={"restore_load_balancer"},
    )
    async with running(client, world) as queue:
        handle = await start(client, window_input(queue))
        await wait_phase(handle, Phase.ROLLBACK_BLOCKED)
        _, left = await status_of(handle)
    undo = world.calls[world.calls.index("fence_target") :]
    assert undo[:4] == ["fence_target", "reverse_sync", "restart_source", "restore_load_balancer"]
    assert not {"quiesce_application", "unfence_target", *DESTRUCTIVE} & set(undo), undo
    assert any("restore_load_balancer: failed" in line for line in left), left


async def test_a_source_that_may_have_started_and_cannot_be_stopped_keeps_the_target_fenced(
    client: Client,
) -> None:
    """Before: a restart_source that failed got the target unfenced at once; had the
    power-on landed (its answer lost), the source and the target both ran with one MAC and
    IP. Now the source is stopped first, and when that fails the target stays fenced."""
    world = World(
        check_plan={"app_health_check_failure": [False]},
        broken={"restart_source"},
        broken_after={"quiesce_application": 1},  # it worked going forward
    )
    async with running(client, world) as queue:
        handle = await start(client, window_input(queue))
        await wait_phase(handle, Phase.ROLLBACK_BLOCKED)
        _, left = await status_of(handle)
    undo = world.calls[world.calls.index("fence_target") :]
    assert undo[-1] == "quiesce_application" and "unfence_target" not in undo, undo
    assert any(
        line.startswith("quiesce_application: failed") and "the target stays fenced" in line
        for line in left
    ), left


async def test_the_source_starts_only_after_the_target_is_fenced(client: Client) -> None:
    """Before: restart_source ran with the target still up, so between the source's start
    and the last traffic path moving back both sides took writes. Now a fence that fails
    holds the source's start (and so every traffic move and destructive undo) back; a
    source that does not start gets the target unfenced; a resume fences again first."""
    world = World(
        check_plan={"app_health_check_failure": [False]},
        broken={"fence_target", "restart_source"},
    )
    async with running(client, world) as queue:
        handle = await start(client, window_input(queue))
        await wait_phase(handle, Phase.ROLLBACK_BLOCKED)
        _, left = await status_of(handle)
        assert "restart_source" not in world.calls  # held back: the target may take writes
        assert not {"restore_load_balancer", *DESTRUCTIVE} & set(world.calls)
        assert any(
            line.startswith("restart_source: held back: needs the target takes no writes")
            for line in left
        ), left
        # the fence may have paused part of the target: unfenced, it serves whole again
        assert world.calls[-1] == "unfence_target"
        # the operator fixes the fence, not yet the source: the source's start fails, and
        # the target, fenced for it, is unfenced again
        world.broken.discard("fence_target")
        mark = len(world.calls)
        await handle.execute_update(AppCutoverWorkflow.resume, ResumeRequest(requestedBy="ops"))
        async with asyncio.timeout(20):
            while "unfence_target" not in world.calls[mark:]:
                await asyncio.sleep(0.05)
        await wait_phase(handle, Phase.ROLLBACK_BLOCKED)
        second = world.calls[mark:]
        assert second[:4] == [
            "fence_target",
            "reverse_sync",
            "restart_source",
            "restart_source",
        ], second
        assert second[-1] == "unfence_target" and "restore_load_balancer" not in second
        _, left = await status_of(handle)
        assert left[-1].endswith(
            "it runs, in order: fence_target, quiesce_application, reverse_sync, "
            "restart_source, restore_load_balancer, "
            "remove_target_domain, detach_target_storage, remove_converted_image, "
            "discard_staging, remove_source_snapshot"
        ), left[-1]
        # fixed for good: fence, start, then traffic, then the target goes
        world.broken.clear()
        mark = len(world.calls)
        await handle.execute_update(AppCutoverWorkflow.resume, ResumeRequest(requestedBy="ops"))
        result = await handle.result()
    assert result.outcome == Outcome.ROLLED_BACK, result.leftWhere
    third = world.calls[mark:]
    # the failed start may have started it: stopped first (no user is on it), then written
    assert third[:6] == [
        "fence_target",
        "quiesce_application",
        "reverse_sync",
        "restart_source",
        "restore_load_balancer",
        "remove_target_domain",
    ], third
    assert "unfence_target" not in third


async def test_a_failed_rollback_always_says_where_users_are(client: Client) -> None:
    """A rollback before the switch that fails on an undo still says what serves."""
    world = World(fail={"smoke_test"}, broken={"discard_staging"})
    async with running(client, world) as queue:
        inp = cutover_input(queue)
        tuning = inp.tuning.model_copy(update={"blockedWaitHours": 0.001})
        result = await (await start(client, inp.model_copy(update={"tuning": tuning}))).result()
    assert result.outcome == Outcome.FAILED
    assert "traffic: on the source" in result.leftWhere
    assert "the source runs again" in result.leftWhere


# --------------------------------------------------------- finding 2: cancellation at any instant


async def test_a_cancel_during_compensations_lets_them_all_run(client: Client) -> None:
    """Before: the cancel ended the workflow CANCELED while remove_target_domain ran, and the
    undos after it (storage, image, source restart, staging, snapshot) never ran."""
    world = World(fail={"smoke_test"}, slow={"remove_target_domain": 1.5})
    async with running(client, world) as queue:
        handle = await start(client, cutover_input(queue))
        await wait_until(lambda: "remove_target_domain" in world.calls)
        await handle.cancel()
        result = await handle.result()
    assert result.outcome == Outcome.ROLLED_BACK
    after = world.calls[world.calls.index("smoke_test") + 1 :]
    assert after[-2:] == ["discard_staging", "remove_source_snapshot"]
    assert {"detach_target_storage", "remove_converted_image", "restart_source"} <= set(after)


async def test_a_cancel_during_finalize_completes_it(client: Client) -> None:
    """Before: a cancel while finalizing ended CANCELED half-way (NICs disconnected, not
    marked migrated, staging left)."""
    world = World(slow={"disconnect_source_nics": 1.5})
    async with running(client, world) as queue:
        handle = await start(client, cutover_input(queue))
        await wait_until(lambda: "disconnect_source_nics" in world.calls)
        await handle.cancel()
        result = await handle.result()
    assert result.outcome == Outcome.COMPLETED
    assert world.calls[-3:] == [
        "remove_converted_image",
        "discard_staging",
        "commit_target_overlay",
    ]
    assert "mark_source_migrated" in world.calls


async def test_a_cancel_during_a_step_lets_it_finish_then_rolls_back(client: Client) -> None:
    """A step in flight is not cut off (its world change would race the undo): it finishes,
    then the registered undos run."""
    world = World(slow={"power_on_target": 1.5})
    async with running(client, world) as queue:
        handle = await start(client, cutover_input(queue))
        await wait_until(lambda: "power_on_target" in world.calls)
        await handle.cancel()
        result = await handle.result()
    assert result.outcome == Outcome.ROLLED_BACK and "cancel" in result.reason
    power = next(s for s in result.steps if s.name == "power_on_target")
    assert power.outcome == "ok"
    assert "smoke_test" not in world.calls
    after = world.calls[world.calls.index("power_on_target") + 1 :]
    assert after[0] == "remove_target_domain"


# ------------------------------------------------------ finding 4: finalize on fresh evidence


async def test_finalize_needs_a_passing_round_that_started_after_the_request(
    client: Client,
) -> None:
    """Before: a finalize accepted on the last round's passing checks finalized at once,
    although the next round failed."""
    world = World(check_plan={"error_rate_below_threshold": [True, False]})
    async with running(client, world) as queue:
        inp = cutover_input(queue, rollbackWindowMinutes=10, checkIntervalSeconds=60)
        handle = await start(client, inp)
        await wait_post_checks(handle)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                "finalize", FinalizeRequest(requestedBy="ops"), result_type=str
            )
        assert "started after the request" in str(refused.value.cause)
        assert "error_rate_below_threshold failed" in str(refused.value.cause)
        assert (await handle.query(AppCutoverWorkflow.status)).phase == Phase.ROLLBACK_WINDOW
        await handle.execute_update(AppCutoverWorkflow.rollback, RollbackRequest(reason="done"))
        result = await handle.result()
    assert result.outcome == Outcome.ROLLED_BACK
    assert "mark_source_migrated" not in world.calls


async def test_a_failed_finalize_step_stops_the_steps_that_retire_the_source(
    client: Client,
) -> None:
    """Before: finalize went on after retire_source_from_load_balancer failed, disconnected
    the source's NICs and reported COMPLETED."""
    world = World(broken={"retire_source_from_load_balancer"})
    async with running(client, world) as queue:
        handle = await start(client, cutover_input(queue))
        await wait_phase(handle, Phase.FINALIZE_BLOCKED)
        _, left = await status_of(handle)
        assert any("retire_source_from_load_balancer failed" in line for line in left), left
        retiring = {"remove_source_snapshot", "disconnect_source_nics"}
        assert not retiring & set(world.calls)
        # marked migrated first: even a finalize never resumed leaves the guard its mark
        assert world.calls.index("mark_source_migrated") < world.calls.index(
            "retire_source_from_load_balancer"
        )
        world.broken.clear()
        await handle.execute_update(AppCutoverWorkflow.resume, ResumeRequest(requestedBy="ops"))
        result = await handle.result()
    assert result.outcome == Outcome.COMPLETED
    assert result.leftWhere == ["the target serves the application", "the source is retired"]
    assert retiring <= set(world.calls)


# ------------------------------------------------ bounded stalls: an operator's rollback


async def test_a_rollback_cancels_the_check_round_in_flight(client: Client) -> None:
    """Before: the rollback waited for the round (here a 60 s check) to end."""
    world = World(check_delay={"backup_job_succeeds": 60})
    async with running(client, world) as queue:
        handle = await start(client, window_input(queue))
        await wait_phase(handle, Phase.ROLLBACK_WINDOW)
        await wait_until(lambda: "backup_job_succeeds" in world.check_calls)
        t0 = time.monotonic()
        await handle.execute_update(
            AppCutoverWorkflow.rollback, RollbackRequest(reason="users complain")
        )
        result = await handle.result()
        took = time.monotonic() - t0
        # the worker hears of the cancel with its next heartbeat (throttled: 80% of 30 s)
        await wait_until(lambda: "backup_job_succeeds" in world.checks_cancelled, 40)
    assert result.outcome == Outcome.ROLLED_BACK
    assert took < 30, f"the rollback waited {took:.1f} s for a 60 s check"


async def test_every_activity_has_a_heartbeat_timeout_and_a_sized_start_to_close(
    client: Client,
) -> None:
    """Before: most activities had no heartbeat timeout and a 2-hour start-to-close."""
    world = World()
    async with running(client, world) as queue:
        handle = await start(client, cutover_input(queue))
        await handle.result()
    scheduled = [
        e.activity_task_scheduled_event_attributes
        for e in (await handle.fetch_history()).events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert scheduled
    for a in scheduled:
        assert a.heartbeat_timeout.ToSeconds() == 30, a.activity_type.name
        data = {"pre_copy", "incremental_sync", "final_data_sync", "convert_image", "smoke_test"}
        data.add("attach_target_storage_profile")
        limit = 120 * 60 if a.activity_type.name in data else 20 * 60
        assert a.start_to_close_timeout.ToSeconds() <= limit, a.activity_type.name
    checks = [a for a in scheduled if a.activity_type.name == "run_check"]
    assert checks and all(a.start_to_close_timeout.ToSeconds() == 10 + 60 for a in checks)


async def test_a_dead_worker_costs_one_heartbeat_timeout(
    client: Client, temporal_server: DevServer, tmp_path: Path
) -> None:
    """kill -9 of the worker while quiesce waits (no heartbeat of its own): a new worker
    retries it after the heartbeat timeout. Before: quiesce had no heartbeat timeout and a
    2-hour start-to-close, so the cutover sat in its downtime for two hours."""
    queue = f"dead-{uuid.uuid4().hex[:8]}"
    inp = cutover_input(queue).model_copy(
        update={"tuning": Tuning(maxAttempts=5, initialRetrySeconds=0.2, heartbeatSeconds=3)}
    )
    (tmp_path / "slow-quiesce_application").write_text("600")
    args = (temporal_server.address, queue, str(tmp_path))
    worker = procs.spawn_worker("tests.durable_world", *args, state=tmp_path)
    try:
        handle = await start(client, inp)
        await wait_until(lambda: (tmp_path / "quiesce_application_running").exists(), 30)
        procs.kill9(worker)
        killed = time.monotonic()
        (tmp_path / "slow-quiesce_application").unlink()
        worker = procs.spawn_worker("tests.durable_world", *args, state=tmp_path)
        async with asyncio.timeout(120):
            result = await handle.result()
        took = time.monotonic() - killed
    finally:
        procs.kill9(worker)
    assert result.outcome == Outcome.COMPLETED, result.reason
    quiesce = next(s for s in result.steps if s.name == "quiesce_application")
    assert quiesce.attempts == 2
    # the rest of this cutover takes a few seconds: what is left is the heartbeat timeout
    assert took < 45, f"the cutover ended {took:.1f} s after the kill (heartbeat 3 s)"


# ------------------------------------------------ a finished application is not cut over again


async def test_a_source_marked_migrated_is_refused_before_anything_changes(
    client: Client,
) -> None:
    """Before: a second cutover of a finished application re-copied the retired source."""
    evidence = "source VM vm-1 is marked migrated to kvm-libvirt:app at 2026-12-01 by cutover-app"
    world = World(migrated=evidence)
    async with running(client, world) as queue:
        inp = cutover_input(queue)
        result = await (await start(client, inp)).result()
        assert result.outcome == Outcome.FAILED
        assert evidence in result.reason and "--remigrate" in result.reason
        assert world.calls == [] and world.check_calls == []  # not even a pre-check ran
        assert result.leftWhere == ["nothing was changed"]
        again = inp.model_copy(update={"remigrate": "restore drill after a datastore loss"})
        handle = await start(client, again)
        result = await handle.result()
        report = await audit(client, handle.id)
    assert result.outcome == Outcome.COMPLETED
    assert result.remigrate == "restore drill after a datastore loss"
    assert report.remigrate == "restore drill after a datastore loss"  # the audit says so


# ------------------------------------------------ finding 8: long windows stay bounded


async def test_a_long_window_continues_as_new_and_stays_bounded(client: Client) -> None:
    """Before: every round added ~32 events and a record to the result, so a 30-day window
    ran into Temporal's history limits. Now the window continues as new (carrying its
    state: a rollback in a later run undoes everything) and keeps first/last rounds only."""
    world = World()
    async with running(client, world) as queue:
        inp = cutover_input(queue, rollbackWindowMinutes=10, checkIntervalSeconds=0.05)
        inp = inp.model_copy(
            update={"tuning": inp.tuning.model_copy(update={"continueAsNewEvents": 150})}
        )
        handle = await start(client, inp)
        first_run = handle.result_run_id
        async with asyncio.timeout(60):
            while (await handle.query(AppCutoverWorkflow.status)).checkRounds < 25:
                await asyncio.sleep(0.2)
        await handle.execute_update(AppCutoverWorkflow.rollback, RollbackRequest(reason="enough"))
        result = await handle.result()
        runs = [w async for w in client.list_workflows(f"WorkflowId = '{handle.id}'")]
        first = client.get_workflow_handle(handle.id, run_id=first_run)
        first_events = (await first.fetch_history()).events
        report = await audit(client, handle.id)
    assert result.outcome == Outcome.ROLLED_BACK
    assert len(runs) >= 3, "the window did not continue as new"
    assert first_events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    assert len(first_events) < 150 + 60
    assert result.checkRounds >= 25
    # the audit reads the whole chain: the steps of the first run, the outcome of the last
    assert len(report.runIds) == len(runs) and report.outcome == Outcome.ROLLED_BACK.value
    assert "quiesce_application" in {s.name for s in report.steps}
    window_checks = [s for s in result.steps if s.kind == "check"]
    per_round = len(SEED["postChecks"]) + len(SEED["rollbackCriteria"])
    assert len(window_checks) <= len(SEED["preChecks"]) + 3 * per_round
    after = world.calls[world.calls.index("update_load_balancer") + 1 :]
    assert after[-2:] == ["discard_staging", "remove_source_snapshot"]
    assert "remove_target_domain" in after


# ------------------------------------------------ finding 9: the warm snapshot's age


async def test_approval_times_out_after_a_day_by_default_and_status_warns_of_an_old_snapshot(
    client: Client,
) -> None:
    """Before: no approval timeout by default; the snapshot's delta grew unnoticed."""
    world = World()
    async with running(client, world) as queue:
        inp = cutover_input(
            queue,
            approval={"required": True, "approvers": ["alice"]},
            dataSync={"maxSnapshotAgeHours": 0.0002},
        )
        handle = await start(client, inp)
        await wait_phase(handle, Phase.AWAITING_APPROVAL)
        await asyncio.sleep(1.0)
        status = await handle.query(AppCutoverWorkflow.status)
        assert status.snapshotTakenAt is not None
        assert status.snapshotWarning and "dataSync.maxSnapshotAgeHours" in status.snapshotWarning
        await handle.execute_update(AppCutoverWorkflow.approve, ApprovalRequest(approver="alice"))
        result = await handle.result()
        timers = [
            e.timer_started_event_attributes
            for e in (await handle.fetch_history()).events
            if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED
        ]
    assert result.outcome == Outcome.COMPLETED
    assert any(t.start_to_fire_timeout.ToSeconds() == 24 * 3600 for t in timers)


async def test_once_a_path_moved_back_the_target_stays_fenced_until_the_other_does(
    client: Client, tmp_path: Path
) -> None:
    """LB and DNS switched; DNS moves back, the LB cannot: users through DNS now write to
    the source, so the target must take no more writes (fenced, kept whole) while LB users
    get errors, and the rollback waits for the LB to be fixed. Before the fence, both sides
    took writes from then on."""
    key = tmp_path / "tsig.key"
    key.write_text('key "k" { algorithm hmac-sha256; secret "c2VjcmV0"; };\n')
    world = World(
        check_plan={"app_health_check_failure": [False]}, broken={"restore_load_balancer"}
    )
    async with running(client, world) as queue:
        inp = window_input(
            queue,
            cutoverSteps=[*SEED["cutoverSteps"], "update_dns"],
            endpoint={"dns": {"name": "app", "ttl": 30}, "sourceAddress": "10.0.0.1:80"},
        )
        dns = Dns(server="127.0.0.1", port=53, zone="apps.test", tsigKeyFile=str(key))
        inp = inp.model_copy(update={"site": inp.resolved_site.model_copy(update={"dns": dns})})
        handle = await start(client, inp)
        await wait_phase(handle, Phase.ROLLBACK_BLOCKED)
        _, left = await status_of(handle)
        undo = world.calls[world.calls.index("fence_target") :]
        assert undo[:4] == ["fence_target", "reverse_sync", "restart_source", "restore_dns"]
        assert not {"quiesce_application", "unfence_target", *DESTRUCTIVE} & set(undo), undo
        assert any("traffic still goes to the fenced target" in line for line in left), left
        assert any(line.startswith("the target is fenced (paused)") for line in left), left
        world.broken.clear()
        await handle.execute_update(AppCutoverWorkflow.resume, ResumeRequest(requestedBy="ops"))
        result = await handle.result()
    assert result.outcome == Outcome.ROLLED_BACK, result.leftWhere
    assert "unfence_target" not in world.calls


async def test_the_source_never_starts_without_the_targets_writes_unless_an_operator_says_so(
    client: Client,
) -> None:
    """Before: a rollback after the switch started the source from its pre-cutover disk and
    removed the target with everything users wrote during the window. Now reverse_sync runs
    with the target fenced, before the source starts; when it cannot, the source is not
    started (the target serves on, unfenced) until it works or an operator discards the
    writes, which the history and the result record."""
    world = World(check_plan={"app_health_check_failure": [False]}, broken={"reverse_sync"})
    async with running(client, world) as queue:
        handle = await start(client, window_input(queue))
        await wait_phase(handle, Phase.ROLLBACK_BLOCKED)
        _, left = await status_of(handle)
        assert "restart_source" not in world.calls
        assert world.calls[-1] == "unfence_target"
        assert any(
            line == "restart_source: held back: needs the target's writes are on the source"
            for line in left
        ), left
        assert any("what the target wrote is not on the source yet" in line for line in left)
        mark = len(world.calls)
        await handle.execute_update(
            AppCutoverWorkflow.resume,
            ResumeRequest(
                requestedBy="ops", reason="source disk unreachable", discardTargetWrites=True
            ),
        )
        result = await handle.result()
    assert result.outcome == Outcome.ROLLED_BACK, result.leftWhere
    after = world.calls[mark:]
    assert after[:3] == ["fence_target", "restart_source", "restore_load_balancer"], after
    assert "reverse_sync" not in after
    history = await handle.fetch_history()
    updates = [
        e.workflow_execution_update_accepted_event_attributes.accepted_request.input.args
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    ]
    assert any(
        b"discardTargetWrites" in p.data and b"true" in p.data for a in updates for p in a.payloads
    )


async def test_a_runbook_that_discards_the_targets_writes_says_how_much_went(
    client: Client,
) -> None:
    """`rollback.reverseSync: false`: no write-back (the source starts from its disk as the
    final sync left it); the result says what the target had written and that it went."""
    world = World(
        check_plan={"app_health_check_failure": [False]},
        details={"remove_target_domain": {"targetWrittenBytes": 3 << 20}},
    )
    async with running(client, world) as queue:
        handle = await start(client, window_input(queue, rollback={"reverseSync": False}))
        result = await handle.result()
    assert result.outcome == Outcome.ROLLED_BACK
    assert "reverse_sync" not in world.calls
    undo = world.calls[world.calls.index("update_load_balancer") + 1 :]
    assert undo[:3] == ["fence_target", "restart_source", "restore_load_balancer"], undo
    assert result.targetWrittenBytes == 3 << 20
    assert result.targetWrites == "discarded: the runbook says rollback.reverseSync: false"
    kept = World(
        check_plan={"app_health_check_failure": [False]},
        details={"reverse_sync": {"targetWrittenBytes": 5 << 20}},
    )
    async with running(client, kept) as queue:
        result = await (await start(client, window_input(queue))).result()
    assert result.targetWrittenBytes == 5 << 20
    assert result.targetWrites == "kept: written back to the source before it started"


async def test_a_window_whose_last_round_started_long_before_the_close_decides_on_a_fresh_one(
    client: Client,
) -> None:
    """Seen in bench.lab_chaos: a worker died during the window's first round; the retried
    check ended after the window's deadline, and the cutover finalized on evidence from the
    window's first second, while the target had turned unhealthy meanwhile (it then blocked
    in finalize with users getting errors). The close now takes a fresh round."""
    world = World(
        check_plan={"app_health_check_failure": [True, False]},
        check_delay={"error_rate_below_threshold": 2.5},  # the first round outlives the window
    )
    async with running(client, world) as queue:
        inp = cutover_input(queue, rollbackWindowMinutes=0.02, checkIntervalSeconds=0.5)
        result = await (await start(client, inp)).result()
    assert result.outcome == Outcome.ROLLED_BACK, result.reason
    assert "app_health_check_failure" in result.reason
    assert world.check_calls.count("app_health_check_failure") == 2
    assert "mark_source_migrated" not in world.calls
