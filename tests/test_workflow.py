"""AppCutoverWorkflow against a real Temporal dev server, with test activities."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from cutover import search_attributes as sa
from cutover.catalog import COMPENSATIONS, Compensation, Step, WarmStep
from cutover.models import (
    ApprovalRequest,
    CutoverInput,
    CutoverResult,
    ExtendRequest,
    FinalizeRequest,
    Outcome,
    Phase,
    ResumeRequest,
    RollbackRequest,
)
from tests.factories import SEED, cutover_input
from tests.world import World
from workers.worker import build_worker
from workflows.cutover import AppCutoverWorkflow, workflow_id_for

WARM = ["snapshot_source", "pre_copy", "incremental_sync"]
SEED_STEPS: list[str] = SEED["cutoverSteps"]


@asynccontextmanager
async def running(client: Client, world: World) -> AsyncIterator[str]:
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    async with build_worker(client, queue, activities=world.activities()):
        yield queue


async def start(
    client: Client, inp: CutoverInput
) -> WorkflowHandle[AppCutoverWorkflow, CutoverResult]:
    return await client.start_workflow(
        AppCutoverWorkflow.run,
        inp,
        id=workflow_id_for(inp.runbook.application),
        task_queue=inp.resolved_site.taskQueue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
    )


async def wait_phase(
    handle: WorkflowHandle[AppCutoverWorkflow, CutoverResult], phase: Phase, timeout: float = 20
) -> None:
    async with asyncio.timeout(timeout):
        while (await handle.query(AppCutoverWorkflow.status)).phase != phase:
            await asyncio.sleep(0.05)


async def wait_post_checks(
    handle: WorkflowHandle[AppCutoverWorkflow, CutoverResult], timeout: float = 20
) -> None:
    """The window evaluates its checks right after it opens; finalize needs them passed."""
    await wait_phase(handle, Phase.ROLLBACK_WINDOW)
    want = set(SEED["postChecks"])  # cutover_input's runbook is the seed's
    async with asyncio.timeout(timeout):
        # every post-check evaluated and passing (they run concurrently: one is not all)
        while not want <= {
            c.name for c in (await handle.query(AppCutoverWorkflow.status)).checks if c.passed
        }:
            await asyncio.sleep(0.05)


async def test_all_steps_succeed_in_runbook_order(client: Client) -> None:
    world = World()
    async with running(client, world) as queue:
        inp = cutover_input(queue)
        handle = await start(client, inp)
        result = await handle.result()
    assert result.outcome == Outcome.COMPLETED, result.reason
    assert result.reason == "rollback window closed healthy"
    cutover_calls = [c for c in world.calls if c in SEED_STEPS]
    assert cutover_calls == SEED_STEPS
    # warm phase first, then the steps, then finalize; no compensation ran
    assert world.calls[:3] == WARM
    assert world.guard_calls == ["verify_not_migrated"]  # first, before anything changed
    assert not any(
        c in world.calls
        for c in ("restart_source", "remove_target_domain", "restore_load_balancer")
    )
    assert world.calls[-7:] == [
        # marked first: a finalize that blocks still leaves the source marked migrated
        "mark_source_migrated",
        "retire_source_from_load_balancer",
        "remove_source_snapshot",
        "disconnect_source_nics",
        # no staging debt: the copies that served the window go once it closed healthy
        "remove_converted_image",
        "discard_staging",
        # and no chain: what the target wrote merges into its disks
        "commit_target_overlay",
    ]
    assert result.downtimeSeconds is not None and result.downtimeSeconds > 0
    assert [s.name for s in result.steps if s.kind == "step"] == SEED_STEPS
    assert all(s.seconds is not None for s in result.steps)
    desc = await handle.describe()
    attrs = desc.typed_search_attributes
    assert attrs.get(sa.APPLICATION) == inp.runbook.application
    assert attrs.get(sa.WAVE) == "2"
    assert attrs.get(sa.PHASE) == Phase.DONE.value
    assert attrs.get(sa.OUTCOME) == Outcome.COMPLETED.value


def expected_compensations(steps_done: list[str], failed: str) -> list[str]:
    """Registered before each step ran (the failing one too), unwound in reverse."""
    registered: list[str] = ["remove_source_snapshot", "discard_staging"]
    for step in [*steps_done, failed]:
        comp = COMPENSATIONS.get(step)
        if comp is not None and comp not in registered:
            registered.append(comp)
        if step == Step.UPDATE_LOAD_BALANCER:
            # above the traffic undo: start the source; before that, write back what the
            # target wrote, and before that fence the target
            registered += [
                Compensation.RESTART_SOURCE,
                Compensation.REVERSE_SYNC,
                Compensation.FENCE_TARGET,
            ]
    unwound = list(reversed(registered))
    # the fence and the source's restart run once per unwinding: registered again above
    # each traffic switch, they are not repeated once they ran
    once = ("fence_target", "reverse_sync", "restart_source")
    return [c for i, c in enumerate(unwound) if c not in once or c not in unwound[:i]]


@pytest.mark.parametrize("failing", SEED_STEPS)
async def test_failure_at_each_step_runs_registered_compensations_in_reverse(
    client: Client, failing: str
) -> None:
    world = World(fail={failing})
    async with running(client, world) as queue:
        handle = await start(client, cutover_input(queue))
        result = await handle.result()
    done = SEED_STEPS[: SEED_STEPS.index(failing)]
    assert result.outcome == Outcome.ROLLED_BACK
    assert result.reason.startswith(f"step {failing} failed")
    assert "broke (test)" in result.reason
    after = world.calls[world.calls.index(failing) + 1 :]
    assert after == expected_compensations(done, failing)
    # nothing downstream of the failure ran, and no finalize
    assert not set(after) & set(SEED_STEPS)
    assert "mark_source_migrated" not in world.calls
    assert result.compensationFailures == []
    comp_records = [s.name for s in result.steps if s.kind == "compensation"]
    assert comp_records == after


async def test_failing_compensation_blocks_the_rollback_until_resumed(client: Client) -> None:
    """An undo that fails for good leaves the rollback blocked (FAILED in the search
    attributes, what is left named) instead of ending; `resume` once fixed finishes it."""
    world = World(fail={"power_on_target"}, broken={"detach_target_storage"})
    async with running(client, world) as queue:
        handle = await start(client, cutover_input(queue))
        await wait_phase(handle, Phase.ROLLBACK_BLOCKED)
        status = await handle.query(AppCutoverWorkflow.status)
        assert status.outcome == Outcome.FAILED
        assert any(line.startswith("detach_target_storage: failed") for line in status.leftWhere)
        attrs = (await handle.describe()).typed_search_attributes
        assert attrs.get(sa.OUTCOME) == Outcome.FAILED.value
        assert attrs.get(sa.PHASE) == Phase.ROLLBACK_BLOCKED.value
        after = world.calls[world.calls.index("power_on_target") + 1 :]
        # the undos after the failed one still ran: none needs the target's storage gone
        assert [c for c in after if c != "detach_target_storage"] == [
            c
            for c in expected_compensations(SEED_STEPS[:5], "power_on_target")
            if c != "detach_target_storage"
        ]
        world.broken.clear()
        await handle.execute_update(AppCutoverWorkflow.resume, ResumeRequest(requestedBy="ops"))
        result = await handle.result()
    assert result.outcome == Outcome.ROLLED_BACK
    assert world.calls[-1] == "detach_target_storage"


async def test_pre_check_failure_changes_nothing(client: Client) -> None:
    world = World(check_plan={"dns_ttl_lowered": [False]})
    async with running(client, world) as queue:
        result = await (await start(client, cutover_input(queue))).result()
    assert result.outcome == Outcome.FAILED
    assert "dns_ttl_lowered failed" in result.reason and "measured bad" in result.reason
    assert world.calls == []
    assert result.leftWhere == ["nothing was changed: the source still serves"]


async def test_criterion_firing_in_window_rolls_back(client: Client) -> None:
    world = World(check_plan={"app_health_check_failure": [True, False]})
    async with running(client, world) as queue:
        inp = cutover_input(queue, rollbackWindowMinutes=1, checkIntervalSeconds=0.2)
        result = await (await start(client, inp)).result()
    assert result.outcome == Outcome.ROLLED_BACK
    assert result.reason.startswith("rollback criterion fired: app_health_check_failure failed")
    after = world.calls[world.calls.index("update_load_balancer") + 1 :]
    # the target is fenced, then the source comes back before traffic moves back to it;
    # then the target goes
    assert after == expected_compensations(SEED_STEPS[:-1], "update_load_balancer")
    assert after[:4] == [
        "fence_target",
        "reverse_sync",
        "restart_source",
        "restore_load_balancer",
    ]
    assert "mark_source_migrated" not in world.calls


async def test_sustained_criterion_needs_consecutive_failures(client: Client) -> None:
    # failAfter=3 for sustained_latency_regression in the test site: two slow samples
    # separated by a good one must not fire; three in a row must.
    world = World(
        check_plan={"sustained_latency_regression": [False, False, True, False, False, False]}
    )
    async with running(client, world) as queue:
        inp = cutover_input(queue, rollbackWindowMinutes=1, checkIntervalSeconds=0.2)
        result = await (await start(client, inp)).result()
    assert result.outcome == Outcome.ROLLED_BACK
    assert (
        "sustained_latency_regression failed" in result.reason
        and "(3 consecutive)" in result.reason
    )
    assert world.check_calls.count("sustained_latency_regression") == 6


async def test_quiet_window_finalizes(client: Client) -> None:
    world = World()
    async with running(client, world) as queue:
        inp = cutover_input(queue, rollbackWindowMinutes=0.03, checkIntervalSeconds=0.5)
        result = await (await start(client, inp)).result()
    assert result.outcome == Outcome.COMPLETED
    # post-checks and criteria were evaluated during the window, more than once
    assert world.check_calls.count("p95_latency_within_slo") >= 2
    assert world.check_calls.count("app_health_check_failure") >= 2


async def test_post_check_failing_at_window_close_rolls_back(client: Client) -> None:
    world = World(check_plan={"backup_job_succeeds": [False]})
    async with running(client, world) as queue:
        result = await (await start(client, cutover_input(queue))).result()
    assert result.outcome == Outcome.ROLLED_BACK
    assert result.reason.startswith("rollback window closed with post-checks failing")
    assert "backup_job_succeeds" in result.reason


async def test_extend_finalize_early_and_rollback_after_finalize_refused(client: Client) -> None:
    world = World()
    async with running(client, world) as queue:
        inp = cutover_input(queue, rollbackWindowMinutes=0.5, checkIntervalSeconds=0.2)
        handle = await start(client, inp)
        await wait_post_checks(handle)
        before = (await handle.query(AppCutoverWorkflow.status)).windowClosesAt
        await handle.execute_update(
            AppCutoverWorkflow.extend, ExtendRequest(minutes=10, requestedBy="ops")
        )
        after = (await handle.query(AppCutoverWorkflow.status)).windowClosesAt
        assert before is not None and after is not None
        assert (after - before).total_seconds() == pytest.approx(600)
        await handle.execute_update("finalize", FinalizeRequest(requestedBy="ops"), result_type=str)
        result = await handle.result()
        assert result.outcome == Outcome.COMPLETED
        assert result.reason == "finalized early by ops"
        # the workflow is closed: Temporal itself refuses the update
        with pytest.raises(RPCError, match="completed"):
            await handle.execute_update(
                AppCutoverWorkflow.rollback, RollbackRequest(reason="too late", requestedBy="ops")
            )
    assert "restart_source" not in world.calls


async def test_rollback_refused_while_finalizing(client: Client) -> None:
    world = World(delay=0.0)
    async with running(client, world) as queue:
        handle = await start(
            client, cutover_input(queue, rollbackWindowMinutes=0.5, checkIntervalSeconds=0.2)
        )
        await wait_post_checks(handle)
        world.delay = 1.0  # finalize steps now take long enough to be caught in the act
        await handle.execute_update("finalize", FinalizeRequest(requestedBy="ops"), result_type=str)
        await wait_phase(handle, Phase.FINALIZING)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(AppCutoverWorkflow.rollback, RollbackRequest(reason="late"))
        assert "after finalize the source is retired" in str(refused.value.cause)
        assert (await handle.result()).outcome == Outcome.COMPLETED


async def test_operator_rollback_during_window(client: Client) -> None:
    world = World()
    async with running(client, world) as queue:
        handle = await start(
            client, cutover_input(queue, rollbackWindowMinutes=5, checkIntervalSeconds=1)
        )
        await wait_phase(handle, Phase.ROLLBACK_WINDOW)
        await handle.execute_update(
            AppCutoverWorkflow.rollback,
            RollbackRequest(reason="users report errors", requestedBy="alice"),
        )
        result = await handle.result()
    assert result.outcome == Outcome.ROLLED_BACK
    assert result.reason == "rollback requested by alice: users report errors"
    assert world.calls[-1] in ("restart_source", "remove_source_snapshot")


async def test_finalize_early_refused_while_post_checks_fail(client: Client) -> None:
    world = World(check_plan={"error_rate_below_threshold": [False]})
    async with running(client, world) as queue:
        handle = await start(
            client, cutover_input(queue, rollbackWindowMinutes=5, checkIntervalSeconds=0.2)
        )
        await wait_phase(handle, Phase.ROLLBACK_WINDOW)
        await asyncio.sleep(0.5)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                "finalize", FinalizeRequest(requestedBy="bob"), result_type=str
            )
        assert "error_rate_below_threshold" in str(refused.value.cause)
        await handle.execute_update(AppCutoverWorkflow.rollback, RollbackRequest(reason="done"))
        assert (await handle.result()).outcome == Outcome.ROLLED_BACK


async def test_approval_gate(client: Client) -> None:
    world = World()
    async with running(client, world) as queue:
        inp = cutover_input(queue, approval={"required": True, "approvers": ["alice", "bob"]})
        handle = await start(client, inp)
        await wait_phase(handle, Phase.AWAITING_APPROVAL)
        # waiting: no cutover step ran yet (the warm phase did)
        assert world.calls == WARM
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                AppCutoverWorkflow.approve, ApprovalRequest(approver="mallory")
            )
        assert "'mallory' is not an allowed approver" in str(refused.value.cause)
        assert "alice, bob" in str(refused.value.cause)
        assert (await handle.query(AppCutoverWorkflow.status)).phase == Phase.AWAITING_APPROVAL
        await handle.execute_update(
            AppCutoverWorkflow.approve, ApprovalRequest(approver="bob", comment="go")
        )
        result = await handle.result()
    assert result.outcome == Outcome.COMPLETED
    assert result.approvedBy == "bob"
    history = await handle.fetch_history()
    accepted = [
        e
        for e in history.events
        if e.HasField("workflow_execution_update_accepted_event_attributes")
    ]
    assert len(accepted) == 1  # the rejected approval never entered the history
    attrs = accepted[0].workflow_execution_update_accepted_event_attributes
    assert attrs.accepted_request.input.name == "approve"
    assert b"bob" in attrs.accepted_request.input.args.payloads[0].data
    assert attrs.accepted_request.meta.identity  # the client's identity is recorded too


async def test_approval_timeout_changes_nothing_downstream(client: Client) -> None:
    world = World()
    async with running(client, world) as queue:
        inp = cutover_input(
            queue, approval={"required": True, "approvers": ["alice"], "timeoutMinutes": 0.01}
        )
        result = await (await start(client, inp)).result()
    assert result.outcome == Outcome.ROLLED_BACK
    assert result.reason == "no approval within 0.01 minutes"
    assert not set(world.calls) & set(SEED_STEPS)
    assert world.calls[len(WARM) :] == ["discard_staging", "remove_source_snapshot"]


async def test_second_cutover_of_a_running_application_is_refused(client: Client) -> None:
    world = World()
    async with running(client, world) as queue:
        inp = cutover_input(queue, approval={"required": True, "approvers": ["alice"]})
        handle = await start(client, inp)
        with pytest.raises(WorkflowAlreadyStartedError):
            await start(client, inp)
        await handle.execute_update(
            AppCutoverWorkflow.rollback, RollbackRequest(reason="test over")
        )
        assert (await handle.result()).outcome == Outcome.ROLLED_BACK


async def test_cancel_runs_compensations(client: Client) -> None:
    """A Temporal cancel request rolls back like an operator's rollback; the cutover then
    ends with its result (ROLLED_BACK, the cancel named), not abandoned as CANCELED."""
    world = World()
    async with running(client, world) as queue:
        inp = cutover_input(queue, approval={"required": True, "approvers": ["alice"]})
        handle = await start(client, inp)
        await wait_phase(handle, Phase.AWAITING_APPROVAL)
        await handle.cancel()
        result = await handle.result()
    assert result.outcome == Outcome.ROLLED_BACK
    assert "cancel" in result.reason
    assert world.calls[len(WARM) :] == ["discard_staging", "remove_source_snapshot"]


async def test_status_query_and_no_warm_phase_when_disabled(client: Client) -> None:
    world = World()
    async with running(client, world) as queue:
        inp = cutover_input(queue, dataSync={"warm": False})
        handle = await start(client, inp)
        result = await handle.result()
        status = await handle.query(AppCutoverWorkflow.status)
    assert result.outcome == Outcome.COMPLETED
    assert not set(WARM) & set(world.calls)
    assert status.phase == Phase.DONE and status.outcome == Outcome.COMPLETED
    assert "discard_staging" in status.compensationsRegistered
    assert WarmStep.SNAPSHOT_SOURCE not in world.calls


async def test_cancel_during_window_rolls_back(client: Client) -> None:
    world = World()
    async with running(client, world) as queue:
        handle = await start(
            client, cutover_input(queue, rollbackWindowMinutes=5, checkIntervalSeconds=1)
        )
        await wait_phase(handle, Phase.ROLLBACK_WINDOW)
        await handle.cancel()
        result = await handle.result()
    assert result.outcome == Outcome.ROLLED_BACK and "cancel" in result.reason
    after = world.calls[world.calls.index("update_load_balancer") + 1 :]
    assert after == expected_compensations(SEED_STEPS[:-1], "update_load_balancer")
    assert "mark_source_migrated" not in world.calls
