"""Record workflow histories for the replay test:
python -m tests.record_histories [waves|safety|stale-close|fleet]

`waves` records only the wave scenarios (wave_*.json), leaving the cutover ones as they are;
`safety` only the cutover scenarios of the `safety-v2` patch (v2_*.json); `stale-close` only
the window that closes on a fresh round (v2_fresh_round_at_close.json).

Run it when a workflow change is *meant* to be compatible and new scenarios need covering;
never to paper over a replay failure (that failure means running cutovers would break).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from temporalio.client import Client

from cutover.models import ApprovalRequest, ExtendRequest, FinalizeRequest, Phase
from cutover.temporal import connect
from tests.conftest import DevServer
from tests.factories import cutover_input
from tests.site_refs import SiteByReference
from tests.test_workflow import running, start, wait_phase, wait_post_checks
from tests.world import World
from workflows.cutover import AppCutoverWorkflow

OUT = Path(__file__).parent / "histories"


async def main(mode: str = "") -> None:
    with tempfile.TemporaryDirectory() as d:
        srv = DevServer(Path(d) / "t.db", Path(d) / "log")
        srv.start()
        try:
            client = await connect(srv.address, "default", interceptors=[SiteByReference()])
            if mode == "safety":
                await safety(client)
                return
            if mode == "stale-close":
                await stale_close(client)
                return
            if mode == "stop-before-unfence":
                await stop_before_unfence(client)
                return
            if mode == "traffic-unsure":
                await traffic_unsure(client)
                return
            if mode == "signed":
                await signed_runs(client)
                return
            if mode == "reattach":
                await reattach(client)
                return
            if mode == "fleet":
                await fleet(client)
                return
            await waves(client)
            if mode == "waves":
                return
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
                    "finalize", FinalizeRequest(requestedBy="alice"), result_type=str
                )
                await handle.result()
                await write(handle, "approved_extended_finalized_early")
        finally:
            srv.stop()


async def waves(client: Client) -> None:
    from cutover.wave import CancelRequest, PauseRequest, WaveApproval
    from tests.test_wave import apps, wait_for, wave_input
    from tests.test_wave import running as wave_running
    from tests.test_wave import start as wave_start
    from workflows.wave import WaveWorkflow

    a, b, c, d = apps(4)
    world = World(delay=0.1, fail_for={b: {"quiesce_application"}})
    async with wave_running(client, world) as queue:
        inp = wave_input(queue, [a, b, c, d], {c: [b]}, concurrency=1, failureThreshold=1,
                         approval=WaveApproval(required=True, approvers=["alice"]))  # fmt: skip
        handle = await wave_start(client, inp)
        await wait_for(handle, lambda s: s.phase.value == "AWAITING_APPROVAL")
        await handle.execute_update(WaveWorkflow.approve, ApprovalRequest(approver="alice"))
        await wait_for(handle, lambda s: s.counts.running == 1)
        await handle.execute_update(WaveWorkflow.pause, PauseRequest(requestedBy="bob"))
        await asyncio.sleep(0.5)
        await handle.execute_update(WaveWorkflow.resume, PauseRequest(requestedBy="bob"))
        await handle.result()
        await write(handle, "wave_steered_threshold_skip")
    async with wave_running(client, World()) as queue:
        inp = wave_input(queue, apps(3), concurrency=2, onCancel="rollback",
                         runbook={"rollbackWindowMinutes": 5})  # fmt: skip
        handle = await wave_start(client, inp)
        await wait_for(handle, lambda s: s.counts.running == 2)
        await asyncio.sleep(1.0)  # both children in their rollback windows
        await handle.execute_update(WaveWorkflow.cancel, CancelRequest(requestedBy="dave"))
        await handle.result()
        await write(handle, "wave_cancel_rollback")
    async with wave_running(client, World()) as queue:
        inp = wave_input(queue, apps(5), concurrency=2, continueAsNewAfter=2)
        handle = await wave_start(client, inp)
        await handle.result()
        first: Any = client.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id)
        await write(first, "wave_continued_as_new_first_run")
        await write(client.get_workflow_handle(handle.id), "wave_continued_as_new_last_run")


async def safety(client: Client) -> None:
    """Issue 11's behaviours: blocked undos resumed, cancel during undos, finalize refused on
    a fresh round, a window continued as new, a remigration refused, a fence (the target
    paused before the source starts) and a source start failing, then resumed."""
    from cutover.models import ResumeRequest, RollbackRequest
    from tests.test_faults import wait_until, window_input

    world = World(
        check_plan={"app_health_check_failure": [False]}, broken={"restore_load_balancer"}
    )
    async with running(client, world) as queue:
        handle = await start(client, window_input(queue))
        await wait_phase(handle, Phase.ROLLBACK_BLOCKED)
        world.broken.clear()
        await handle.execute_update(AppCutoverWorkflow.resume, ResumeRequest(requestedBy="ops"))
        await handle.result()
        await write(handle, "v2_rollback_blocked_then_resumed")
    world = World(broken={"retire_source_from_load_balancer"})
    async with running(client, world) as queue:
        handle = await start(client, cutover_input(queue))
        await wait_phase(handle, Phase.FINALIZE_BLOCKED)
        world.broken.clear()
        await handle.execute_update(AppCutoverWorkflow.resume, ResumeRequest(requestedBy="ops"))
        await handle.result()
        await write(handle, "v2_finalize_blocked_then_resumed")
    world = World(fail={"smoke_test"}, slow={"remove_target_domain": 1.0})
    async with running(client, world) as queue:
        handle = await start(client, cutover_input(queue))
        await wait_until(lambda: "remove_target_domain" in world.calls)
        await handle.cancel()
        await handle.result()
        await write(handle, "v2_cancel_during_compensation")
    world = World(check_plan={"error_rate_below_threshold": [True, False]})
    async with running(client, world) as queue:
        inp = cutover_input(queue, rollbackWindowMinutes=10, checkIntervalSeconds=60)
        handle = await start(client, inp)
        await wait_post_checks(handle)
        try:
            await handle.execute_update(
                "finalize", FinalizeRequest(requestedBy="ops"), result_type=str
            )
        except Exception as refused:  # expected: the fresh round failed
            print(f"finalize refused as expected: {refused}")
        await handle.execute_update(AppCutoverWorkflow.rollback, RollbackRequest(reason="done"))
        await handle.result()
        await write(handle, "v2_finalize_refused_on_a_fresh_round")
    world = World()
    async with running(client, world) as queue:
        inp = cutover_input(queue, rollbackWindowMinutes=10, checkIntervalSeconds=0.05)
        tuning = inp.tuning.model_copy(update={"continueAsNewEvents": 150})
        handle = await start(client, inp.model_copy(update={"tuning": tuning}))
        first_run = handle.result_run_id
        while (await handle.query(AppCutoverWorkflow.status)).checkRounds < 12:
            await asyncio.sleep(0.2)
        await handle.execute_update(AppCutoverWorkflow.rollback, RollbackRequest(reason="done"))
        await handle.result()
        await write(client.get_workflow_handle(handle.id, run_id=first_run), "v2_window_first_run")
        await write(client.get_workflow_handle(handle.id), "v2_window_last_run")
    world = World(
        check_plan={"app_health_check_failure": [False]},
        broken={"fence_target", "restart_source"},
    )
    async with running(client, world) as queue:
        handle = await start(client, window_input(queue))
        await wait_phase(handle, Phase.ROLLBACK_BLOCKED)
        world.broken.discard("fence_target")
        await handle.execute_update(AppCutoverWorkflow.resume, ResumeRequest(requestedBy="ops"))
        await wait_until(lambda: world.calls.count("unfence_target") == 2)
        await wait_phase(handle, Phase.ROLLBACK_BLOCKED)
        world.broken.clear()
        await handle.execute_update(AppCutoverWorkflow.resume, ResumeRequest(requestedBy="ops"))
        await handle.result()
        await write(handle, "v2_fence_and_restart_failed_then_resumed")
    await stale_close(client)
    await stop_before_unfence(client)
    await traffic_unsure(client)
    async with running(client, World(migrated="vm-1 marked migrated (test)")) as queue:
        handle = await start(client, cutover_input(queue))
        await handle.result()
        await write(handle, "v2_remigration_refused")


async def stale_close(client: Client) -> None:
    """A window whose only round outlives its deadline: the close takes a fresh round."""
    world = World(
        check_plan={"app_health_check_failure": [True, False]},
        check_delay={"error_rate_below_threshold": 2.5},
    )
    async with running(client, world) as queue:
        inp = cutover_input(queue, rollbackWindowMinutes=0.02, checkIntervalSeconds=0.5)
        handle = await start(client, inp)
        await handle.result()
        await write(handle, "v2_fresh_round_at_close")


async def stop_before_unfence(client: Client) -> None:
    """A source start that fails, then the stop before the unfence fails too (the target
    stays fenced); fixed, resumed: the rollback completes."""
    from cutover.models import ResumeRequest
    from tests.test_faults import window_input

    world = World(
        check_plan={"app_health_check_failure": [False]},
        broken={"restart_source"},
        broken_after={"quiesce_application": 1},
    )
    async with running(client, world) as queue:
        handle = await start(client, window_input(queue))
        await wait_phase(handle, Phase.ROLLBACK_BLOCKED)
        world.broken.clear()
        world.broken_after.clear()
        await handle.execute_update(AppCutoverWorkflow.resume, ResumeRequest(requestedBy="ops"))
        await handle.result()
        await write(handle, "v2_start_failed_stop_failed_then_resumed")


async def traffic_unsure(client: Client) -> None:
    """A restore_load_balancer that moved users back, then failed: the source keeps
    running, the target stays fenced; fixed and resumed, the rollback completes."""
    from cutover.models import ResumeRequest
    from tests.test_faults import window_input

    world = World(
        check_plan={"app_health_check_failure": [False]},
        landed_then_failed={"restore_load_balancer"},
    )
    async with running(client, world) as queue:
        handle = await start(client, window_input(queue))
        await wait_phase(handle, Phase.ROLLBACK_BLOCKED)
        world.landed_then_failed.clear()
        await handle.execute_update(AppCutoverWorkflow.resume, ResumeRequest(requestedBy="ops"))
        await handle.result()
        await write(handle, "v2_traffic_undo_landed_then_failed_then_resumed")


async def signed_runs(client: Client) -> None:
    """Issue 13: a cutover whose input names its site, started, approved, extended and
    finalized by signed requests; a wave by reference whose cutovers name the site too."""
    from cutover.models import ApprovalRequest, ExtendRequest, FinalizeRequest
    from tests.test_trust import begin, gated, signed
    from tests.test_wave import start as start_wave
    from tests.test_wave import wave_input

    world = World()
    async with running(client, world) as queue:
        inp, wf = gated(queue)
        handle = await begin(client, inp)
        await wait_phase(handle, Phase.AWAITING_APPROVAL)
        ok = signed(ApprovalRequest(approver="ops-lead"), wf, "approve", "ops-lead")
        await handle.execute_update(AppCutoverWorkflow.approve, ok)
        await wait_phase(handle, Phase.ROLLBACK_WINDOW)
        more = signed(ExtendRequest(minutes=1, requestedBy="alice"), wf, "extend", "alice")
        await handle.execute_update(AppCutoverWorkflow.extend, more)
        await asyncio.sleep(1)  # a check round with the post-checks passing
        fin = signed(FinalizeRequest(requestedBy="alice"), wf, "finalize", "alice")
        await handle.execute_update("finalize", fin, result_type=str)
        await handle.result()
        await write(handle, "v3_signed_by_reference_completed")
        wave = await start_wave(client, wave_input(queue, ["r1", "r2"]))  # sent by reference
        await wave.result()
        await write(wave, "v3_wave_by_reference")


async def reattach(client: Client) -> None:
    """Issue 17: a wave continues as new while a slow cutover runs; the next run awaits it
    by ID (first run: the continue-as-new without a drain; last run: the re-attach)."""
    from tests.test_wave import apps, wave_input
    from tests.test_wave import start as start_wave

    names = apps(4)
    world = World(slow_for={names[1]: 0.5})
    async with running(client, world) as queue:
        wave = await start_wave(client, wave_input(queue, names, concurrency=2,
                                                   continueAsNewAfter=1))  # fmt: skip
        await wave.result()
        await write(wave, "v3_wave_reattach_first_run")
        await write(client.get_workflow_handle(wave.id), "v3_wave_reattach_last_run")


async def fleet(client: Client) -> None:
    """Issue 17: a cutover on a site with a fleet of two data hosts, the first of which
    looks live but takes nothing (its worker stopped): the warm data path moves to the
    second host; copies take permits from the fleet's ledger."""
    import uuid

    from cutover.fleet import Fleet, fleet_workflow_id
    from workers.fleet import build_data_worker
    from workers.sites import shared
    from workers.worker import build_worker

    world = World()
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    inp = cutover_input(queue)
    fleet_site = Fleet.model_validate(
        {"dataHosts": [{"name": "h1"}, {"name": "h2"}], "limits": {"perDataHost": 1},
         "hostWaitSeconds": 5}
    )  # fmt: skip
    assert inp.site is not None
    inp = inp.model_copy(update={"site": inp.site.model_copy(update={"fleet": fleet_site})})
    with tempfile.TemporaryDirectory() as staging:
        h1 = build_data_worker(client, queue, "h1", world.activities(), shared(), Path(staging))
        async with h1:
            await asyncio.sleep(2)  # it polled: it counts as live for a while
        h2 = build_data_worker(client, queue, "h2", world.activities(), shared(), Path(staging))
        async with build_worker(client, queue, activities=world.activities()), h2:
            handle = await start(client, inp)
            result = await handle.result()
            assert result.dataHost == "h2", result
            await write(handle, "v4_fleet_host_moved")
            await write(client.get_workflow_handle(fleet_workflow_id(queue)), "v4_fleet_ledger")


async def write(handle: object, name: str) -> None:
    history = await handle.fetch_history()  # type: ignore[attr-defined]
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(history.to_json())
    print(f"wrote {name}: {len(history.events)} events")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if sys.argv[1:] else ""))
