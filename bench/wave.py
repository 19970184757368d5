"""A large wave against raw Temporal sagas doing as many activities.

    .venv/bin/python -m bench.wave [--apps 1800] [--concurrency 100]
        [--order fresh|raw-first|wave-first] [--repeat N] [--json]

One in-process worker (`workers.worker.build_worker`) serves everything on one task queue,
with instant activities (`tests.world.World` for the wave's cutovers, no-ops for the
baseline), against a headless Temporal dev server on its own temp SQLite file (free ports,
stopped by its process group at the end).

- wave: one `WaveWorkflow` of `--apps` applications, each the test seed runbook
  (`tests.factories.SEED`: K activities per cutover, counted from the World), a rollback
  window of ~0, `--concurrency` cutovers at once, continue-as-new every
  `--can-after` finished cutovers (without a drain: the next run re-attaches the cutovers
  still running, patch `wave-reattach`).
- raw: `--apps` runs of `bench.raw_saga.RawSagaWorkflow` with K no-op activities each, one
  after another (the orchestration bench's baseline), at most `--concurrency` in flight
  (a new one starts when one ends), i.e. the same activity count and the same parallelism.

Orders. A dev server slows down as its SQLite database fills (issue 17: whichever side ran
second on one server took 1.7-2.7x as long), so the default `fresh` runs each side on its own
new server and database, one after the other; `--repeat N` does it N times, alternating
which side goes first. `raw-first` and `wave-first` run both sides on one server (each
repetition a new one), as the bench first did: their ratio includes the decay.

Reported per side: wall seconds, cutovers (workflows) per second, activities per second,
completed activities per minute in the first and the last fifth of the side's run (every
completion timestamped by the worker: `bench.decay.Completions`), the server's CPU seconds
and its database size after the side, the server's timer backlog at the side's end (stored
timers already due, how late the oldest is: `bench.decay.TimerBacklog`); the wave/raw ratio
of activities/s (target >= 0.8) per repetition and over all of them (total activities over
total wall time per side); peak RSS of this process (worker and client) and of the Temporal
server (sampled every 0.5 s).
Logs go to stderr (`--log-level`, default WARNING): stdout carries only the report.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from temporalio.client import Client

from bench.decay import BacklogSampler, Completions, Decay, DevServer, TimerBacklog
from bench.orchestration import connect_when_ready, logs_to_stderr
from bench.raw_saga import RAW_ACTIVITIES, RawSagaWorkflow
from cutover.catalog import VERIFY_NOT_MIGRATED
from cutover.models import Tuning
from cutover.runbook import Runbook
from cutover.telemetry import tracing_interceptor
from cutover.wave import WaveApp, WaveInput, WaveOutcome, workflow_id_for_wave
from tests.factories import SEED, site
from tests.site_refs import by_reference
from tests.world import World
from workers.worker import build_worker
from workflows.cutover import AppCutoverWorkflow
from workflows.wave import WaveWorkflow

TARGET_RATIO = 0.8
WORKER_RSS_LIMIT = 1 << 30
ORDERS = ("fresh", "raw-first", "wave-first")
MIB = 1 << 20


@dataclass
class Side:
    name: str
    repetition: int
    #: 1 or 2: which of its repetition's two sides this one was
    position: int
    #: "fresh": its own new server; "shared": the server the other side also used
    server: str
    workflows: int
    activities: int
    wall_seconds: float
    decay: Decay
    server_cpu_seconds: float
    db_bytes_after: int
    peak_server_rss: int
    #: the server's stored timers at the side's end (overdue ones: the timer queue's backlog)
    timers_after: TimerBacklog
    peak_timer_lag_seconds: float

    @property
    def workflows_per_s(self) -> float:
        return self.workflows / self.wall_seconds

    @property
    def activities_per_s(self) -> float:
        return self.activities / self.wall_seconds

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["decay"] = self.decay.as_json()
        out["workflows_per_s"] = round(self.workflows_per_s, 3)
        out["activities_per_s"] = round(self.activities_per_s, 3)
        return out


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Peak:
    """Peak RSS of this process and of a server, sampled in the background."""

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


class Env:
    """One dev server (own SQLite file), a client and one worker serving both sides."""

    def __init__(self, d: Path, server_args: Sequence[str] = ()) -> None:
        self.d = d
        self.server_args = list(server_args)
        self.world = World()
        self.completions = Completions()
        self.task_queue = f"bench-{uuid.uuid4().hex[:8]}"
        names = {getattr(a, "__temporal_activity_definition").name for a in self.world.activities()}
        #: the activities a wave side counts (World.calls and check_calls; not the guard)
        self.wave_types = names - {VERIFY_NOT_MIGRATED}
        self.k = 0

    async def __aenter__(self) -> Env:
        self.server = DevServer.start(self.d / "temporal.db", self.server_args)
        try:
            self.client = await connect_when_ready(self.server.address)
            self.worker = build_worker(
                self.client,
                self.task_queue,
                activities=[*self.world.activities(), *RAW_ACTIVITIES],
                workflows=[AppCutoverWorkflow, WaveWorkflow, RawSagaWorkflow],
                interceptors=[tracing_interceptor(), self.completions],
            )
            await self.worker.__aenter__()
        except BaseException:
            self.server.stop()
            raise
        try:
            await self._warm_up()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.worker.__aexit__(None, None, None)
        finally:
            self.server.stop()
            shutil.rmtree(self.d, ignore_errors=True)  # a 1,800-app side leaves ~100s of MB

    async def _warm_up(self) -> None:
        """Sandbox imports, connections: a wave of 2 and 2 raw sagas; K from the wave."""
        warm = wave_input(self.task_queue, 2, 2, 200)
        h = await self.client.start_workflow(
            WaveWorkflow.run,
            by_reference(warm),
            id=workflow_id_for_wave(warm.name),
            task_queue=self.task_queue,
        )
        if (await h.result()).outcome != WaveOutcome.COMPLETED:
            raise RuntimeError("warm-up wave did not complete")
        self.k = (len(self.world.calls) + len(self.world.check_calls)) // 2
        await measure_raw(self.client, self.task_queue, 2, self.k, 2)

    def counted(self) -> int:
        return len(self.world.calls) + len(self.world.check_calls)


async def measure_wave(
    client: Client, env: Env, inp: WaveInput, apps: int
) -> tuple[int, float, float, int]:
    """(activities, t0, t1 on time.monotonic, workflow runs)."""
    before = env.counted()
    t0 = time.monotonic()
    handle = await client.start_workflow(
        WaveWorkflow.run,
        by_reference(inp),  # as `cutover wave run` sends it, the site served in-process
        id=workflow_id_for_wave(inp.name),
        task_queue=inp.resolved_site.taskQueue,
    )
    result = await handle.result()
    t1 = time.monotonic()
    if result.outcome != WaveOutcome.COMPLETED or result.counts.completed != apps:
        raise RuntimeError(f"the wave did not complete: {result.outcome} {result.reason}")
    done = env.counted() - before
    if done != apps * env.k:
        raise RuntimeError(f"the wave ran {done} activities, expected {apps} x {env.k}")
    return done, t0, t1, result.runs


async def measure_raw(
    client: Client, task_queue: str, n: int, k: int, concurrency: int
) -> tuple[int, float, float]:
    """(activities, t0, t1 on time.monotonic)."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> int:
        async with gate:
            return await client.execute_workflow(
                RawSagaWorkflow.run,
                [1] * k,
                id=f"bench-raw-{uuid.uuid4().hex}",
                task_queue=task_queue,
            )

    t0 = time.monotonic()
    results = await asyncio.gather(*(one() for _ in range(n)))
    t1 = time.monotonic()
    if any(r != k for r in results):
        raise RuntimeError("a raw saga did not do its K steps")
    return n * k, t0, t1


@dataclass
class Args:
    apps: int
    concurrency: int
    can_after: int
    timeout: float
    #: extra `temporal server start-dev` flags (e.g. a --dynamic-config-value to compare)
    server_args: list[str]


async def run_side(env: Env, name: str, a: Args, repetition: int, position: int,
                   shared: bool) -> tuple[Side, int, int]:  # fmt: skip
    """One side on env's server: (the side, the wave's runs or 0, this process's peak RSS)."""
    inp = wave_input(env.task_queue, a.apps, a.concurrency, a.can_after) if name == "wave" else None
    peak = Peak(env.server.proc.pid)
    sampler = BacklogSampler(env.server)
    cpu0 = env.server.cpu_seconds()
    peak.start()
    sampler.start()
    runs = 0
    try:
        if inp is None:
            done, t0, t1 = await asyncio.wait_for(
                measure_raw(env.client, env.task_queue, a.apps, env.k, a.concurrency), a.timeout
            )
            types = {"bench_raw_step"}
        else:
            done, t0, t1, runs = await asyncio.wait_for(
                measure_wave(env.client, env, inp, a.apps), a.timeout
            )
            types = env.wave_types
    finally:
        peak.stop()
        await sampler.stop()
    side = Side(
        name=name,
        repetition=repetition,
        position=position,
        server="shared" if shared else "fresh",
        workflows=a.apps,
        activities=done,
        wall_seconds=round(t1 - t0, 2),
        decay=Decay.of(env.completions.between(t0, t1, types), t0, t1),
        server_cpu_seconds=round(env.server.cpu_seconds() - cpu0, 1),
        db_bytes_after=sum(env.server.db_bytes().values()),
        peak_server_rss=peak.server,
        timers_after=await asyncio.to_thread(env.server.timers),
        peak_timer_lag_seconds=sampler.peak_lag,
    )
    return side, runs, peak.worker


async def bench(d: Path, a: Args, order: str, repeat: int) -> tuple[int, list[Side], int, int]:
    """(K, sides in run order, the wave's workflow runs, this process's peak RSS)."""
    sides: list[Side] = []
    k = runs = worker_peak = 0

    def note(env: Env, result: tuple[Side, int, int]) -> None:
        nonlocal k, runs, worker_peak
        if k and env.k != k:
            raise RuntimeError(f"K changed between servers: {k} then {env.k}")
        k = env.k
        sides.append(result[0])
        runs = max(runs, result[1])
        worker_peak = max(worker_peak, result[2])

    for rep in range(1, repeat + 1):
        if order == "fresh":
            names = ("raw", "wave") if rep % 2 else ("wave", "raw")
            for pos, name in enumerate(names, 1):
                async with Env(d / f"{rep}-{name}", a.server_args) as env:
                    note(env, await run_side(env, name, a, rep, pos, shared=False))
        else:
            names = ("raw", "wave") if order == "raw-first" else ("wave", "raw")
            async with Env(d / f"{rep}-shared", a.server_args) as env:
                for pos, name in enumerate(names, 1):
                    note(env, await run_side(env, name, a, rep, pos, shared=True))
    return k, sides, runs, worker_peak


def ratio(sides: Sequence[Side]) -> float:
    """wave/raw activities/s over these sides: total activities over total wall, per side."""

    def rate(name: str) -> float:
        mine = [s for s in sides if s.name == name]
        return sum(s.activities for s in mine) / sum(s.wall_seconds for s in mine)

    return rate("wave") / rate("raw")


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, check=False)  # fmt: skip
    except OSError:
        return ""
    return out.stdout.strip()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.wave",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--apps", type=int, default=1800, help="applications (default 1800)")
    p.add_argument("--concurrency", type=int, default=100, help="cutovers at once (100)")
    p.add_argument("--can-after", type=int, default=200, help="continue-as-new every N (200)")
    p.add_argument(
        "--order",
        choices=ORDERS,
        default="fresh",
        help="fresh (default): each side on its own new server; raw-first, wave-first: both "
        "sides on one server in that order",
    )
    p.add_argument("--repeat", type=int, default=1,
                   help="repetitions (fresh: alternating which side goes first) (1)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=3600, help="give up on a side after this")
    p.add_argument("--log-level", default="WARNING", help="the worker's log level (to stderr)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="an extra flag for the dev server's command line (repeatable; e.g. "
                   "--server-arg=--dynamic-config-value "
                   "--server-arg=history.timerTaskBatchSize=1000)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    if min(args.apps, args.concurrency, args.can_after, args.repeat) < 1:
        p.error("--apps, --concurrency, --can-after and --repeat must be at least 1")
    logs_to_stderr(args.log_level)

    a = Args(args.apps, args.concurrency, args.can_after, args.timeout, args.server_arg)
    with tempfile.TemporaryDirectory(prefix="cutover-bench-wave-") as d:
        k, sides, runs, worker_peak = asyncio.run(bench(Path(d), a, args.order, args.repeat))
    overall = ratio(sides)
    per_rep = [round(ratio([s for s in sides if s.repetition == r]), 4)
               for r in range(1, args.repeat + 1)]  # fmt: skip
    server_peak = max(s.peak_server_rss for s in sides)
    if args.json:
        print(
            json.dumps(
                {
                    "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "commit": commit(),
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
                    "repeat": args.repeat,
                    "server_args": args.server_arg,
                    "sides": [s.as_json() for s in sides],
                    "ratio_wave_raw_by_repetition": per_rep,
                    "ratio_wave_raw_activities_per_s": round(overall, 4),
                    "target": TARGET_RATIO,
                    "peak_worker_rss_mib": round(worker_peak / MIB, 1),
                    "peak_server_rss_mib": round(server_peak / MIB, 1),
                },
                indent=2,
            )
        )
        return
    print(
        f"{args.apps} applications, K={k} activities per cutover, concurrency "
        f"{args.concurrency}, continue-as-new every {args.can_after} ({runs} runs), order "
        f"{args.order} x {args.repeat}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
        f"commit {commit() or '?'}"
    )
    print(f"{'rep':>3} {'side':<5}{'server':>8}{'activities':>11}{'wall s':>8}{'cutovers/s':>11}"
          f"{'act/s':>8}{'1st 5th/min':>12}{'last 5th/min':>13}{'last/1st':>9}"
          f"{'srv cpu s':>10}{'db MiB':>8}{'due timers':>11}{'lag s':>7}")  # fmt: skip
    for s in sides:
        print(
            f"{s.repetition:>3} {s.name:<5}{s.server:>8}{s.activities:>11}{s.wall_seconds:>8.1f}"
            f"{s.workflows_per_s:>11.2f}{s.activities_per_s:>8.1f}{s.decay.first:>12.0f}"
            f"{s.decay.last:>13.0f}{s.decay.last_over_first:>9.2f}{s.server_cpu_seconds:>10.1f}"
            f"{s.db_bytes_after / MIB:>8.1f}{s.timers_after.due:>11}"
            f"{s.timers_after.lag_seconds:>7.0f}"
        )
    reps = ", ".join(f"{r:.2f}" for r in per_rep)
    print(f"ratio wave/raw activities/s: {overall:.2f} (by repetition: {reps}; "
          f"target >= {TARGET_RATIO})")  # fmt: skip
    ok = "ok" if worker_peak < WORKER_RSS_LIMIT else "OVER 1 GiB"
    print(
        f"peak RSS: worker (this process) {worker_peak / MIB:.0f} MiB ({ok}), "
        f"Temporal server {server_peak / MIB:.0f} MiB"
    )


if __name__ == "__main__":
    main()
