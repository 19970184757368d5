"""The audit report, from real histories on the real Temporal dev server (test activities)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError

from cutover.audit import AuditReport, audit, failure_message, render, to_html, to_markdown
from cutover.models import ApprovalRequest, Outcome, Phase, RollbackRequest
from cutover.temporal import identity
from tests.audit_wave import AuditTestWave
from tests.conftest import DevServer
from tests.factories import SEED, cutover_input
from tests.test_cli import write_files
from tests.test_workflow import expected_compensations, running, start, wait_phase
from tests.world import World
from workers.worker import build_worker
from workflows.cutover import AppCutoverWorkflow

SEED_STEPS: list[str] = SEED["cutoverSteps"]
ROOT = Path(__file__).resolve().parents[1]


async def acli(server: DevServer, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI of this checkout (`python -m cutover.cli`), as an operator runs it."""
    env = {**os.environ, "TEMPORAL_ADDRESS": server.address}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cutover.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


async def test_criterion_rollback_names_criterion_measurement_and_compensations(
    client: Client,
) -> None:
    world = World(
        check_plan={"app_health_check_failure": [True, False]},
        details={"reverse_sync": {"targetWrittenBytes": 3 << 20}},
    )
    async with running(client, world) as queue:
        inp = cutover_input(queue, rollbackWindowMinutes=1, checkIntervalSeconds=0.2)
        handle = await start(client, inp)
        result = await handle.result()
    assert result.outcome == Outcome.ROLLED_BACK
    report = await audit(client, handle.id)
    assert report.targetWrittenBytes == 3 << 20
    assert "- **Written on the target**: 3.00 MiB (kept: written back to the source" in (
        to_markdown(report)
    )
    assert report.workflowType == "AppCutover"
    assert report.outcome == "ROLLED_BACK" and report.status == "COMPLETED"
    assert report.requestedBy == "pytest"
    assert report.startedBy == client.identity
    assert report.runbook is not None
    assert report.runbook.application == inp.runbook.application
    assert report.runbook.cutoverSteps == SEED_STEPS
    rb = report.rollback
    assert rb is not None and rb.trigger == "rollback criterion"
    assert rb.reason == result.reason
    [fired] = rb.failedChecks
    assert (fired.name, fired.phase, fired.passed) == (
        "app_health_check_failure",
        "criterion",
        False,
    )
    assert (fired.measured, fired.threshold) == ("bad", "ok")
    comps = [s.name for s in rb.compensations]
    assert comps == expected_compensations(SEED_STEPS[:-1], "update_load_balancer")
    assert all(s.outcome == "ok" and s.attempts == 1 for s in rb.compensations)
    assert report.finalState == result.leftWhere
    assert report.downtimeSeconds == result.downtimeSeconds
    md = to_markdown(report)
    assert "app_health_check_failure" in md and "rollback criterion" in md
    assert "restart_source" in md and "| bad | ok |" in md


async def test_approved_cutover_names_the_approver_and_matches_the_history(
    client: Client,
) -> None:
    world = World(flaky={"convert_image"})
    async with running(client, world) as queue:
        inp = cutover_input(queue, approval={"required": True, "approvers": ["alice", "bob"]})
        handle = await start(client, inp)
        await wait_phase(handle, Phase.AWAITING_APPROVAL)
        await handle.execute_update(
            AppCutoverWorkflow.approve, ApprovalRequest(approver="bob", comment="go")
        )
        result = await handle.result()
    assert result.outcome == Outcome.COMPLETED
    report = await audit(client, handle.id)
    [approval] = report.approvals
    assert approval.requestedBy == "bob" and approval.identity == client.identity
    assert approval.arguments["comment"] == "go"
    assert approval.outcome == "completed" and approval.message == "approved by bob"
    assert report.rollback is None and report.outcome == "COMPLETED"

    # Event by event: what the report says of each activity is what the history holds.
    history = await handle.fetch_history()
    events = {e.event_id: e for e in history.events}

    def at(event_id: int) -> datetime:
        return events[event_id].event_time.ToDatetime(tzinfo=UTC)

    scheduled = [
        e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    steps = [*report.steps]
    reported = {s.scheduledEventId: s for s in steps}
    check_events = {c.eventId: c for c in report.checks}
    non_checks = [
        e
        for e in scheduled
        if e.activity_task_scheduled_event_attributes.activity_type.name
        not in ("run_check", "resolve_site", "append_audit_record")
    ]
    assert [e.event_id for e in non_checks] == [s.scheduledEventId for s in steps]
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            a = e.activity_task_started_event_attributes
            if a.scheduled_event_id in reported:
                s = reported[a.scheduled_event_id]
                assert s.startedEventId == e.event_id and s.startedAt == at(e.event_id)
                assert s.attempts == a.attempt
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            c = e.activity_task_completed_event_attributes
            if c.scheduled_event_id in reported:
                s = reported[c.scheduled_event_id]
                assert s.closedEventId == e.event_id and s.endedAt == at(e.event_id)
                assert s.scheduledAt == at(c.scheduled_event_id)
                name = events[c.scheduled_event_id].activity_task_scheduled_event_attributes
                assert s.name == name.activity_type.name
            elif c.scheduled_event_id in {e.event_id for e in non_checks}:
                raise AssertionError(f"step at event {c.scheduled_event_id} not reported")
            elif (
                events[
                    c.scheduled_event_id
                ].activity_task_scheduled_event_attributes.activity_type.name
                == "run_check"
            ):
                assert e.event_id in check_events
    accepted = [
        e
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    ]
    assert [approval.acceptedEventId] == [e.event_id for e in accepted]
    assert approval.acceptedAt == at(accepted[0].event_id)
    convert = next(s for s in report.steps if s.name == "convert_image")
    assert convert.attempts == 2 and convert.outcome == "ok" and convert.error is None
    assert convert.lastFailure == "Transient: convert_image hiccup (test)"
    assert report.eventCount == len(history.events)
    assert report.startedAt == at(1)
    # the report's JSON round-trips
    again = AuditReport.model_validate_json(render(report, "json"))
    assert again == report


async def test_failed_step_and_failing_compensation_are_reported(client: Client) -> None:
    world = World(fail={"power_on_target", "detach_target_storage"})
    async with running(client, world) as queue:
        inp = cutover_input(queue)
        # nobody resumes the blocked rollback: it ends FAILED after this bound (3.6 s)
        tuning = inp.tuning.model_copy(update={"blockedWaitHours": 0.001})
        handle = await start(client, inp.model_copy(update={"tuning": tuning}))
        result = await handle.result()
    assert result.outcome == Outcome.FAILED
    report = await audit(client, handle.id)
    rb = report.rollback
    assert rb is not None and rb.trigger == "step failure"
    assert rb.failedStep is not None and rb.failedStep.name == "power_on_target"
    assert rb.failedStep.error == "InvalidState: power_on_target broke (test)"
    detach = next(s for s in rb.compensations if s.name == "detach_target_storage")
    assert detach.outcome == "failed" and detach.error is not None and "broke" in detach.error
    assert [s.name for s in rb.compensations] == expected_compensations(
        SEED_STEPS[:5], "power_on_target"
    )
    assert report.compensationFailures == result.compensationFailures
    assert any("detach_target_storage" in line for line in report.finalState)


async def test_operator_rollback_is_attributed_and_html_is_escaped(client: Client) -> None:
    world = World()
    async with running(client, world) as queue:
        handle = await start(
            client, cutover_input(queue, rollbackWindowMinutes=5, checkIntervalSeconds=1)
        )
        await wait_phase(handle, Phase.ROLLBACK_WINDOW)
        await handle.execute_update(
            AppCutoverWorkflow.rollback,
            RollbackRequest(reason="<script>alert(1)</script> & errors", requestedBy="alice"),
        )
        await handle.result()
    report = await audit(client, handle.id)
    rb = report.rollback
    assert rb is not None and rb.trigger == "operator rollback"
    assert rb.requestedBy is not None and rb.requestedBy.requestedBy == "alice"
    assert rb.requestedBy.identity == client.identity
    [upd] = report.updates
    assert upd.name == "rollback" and upd.message == "rollback requested by alice"
    md = to_markdown(report)
    assert "\\<script\\>alert(1)\\</script\\> & errors" in md and "<script>" not in md
    page = to_html(report)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; errors" in page
    assert page.startswith("<!DOCTYPE html>")


async def test_cancelled_cutover_names_who_cancelled_and_the_undo(client: Client) -> None:
    world = World()
    async with running(client, world) as queue:
        inp = cutover_input(queue, approval={"required": True, "approvers": ["alice"]})
        handle = await start(client, inp)
        await wait_phase(handle, Phase.AWAITING_APPROVAL)
        await handle.cancel()
        result = await handle.result()  # the cancel rolls back; the cutover ends with its result
    report = await audit(client, handle.id)
    assert report.status == "COMPLETED" and report.outcome == result.outcome == "ROLLED_BACK"
    assert report.cancelRequestedBy == client.identity
    assert report.approvals == []
    rb = report.rollback
    assert rb is not None and rb.trigger == "cancellation"
    assert [s.name for s in rb.compensations] == ["discard_staging", "remove_source_snapshot"]
    assert [s.kind for s in report.steps[:4]] == ["guard"] + ["warm"] * 3


async def test_post_checks_failing_at_window_close_and_approval_timeout(client: Client) -> None:
    world = World(check_plan={"backup_job_succeeds": [False]})
    async with running(client, world) as queue:
        post = await start(client, cutover_input(queue))
        timeout = await start(
            client,
            cutover_input(
                queue, approval={"required": True, "approvers": ["alice"], "timeoutMinutes": 0.01}
            ),
        )
        await asyncio.gather(post.result(), timeout.result())
    report = await audit(client, post.id)
    rb = report.rollback
    assert rb is not None and rb.trigger == "post-checks at window close"
    [check] = rb.failedChecks
    assert (check.name, check.phase, check.measured, check.threshold) == (
        "backup_job_succeeds",
        "post",
        "bad",
        "ok",
    )
    report = await audit(client, timeout.id)
    rb = report.rollback
    assert rb is not None and rb.trigger == "approval timeout"
    assert report.approvals == [] and report.downtimeSeconds is None
    assert [s.name for s in rb.compensations] == ["discard_staging", "remove_source_snapshot"]


async def test_parent_report_aggregates_children_across_continue_as_new(client: Client) -> None:
    world = World(fail={"smoke_test"})
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    ok, bad = cutover_input(queue), cutover_input(queue)
    wave_id = f"wave-{uuid.uuid4().hex[:8]}"
    async with build_worker(
        client,
        queue,
        activities=world.activities(),
        workflows=[AppCutoverWorkflow, AuditTestWave],
    ):
        # the first child rolls back (smoke test fails), the second too: two runs
        handle = await client.start_workflow(
            AuditTestWave.run, args=[[ok, bad], []], id=wave_id, task_queue=queue
        )
        done = await handle.result()
    assert len(done) == 2
    report = await audit(client, wave_id)
    assert report.workflowType == "AuditTestWave"
    assert len(report.runIds) == 2 and report.status == "COMPLETED"
    assert report.result == done
    apps = [c.runbook.application for c in report.children if c.runbook]
    assert apps == [ok.runbook.application, bad.runbook.application]
    for child in report.children:
        assert child.parentWorkflowId == wave_id
        assert child.rollback is not None and child.rollback.failedStep is not None
        assert child.rollback.failedStep.name == "smoke_test"
    assert report.childOutcomes == {"ROLLED_BACK": 2}
    md = to_markdown(report)
    assert md.count("## Audit of cutover-") == 2  # children one heading level down
    assert "- **ROLLED_BACK**: 2" in md
    assert "smoke_test" in to_html(report)


async def test_child_that_could_not_start_is_noted_not_confused_with_another_run(
    client: Client,
) -> None:
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    inp = cutover_input(queue, approval={"required": True, "approvers": ["alice"]})
    wave_id = f"wave-{uuid.uuid4().hex[:8]}"
    async with build_worker(
        client,
        queue,
        activities=World().activities(),
        workflows=[AppCutoverWorkflow, AuditTestWave],
    ):
        running_cutover = await start(client, inp)  # holds the application's workflow ID
        wave = await client.start_workflow(
            AuditTestWave.run, args=[[inp], []], id=wave_id, task_queue=queue
        )
        with pytest.raises(WorkflowFailureError):
            await wave.result()
        await running_cutover.execute_update(
            AppCutoverWorkflow.rollback, RollbackRequest(reason="test over")
        )
        await running_cutover.result()
    report = await audit(client, wave_id)
    assert report.status == "FAILED" and report.children == []
    assert f"child {running_cutover.id} was not started: workflow already exists" in report.notes
    assert report.failure is not None


async def test_cli_audit_formats_and_exit_codes(
    client: Client, temporal_server: DevServer, tmp_path: Path
) -> None:
    queue = f"cli-{uuid.uuid4().hex[:8]}"
    app, runbook, site = write_files(tmp_path, queue)
    async with build_worker(client, queue, activities=World().activities()):
        run = await acli(temporal_server, "run", runbook, "--site", site, "--wait")
    assert run.returncode == 0, run.stderr
    res = await acli(temporal_server, "audit", app, "--format", "json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    wf_id = f"cutover-{app}"
    assert data["workflowId"] == wf_id and data["outcome"] == "COMPLETED"
    # started by the operator's CLI: its identity, recorded by Temporal
    assert data["startedBy"] == data["requestedBy"] == identity()
    md = await acli(temporal_server, "audit", wf_id)
    assert md.returncode == 0 and md.stdout.startswith(f"# Audit of {wf_id} ({app})")
    out = tmp_path / "report.html"
    page = await acli(temporal_server, "audit", app, "--format", "html", "-o", str(out))
    assert page.returncode == 0 and out.read_text().startswith("<!DOCTYPE html>")
    missing = await acli(temporal_server, "audit", "no-such-app-here")
    assert missing.returncode == 1
    assert "no workflow with ID no-such-app-here or cutover-no-such-app-here" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = await acli(temporal_server, "audit", app, "--format", "pdf")
    assert bad.returncode == 2


def test_failure_message_takes_the_innermost_cause() -> None:
    from temporalio.api.failure.v1 import ApplicationFailureInfo, Failure

    inner = Failure(
        message="disk full", application_failure_info=ApplicationFailureInfo(type="IOError")
    )
    outer = Failure(message="Activity task failed", cause=inner)
    assert failure_message(outer) == "IOError: disk full"
