"""Orchestration overhead: AppCutoverWorkflow against a raw Temporal saga doing as much work.

    .venv/bin/python -m bench.orchestration [--n N] [--order abba|raw-first|engine-first] [--json]

Starts its own headless Temporal dev server (temp SQLite file, free port) and kills it at
the end by its process group. One in-process worker (`workers.worker.build_worker`, the
same settings for both sides) serves both workflows on one task queue, with instant
activities: `tests.world.World` for the engine, no-ops for the baseline.

- engine: N AppCutoverWorkflow runs of the test seed runbook (fresh application each), with
  a rollback window of ~0 (`rollbackWindowMinutes=0.000001`) and a check interval long enough
  that the window evaluates its post-checks and rollback criteria once.
- raw: N runs of `bench.raw_saga.RawSagaWorkflow` with the same number K of no-op
  activities one after another (the issue's baseline), K counted from World.calls +
  World.check_calls of a warm-up engine run; a compensation list is kept, never used.
- rounds: the same raw saga in the engine's rounds (activities the engine started at one
  workflow instant, a phase's checks, run concurrently): same activities, same number of
  sequential round trips, so engine/rounds is the engine's own overhead (search
  attributes, current details, pydantic payloads of ~1.3 KB per step input).

Each phase starts its N workflows at once and waits for all results (at most --concurrency
result waits in flight, to stay under the namespace's concurrent poller limit). Reported:
wall seconds, workflows/s and activities/s per side, and the engine/raw ratio of
activities/s.

Ordering effects exist: a later phase runs on a server whose SQLite database already
holds the earlier histories, on warmer processes, and under whatever else the machine is
doing then. On the shared 2-core machine this was written on, one raw-first and one
engine-first run differed by ~20-30% in the ratio, in no consistent direction (0.88 and 1.13
raw-first, 1.18 and 0.99 engine-first). So the default order is `abba`: raw, rounds, engine,
engine, rounds, raw, N workflows each (2N per side), and the ratio is of each side's totals
(activities over summed wall time), which cancels a linear drift. `raw-first` and
`engine-first` measure each side once. Compare several runs before trusting a difference.

Two ratios: engine/raw (the target, >= 0.8) and engine/rounds (stricter). The engine runs
its checks concurrently, which a sequential saga does not, so engine/raw can exceed 1.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

from temporalio.client import Client, WorkflowHandle
from temporalio.runtime import LogForwardingConfig, LoggingConfig, Runtime, TelemetryConfig

from bench.raw_saga import RAW_ACTIVITIES, RawSagaWorkflow
from cutover import logs, server
from cutover.models import CutoverInput, CutoverResult, Outcome
from cutover.site import load_site
from cutover.temporal import connect
from tests.factories import cutover_input
from tests.world import World
from workers.sites import shared
from workers.worker import build_worker
from workflows.cutover import AppCutoverWorkflow, workflow_id_for

T = TypeVar("T")

#: 60 us: the window evaluates its checks once and has closed by then, so no timer is
#: started. (With 0.03 s a timer started or not depending on how long the evaluation took,
#: adding a random extra workflow-task round trip to the engine side.)
WINDOW_MINUTES = 0.000001
#: Far beyond the window: the checks are evaluated exactly once.
CHECK_INTERVAL_SECONDS = 60
TARGET_RATIO = 0.8
ORDERS: dict[str, list[str]] = {
    "abba": ["raw", "rounds", "engine", "engine", "rounds", "raw"],
    "raw-first": ["raw", "rounds", "engine"],
    "engine-first": ["engine", "rounds", "raw"],
}


@dataclass
class Side:
    name: str
    workflows: int
    activities: int
    start_seconds: float
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


# ------------------------------------------------------------------ logging


def logs_to_stderr(level: str = "WARNING") -> None:
    """Every log line of the bench's process on stderr, so stdout carries only the report.

    Unconfigured, structlog prints to stdout (its default PrintLogger): the worker's
    "activity completed" line for every activity landed ahead of `--json`. `logs.configure`
    routes structlog and stdlib logging to stderr; the SDK core's own log lines (Rust) are
    forwarded to that stdlib logging too, instead of its console writer. Call before any
    client exists (the default runtime is set here). The level defaults to WARNING: a line
    per activity would cost the worker CPU the bench measures.
    """
    logs.configure(level)
    Runtime.set_default(
        Runtime(
            telemetry=TelemetryConfig(
                logging=LoggingConfig(
                    filter=LoggingConfig.default.filter,
                    forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
                )
            )
        ),
        error_if_already_set=False,
    )


# ------------------------------------------------------------------ server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Stop the dev server we started: its own process group (start_new_session), by PID."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def connect_when_ready(address: str, timeout: float = 60.0) -> Client:
    """The port opens before the frontend is healthy ("Frontend is not healthy yet"): retry."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await connect(address, "default")
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


# ------------------------------------------------------------------- bench


#: `--site FILE`: a real site's sections (vCenter, libvirt, mappings, ...) in every cutover,
#: with the test catalog's probes (what a step input used to repeat, issue 13).
SITE_FILE: list[str] = []


def engine_input(task_queue: str) -> CutoverInput:
    inp = cutover_input(
        task_queue,
        rollbackWindowMinutes=WINDOW_MINUTES,
        checkIntervalSeconds=CHECK_INTERVAL_SECONDS,
    )
    if not SITE_FILE:
        return inp
    own = inp.resolved_site
    real = load_site(SITE_FILE[0]).model_copy(
        update={
            "name": own.name,
            "taskQueue": task_queue,
            "checks": own.checks,
            "access": own.access,
        }
    )
    return inp.model_copy(update={"site": real})


#: The warm-up cutover's history size, in bytes.
HISTORY_BYTES: list[int] = []


def world_activity_count(world: World) -> int:
    return len(world.calls) + len(world.check_calls) + len(world.guard_calls)


async def start_engine(client: Client, inp: CutoverInput) -> WorkflowHandle[Any, CutoverResult]:
    shared().add(inp.resolved_site)  # the worker's own site, as `cutover worker --site`
    return await client.start_workflow(
        AppCutoverWorkflow.run,
        inp.by_reference(),  # as `cutover run` sends it
        id=workflow_id_for(inp.runbook.application),
        task_queue=inp.resolved_site.taskQueue,
    )


async def history_bytes(handle: WorkflowHandle[Any, Any]) -> int:
    """What one cutover's history stores (every event's encoded size, all payloads in)."""
    history = await handle.fetch_history()
    return sum(e.ByteSize() for e in history.events)


async def start_raw(client: Client, task_queue: str, groups: list[int]) -> WorkflowHandle[Any, int]:
    return await client.start_workflow(
        RawSagaWorkflow.run,
        groups,
        id=f"bench-raw-{uuid.uuid4().hex}",
        task_queue=task_queue,
    )


async def run_all(
    starts: Sequence[Callable[[], Awaitable[WorkflowHandle[Any, T]]]], concurrency: int
) -> tuple[list[T], float, float]:
    """Start all workflows at once, then await every result; (results, start s, wall s)."""
    gate = asyncio.Semaphore(concurrency)

    async def result(handle: WorkflowHandle[Any, T]) -> T:
        async with gate:
            return await handle.result()

    t0 = time.perf_counter()
    handles = await asyncio.gather(*(s() for s in starts))
    started = time.perf_counter() - t0
    results = await asyncio.gather(*(result(h) for h in handles))
    return list(results), started, time.perf_counter() - t0


async def measure_engine(
    client: Client, world: World, task_queue: str, n: int, k: int, concurrency: int
) -> Side:
    inputs = [engine_input(task_queue) for _ in range(n)]  # validated before the clock
    before = world_activity_count(world)
    results, started, wall = await run_all(
        [partial(start_engine, client, inp) for inp in inputs], concurrency
    )
    bad = [r.reason for r in results if r.outcome != Outcome.COMPLETED]
    if bad:
        raise RuntimeError(f"{len(bad)} engine runs did not complete, e.g. {bad[0]}")
    done = world_activity_count(world) - before
    if done != n * k:
        raise RuntimeError(f"engine ran {done} activities, expected {n} x {k}")
    return Side("engine", n, done, started, wall)


async def measure_raw(
    client: Client, task_queue: str, n: int, groups: list[int], concurrency: int
) -> Side:
    k = sum(groups)
    results, started, wall = await run_all(
        [partial(start_raw, client, task_queue, groups) for _ in range(n)], concurrency
    )
    if any(r != k for r in results):
        raise RuntimeError("a raw saga run did not do its K steps")
    return Side("raw", n, n * k, started, wall)


async def bench(address: str, n: int, order: str, concurrency: int) -> tuple[int, list[Side]]:
    client = await connect_when_ready(address)
    world = World()
    task_queue = f"bench-{uuid.uuid4().hex[:8]}"
    worker = build_worker(
        client,
        task_queue,
        activities=[*world.activities(), *RAW_ACTIVITIES],
        workflows=[AppCutoverWorkflow, RawSagaWorkflow],
    )
    async with worker:
        # Warm-up: one of each (sandbox imports, connections); K from the engine's run.
        warm_handle = await start_engine(client, engine_input(task_queue))
        warm = await warm_handle.result()
        if warm.outcome != Outcome.COMPLETED:
            raise RuntimeError(f"warm-up cutover did not complete: {warm.reason}")
        HISTORY_BYTES.append(await history_bytes(warm_handle))
        k = world_activity_count(world)
        # The same rounds as the engine: activities that started at one workflow instant
        # ran concurrently (a phase's checks), the rest one after another.
        groups = [len(list(g)) for _, g in itertools.groupby(warm.steps, lambda s: s.startedAt)]
        if sum(groups) != k:
            raise RuntimeError(f"engine rounds {groups} do not add up to K={k}")
        await (await start_raw(client, task_queue, groups)).result()

        sides: list[Side] = []
        for name in ORDERS[order]:
            if name == "raw":
                side = await measure_raw(client, task_queue, n, [1] * k, concurrency)
                sides.append(side)
            elif name == "rounds":
                side = await measure_raw(client, task_queue, n, groups, concurrency)
                sides.append(
                    Side(
                        "rounds",
                        side.workflows,
                        side.activities,
                        side.start_seconds,
                        side.wall_seconds,
                    )
                )
            else:
                sides.append(await measure_engine(client, world, task_queue, n, k, concurrency))
    return k, sides


# ------------------------------------------------------------------ report


def totals(sides: list[Side], name: str) -> Side:
    mine = [s for s in sides if s.name == name]
    return Side(
        name,
        sum(s.workflows for s in mine),
        sum(s.activities for s in mine),
        sum(s.start_seconds for s in mine),
        sum(s.wall_seconds for s in mine),
    )


def report(n: int, k: int, order: str, sides: list[Side], as_json: bool) -> None:
    raw, rounds, engine = (totals(sides, n) for n in ("raw", "rounds", "engine"))
    ratio = engine.activities_per_s / raw.activities_per_s
    strict = engine.activities_per_s / rounds.activities_per_s
    if as_json:
        print(
            json.dumps(
                {
                    "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "cpus": os.cpu_count(),
                    "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(),
                    "temporalio": version("temporalio"),
                    "n": n,
                    "k": k,
                    "order": order,
                    "phases": [s.as_json() for s in sides],
                    "totals": [raw.as_json(), rounds.as_json(), engine.as_json()],
                    "ratio_engine_raw_activities_per_s": round(ratio, 4),
                    "ratio_engine_rounds_activities_per_s": round(strict, 4),
                    "target": TARGET_RATIO,
                    "history_bytes_per_cutover": HISTORY_BYTES[0],
                },
                indent=2,
            )
        )
        return
    print(
        f"N={n} workflows per phase, K={k} activities per workflow, order {order}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'phase':<14}{'workflows':>10}{'activities':>12}{'start s':>9}{'wall s':>9}"
        f"{'workflows/s':>13}{'activities/s':>14}"
    )
    rows = [(f"{i}. {s.name}", s) for i, s in enumerate(sides, 1)]
    if len(sides) > 3:
        rows += [("raw total", raw), ("rounds total", rounds), ("engine total", engine)]
    for label, s in rows:
        print(
            f"{label:<14}{s.workflows:>10}{s.activities:>12}{s.start_seconds:>9.2f}"
            f"{s.wall_seconds:>9.2f}{s.workflows_per_s:>13.2f}{s.activities_per_s:>14.1f}"
        )
    print(f"history bytes per cutover: {HISTORY_BYTES[0]}")
    print(f"ratio engine/raw activities/s: {ratio:.2f} (target >= {TARGET_RATIO})")
    print(f"ratio engine/rounds activities/s: {strict:.2f} (stricter: same concurrency)")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.orchestration",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--n", type=int, default=100, help="workflows per phase (default 100)")
    p.add_argument(
        "--order",
        choices=list(ORDERS),
        default="abba",
        help="phase order (default abba: raw, rounds, engine, engine, rounds, raw)",
    )
    p.add_argument(
        "--concurrency", type=int, default=200, help="result waits in flight at most (default 200)"
    )
    p.add_argument("--timeout", type=float, default=900, help="give up after this many s")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--log-level", default="WARNING", help="the worker's log level (to stderr)")
    p.add_argument(
        "--site",
        metavar="FILE",
        help="use this site's sections in every cutover (its probes replaced by the test "
        "catalog's): history bytes with a real site's size",
    )
    args = p.parse_args(argv)
    if args.site:
        SITE_FILE.append(args.site)
    if args.n < 1 or args.concurrency < 1:
        p.error("--n and --concurrency must be at least 1")
    logs_to_stderr(args.log_level)

    with tempfile.TemporaryDirectory(prefix="cutover-bench-") as d:
        port = free_port()
        log = Path(d) / "server.log"
        proc = server.start(Path(d) / "temporal.db", port, ui_port=None, log=log)
        try:
            k, sides = asyncio.run(
                asyncio.wait_for(
                    bench(f"127.0.0.1:{port}", args.n, args.order, args.concurrency),
                    args.timeout,
                )
            )
        finally:
            stop_server(proc)
    report(args.n, k, args.order, sides, args.json)


if __name__ == "__main__":
    main()
