"""Record workflow histories for the replay test: python -m tests.record_histories

Run it when a workflow change is *meant* to be compatible and new scenarios need covering;
never to paper over a replay failure (that failure means running cutovers would break).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from cutover.models import ApprovalRequest, ExtendRequest, FinalizeRequest, Phase
from cutover.temporal import connect
from tests.conftest import DevServer
from tests.factories import cutover_input
from tests.test_workflow import running, start, wait_phase, wait_post_checks
from tests.world import World
from workflows.cutover import AppCutoverWorkflow

OUT = Path(__file__).parent / "histories"


async def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        srv = DevServer(Path(d) / "t.db", Path(d) / "log")
        srv.start()
        try:
            client = await connect(srv.address, "default")
            scenarios = {
                "completed": (World(), {}),
                "step_failed": (World(fail={"power_on_target"}), {}),
                "compensation_failed": (World(fail={"smoke_test", "remove_target_domain"}), {}),
                "criterion_fired": (
                    World(check_plan={"app_health_check_failure": [True, False]}),
                    {"rollbackWindowMinutes": 1, "checkIntervalSeconds": 0.2},
                ),
                "pre_check_failed": (World(check_plan={"dns_ttl_lowered": [False]}), {}),
            }
            for name, (world, overrides) in scenarios.items():
                async with running(client, world) as queue:
                    handle = await start(client, cutover_input(queue, **overrides))
                    await handle.result()
                    await write(handle, name)
            world = World()
            async with running(client, world) as queue:
                inp = cutover_input(
                    queue,
                    rollbackWindowMinutes=5,
                    checkIntervalSeconds=0.2,
                    approval={"required": True, "approvers": ["alice"]},
                )
                handle = await start(client, inp)
                await wait_phase(handle, Phase.AWAITING_APPROVAL)
                await handle.execute_update(
                    AppCutoverWorkflow.approve, ApprovalRequest(approver="alice")
                )
                await wait_post_checks(handle)
                await handle.execute_update(AppCutoverWorkflow.extend, ExtendRequest(minutes=5))
                await handle.execute_update(
                    AppCutoverWorkflow.finalize, FinalizeRequest(requestedBy="alice")
                )
                await handle.result()
                await write(handle, "approved_extended_finalized_early")
        finally:
            srv.stop()


async def write(handle: object, name: str) -> None:
    history = await handle.fetch_history()  # type: ignore[attr-defined]
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(history.to_json())
    print(f"wrote {name}: {len(history.events)} events")


if __name__ == "__main__":
    asyncio.run(main())
