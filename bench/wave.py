"""A large wave against raw Temporal sagas doing as many activities, in one run.

    .venv/bin/python -m bench.wave [--apps 1800] [--concurrency 100] [--order raw-first] [--json]

Starts its own headless Temporal dev server (temp SQLite file, free port) and stops it at
the end by its process group. One in-process worker (`workers.worker.build_worker`) serves
everything on one task queue, with instant activities (`tests.world.World` for the wave's
cutovers, no-ops for the baseline).

- wave: one `WaveWorkflow` of `--apps` applications, each the test seed runbook
  (`tests.factories.SEED`: K activities per cutover, counted from the World), a rollback
  window of ~0, `--concurrency` cutovers at once, continue-as-new every
  `--can-after` finished cutovers (the wave drains its running cutovers first).
- raw: `--apps` runs of `bench.raw_saga.RawSagaWorkflow` with K no-op activities each, one
  after another (the orchestration bench's baseline), at most `--concurrency` in flight
  (a new one starts when one ends), i.e. the same activity count and the same parallelism.

Reported: wall seconds, cutovers (workflows) per second and activities per second per side,
the wave/raw ratio of activities/s (target >= 0.8), and peak RSS of this process (the
worker, plus the client) and of the Temporal server (sampled every 0.5 s from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import resource
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from temporalio.client import Client

from bench.orchestration import connect_when_ready, free_port, stop_server
from bench.raw_saga import RAW_ACTIVITIES, RawSagaWorkflow
from cutover import server
from cutover.models import Tuning
from cutover.runbook import Runbook
from cutover.wave import WaveApp, WaveInput, WaveOutcome, workflow_id_for_wave
from tests.factories import SEED, site
from tests.site_refs import by_reference
from tests.world import World
from workers.worker import build_worker
from workflows.cutover import AppCutoverWorkflow
from workflows.wave import WaveWorkflow

TARGET_RATIO = 0.8
WORKER_RSS_LIMIT = 1 << 30


@dataclass
class Side:
    name: str
    workflows: int
    activities: int
    wall_seconds: float

    @property
    def workflows_per_s(self) -> float:
        return self.workflows / self.wall_seconds

    @property
    def activities_per_s(self) -> float:
        return self.activities / self.wall_seconds

    def as_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "workflows_per_s": round(self.workflows_per_s, 3),
            "activities_per_s": round(self.activities_per_s, 3),
        }


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Peak:
    """Peak RSS of this process and of the server, sampled in the background."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.worker = self.server = 0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.worker = max(self.worker, rss_bytes(os.getpid()))
            self.server = max(self.server, rss_bytes(self.server_pid))
            await asyncio.sleep(0.5)

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.worker = max(self.worker, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def wave_input(task_queue: str, apps: int, concurrency: int, can_after: int) -> WaveInput:
    name = f"bench-{uuid.uuid4().hex[:6]}"
    prefix = uuid.uuid4().hex[:6]
    fast = {"wave": name, "rollbackWindowMinutes": 0.000001, "checkIntervalSeconds": 60}
    return WaveInput(
        name=name,
        site=site(taskQueue=task_queue),
        apps=[
            WaveApp(
                application=f"b{prefix}-{i}",
                runbook=Runbook.model_validate({**SEED, **fast, "application": f"b{prefix}-{i}"}),
            )
            for i in range(apps)
        ],
        concurrency=concurrency,
        continueAsNewAfter=can_after,
        requestedBy="bench",
        # Instant activities: a start-to-close of a minute, not the default two hours, so an
        # activity completion lost on a loaded machine costs a retry, not a stalled drain
        # (seen once: a `run_check` "Started" that never completed held a drain 10 minutes).
        tuning=Tuning(stepTimeoutMinutes=1),
    )


async def measure_wave(
    client: Client, world: World, inp: WaveInput, k: int, apps: int
) -> tuple[Side, int]:
    before = len(world.calls) + len(world.check_calls)
    t0 = time.perf_counter()
    handle = await client.start_workflow(
        WaveWorkflow.run,
        by_reference(inp),  # as `cutover wave run` sends it, the site served in-process
        id=workflow_id_for_wave(inp.name),
        task_queue=inp.resolved_site.taskQueue,
    )
    result = await handle.result()
    wall = time.perf_counter() - t0
    if result.outcome != WaveOutcome.COMPLETED or result.counts.completed != apps:
        raise RuntimeError(f"the wave did not complete: {result.outcome} {result.reason}")
    done = len(world.calls) + len(world.check_calls) - before
    if done != apps * k:
        raise RuntimeError(f"the wave ran {done} activities, expected {apps} x {k}")
    return Side("wave", apps, done, wall), result.runs


async def measure_raw(client: Client, task_queue: str, n: int, k: int, concurrency: int) -> Side:
    gate = asyncio.Semaphore(concurrency)

    async def one() -> int:
        async with gate:
            return await client.execute_workflow(
                RawSagaWorkflow.run,
                [1] * k,
                id=f"bench-raw-{uuid.uuid4().hex}",
                task_queue=task_queue,
            )

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(n)))
    wall = time.perf_counter() - t0
    if any(r != k for r in results):
        raise RuntimeError("a raw saga did not do its K steps")
    return Side("raw", n, n * k, wall)


async def bench(
    address: str, server_pid: int, apps: int, concurrency: int, can_after: int, order: str
) -> tuple[int, list[Side], int, Peak]:
    client = await connect_when_ready(address)
    world = World()
    task_queue = f"bench-{uuid.uuid4().hex[:8]}"
    worker = build_worker(
        client,
        task_queue,
        activities=[*world.activities(), *RAW_ACTIVITIES],
        workflows=[AppCutoverWorkflow, WaveWorkflow, RawSagaWorkflow],
    )
    peak = Peak(server_pid)
    async with worker:
        # Warm-up (sandbox imports, connections): a wave of 2; K from its activities.
        warm = wave_input(task_queue, 2, 2, can_after)
        h = await client.start_workflow(
            WaveWorkflow.run,
            by_reference(warm),
            id=workflow_id_for_wave(warm.name),
            task_queue=task_queue,
        )
        if (await h.result()).outcome != WaveOutcome.COMPLETED:
            raise RuntimeError("warm-up wave did not complete")
        k = (len(world.calls) + len(world.check_calls)) // 2
        await measure_raw(client, task_queue, 2, k, 2)
        inp = wave_input(task_queue, apps, concurrency, can_after)  # validated before the clock
        peak.start()
        sides: list[Side] = []
        runs = 0
        for name in ("raw", "wave") if order == "raw-first" else ("wave", "raw"):
            if name == "raw":
                sides.append(await measure_raw(client, task_queue, apps, k, concurrency))
            else:
                side, runs = await measure_wave(client, world, inp, k, apps)
                sides.append(side)
        peak.stop()
    return k, sides, runs, peak


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.wave",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--apps", type=int, default=1800, help="applications (default 1800)")
    p.add_argument("--concurrency", type=int, default=100, help="cutovers at once (100)")
    p.add_argument("--can-after", type=int, default=200, help="continue-as-new every N (200)")
    p.add_argument("--order", choices=["raw-first", "wave-first"], default="raw-first")
    p.add_argument("--timeout", type=float, default=3600, help="give up after this many s")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    if min(args.apps, args.concurrency, args.can_after) < 1:
        p.error("--apps, --concurrency and --can-after must be at least 1")

    with tempfile.TemporaryDirectory(prefix="cutover-bench-wave-") as d:
        port = free_port()
        proc = server.start(Path(d) / "temporal.db", port, ui_port=None, log=Path(d) / "log")
        try:
            k, sides, runs, peak = asyncio.run(
                asyncio.wait_for(
                    bench(f"127.0.0.1:{port}", proc.pid, args.apps, args.concurrency,
                          args.can_after, args.order),
                    args.timeout,
                )
            )  # fmt: skip
        finally:
            stop_server(proc)
    raw = next(s for s in sides if s.name == "raw")
    wave = next(s for s in sides if s.name == "wave")
    ratio = wave.activities_per_s / raw.activities_per_s
    mib = 1 << 20
    if args.json:
        print(
            json.dumps(
                {
                    "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "cpus": os.cpu_count(),
                    "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(),
                    "temporalio": version("temporalio"),
                    "apps": args.apps,
                    "k": k,
                    "concurrency": args.concurrency,
                    "continue_as_new_after": args.can_after,
                    "wave_runs": runs,
                    "order": args.order,
                    "sides": [s.as_json() for s in sides],
                    "ratio_wave_raw_activities_per_s": round(ratio, 4),
                    "target": TARGET_RATIO,
                    "peak_worker_rss_mib": round(peak.worker / mib, 1),
                    "peak_server_rss_mib": round(peak.server / mib, 1),
                },
                indent=2,
            )
        )
        return
    print(
        f"{args.apps} applications, K={k} activities per cutover, concurrency "
        f"{args.concurrency}, continue-as-new every {args.can_after} ({runs} runs), order "
        f"{args.order}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'side':<6}{'workflows':>10}{'activities':>12}{'wall s':>9}{'cutovers/s':>12}"
          f"{'activities/s':>14}")  # fmt: skip
    for s in sides:
        print(
            f"{s.name:<6}{s.workflows:>10}{s.activities:>12}{s.wall_seconds:>9.1f}"
            f"{s.workflows_per_s:>12.2f}{s.activities_per_s:>14.1f}"
        )
    print(f"ratio wave/raw activities/s: {ratio:.2f} (target >= {TARGET_RATIO})")
    ok = "ok" if peak.worker < WORKER_RSS_LIMIT else "OVER 1 GiB"
    print(
        f"peak RSS: worker (this process) {peak.worker / mib:.0f} MiB ({ok}), "
        f"Temporal server {peak.server / mib:.0f} MiB"
    )


if __name__ == "__main__":
    main()
