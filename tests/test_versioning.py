"""Worker versioning (issue 17): a release does not move a cutover in flight. Two builds of
one Worker Deployment against the real Temporal server: a cutover started on build v1 stays
pinned to v1 after v2 becomes current (it finishes there); a new one runs on v2."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import VersioningBehavior
from temporalio.client import Client, WorkflowHandle

from cutover.models import ApprovalRequest, Outcome, Phase
from tests.conftest import DevServer
from tests.factories import cutover_input
from tests.test_workflow import start, wait_phase
from tests.world import World
from workers.worker import build_worker, deployment_config
from workflows.cutover import AppCutoverWorkflow

TEMPORAL = str(Path(sys.executable).parent / "temporal")


async def set_current(server: DevServer, deployment: str, build_id: str) -> None:
    """`temporal worker deployment set-current-version`, once the build has polled."""
    argv = [TEMPORAL, "worker", "deployment", "set-current-version",
            "--address", server.address, "--deployment-name", deployment,
            "--build-id", build_id, "--yes"]  # fmt: skip
    async with asyncio.timeout(30):
        while True:
            done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True)
            if done.returncode == 0:
                return
            await asyncio.sleep(0.5)  # the version exists once its worker has polled


async def pinned_to(handle: WorkflowHandle[Any, Any]) -> tuple[int, str]:
    info = (await handle.describe()).raw_description.workflow_execution_info.versioning_info
    return info.behavior, info.deployment_version.build_id


async def test_a_cutover_in_flight_stays_on_its_build_while_a_new_build_takes_new_ones(
    client: Client, temporal_server: DevServer
) -> None:
    queue = f"ver-{uuid.uuid4().hex[:8]}"
    deployment = f"cutover-{queue}"
    v1 = build_worker(client, queue, activities=World().activities(),
                      deployment_config=deployment_config(deployment, "v1"))  # fmt: skip
    v2 = build_worker(client, queue, activities=World().activities(),
                      deployment_config=deployment_config(deployment, "v2"))  # fmt: skip
    async with v1:
        await set_current(temporal_server, deployment, "v1")
        gate = {"required": True, "approvers": ["bob"]}
        old = await start(client, cutover_input(queue, approval=gate))
        await wait_phase(old, Phase.AWAITING_APPROVAL)
        assert await pinned_to(old) == (VersioningBehavior.VERSIONING_BEHAVIOR_PINNED, "v1")
        async with v2:  # the release: v2 becomes current while the cutover waits
            await set_current(temporal_server, deployment, "v2")
            new = await start(client, cutover_input(queue))
            assert (await new.result()).outcome == Outcome.COMPLETED
            assert await pinned_to(new) == (VersioningBehavior.VERSIONING_BEHAVIOR_PINNED, "v2")
            await old.execute_update(AppCutoverWorkflow.approve, ApprovalRequest(approver="bob"))
            assert (await old.result()).outcome == Outcome.COMPLETED
    # the old cutover ran to its end on the build it started on
    assert await pinned_to(old) == (VersioningBehavior.VERSIONING_BEHAVIOR_PINNED, "v1")
    builds = {
        e.workflow_task_completed_event_attributes.deployment_version.build_id
        for e in (await old.fetch_history()).events
        if e.HasField("workflow_task_completed_event_attributes")
    }
    assert builds == {"v1"}, builds
