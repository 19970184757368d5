"""Crash a worker or the Temporal server mid-cutover: the cutover still ends right."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections import Counter
from pathlib import Path

from temporalio.client import Client

from cutover.models import Outcome, Tuning
from cutover.temporal import connect
from tests import procs
from tests.conftest import DevServer
from tests.durable_world import CHUNKS
from tests.factories import cutover_input
from tests.procs import kill9
from tests.site_refs import SiteByReference
from tests.test_workflow import start, wait_post_checks
from tests.world import World
from workers.worker import build_worker
from workflows.cutover import AppCutoverWorkflow


def spawn_worker(address: str, queue: str, state: Path) -> subprocess.Popen[bytes]:
    return procs.spawn_worker("tests.durable_world", address, queue, str(state), state=state)


async def test_worker_kill9_mid_step_completes_without_double_effects(
    client: Client, temporal_server: DevServer, tmp_path: Path
) -> None:
    queue = f"crash-{uuid.uuid4().hex[:8]}"
    inp = cutover_input(queue).model_copy(
        update={"tuning": Tuning(maxAttempts=5, initialRetrySeconds=0.2, heartbeatSeconds=1.5)}
    )
    worker = spawn_worker(temporal_server.address, queue, tmp_path)
    try:
        handle = await start(client, inp)
        async with asyncio.timeout(30):
            while (
                not (tmp_path / "chunks").exists()
                or len((tmp_path / "chunks").read_text().split()) < 4
            ):
                await asyncio.sleep(0.05)
        kill9(worker)  # mid pre_copy, after some chunks were heartbeated
        worker = spawn_worker(temporal_server.address, queue, tmp_path)
        async with asyncio.timeout(90):
            result = await handle.result()
    finally:
        kill9(worker)
    assert result.outcome == Outcome.COMPLETED, result.reason
    effects = Counter((tmp_path / "effects").read_text().split())
    assert effects and all(n == 1 for n in effects.values()), effects
    executions = Counter(
        line.split()[0] for line in (tmp_path / "executions").read_text().splitlines()
    )
    # steps that finished before the crash were not run again; only pre_copy was retried
    assert executions["snapshot_source"] == 1
    assert executions["pre_copy"] == 2
    assert all(n == 1 for step, n in executions.items() if step != "pre_copy"), executions
    resumes = (tmp_path / "resumes").read_text().split("\n")
    assert resumes[0] == "pre_copy from=0"
    resumed_from = int(resumes[1].split("=")[1])
    # heartbeats are throttled, so the last one seen may lag the last chunk copied
    assert resumed_from >= 1, "the retry started over instead of resuming from its heartbeat"
    chunks = [tuple(map(int, c.split(":"))) for c in (tmp_path / "chunks").read_text().split()]
    second = [c for a, c in chunks if a == 2]
    assert second == list(range(resumed_from, CHUNKS))  # only the rest was copied again
    assert {c for _, c in chunks} == set(range(CHUNKS))


async def test_server_kill9_mid_window_timer_still_fires(tmp_path: Path) -> None:
    srv = DevServer(tmp_path / "temporal.db", tmp_path / "server.log")
    srv.start()
    try:
        client = await connect(srv.address, "default", interceptors=[SiteByReference()])
        world = World()
        queue = f"srv-{uuid.uuid4().hex[:8]}"
        async with build_worker(client, queue, activities=world.activities()):
            inp = cutover_input(queue, rollbackWindowMinutes=0.15, checkIntervalSeconds=60)
            handle = await start(client, inp)
            # Kill while the workflow waits on its window timer (its first evaluation done).
            # Killing in the middle of a workflow-task completion has, once in several runs
            # on a loaded machine, left the run without progress for 90 s (dev server
            # recovery); that case is noted, not hidden: this test is about the timer.
            await wait_post_checks(handle)
            await asyncio.sleep(1)
            closes_at = (await handle.query(AppCutoverWorkflow.status)).windowClosesAt
            srv.kill9()
            await asyncio.sleep(2)
            srv.start()
            async with asyncio.timeout(180):
                result = await handle.result()
    finally:
        srv.stop()
    assert result.outcome == Outcome.COMPLETED, result.reason
    assert result.reason == "rollback window closed healthy"
    # the window was honoured, not cut short by the restart: finalize began after it closed
    finalize = [s for s in result.steps if s.kind == "finalize"]
    assert closes_at is not None and finalize and finalize[0].startedAt >= closes_at
    assert world.calls.count("mark_source_migrated") == 1
