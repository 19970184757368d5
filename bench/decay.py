"""Why a long-lived dev server slows down: batches of raw sagas on one server or fresh ones.

    .venv/bin/python -m bench.decay [--apps 400] [--batches 3] [--mode same|restart|fresh]
        [--k 26] [--concurrency 100] [--delete-between] [--pause-between S] [--drain-timers]
        [--pragma K=V] [--dynamic-config K=V] [--keep-db DIR] [--json]

`--batches` batches of `--apps` runs of `bench.raw_saga.RawSagaWorkflow` (K no-op activities
one after another, at most `--concurrency` in flight), one in-process worker:

- same: every batch on one server (its SQLite database keeps every earlier batch);
- restart: one database, the server restarted between batches (same stored history, a fresh
  server process: tells the database's content from the process's own state);
- fresh: each batch on a new server with a new database (the baseline).

`--delete-between` deletes every workflow of a batch after it (what retention does when it
expires them) and waits until visibility counts none, before the next batch; the deletion's
time is reported apart. `--drain-timers` sits idle after each batch until the server's timer
queue has caught up (no stored timer 15 s overdue) and reports how long that took.
`--pragma` and `--dynamic-config` add `--sqlite-pragma` and `--dynamic-config-value` flags to
the server's command (`cutover.server.command`).

Per batch: wall s, activities/s, completed activities per minute in the first and the last
fifth of the batch, the server's and this process's CPU seconds per 1,000 activities, the
database and WAL file sizes after it, the timer backlog (stored timers already due and how
late the oldest is, at the end and at worst during the batch, read from the SQLite file: every
workflow task and activity attempt stores a timeout timer the timer queue must process later),
and the persistence operations that took the most time (count and mean latency, from the
server's Prometheus endpoint).

Helpers used by `bench.wave` live here too: `DevServer` (a headless dev server on its own
temp SQLite file, metrics on a known port, stopped by its process group) and `Completions`
(a worker interceptor that timestamps every completed activity).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import sqlite3
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from bench.orchestration import connect_when_ready, free_port, logs_to_stderr, stop_server
from bench.raw_saga import RAW_ACTIVITIES, RawSagaWorkflow
from cutover import server
from cutover.telemetry import tracing_interceptor
from workers.worker import build_worker

RAW_STEP = "bench_raw_step"
FIFTHS = 5

# ------------------------------------------------------------------ server


@dataclass
class DevServer:
    """`cutover.server.command` plus `extra` flags, metrics on a known port; stop() by group."""

    db: Path
    port: int
    metrics_port: int
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, db: Path, extra: Sequence[str] = ()) -> DevServer:
        port, metrics_port = free_port(), free_port()
        argv = [
            *server.command(db, port, ui_port=None),
            # The dev server always serves metrics (default: a random port): choose it.
            "--metrics-port",
            str(metrics_port),
            *extra,
        ]
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.parent / "server.log", "ab") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            server.wait_for_port("127.0.0.1", port, proc=proc)
        except BaseException:
            stop_server(proc)
            raise
        return cls(db, port, metrics_port, proc)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_server(self.proc)

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process (all its threads) so far."""
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def db_bytes(self) -> dict[str, int]:
        """The SQLite database and its write-ahead log, in bytes."""
        out = {}
        for name, path in (("db", self.db), ("wal", Path(f"{self.db}-wal"))):
            out[name] = path.stat().st_size if path.exists() else 0
        return out

    def timers(self) -> TimerBacklog:
        """The server's timer queue as stored: see `TimerBacklog.read`."""
        return TimerBacklog.read(self.db)

    def persistence(self) -> dict[str, tuple[float, float]]:
        """operation -> (calls, seconds) so far, from `persistence_latency` (all labels)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                text = r.read().decode()
        except OSError:
            return {}
        return parse_persistence(text)


@dataclass
class TimerBacklog:
    """The dev server's `timer_tasks` table, read from its SQLite file (read-only, WAL).

    Every workflow task and every activity attempt stores a timeout timer, and every closed
    workflow a retention timer (at close + the namespace's retention). A timer stays in the
    table until the timer queue has processed it and range-deleted its slice: `due` counts
    the stored timers whose time has passed, `lag_seconds` is how far the oldest is behind.
    """

    total: int
    due: int
    lag_seconds: float
    #: rows in the tables that grow with stored history
    executions: int = 0
    history_nodes: int = 0

    @classmethod
    def read(cls, db: Path) -> TimerBacklog:
        if not db.exists():
            return cls(0, 0, 0.0)
        now = dt.datetime.now(dt.UTC)
        try:
            c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        except sqlite3.Error:
            return cls(0, 0, 0.0)
        try:
            # Stored as text, "YYYY-MM-DD HH:MM:SS.fff+00:00": compares as text.
            stamp = now.strftime("%Y-%m-%d %H:%M:%S")
            oldest, total = c.execute(
                "SELECT min(visibility_timestamp), count(*) FROM timer_tasks"
            ).fetchone()
            (due,) = c.execute(
                "SELECT count(*) FROM timer_tasks WHERE visibility_timestamp < ?", (stamp,)
            ).fetchone()
            (executions,) = c.execute("SELECT count(*) FROM executions").fetchone()
            (nodes,) = c.execute("SELECT count(*) FROM history_node").fetchone()
        except sqlite3.Error:
            return cls(0, 0, 0.0)
        finally:
            c.close()
        lag = (now - dt.datetime.fromisoformat(oldest)).total_seconds() if oldest else 0.0
        return cls(total, due, round(max(0.0, lag), 1), executions, nodes)


class BacklogSampler:
    """Samples a server's TimerBacklog every `every` seconds (in a thread); keeps the peak."""

    def __init__(self, server: DevServer, every: float = 5.0) -> None:
        self.server, self.every = server, every
        self.samples: list[tuple[float, TimerBacklog]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            b = await asyncio.to_thread(self.server.timers)
            self.samples.append((time.monotonic(), b))
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def peak_due(self) -> int:
        return max((b.due for _, b in self.samples), default=0)

    @property
    def peak_lag(self) -> float:
        return max((b.lag_seconds for _, b in self.samples), default=0.0)


async def drain_timers(server: DevServer, timeout: float, lag: float = 15.0) -> tuple[float, bool]:
    """Sit idle until the oldest stored timer is under `lag` s late, at most `timeout` s:
    (seconds waited, whether it caught up)."""
    t0 = time.monotonic()
    while (await asyncio.to_thread(server.timers)).lag_seconds >= lag:
        if time.monotonic() - t0 > timeout:
            return time.monotonic() - t0, False
        await asyncio.sleep(2)
    return time.monotonic() - t0, True


_METRIC = re.compile(r"^persistence_latency(?:_seconds)?_(sum|count)\{([^}]*)\}\s+(\S+)")
_OPERATION = re.compile(r'operation="([^"]+)"')


def parse_persistence(text: str) -> dict[str, tuple[float, float]]:
    calls: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        op = _OPERATION.search(m.group(2))
        if op is None:
            continue
        into = calls if m.group(1) == "count" else seconds
        into[op.group(1)] = into.get(op.group(1), 0.0) + float(m.group(3))
    return {op: (calls.get(op, 0.0), seconds.get(op, 0.0)) for op in calls}


def persistence_delta(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], top: int = 6
) -> list[dict[str, Any]]:
    """The `top` operations by time spent between two scrapes: calls, total s, mean ms."""
    rows = []
    for op, (n, s) in after.items():
        n0, s0 = before.get(op, (0.0, 0.0))
        if n - n0 > 0:
            rows.append((op, n - n0, s - s0))
    rows.sort(key=lambda r: -r[2])
    return [
        {
            "operation": op,
            "calls": int(n),
            "seconds": round(s, 2),
            "mean_ms": round(1000 * s / n, 3),
        }
        for op, n, s in rows[:top]
    ]


# -------------------------------------------------------------- completions


class Completions(Interceptor):
    """Timestamps (time.monotonic) every activity the worker completes, by activity type."""

    def __init__(self) -> None:
        self.done: list[tuple[float, str]] = []

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Completed(next, self)

    def between(self, t0: float, t1: float, types: set[str]) -> list[float]:
        return [t for t, a in self.done if t0 <= t <= t1 and a in types]


class _Completed(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, sink: Completions) -> None:
        super().__init__(next)
        self._sink = sink

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        result = await super().execute_activity(input)
        self._sink.done.append((time.monotonic(), activity.info().activity_type))
        return result


@dataclass
class Decay:
    """Completed activities per minute in each fifth of a run, and last over first."""

    per_minute_by_fifth: list[float]

    @classmethod
    def of(cls, times: Sequence[float], t0: float, t1: float) -> Decay:
        width = (t1 - t0) / FIFTHS
        counts = [0] * FIFTHS
        for t in times:
            counts[min(FIFTHS - 1, max(0, int((t - t0) / width)))] += 1
        return cls([round(60 * c / width, 1) for c in counts])

    @property
    def first(self) -> float:
        return self.per_minute_by_fifth[0]

    @property
    def last(self) -> float:
        return self.per_minute_by_fifth[-1]

    @property
    def last_over_first(self) -> float:
        return self.last / self.first if self.first else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "per_minute_by_fifth": self.per_minute_by_fifth,
            "first_fifth_per_minute": self.first,
            "last_fifth_per_minute": self.last,
            "last_over_first": round(self.last_over_first, 3),
        }


# -------------------------------------------------------------------- bench


@dataclass
class Batch:
    index: int
    workflows: int
    activities: int
    wall_seconds: float
    decay: Decay
    server_cpu_per_1k: float
    worker_cpu_per_1k: float
    db_after: dict[str, int]
    server_rss_after: int
    top_persistence: list[dict[str, Any]]
    #: timer_tasks at the batch's end, and the most overdue timers seen during it
    timers_after: TimerBacklog
    peak_due_timers: int = 0
    peak_timer_lag_seconds: float = 0.0
    #: --drain-timers: idle seconds until the timer queue caught up, and the table then
    drain_seconds: float | None = None
    timers_drained: TimerBacklog | None = None
    delete_seconds: float | None = None
    deleted: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def activities_per_s(self) -> float:
        return self.activities / self.wall_seconds

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["decay"] = self.decay.as_json()
        out["activities_per_s"] = round(self.activities_per_s, 2)
        return out


async def raw_batch(
    client: Client, task_queue: str, n: int, k: int, concurrency: int
) -> tuple[list[str], float, float]:
    """n raw sagas, at most `concurrency` at once; (workflow IDs, t0, t1) on time.monotonic."""
    gate = asyncio.Semaphore(concurrency)
    ids = [f"bench-raw-{uuid.uuid4().hex}" for _ in range(n)]

    async def one(wid: str) -> int:
        async with gate:
            return await client.execute_workflow(
                RawSagaWorkflow.run, [1] * k, id=wid, task_queue=task_queue
            )

    t0 = time.monotonic()
    results = await asyncio.gather(*(one(w) for w in ids))
    t1 = time.monotonic()
    if any(r != k for r in results):
        raise RuntimeError("a raw saga did not do its K steps")
    return ids, t0, t1


async def delete_all(client: Client, ids: Sequence[str], timeout: float = 600) -> float:
    """Delete these (closed) workflows and wait until visibility lists none; seconds taken."""
    t0 = time.monotonic()
    gate = asyncio.Semaphore(50)

    async def one(wid: str) -> None:
        async with gate:
            await client.workflow_service.delete_workflow_execution(
                DeleteWorkflowExecutionRequest(
                    namespace=client.namespace,
                    workflow_execution=WorkflowExecution(workflow_id=wid),
                )
            )

    await asyncio.gather(*(one(w) for w in ids))
    while (await client.count_workflows("WorkflowType = 'BenchRawSaga'")).count > 0:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("deleted workflows still listed")
        await asyncio.sleep(1)
    return time.monotonic() - t0


class Session:
    """A server, a client and one worker on it (with a Completions recorder)."""

    def __init__(self, db: Path, extra: Sequence[str]) -> None:
        self.db, self.extra = db, list(extra)
        self.completions = Completions()
        self.task_queue = f"bench-{uuid.uuid4().hex[:8]}"
        self.warm_ids: list[str] = []

    async def __aenter__(self) -> Session:
        self.server = DevServer.start(self.db, self.extra)
        try:
            self.client = await connect_when_ready(self.server.address)
            self.worker = build_worker(
                self.client,
                self.task_queue,
                activities=RAW_ACTIVITIES,
                workflows=[RawSagaWorkflow],
                interceptors=[tracing_interceptor(), self.completions],
            )
            await self.worker.__aenter__()
        except BaseException:
            self.server.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.worker.__aexit__(None, None, None)
        finally:
            self.server.stop()


async def measure(
    s: Session, index: int, apps: int, k: int, concurrency: int, delete: bool, pause: float,
    drain: float = 0,
) -> Batch:  # fmt: skip
    before = await asyncio.to_thread(s.server.persistence)
    sampler = BacklogSampler(s.server)
    sampler.start()
    cpu0, wcpu0 = s.server.cpu_seconds(), time.process_time()
    try:
        ids, t0, t1 = await raw_batch(s.client, s.task_queue, apps, k, concurrency)
    finally:
        await sampler.stop()
    cpu1, wcpu1 = s.server.cpu_seconds(), time.process_time()
    after = await asyncio.to_thread(s.server.persistence)
    done = apps * k
    batch = Batch(
        index=index,
        workflows=apps,
        activities=done,
        wall_seconds=round(t1 - t0, 2),
        decay=Decay.of(s.completions.between(t0, t1, {RAW_STEP}), t0, t1),
        server_cpu_per_1k=round(1000 * (cpu1 - cpu0) / done, 2),
        worker_cpu_per_1k=round(1000 * (wcpu1 - wcpu0) / done, 2),
        db_after=s.server.db_bytes(),
        server_rss_after=s.server.rss_bytes(),
        top_persistence=persistence_delta(before, after),
        timers_after=await asyncio.to_thread(s.server.timers),
        peak_due_timers=sampler.peak_due,
        peak_timer_lag_seconds=sampler.peak_lag,
    )
    if pause:
        await asyncio.sleep(pause)  # idle: the server catches up on its timer queue
    if drain:
        waited, caught_up = await drain_timers(s.server, timeout=drain)
        batch.drain_seconds = round(waited, 1)
        batch.extra["drain_caught_up"] = caught_up
        batch.timers_drained = await asyncio.to_thread(s.server.timers)
    if delete:
        ids += s.warm_ids  # so that visibility can count down to none
        s.warm_ids = []
        batch.delete_seconds = round(await delete_all(s.client, ids), 1)
        batch.deleted = len(ids)
        batch.extra["db_after_delete"] = s.server.db_bytes()
    return batch


async def bench(
    d: Path, mode: str, batches: int, apps: int, k: int, concurrency: int, delete: bool,
    pause: float, extra: Sequence[str], drain: float = 0,
) -> list[Batch]:  # fmt: skip
    out: list[Batch] = []

    async def warm(s: Session) -> None:
        ids, _, _ = await raw_batch(s.client, s.task_queue, 2, k, 2)  # imports, connections
        s.warm_ids += ids

    if mode == "same":
        async with Session(d / "temporal.db", extra) as s:
            await warm(s)
            for i in range(batches):
                out.append(await measure(s, i + 1, apps, k, concurrency, delete, pause, drain))
        return out
    for i in range(batches):
        db = d / ("temporal.db" if mode == "restart" else f"temporal-{i + 1}.db")
        async with Session(db, extra) as s:
            await warm(s)
            out.append(await measure(s, i + 1, apps, k, concurrency, delete, pause, drain))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.decay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--apps", type=int, default=400, help="raw sagas per batch (400)")
    p.add_argument("--batches", type=int, default=3, help="batches (3)")
    p.add_argument("--mode", choices=["same", "restart", "fresh"], default="same")
    p.add_argument("--k", type=int, default=26, help="activities per saga (26, the seed's K)")
    p.add_argument("--concurrency", type=int, default=100, help="sagas at once (100)")
    p.add_argument("--delete-between", action="store_true", help="delete each batch after it")
    p.add_argument("--pause-between", type=float, default=0, metavar="S",
                   help="sit idle S seconds after each batch")  # fmt: skip
    p.add_argument("--drain-timers", type=float, nargs="?", const=600, default=0,
                   metavar="TIMEOUT", help="after each batch, sit idle until the server's timer "
                   "queue has caught up (no stored timer 15 s overdue; give up after TIMEOUT s, "
                   "600); the wait is reported")  # fmt: skip
    p.add_argument("--pragma", action="append", default=[], metavar="K=V",
                   help="an extra --sqlite-pragma for the server")  # fmt: skip
    p.add_argument("--dynamic-config", action="append", default=[], metavar="K=V",
                   help="an extra --dynamic-config-value for the server")  # fmt: skip
    p.add_argument("--timeout", type=float, default=3600, help="give up after this many s")
    p.add_argument("--keep-db", metavar="DIR", help="keep the database(s) in DIR (to inspect)")
    p.add_argument("--log-level", default="WARNING", help="worker log level, to stderr")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    if min(args.apps, args.batches, args.k, args.concurrency) < 1:
        p.error("--apps, --batches, --k and --concurrency must be at least 1")
    logs_to_stderr(args.log_level)
    extra = [f for kv in args.pragma for f in ("--sqlite-pragma", kv)]
    extra += [f for kv in args.dynamic_config for f in ("--dynamic-config-value", kv)]

    with tempfile.TemporaryDirectory(prefix="cutover-bench-decay-") as d:
        where = Path(args.keep_db) if args.keep_db else Path(d)
        out = asyncio.run(
            asyncio.wait_for(
                bench(where, args.mode, args.batches, args.apps, args.k, args.concurrency,
                      args.delete_between, args.pause_between, extra, args.drain_timers),
                args.timeout,
            )
        )  # fmt: skip
    if args.json:
        print(
            json.dumps(
                {
                    "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "cpus": os.cpu_count(),
                    "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(),
                    "temporalio": version("temporalio"),
                    "mode": args.mode,
                    "apps": args.apps,
                    "k": args.k,
                    "concurrency": args.concurrency,
                    "delete_between": args.delete_between,
                    "pause_between": args.pause_between,
                    "drain_timers": args.drain_timers,
                    "server_flags": extra,
                    "batches": [b.as_json() for b in out],
                },
                indent=2,
            )
        )
        return
    mib = 1 << 20
    print(
        f"mode {args.mode}, {args.batches} x {args.apps} raw sagas, K={args.k}, concurrency "
        f"{args.concurrency}, delete between: {args.delete_between}, flags {extra or '-'}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'batch':>5}{'wall s':>8}{'act/s':>8}{'1st 5th/min':>12}{'last 5th/min':>13}"
          f"{'srv cpu/1k':>11}{'wkr cpu/1k':>11}{'db MiB':>8}{'wal MiB':>8}"
          f"{'due timers':>11}{'lag s':>7}{'drain s':>8}{'delete s':>9}")  # fmt: skip
    for b in out:
        print(
            f"{b.index:>5}{b.wall_seconds:>8.1f}{b.activities_per_s:>8.1f}{b.decay.first:>12.0f}"
            f"{b.decay.last:>13.0f}{b.server_cpu_per_1k:>11.2f}{b.worker_cpu_per_1k:>11.2f}"
            f"{b.db_after['db'] / mib:>8.1f}{b.db_after['wal'] / mib:>8.1f}"
            f"{b.timers_after.due:>11}{b.timers_after.lag_seconds:>7.0f}"
            f"{'' if b.drain_seconds is None else b.drain_seconds:>8}"
            f"{'' if b.delete_seconds is None else b.delete_seconds:>9}"
        )
        ops = ", ".join(
            f"{o['operation']} {o['calls']}x{o['mean_ms']}ms" for o in b.top_persistence
        )
        print(f"      persistence: {ops or '(no metrics)'}")


if __name__ == "__main__":
    main()
