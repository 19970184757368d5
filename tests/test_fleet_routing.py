"""Data-host routing against the real Temporal server (issue 17), its data steps stood in
by the test world (the real data path on real hosts: tests/test_fleet.py). The cases a
chaos run found (bench.fleet): a host lost in an incremental pass moves the warm cutover; a
host reported lost is not offered to the next cutover while it still looks live; a rollback
leaves the staging undos of the host it lost at once (they do not wait on it again)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle

from cutover.fleet import Fleet, fleet_workflow_id
from cutover.models import ApprovalRequest, CutoverInput, Outcome, Phase, Tuning
from tests.factories import cutover_input
from tests.test_workflow import start, wait_phase
from tests.world import World
from workers.fleet import build_data_worker
from workers.sites import shared
from workers.worker import build_worker
from workflows.cutover import AppCutoverWorkflow

FLEET = Fleet.model_validate(
    {"dataHosts": [{"name": "h1"}, {"name": "h2"}], "limits": {"perDataHost": 2},
     "hostWaitSeconds": 5}
)  # fmt: skip


def fleet_input(queue: str, **runbook: Any) -> CutoverInput:
    inp = cutover_input(queue, dataSync={"warm": True, "incrementalPasses": 1}, **runbook)
    assert inp.site is not None
    return inp.model_copy(
        update={
            "site": inp.site.model_copy(update={"fleet": FLEET}),
            "tuning": Tuning(heartbeatSeconds=1, initialRetrySeconds=0.2, maxAttempts=3),
        }
    )


async def wait_step(handle: WorkflowHandle[Any, Any], label: str, host: str) -> None:
    async with asyncio.timeout(30):
        while True:
            st = await handle.query(AppCutoverWorkflow.status)
            if st.currentStep == label and st.dataHost == host:
                return
            await asyncio.sleep(0.05)


async def test_lost_hosts_move_warm_cutovers_are_not_offered_again_and_never_hold_a_rollback(
    client: Client, tmp_path: Path
) -> None:
    queue = f"route-{uuid.uuid4().hex[:8]}"
    orchestration = World()
    slow_h1 = World(slow={"incremental_sync": 60, "final_data_sync": 60})
    h1 = build_data_worker(client, queue, "h1", slow_h1.activities(), shared(), tmp_path / "h1")
    h2 = build_data_worker(client, queue, "h2", World().activities(), shared(), tmp_path / "h2")
    async with build_worker(client, queue, activities=orchestration.activities()), h2:
        # 1. h1 (the first of two idle hosts) dies in the incremental pass: the cutover
        # copies again from the pre-copy on h2 and completes
        await h1.__aenter__()
        moved = await start(client, fleet_input(queue))
        await wait_step(moved, "incremental_sync #1", "h1")
        await h1.shutdown()  # its running pass is cancelled; the retry finds no worker
        result = await moved.result()
        assert result.outcome == Outcome.COMPLETED, result.reason
        assert result.dataHost == "h2"
        steps = [(s.name, s.host, s.outcome) for s in result.steps if s.host]
        lost = [s for s in result.steps if s.host == "h1" and s.outcome == "failed"]
        assert [s.name for s in lost] == ["incremental_sync #1"], steps
        assert "data host h1 did not take incremental_sync #1" in (lost[0].error or "")
        after = steps[steps.index(("incremental_sync #1", "h1", "failed")) + 1 :]
        assert after[0][:2] == ("pre_copy", "h2") and {h for _, h, _ in after} == {"h2"}

        # 2. h1 still looks live (it polled within 90 s) and holds nothing, but it was
        # reported lost: the next cutover is placed on h2 and waits on nothing
        state = await client.get_workflow_handle(fleet_workflow_id(queue)).query("state")
        assert state["lost"] == ["h1"], state
        nxt = await start(client, fleet_input(queue))
        result = await nxt.result()
        assert result.outcome == Outcome.COMPLETED and result.dataHost == "h2"
        assert not [s for s in result.steps if s.outcome == "failed"], result.steps

    # 3. Downtime: the copy is on h2, h2 dies before the final sync: the cutover rolls
    # back, and its staging undos on h2 are left to h2's cleanup at once (no second wait)
    async with build_worker(client, queue, activities=orchestration.activities()):
        h2 = build_data_worker(client, queue, "h2", World().activities(), shared(), tmp_path)
        gate = {"required": True, "approvers": ["bob"]}
        async with h2:
            down = await start(client, fleet_input(queue, approval=gate))
            await wait_phase(down, Phase.AWAITING_APPROVAL, timeout=30)
        await down.execute_update(AppCutoverWorkflow.approve, ApprovalRequest(approver="bob"))
        result = await down.result()
    assert result.outcome == Outcome.ROLLED_BACK, result.reason
    assert "data host h2 did not take final_data_sync" in result.reason
    undos = {s.name: s for s in result.steps if s.kind == "compensation" and s.host}
    assert {"discard_staging"} <= set(undos), result.steps
    for s in undos.values():
        assert s.outcome == "skipped" and "left to its staging cleanup" in (s.error or "")
        assert s.seconds == 0  # not scheduled: nothing waited on the lost host again
    assert "restart_source" in [s.name for s in result.steps if s.outcome == "ok"]
