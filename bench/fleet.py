"""A worker fleet on one machine: the spread, the throughput against one worker, a host's loss.

    .venv/bin/python -m bench.fleet [--apps 30] [--hosts 3] [--per-host 2] [--concurrency 18]
        [--kill-after 0.3] [--restart-after S] [--repeat N] [--json] [--out FILE]

Each side on its own new headless Temporal dev server (temp SQLite, free port, stopped by
its process group), with worker processes of `bench.fleet_worker` (the product's worker
assembly, `build_worker` + `for_role` and `build_data_worker`, as `cutover worker` does it;
simulated data steps, instant light steps; see that module), all of one wave: the same
`--apps` applications (seed runbook, warm, one incremental pass, rollback window ~0) with
sizes drawn once (`--seed`, `--size-gb`), one real `WaveWorkflow` of `AppCutoverWorkflow`s,
`--concurrency` at once, started by reference to a site file every worker serves.

- fleet: one `--role orchestration` process and `--hosts` `--role data` processes
  (h1, h2, ...; each its own staging dir and `--max-copies --per-host`); the site's
  `fleet.dataHosts` names them, `limits.perDataHost` is `--per-host`.
- all: one process, `--role all --data-host solo --max-copies --per-host` (a one-host fleet,
  the single-box install): the same per-process copy capacity.
- kill: the fleet again; once `--kill-after` of the wave's cutovers completed, a data host
  that runs a warm copy and a downtime data step at that moment (else, after `--kill-wait`
  s, the one with the most copies running) is kill -9'd (its process group). It stays down
  until the wave ends (or `--restart-after` s after the kill), then starts again on its
  staging dir; its cleanup at start (`workers.fleet.clean_staging`) runs, and what is left
  there is counted again.

Before each measured wave a warm-up wave of one small application per host (sandbox
imports, the fleet ledger). `--repeat N` runs fleet and all N times, alternating which goes
first, then the kill side once.

Reported per side: wall seconds (wave start to result), cutovers/min, outcomes; per host:
cutovers (each result's `dataHost`), data steps and copies run there (the step records'
`host`), copy seconds and their share of the host's slots, peak concurrent copies against
the limit (worker: the workers' own start/end times, after their copy limit; granted: a
step record's start, once its permit is granted, to the worker's end of that copy;
records: the step records' start to end), staging left after the wave. Kill side: the
victim, when, what ran there, the extra wall time over the fleet side, each cutover that had
a data step there (moved off it while warm, placed on it after its death, rolled back,
finished there before; how long it waited on the dead host and for which steps), staging
undos left to its cleanup, staging on each host before and after its restart. Logs go to
stderr; stdout carries only the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowHandle

from bench.orchestration import connect_when_ready, free_port, logs_to_stderr, stop_server
from cutover import server
from cutover.fleet import COPY_STEPS, DATA_STEPS, QUERY_STATE, data_queue, fleet_workflow_id
from cutover.keyfiles import create_key
from cutover.models import CutoverResult, Outcome, Tuning
from cutover.runbook import Runbook
from cutover.site import SiteConfig, load_site
from cutover.wave import WaveApp, WaveInput, WaveResult, WaveStatus, workflow_id_for_wave
from tests.factories import SEED, site
from workflows.wave import WaveWorkflow

ROOT = Path(__file__).resolve().parent.parent
MB = 1 << 20
GB_MB = 1024
SOLO = "solo"
#: The simulation's tuning: a dead worker's activity is noticed after one heartbeat
#: timeout (the product's default is 30 s; the fleet test uses 3 s).
TUNING = Tuning(
    heartbeatSeconds=5,
    initialRetrySeconds=0.5,
    maxRetrySeconds=5,
    stepTimeoutMinutes=10,
    shortStepTimeoutMinutes=2,
)
WARM_UP_MB = 40


@dataclass
class Args:
    apps: int
    hosts: int
    per_host: int
    concurrency: int
    size_gb: tuple[float, float]
    copy_mbps: float
    convert_mbps: float
    host_wait: int
    kill_after: float
    kill_wait: float
    restart_after: float | None
    seed: int
    timeout: float
    log_level: str


# ------------------------------------------------------------------ processes


#: Every process group this bench started (stopped at exit, whatever happens).
SPAWNED: list[subprocess.Popen[bytes]] = []


def stop_group(proc: subprocess.Popen[bytes], wait: float = 20) -> None:
    """SIGTERM our own process group, then SIGKILL it after `wait` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Worker:
    """One `bench.fleet_worker` process in its own process group (kill -9 by group)."""

    def __init__(self, name: str, argv: list[str], d: Path, env: dict[str, str]) -> None:
        self.name, self.argv, self.dir, self.env = name, argv, d, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.killed: dict[int, float] = {}

    def _launch(self, ready: Path) -> subprocess.Popen[bytes]:
        with open(self.dir / f"{self.name}.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "bench.fleet_worker", *self.argv, "--ready", str(ready)],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    async def start(self) -> None:
        self.starts += 1
        ready = self.dir / f"{self.name}.{self.starts}.ready"
        proc = self.proc = await asyncio.to_thread(self._launch, ready)
        SPAWNED.append(proc)
        deadline = time.monotonic() + 180
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.name} did not start: {self.dir / self.name}.log")
            await asyncio.sleep(0.1)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.killed[self.proc.pid] = time.time()  # the events' pid: python runs as it
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)


async def pollers_seen(client: Client, queue: str, kind: TaskQueueType.ValueType) -> bool:
    resp = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
        )
    )
    return bool(resp.pollers)


# ------------------------------------------------------------------ the wave


def make_sizes(a: Args, prefix: str) -> dict[str, int]:
    rng = random.Random(a.seed)
    lo, hi = a.size_gb
    return {f"{prefix}-{i:03d}": int(rng.uniform(lo, hi) * GB_MB) for i in range(a.apps)}


def wave_input(name: str, s: SiteConfig, apps: Sequence[str], concurrency: int) -> WaveInput:
    fast = {"wave": name, "rollbackWindowMinutes": 0.000001, "checkIntervalSeconds": 60}
    return WaveInput(
        name=name,
        site=s,
        apps=[
            WaveApp(
                application=a, runbook=Runbook.model_validate({**SEED, **fast, "application": a})
            )
            for a in apps
        ],
        concurrency=concurrency,
        # a host's loss rolls cutovers back: the wave must go on (the default stops at 1)
        failureThreshold=len(apps),
        requestedBy="bench.fleet",
        tuning=TUNING,
    )


def staging_left(staging: Path) -> dict[str, Any]:
    """What lies under `<staging>/apps`: application dirs, files, apparent bytes."""
    apps = staging / "apps"
    dirs = sorted(p for p in apps.iterdir() if p.is_dir()) if apps.is_dir() else []
    files = [f for d in dirs for f in d.rglob("*") if f.is_file()]
    return {
        "apps": len(dirs),
        "files": len(files),
        "apparent_mib": round(sum(f.stat().st_size for f in files) / MB, 1),
        "names": [d.name for d in dirs],
    }


def read_events(paths: Sequence[Path]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in paths:
        if p.exists():
            out += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return sorted(out, key=lambda e: e["t"])


def copy_spans(
    events: Sequence[dict[str, Any]], killed: dict[int, float]
) -> dict[str, list[tuple[float, float]]]:
    """host -> (start, end) of each copy attempt as its worker ran it (after the worker's
    copy limit); an attempt whose worker was killed (`killed`: pid -> when) ends then."""
    open_: dict[tuple[int, str, str, int], tuple[str, float]] = {}
    spans: dict[str, list[tuple[float, float]]] = {}
    last: dict[int, float] = {}
    for e in events:
        last[e["pid"]] = e["t"]
        if e.get("step") not in COPY_STEPS or e["ev"] not in ("start", "end"):
            continue
        key = (e["pid"], e["app"], e["step"], e["attempt"])
        if e["ev"] == "start":
            open_[key] = (e["host"], e["t"])
        elif key in open_:
            host, t0 = open_.pop(key)
            spans.setdefault(host, []).append((t0, e["t"]))
    for (pid, _, _, _), (host, t0) in open_.items():
        spans.setdefault(host, []).append((t0, killed.get(pid, last[pid])))
    return spans


def peak(spans: Sequence[tuple[float, float]]) -> int:
    return max((sum(1 for a, b in spans if a <= t0 < b) for t0, _ in spans), default=0)


def record_peaks(
    results: Sequence[CutoverResult], events: Sequence[dict[str, Any]]
) -> tuple[dict[str, int], dict[str, int]]:
    """Peak concurrent copies per host from the step records: (record start to record end,
    record start to the worker's end of that copy). A record starts once its permit is
    granted; its end is stamped after the permit's release is acknowledged, so the first
    measure can count a copy that already gave its permit back; the second cannot (the
    permit is released after the worker finished): it is what the ledger granted."""
    ends: dict[tuple[str, str, str], float] = {}
    for e in events:
        if e["ev"] == "end" and e.get("outcome") == "ok":
            ends[(e["host"], e["app"], e["step"])] = e["t"]
    spans: dict[str, list[tuple[float, float]]] = {}
    held: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        for s in r.steps:
            step = s.name.split(" ")[0]
            if step not in COPY_STEPS or not s.host or not s.endedAt:
                continue
            t0 = s.startedAt.timestamp()
            spans.setdefault(s.host, []).append((t0, s.endedAt.timestamp()))
            end = ends.get((s.host, r.application, step))
            if s.outcome == "ok" and end is not None:
                held.setdefault(s.host, []).append((t0, end))
    return (
        {h: peak(ss) for h, ss in sorted(spans.items())},
        {h: peak(ss) for h, ss in sorted(held.items())},
    )


def is_data(name: str) -> bool:
    return name.split(" ")[0] in DATA_STEPS


# ------------------------------------------------------------------ one side


@dataclass
class HostFigures:
    cutovers: int = 0
    data_steps: int = 0
    copies: int = 0
    copy_seconds: float = 0.0
    peak_copies_worker: int = 0
    peak_copies_records: int = 0
    peak_copies_granted: int = 0
    #: copy seconds over (copy slots x the wave's wall time)
    copy_utilization: float = 0.0
    gib_moved: float = 0.0
    staging_left: dict[str, Any] = field(default_factory=dict)


@dataclass
class KillFigures:
    victim: str
    killed_at_s: float  # after the wave's start
    completed_at_kill: int
    copies_running_at_kill: int
    #: data step -> how many ran on the victim when it died
    running_at_kill: dict[str, int] = field(default_factory=dict)
    restarted_at_s: float | None = None
    moved_off: list[str] = field(default_factory=list)
    placed_after_death: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    finished_there_before: list[str] = field(default_factory=list)
    resumed_there: list[str] = field(default_factory=list)
    placed_after_restart: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    staging_undos_left: int = 0
    host_wait_seconds: float = 0.0
    staging_before_restart: dict[str, dict[str, Any]] = field(default_factory=dict)
    staging_after_restart: dict[str, dict[str, Any]] = field(default_factory=dict)
    cleanup_seconds: float | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    #: each cutover that had a data step on the victim: its hosts in order, when it first
    #: ran there (s after the kill; < 0: before), the steps the victim never took
    affected: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Side:
    name: str
    repetition: int
    processes: int
    copy_capacity: int
    apps: int
    wall_seconds: float
    outcomes: dict[str, int]
    hosts: dict[str, HostFigures]
    fleet_after: dict[str, Any]
    failures: list[str]
    kill: KillFigures | None = None

    @property
    def per_min(self) -> float:
        return self.apps / self.wall_seconds * 60

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["cutovers_per_min"] = round(self.per_min, 2)
        return out


class Env:
    """A fresh dev server, a site file, a key and state dir; the side's worker processes."""

    def __init__(self, d: Path, a: Args, side: str, sizes: dict[str, int]) -> None:
        self.d, self.a, self.side, self.sizes = d, a, side, sizes
        self.queue = f"fleet-{uuid.uuid4().hex[:8]}"
        self.hosts = [SOLO] if side == "all" else [f"h{i + 1}" for i in range(a.hosts)]
        self.workers: dict[str, Worker] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        # one small application per host (the workers read the sizes at their start)
        self.warm_apps = [f"w{self.queue[-6:]}-{i}" for i in range(len(self.hosts))]
        self.sizes.update({w: WARM_UP_MB for w in self.warm_apps})

    def staging(self, host: str) -> Path:
        return self.d / "staging" / host

    def events(self, host: str) -> Path:
        return self.d / f"events-{host}.jsonl"

    def write_site(self) -> SiteConfig:
        s = site(
            name=f"bench-{self.queue}",
            taskQueue=self.queue,
            stagingDir=str(self.d / "staging" / "site"),
            fleet={
                "dataHosts": [{"name": h} for h in self.hosts],
                "limits": {"perDataHost": self.a.per_host},
                "hostWaitSeconds": self.a.host_wait,
            },
        )
        path = self.d / "site.yaml"
        path.write_text(yaml.safe_dump(s.model_dump(mode="json", exclude_none=True)))
        self.site_file = path
        return load_site(path)  # exactly what the workers load: the same digest

    async def __aenter__(self) -> Env:
        self.d.mkdir(parents=True)
        self.port = free_port()
        self.proc = server.start(self.d / "temporal.db", self.port, ui_port=None,
                                 log=self.d / "server.log")  # fmt: skip
        SPAWNED.append(self.proc)
        try:
            await self._up()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _up(self) -> None:
        self.client = await connect_when_ready(f"127.0.0.1:{self.port}")
        self.site = self.write_site()
        (self.d / "sizes.json").write_text(json.dumps(self.sizes))
        key, _, _ = create_key("bench-fleet-worker", self.d / "keys")
        env = {
            **os.environ,
            "XDG_STATE_HOME": str(self.d / "state"),
            "CUTOVER_SITE_ARCHIVE": str(self.d / "sites"),
            "CUTOVER_WORKER_KEY": str(key),
            # given a key, a worker makes no state dir: name the audit log's place too
            "CUTOVER_AUDIT_LOG": str(self.d / "audit.jsonl"),
        }
        common = [
            "--address", f"127.0.0.1:{self.port}", "--task-queue", self.queue,
            "--site", str(self.site_file), "--sizes", str(self.d / "sizes.json"),
            "--copy-mbps", str(self.a.copy_mbps), "--convert-mbps", str(self.a.convert_mbps),
            "--log-level", self.a.log_level,
        ]  # fmt: skip

        def data(host: str) -> list[str]:
            return ["--data-host", host, "--staging-dir", str(self.staging(host)),
                    "--max-copies", str(self.a.per_host),
                    "--events", str(self.events(host))]  # fmt: skip

        if self.side == "all":
            self.workers["all"] = Worker("all", [*common, "--role", "all", *data(SOLO)],
                                         self.d, env)  # fmt: skip
        else:
            self.workers["orch"] = Worker("orch", [*common, "--role", "orchestration"],
                                          self.d, env)  # fmt: skip
            for h in self.hosts:
                self.workers[h] = Worker(h, [*common, "--role", "data", *data(h)], self.d, env)
        await asyncio.gather(*(w.start() for w in self.workers.values()))
        await self.wait_pollers()

    async def wait_pollers(self, hosts: Sequence[str] | None = None) -> None:
        """Until the server has seen every queue's poller (what the fleet's liveness reads)."""
        want = [(self.queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW)] if hosts is None else []
        want += [
            (data_queue(self.queue, h), TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)
            for h in (self.hosts if hosts is None else hosts)
        ]
        deadline = time.monotonic() + 60
        for q, kind in want:
            while not await pollers_seen(self.client, q, kind):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no poller on {q} after 60 s")
                await asyncio.sleep(0.2)

    async def __aexit__(self, *exc: object) -> None:
        for w in self.workers.values():
            w.stop()
        if self.proc is not None:
            stop_server(self.proc)

    async def run_wave(
        self, name: str, apps: Sequence[str]
    ) -> tuple[WorkflowHandle[WaveWorkflow, WaveResult], float]:
        inp = wave_input(name, self.site, apps, self.a.concurrency)
        t0 = time.time()
        handle = await self.client.start_workflow(
            WaveWorkflow.run,
            inp.by_reference(),  # as `cutover wave run` sends it: the workers serve the site
            id=workflow_id_for_wave(name),
            task_queue=self.queue,
        )
        return handle, t0

    async def results(self, wave: WaveResult) -> list[CutoverResult]:
        def one(wid: str) -> WorkflowHandle[Any, CutoverResult]:
            return self.client.get_workflow_handle(wid, result_type=CutoverResult)

        return list(await asyncio.gather(*(one(s.workflowId).result() for s in wave.applications)))

    async def fleet_state(self) -> dict[str, Any]:
        try:
            h = self.client.get_workflow_handle(fleet_workflow_id(self.queue))
            state: dict[str, Any] = await h.query(QUERY_STATE)
            return state
        except Exception as err:  # no fleet workflow, or it ended: say so
            return {"error": str(err)}


async def warm_up(env: Env) -> None:
    apps = env.warm_apps
    handle, _ = await env.run_wave(f"warm-{env.queue}", apps)
    res = await asyncio.wait_for(handle.result(), min(env.a.timeout, 300))
    if res.counts.completed != len(apps):
        raise RuntimeError(f"the warm-up wave did not complete: {res.reason}")


#: Data steps of the downtime (the source is down): a host lost under one rolls it back.
DOWNTIME_DATA = frozenset({"final_data_sync", "convert_image", "attach_target_storage_profile"})


class Killer:
    """Once `--kill-after` of the wave completed, kill -9s a data host that runs a warm copy
    and a downtime data step at that moment (the most copies first), so both of the
    product's cases happen; after `--kill-wait` s without such a host, the one with the
    most copies running."""

    def __init__(
        self, env: Env, handle: WorkflowHandle[WaveWorkflow, WaveResult], t0: float
    ) -> None:
        self.env, self.handle, self.t0 = env, handle, t0
        self.figures: KillFigures | None = None
        self.killed_at = 0.0

    def running(self) -> dict[str, Counter[str]]:
        """host -> data steps running there now (their workers' starts without an end)."""
        events = read_events([self.env.events(h) for h in self.env.hosts])
        live: dict[tuple[int, str, str, int], tuple[str, str]] = {}
        for e in events:
            if e["ev"] not in ("start", "end"):
                continue
            key = (e["pid"], e["app"], e["step"], e["attempt"])
            if e["ev"] == "start":
                live[key] = (e["host"], e["step"])
            else:
                live.pop(key, None)
        out: dict[str, Counter[str]] = {}
        for host, step in live.values():
            out.setdefault(host, Counter())[step] += 1
        return out

    async def run(self) -> None:
        a = self.env.a
        need = max(1, round(a.kill_after * a.apps))
        since: float | None = None
        while True:
            status: WaveStatus = await self.handle.query(WaveWorkflow.status)
            running = self.running()

            def copies(h: str, running: dict[str, Counter[str]] = running) -> int:
                return sum(n for st, n in running[h].items() if st in COPY_STEPS)

            if status.counts.completed >= need:
                since = since or time.monotonic()
                both = [
                    h
                    for h, c in running.items()
                    if c.keys() & {"pre_copy", "incremental_sync"} and c.keys() & DOWNTIME_DATA
                ]
                late = time.monotonic() - since > a.kill_wait
                pool = both or ([h for h in running if copies(h)] if late else [])
                if pool:
                    break
            await asyncio.sleep(0.2)
        victim = min(pool, key=lambda h: (-copies(h), h))
        self.env.workers[victim].kill9()
        self.killed_at = time.time()
        self.figures = KillFigures(
            victim=victim,
            killed_at_s=round(self.killed_at - self.t0, 1),
            completed_at_kill=status.counts.completed,
            copies_running_at_kill=copies(victim),
            running_at_kill=dict(running[victim]),
        )
        log(f"killed {victim} (kill -9) at +{self.figures.killed_at_s} s, running there: "
            f"{dict(running[victim])}; {status.counts.completed} completed")  # fmt: skip
        if a.restart_after is not None:
            await asyncio.sleep(a.restart_after)
            await self.restart()

    async def restart(self) -> None:
        assert self.figures is not None
        if self.figures.restarted_at_s is not None:
            return
        victim = self.figures.victim
        self.figures.staging_before_restart = {
            h: staging_left(self.env.staging(h)) for h in self.env.hosts
        }
        t = time.time()
        await self.env.workers[victim].start()
        self.figures.restarted_at_s = round(t - self.t0, 1)
        log(f"restarted {victim} at +{self.figures.restarted_at_s} s")
        # its cleanup at start: wait for the event it logs once it ran
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            cleaned = [
                e
                for e in read_events([self.env.events(victim)])
                if e["ev"] == "cleaned" and e["t"] >= t
            ]
            if cleaned:
                self.figures.cleanup_seconds = round(cleaned[0]["t"] - t, 2)
                break
            await asyncio.sleep(0.2)


def kill_figures(k: KillFigures, results: Sequence[CutoverResult], killed_at: float) -> None:
    v = k.victim
    down_until = k.restarted_at_s - k.killed_at_s if k.restarted_at_s is not None else float("inf")
    for r in results:
        data = [s for s in r.steps if is_data(s.name)]
        on_v = [s for s in data if s.host == v]
        if not on_v:
            continue
        k.staging_undos_left += sum(1 for s in on_v if s.outcome == "skipped")
        lost = [s for s in on_v if "did not take" in (s.error or "")]
        waited = sum(s.seconds or 0.0 for s in lost)
        k.host_wait_seconds += waited
        app = r.application
        first = min(s.startedAt.timestamp() for s in on_v) - killed_at
        # a step the victim completed after its death: it ran there after its restart
        ran_after = any(
            s.outcome == "ok" and s.endedAt and s.endedAt.timestamp() > killed_at for s in on_v
        )
        if r.outcome == Outcome.ROLLED_BACK:
            k.rolled_back.append(app)
            why = r.reason.split(";")[0][:100]
            k.reasons[why] = k.reasons.get(why, 0) + 1
        elif r.outcome != Outcome.COMPLETED:
            k.other.append(f"{app}: {r.outcome} {r.reason[:120]}")
        elif first >= down_until:
            k.placed_after_restart.append(app)  # an ordinary cutover on the host come back
        elif first > 0:
            k.placed_after_death.append(app)  # then moved, or the host was back in time
        elif r.dataHost != v:
            k.moved_off.append(app)
        elif not ran_after:
            k.finished_there_before.append(app)  # its staging undos maybe left there
        else:
            k.resumed_there.append(app)  # waited for the restarted host, went on there
        hosts: list[str] = []
        for s in data:
            if s.host and (not hosts or hosts[-1] != s.host):
                hosts.append(s.host)
        k.affected.append(
            {
                "app": app,
                "outcome": str(r.outcome),
                "hosts": hosts,
                "first_on_victim_s": round(first, 1),
                "lost_steps": [s.name for s in lost],
                "waited_on_victim_s": round(waited, 1),
                # ROLLED_BACK: from the quiesce until the source served again
                "downtime_s": r.downtimeSeconds,
                "on_victim": [f"{s.name} {s.outcome} {s.seconds or 0:.1f}s" for s in on_v],
                # s after the kill: the source restarted, and the cutover's last step ended
                "source_restarted_s": next(
                    (
                        round(s.endedAt.timestamp() - killed_at, 1)
                        for s in r.steps
                        if s.name == "restart_source" and s.endedAt
                    ),
                    None,
                ),
                "last_step_ended_s": round(
                    max((s.endedAt.timestamp() for s in r.steps if s.endedAt), default=0.0)
                    - killed_at,
                    1,
                ),
            }
        )
    k.host_wait_seconds = round(k.host_wait_seconds, 1)


async def run_side(d: Path, a: Args, side: str, rep: int, sizes: dict[str, int]) -> Side:
    env = Env(d, a, side, dict(sizes))
    async with env:
        await warm_up(env)
        log(f"{side}: workers up, warm-up done; the wave starts")
        handle, t0 = await env.run_wave(f"bench-{env.queue}", list(sizes))
        killer = Killer(env, handle, t0) if side == "kill" else None
        task = asyncio.create_task(killer.run()) if killer is not None else None
        try:
            wave = await asyncio.wait_for(handle.result(), a.timeout)
        finally:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        t1 = time.time()
        results = await env.results(wave)
        left = {h: staging_left(env.staging(h)) for h in env.hosts}
        if killer is not None and killer.figures is not None:
            await killer.restart()  # no-op when it was restarted mid-wave
            killer.figures.staging_after_restart = {
                h: staging_left(env.staging(h)) for h in env.hosts
            }
            kill_figures(killer.figures, results, killer.killed_at)
        fleet_after = await env.fleet_state()
        events = read_events([env.events(h) for h in env.hosts])
    spans = copy_spans(events, {p: t for w in env.workers.values() for p, t in w.killed.items()})
    rpeaks, granted = record_peaks(results, events)
    hosts = {h: HostFigures(staging_left=left[h]) for h in env.hosts}
    for r in results:
        if r.dataHost in hosts:
            hosts[r.dataHost].cutovers += 1
        for s in r.steps:
            if not is_data(s.name) or s.host not in hosts or s.outcome != "ok":
                continue
            f = hosts[s.host]
            f.data_steps += 1
            if s.name.split(" ")[0] in COPY_STEPS:
                f.copies += 1
                f.copy_seconds += s.seconds or 0.0
                f.gib_moved += (s.bytesMoved or 0) / (1 << 30)
    for h, f in hosts.items():
        f.copy_seconds = round(f.copy_seconds, 1)
        f.gib_moved = round(f.gib_moved, 1)
        f.peak_copies_worker = peak(spans.get(h, []))
        f.peak_copies_records = rpeaks.get(h, 0)
        f.peak_copies_granted = granted.get(h, 0)
        f.copy_utilization = round(f.copy_seconds / (a.per_host * (t1 - t0)), 2)
    outcomes = Counter(str(r.outcome) for r in results)
    failures = [f"{r.application}: {r.reason[:160]}" for r in results
                if r.outcome == Outcome.FAILED]  # fmt: skip
    return Side(
        name=side,
        repetition=rep,
        processes=len(env.workers),
        copy_capacity=a.per_host * len(env.hosts),
        apps=len(results),
        wall_seconds=round(t1 - t0, 2),
        outcomes=dict(outcomes),
        hosts=hosts,
        fleet_after=fleet_after,
        failures=failures,
        kill=killer.figures if killer is not None else None,
    )


async def bench(d: Path, a: Args, repeat: int) -> list[Side]:
    sizes = make_sizes(a, f"f{uuid.uuid4().hex[:4]}")
    sides: list[Side] = []
    for rep in range(1, repeat + 1):
        order = ("fleet", "all") if rep % 2 else ("all", "fleet")
        for name in order:
            sides.append(await run_side(d / f"{rep}-{name}", a, name, rep, sizes))
            log(f"{name}: {sides[-1].wall_seconds} s")
    sides.append(await run_side(d / "kill", a, "kill", 1, sizes))
    log(f"kill: {sides[-1].wall_seconds} s")
    return sides


def log(msg: str) -> None:
    print(f"[bench.fleet {dt.datetime.now(UTC):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=ROOT, check=False)  # fmt: skip
    return out.stdout.strip()


def summary(sides: Sequence[Side]) -> dict[str, Any]:
    def wall(name: str) -> float:
        mine = [s.wall_seconds for s in sides if s.name == name]
        return sum(mine) / len(mine)

    kill = next(s for s in sides if s.name == "kill")
    # the kill side against the undisturbed fleet side that ran just before it
    fleet = [s for s in sides if s.name == "fleet"][-1]
    return {
        "fleet_over_all_throughput": round(wall("all") / wall("fleet"), 2),
        "killed": kill.kill is not None,
        "kill_extra_wall_seconds": round(kill.wall_seconds - fleet.wall_seconds, 1),
        "kill_extra_wall_share": round(kill.wall_seconds / fleet.wall_seconds - 1, 3),
    }


def print_table(a: Args, sides: Sequence[Side], summ: dict[str, Any]) -> None:
    lo, hi = a.size_gb
    print(
        f"{a.apps} cutovers (warm, {lo:g}-{hi:g} GiB at {a.copy_mbps:g} MB/s per copy), "
        f"concurrency {a.concurrency}, {a.hosts} data hosts x {a.per_host} copies, "
        f"hostWaitSeconds {a.host_wait}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
        f"commit {commit() or '?'}"
    )
    print(f"{'rep':>3} {'side':<6}{'procs':>6}{'copies':>7}{'wall s':>8}{'cut/min':>8}  outcomes"
          "  (peak copies: worker/granted/records)")  # fmt: skip
    for s in sides:
        oc = ", ".join(f"{k} {v}" for k, v in sorted(s.outcomes.items()))
        print(f"{s.repetition:>3} {s.name:<6}{s.processes:>6}{s.copy_capacity:>7}"
              f"{s.wall_seconds:>8.1f}{s.per_min:>8.1f}  {oc}")  # fmt: skip
        for h, f in s.hosts.items():
            print(
                f"      {h:<6} cutovers {f.cutovers:>3}  data steps {f.data_steps:>3}  copies "
                f"{f.copies:>3} ({f.copy_seconds:>6.1f} s, {f.gib_moved:>5.1f} GiB, "
                f"{f.copy_utilization:.0%} of its slots)  peak "
                f"copies {f.peak_copies_worker}/{f.peak_copies_granted}/{f.peak_copies_records} "
                f"(limit {a.per_host})  "
                f"staging left {f.staging_left['apps']} apps"
            )
        for line in s.failures:
            print(f"      FAILED {line}")
        k = s.kill
        if k is not None:
            print(
                f"      killed {k.victim} at +{k.killed_at_s} s (running there: "
                f"{k.running_at_kill}; {k.completed_at_kill} completed), restarted at "
                f"+{k.restarted_at_s} s; moved off {len(k.moved_off)}, placed there after its "
                f"death {len(k.placed_after_death)}, rolled back {len(k.rolled_back)}, "
                f"finished there before {len(k.finished_there_before)}, resumed there after "
                f"its restart {len(k.resumed_there)}, placed there after its restart "
                f"{len(k.placed_after_restart)}, other {len(k.other)}; "
                f"staging undos left to its cleanup {k.staging_undos_left}; waited on it "
                f"{k.host_wait_seconds} s in all"
            )
            for c in k.affected:
                print(
                    f"        {c['app']:<10} {c['outcome']:<12} hosts {'>'.join(c['hosts']):<8} "
                    f"first on {k.victim} {c['first_on_victim_s']:+6.1f} s  waited "
                    f"{c['waited_on_victim_s']:5.1f} s  for {', '.join(c['lost_steps']) or '-'}"
                    + (f"  (downtime {c['downtime_s']:.1f} s)" if c["downtime_s"] else "")
                )
            before = k.staging_before_restart.get(k.victim, {})
            after = k.staging_after_restart.get(k.victim, {})
            print(
                f"      staging on {k.victim}: {before.get('apps')} apps "
                f"({before.get('apparent_mib')} MiB) before its restart, {after.get('apps')} "
                f"after its restart and the wave's end (its cleanup ran "
                f"{k.cleanup_seconds} s after its start)"
            )
    cost = (
        f"a data host's kill -9 cost {summ['kill_extra_wall_seconds']:+.1f} s "
        f"({summ['kill_extra_wall_share']:+.0%}) of wall time"
        if summ["killed"]
        else "no kill happened (the wave ended first: lower --kill-after)"
    )
    print(f"fleet/all throughput: {summ['fleet_over_all_throughput']:.2f}x; {cost}")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--apps", type=int, default=30, help="cutovers in the wave (30)")
    p.add_argument("--hosts", type=int, default=3, help="data hosts of the fleet (3)")
    p.add_argument("--per-host", type=int, default=2,
                   help="copies at once per data host and per process (2)")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=18, help="the wave's concurrency (18)")
    p.add_argument("--size-gb", type=float, nargs=2, default=(0.8, 2.4), metavar=("MIN", "MAX"),
                   help="applications' sizes, uniform (0.8 2.4)")  # fmt: skip
    p.add_argument("--copy-mbps", type=float, default=400.0, help="MB/s of one copy (400)")
    p.add_argument("--convert-mbps", type=float, default=500.0, help="MB/s of a conversion (500)")
    p.add_argument("--host-wait", type=int, default=15,
                   help="the site's fleet.hostWaitSeconds (15; product default 120)")  # fmt: skip
    p.add_argument("--kill-after", type=float, default=0.3,
                   help="kill once this share of the wave completed (0.3)")  # fmt: skip
    p.add_argument("--kill-wait", type=float, default=30, metavar="S",
                   help="then wait up to S s for a host running a warm copy and a downtime "
                   "data step at once; after that, the one with the most copies (30)")  # fmt: skip
    p.add_argument("--restart-after", type=float, default=None, metavar="S",
                   help="restart the killed host S s after the kill "
                   "(default: after the wave)")  # fmt: skip
    p.add_argument("--repeat", type=int, default=1,
                   help="fleet and all sides N times, alternating the order (1)")  # fmt: skip
    p.add_argument("--seed", type=int, default=17, help="the sizes' seed (17)")
    p.add_argument("--timeout", type=float, default=900, help="give up on a wave after this")
    p.add_argument("--log-level", default="WARNING", help="the workers' log level")
    p.add_argument("--keep", metavar="DIR", help="keep servers' and workers' files here")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", metavar="FILE", help="also write the JSON report here")
    args = p.parse_args(argv)
    if min(args.apps, args.hosts, args.per_host, args.concurrency, args.repeat) < 1:
        p.error("--apps, --hosts, --per-host, --concurrency and --repeat must be at least 1")
    logs_to_stderr(args.log_level)
    # SIGTERM (a `timeout`, a supervisor) unwinds like ^C: every process we started stops
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    a = Args(
        apps=args.apps, hosts=args.hosts, per_host=args.per_host, concurrency=args.concurrency,
        size_gb=(args.size_gb[0], args.size_gb[1]), copy_mbps=args.copy_mbps,
        convert_mbps=args.convert_mbps, host_wait=args.host_wait, kill_after=args.kill_after,
        kill_wait=args.kill_wait, restart_after=args.restart_after, seed=args.seed,
        timeout=args.timeout, log_level=args.log_level,
    )  # fmt: skip

    def run(d: Path) -> list[Side]:
        try:
            return asyncio.run(bench(d, a, args.repeat))
        finally:
            for proc in SPAWNED:  # before the temp dir goes
                stop_group(proc, wait=10)

    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        sides = run(Path(args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="cutover-bench-fleet-") as tmp:
            sides = run(Path(tmp))
    summ = summary(sides)
    report = json.dumps(
        {
            "date": dt.datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": commit(),
            "cpus": os.cpu_count(),
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "temporalio": version("temporalio"),
            "args": asdict(a),
            "tuning": TUNING.model_dump(mode="json"),
            "sides": [s.as_json() for s in sides],
            **summ,
        },
        indent=2,
        default=str,
    )
    if args.out:
        Path(args.out).write_text(report + "\n")
    if args.json:
        print(report)
    else:
        print_table(a, sides, summ)


if __name__ == "__main__":
    main()
