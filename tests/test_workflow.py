"""AppCutoverWorkflow against a real Temporal dev server, with test activities."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

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


async def start(client: Client, inp: CutoverInput) -> WorkflowHandle[AppCutoverWorkflow, CutoverResult]:
    return await client.start_workflow(
        AppCutoverWorkflow.run,
        inp,
        id=workflow_id_for(inp.runbook.application),
        task_queue=inp.site.taskQueue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
    )


async def wait_phase(handle: WorkflowHandle[AppCutoverWorkflow, CutoverResult], phase: Phase, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while (await handle.query(AppCutoverWorkflow.status)).phase != phase:
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
    assert not any(c in world.calls for c in ("restart_source", "remove_target_domain", "restore_load_balancer"))
    assert world.calls[-4:] == [
        "remove_source_snapshot", "disconnect_source_nics", "mark_source_migrated",
        "retire_source_from_load_balancer",
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
