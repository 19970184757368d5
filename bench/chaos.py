"""Chaos benchmark: cutovers under injected faults, worker kill -9s and server kill -9s.

    .venv/bin/python -m bench.chaos [--cutovers 200] [--seed S] [--worker-kills 10]
        [--server-kills 2] [--p-fault 0.1] [--out chaos.json]

Starts its own headless Temporal dev server (temporary SQLite file, free port) and
`--workers` worker processes (`python -m bench.chaos_worker`: the real workflows, the
activities on a modelled world shared through SQLite, see `bench.chaos_world`). Runs
`--cutovers` AppCutoverWorkflows (`--concurrency` at once), each with a plan: faults only,
a rollback criterion that fires in the window, an operator `rollback` update or a workflow
cancel at a random instant, a criterion plus an undo step broken for good, a failing
pre-check; and `--reruns` second cutovers of applications that COMPLETED. Meanwhile it kill
-9s a worker `--worker-kills` times (starting a new one at once) and the server
`--server-kills` times (restarting it on the same database), at random instants spread over
the run's progress.

Per cutover: outcome, time to a final state (the server's start -> close), the violations
the world recorded the moment they happened, and the end invariants (traffic on exactly
one healthy backend; a ROLLED_BACK source intact; a FAILED result naming what serves). A
cutover not final `--stuck-after` seconds after its start is STUCK (its slot is given to
the next one; it may still end later). Lost activity attempts (worker killed mid-attempt,
completion lost, task handed to a dead poller) are measured from the worker-side attempt
log, and activity timeouts from the histories. Prints a table; `--out` writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import (
    ApplicationError,
    CancelledError,
    TerminatedError,
    WorkflowAlreadyStartedError,
)
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError

from bench.chaos_world import ChaosWorld, Plan, lost_attempt_waits
from bench.orchestration import free_port, stop_server
from cutover import search_attributes as sa
from cutover import server
from cutover.catalog import Compensation
from cutover.models import CutoverInput, CutoverResult, RollbackRequest, Tuning
from cutover.runbook import Runbook
from cutover.temporal import connect
from tests.factories import SEED, site
from tests.site_refs import by_reference
from workflows.cutover import AppCutoverWorkflow, workflow_id_for

ROOT = Path(__file__).resolve().parent.parent
#: The issue's target: no cutover waits longer than this for a dead worker.
DEAD_WORKER_BOUND_S = 90.0

#: scenario -> share of the cutovers
SCENARIOS: dict[str, float] = {
    "faults-only": 0.56,
    "criterion-fires": 0.12,
    "operator-rollback": 0.10,
    "cancel": 0.05,
    "broken-undo": 0.12,
    "precheck-fails": 0.05,
}
BROKEN_UNDOS = [
    Compensation.RESTORE_LOAD_BALANCER,
    Compensation.RESTART_SOURCE,
    Compensation.RESTORE_DNS,
]


@dataclass
class Spec:
    plan: Plan
    window_minutes: float
    warm: bool
    passes: int
    action: str | None = None  # "rollback" | "cancel"
    action_after_s: float | None = None
    rerun: bool = False
    #: the operator fixes the cause and sends `resume` when the cutover blocks
    resume_blocked: bool = True


@dataclass
class Record:
    app: str
    scenario: str
    rerun: bool
    dns: bool
    warm: bool
    window_minutes: float
    workflow_id: str = ""
    run_id: str = ""
    started_at: float = 0.0
    outcome: str = "NOT_STARTED"
    reason: str = ""
    left_where: list[str] = field(default_factory=list)
    compensation_failures: list[str] = field(default_factory=list)
    seconds_to_final: float | None = None
    stuck: bool = False
    stuck_detail: str = ""
    action: str | None = None
    action_after_s: float | None = None
    action_result: str = ""
    action_at: float | None = None
    seconds_from_rollback_to_final: float | None = None
    rpc_errors: int = 0
    #: each time the cutover waited for an operator (a *_BLOCKED phase)
    blocked: list[dict[str, Any]] = field(default_factory=list)
    history: dict[str, Any] = field(default_factory=dict)
    end_violations: list[str] = field(default_factory=list)
    world_end: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------- processes


class Server:
    """The dev server, kill -9-able and restartable on its database (same port)."""

    def __init__(self, d: Path) -> None:
        self.db, self.log, self.port = d / "temporal.db", d / "server.log", free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = server.start(self.db, self.port, ui_port=None, log=self.log)

    def kill9(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_server(self.proc)
            self.proc = None


class Workers:
    """`n` chaos worker processes, each in its own process group (kill -9 by group)."""

    def __init__(self, n: int, argv: list[str], d: Path) -> None:
        self.argv, self.dir = argv, d
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        self.busy = [False] * n
        self.spawned = 0
        self.unplanned_exits: list[dict[str, Any]] = []

    def _launch(self, n: int, ready: Path) -> subprocess.Popen[bytes]:
        with open(self.dir / f"worker-{n}.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "bench.chaos_worker", *self.argv, str(ready)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    async def spawn(self, slot: int) -> None:
        self.spawned += 1
        ready = self.dir / f"worker-{self.spawned}.ready"
        proc = await asyncio.to_thread(self._launch, self.spawned, ready)
        self.procs[slot] = proc
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chaos worker {self.spawned} did not start (see its log)")
            await asyncio.sleep(0.1)

    async def kill9_and_replace(self, slot: int) -> None:
        self.busy[slot] = True
        try:
            proc = self.procs[slot]
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            await self.spawn(slot)
        finally:
            self.busy[slot] = False

    async def watchdog(self) -> None:
        """Restart a worker that exited on its own (recorded: not one of our kills)."""
        while True:
            await asyncio.sleep(1)
            for slot, proc in enumerate(self.procs):
                if proc is not None and not self.busy[slot] and proc.poll() is not None:
                    self.unplanned_exits.append({"at": time.time(), "code": proc.returncode})
                    await self.kill9_and_replace(slot)

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# ---------------------------------------------------------------------- plans


def make_specs(n: int, rng: random.Random, prefix: str) -> list[Spec]:
    names = list(SCENARIOS)
    weights = [SCENARIOS[s] for s in names]
    specs: list[Spec] = []
    for i in range(n):
        app = f"{prefix}-{i:03d}"
        scenario = rng.choices(names, weights)[0]
        dns = rng.random() < 0.3
        criterion = None
        broken = None
        precheck = None
        action = None
        after = None
        if scenario in ("criterion-fires", "broken-undo"):
            criterion = rng.randint(1, 3)
        if scenario == "broken-undo":
            broken = str(rng.choice(BROKEN_UNDOS if dns else BROKEN_UNDOS[:2]))
        if scenario == "precheck-fails":
            precheck = "backup_success_last_24h"
        if scenario in ("operator-rollback", "cancel"):
            action = "rollback" if scenario == "operator-rollback" else "cancel"
            after = round(rng.uniform(0.5, 12.0), 2)
        specs.append(
            Spec(
                plan=Plan(app, scenario, dns, criterion, broken, precheck),
                window_minutes=round(rng.uniform(0.05, 0.1), 3),
                warm=rng.random() < 0.85,
                passes=rng.randint(0, 2),
                action=action,
                action_after_s=after,
                resume_blocked=rng.random() < 0.7,
            )
        )
    return specs


def make_input(spec: Spec, task_queue: str) -> CutoverInput:
    app = spec.plan.app
    steps: list[str] = [*SEED["cutoverSteps"], *(["update_dns"] if spec.plan.dns else [])]
    data: dict[str, Any] = {
        **SEED,
        "application": app,
        "wave": "chaos",
        "rollbackWindowMinutes": spec.window_minutes,
        "checkIntervalSeconds": 1,
        "cutoverSteps": steps,
        "dataSync": {"warm": spec.warm, "incrementalPasses": spec.passes},
    }
    if spec.plan.dns:
        data["endpoint"] = {"dns": {"name": f"{app}.chaos.example"}}
    # Short retry intervals; every timeout is the workflow's own (that is what is measured).
    # A blocked rollback or finalize waits 20 s for `resume` (when the workflow has them).
    wanted = {"initialRetrySeconds": 0.2, "maxRetrySeconds": 2.0, "blockedWaitHours": 20 / 3600}
    tuning = Tuning(**{k: v for k, v in wanted.items() if k in Tuning.model_fields})
    return CutoverInput(
        runbook=Runbook.model_validate(data),
        site=site(taskQueue=task_queue),
        requestedBy="bench.chaos",
        tuning=tuning,
    )


# ------------------------------------------------------------------ histories


def _ts(e: Any) -> float:
    return float(e.event_time.ToDatetime(tzinfo=dt.UTC).timestamp())


def history_stats(events: Sequence[Any]) -> dict[str, Any]:
    """Activity timing from one run's history: timeouts, and the longest waits."""
    scheduled: dict[int, tuple[str, float]] = {}
    timed_out = 0
    recovered: list[tuple[float, str, int]] = []
    first_dispatch = 0.0
    for e in events:
        t = e.event_type
        if t == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            a = e.activity_task_scheduled_event_attributes
            scheduled[e.event_id] = (a.activity_type.name, _ts(e))
        elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            a = e.activity_task_started_event_attributes
            name, at = scheduled.get(a.scheduled_event_id, ("?", _ts(e)))
            gap = _ts(e) - at
            if a.HasField("last_failure") and a.last_failure.HasField("timeout_failure_info"):
                # an earlier attempt timed out: the whole wait until this one started
                recovered.append((gap, name, a.attempt))
            elif a.attempt == 1:
                first_dispatch = max(first_dispatch, gap)
        elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
            timed_out += 1
    worst = max(recovered, default=None)
    return {
        "events": len(events),
        "activities": len(scheduled),
        "activities_timed_out": timed_out,
        "attempts_retried_after_timeout": len(recovered),
        "longest_wait_after_timeout_s": round(worst[0], 2) if worst else None,
        "longest_wait_after_timeout_step": f"{worst[1]} (attempt {worst[2]})" if worst else None,
        "longest_first_dispatch_s": round(first_dispatch, 2),
    }


# ---------------------------------------------------------------------- bench


async def _retry(what: str, fn: Any, tries: int = 60) -> Any:
    """Call fn() until the server answers (it may be down for a kill -9 and restart)."""
    for i in range(tries):
        try:
            return await fn()
        except RPCError:
            if i == tries - 1:
                raise
            await asyncio.sleep(1)
    raise AssertionError(what)


class Bench:
    def __init__(self, args: argparse.Namespace, client: Client, world: ChaosWorld,
                 srv: Server, workers: Workers, queue: str) -> None:  # fmt: skip
        self.args, self.client, self.world = args, client, world
        self.srv, self.workers, self.queue = srv, workers, queue
        self.rng = random.Random(args.seed)
        self.slots = asyncio.Semaphore(args.concurrency)
        self.records: list[Record] = []
        self.progress = 0
        self.progressed = asyncio.Event()
        self.kills: list[dict[str, Any]] = []
        self.late: set[asyncio.Task[None]] = set()
        self.reruns_left = args.reruns
        self.completed_pool: list[Spec] = []
        self.run_ended: dict[str, float] = {}

    # -- one cutover

    async def cutover(self, spec: Spec) -> Record:
        p = spec.plan
        rec = Record(p.app, p.scenario, spec.rerun, p.dns, spec.warm, spec.window_minutes,
                     action=spec.action, action_after_s=spec.action_after_s)  # fmt: skip
        self.records.append(rec)
        inp = make_input(spec, self.queue)
        rec.workflow_id = workflow_id_for(p.app)
        async with self.slots:
            rec.started_at = time.time()
            handle = await self._start(rec, inp)
            rec.run_id = handle.result_run_id or ""
            actor = asyncio.create_task(self._operator(spec, handle, rec)) if spec.action else None
            watch = asyncio.create_task(self._watch(spec, handle, rec))
            final = await self._wait(handle, rec, rec.started_at + self.args.stuck_after)
            if final:
                watch.cancel()
        if not final:
            rec.stuck = True
        self._progress()
        if not final:
            # keep waiting in the background: it may still end (late) before the run does
            task = asyncio.create_task(self._late(handle, rec, actor, watch))
            self.late.add(task)
            return rec
        if actor is not None:
            actor.cancel()
        await self._settle(handle, rec)
        return rec

    async def _start(self, rec: Record, inp: CutoverInput) -> WorkflowHandle[Any, CutoverResult]:
        async def go() -> WorkflowHandle[Any, CutoverResult]:
            try:
                return await self.client.start_workflow(
                    AppCutoverWorkflow.run,
                    by_reference(inp),  # the site archived for the workers, sent by digest
                    id=rec.workflow_id,
                    task_queue=self.queue,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                    id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                )
            except WorkflowAlreadyStartedError:
                # our own start landed before the server died: take the running one
                return self.client.get_workflow_handle(rec.workflow_id, result_type=CutoverResult)

        handle: WorkflowHandle[Any, CutoverResult] = await _retry("start", go)
        if not handle.result_run_id:
            desc = await _retry("describe", handle.describe)
            handle = self.client.get_workflow_handle(
                rec.workflow_id, run_id=desc.run_id, result_type=CutoverResult
            )  # fmt: skip
            rec.run_id = desc.run_id
        return handle

    async def _wait(
        self, handle: WorkflowHandle[Any, CutoverResult], rec: Record, deadline: float
    ) -> bool:
        """Wait for the result until `deadline`; True when the cutover reached a final state."""
        while (left := deadline - time.time()) > 0:
            try:
                result = await asyncio.wait_for(handle.result(), timeout=left)
            except TimeoutError:
                return False
            except RPCError:
                rec.rpc_errors += 1
                await asyncio.sleep(1)
                continue
            except WorkflowFailureError as err:
                cause = err.cause
                if isinstance(cause, CancelledError):
                    rec.outcome = "CANCELED"
                elif isinstance(cause, TerminatedError):
                    rec.outcome = "TERMINATED"
                else:
                    rec.outcome = "WORKFLOW_FAILED"
                rec.reason = str(cause.cause if isinstance(cause, ApplicationError) and
                                 cause.cause else cause)  # fmt: skip
                return True
            rec.outcome = result.outcome.value
            rec.reason = result.reason
            rec.left_where = list(result.leftWhere)
            rec.compensation_failures = list(result.compensationFailures)
            return True
        return False

    async def _operator(
        self, spec: Spec, handle: WorkflowHandle[Any, CutoverResult], rec: Record
    ) -> None:
        assert spec.action_after_s is not None
        await asyncio.sleep(spec.action_after_s)
        rec.action_at = time.time()
        try:
            if spec.action == "rollback":
                req = RollbackRequest(reason="chaos: operator rollback", requestedBy="chaos")
                msg = await asyncio.wait_for(
                    handle.execute_update(AppCutoverWorkflow.rollback, req), 120
                )
                rec.action_result = f"accepted: {msg}"
            else:
                await asyncio.wait_for(handle.cancel(), 60)
                rec.action_result = "cancel requested"
        except WorkflowUpdateFailedError as err:
            rec.action_result = f"refused: {err.cause}"
        except (RPCError, TimeoutError) as err:
            rec.action_result = f"error: {type(err).__name__}: {err}"

    async def _watch(
        self, spec: Spec, handle: WorkflowHandle[Any, CutoverResult], rec: Record
    ) -> None:
        """Play the operator when the cutover blocks (waits for `resume`): judge the world
        then, fix the cause (the world's broken undo step) and resume, or leave it be."""
        blocked = False
        while True:
            await asyncio.sleep(1)
            try:
                desc = await handle.describe()
            except RPCError:
                continue
            phase = desc.typed_search_attributes.get(sa.PHASE) or ""
            if not phase.endswith("_BLOCKED"):
                blocked = False
                continue
            if blocked:
                continue
            blocked = True
            found = self.world.judge_blocked(rec.app, desc.run_id, phase)
            entry: dict[str, Any] = {
                "phase": phase,
                "after_s": round(time.time() - rec.started_at, 1),
                "violations": [f"{v.kind}: {v.detail}" for v in found],
                "world": self.world.state(rec.app).summary(),
                "resume": "not sent (operator away: the wait runs out)",
            }
            rec.blocked.append(entry)
            if not spec.resume_blocked:
                continue
            self.world.repair(rec.app)
            await asyncio.sleep(self.rng.uniform(1, 3))
            req = {"requestedBy": "chaos", "reason": "cause fixed (chaos)"}
            try:
                await asyncio.wait_for(handle.execute_update("resume", req, result_type=str), 60)
                entry["resume"] = "accepted"
                blocked = False  # the next blocked phase seen is a new episode
            except WorkflowUpdateFailedError as err:
                entry["resume"] = f"refused: {err.cause}"
            except (RPCError, TimeoutError) as err:
                entry["resume"] = f"error: {type(err).__name__}: {err}"

    async def _late(
        self,
        handle: WorkflowHandle[Any, CutoverResult],
        rec: Record,
        actor: asyncio.Task[None] | None,
        watch: asyncio.Task[None],
    ) -> None:
        try:
            if await self._wait(handle, rec, time.time() + 24 * 3600):
                if actor is not None:
                    actor.cancel()
                await self._settle(handle, rec)
        except asyncio.CancelledError:
            pass
        finally:
            watch.cancel()

    async def _settle(self, handle: WorkflowHandle[Any, CutoverResult], rec: Record) -> None:
        """Times and history of the finished run; the world's end invariants."""
        desc = await _retry("describe", handle.describe)
        rec.run_id = desc.run_id
        if desc.close_time is not None:
            rec.seconds_to_final = round((desc.close_time - desc.start_time).total_seconds(), 2)
            self.run_ended[desc.run_id] = desc.close_time.timestamp()
            if rec.action == "rollback" and rec.action_at and rec.action_result.startswith("acc"):
                rec.seconds_from_rollback_to_final = round(
                    desc.close_time.timestamp() - rec.action_at, 2
                )
        history = await _retry("history", handle.fetch_history)
        rec.history = history_stats(list(history.events))
        outcome = "STUCK" if rec.outcome == "NOT_STARTED" else rec.outcome
        found = self.world.end_run(rec.app, rec.run_id, outcome, rec.left_where)
        rec.end_violations = [f"{v.kind}: {v.detail}" for v in found]
        rec.world_end = self.world.state(rec.app).summary()

    def _progress(self) -> None:
        self.progress += 1
        self.progressed.set()

    # -- chaos

    async def chaos(self, total: int) -> None:
        kinds = ["worker"] * self.args.worker_kills + ["server"] * self.args.server_kills
        points = sorted(self.rng.uniform(0.03, 0.9) * total for _ in kinds)
        self.rng.shuffle(kinds)
        for point, kind in zip(points, kinds, strict=True):
            while self.progress < point:
                self.progressed.clear()
                await self.progressed.wait()
            await asyncio.sleep(self.rng.uniform(0, 2))
            if kind == "worker":
                slot = self.rng.randrange(len(self.workers.procs))
                t = time.time()
                await self.workers.kill9_and_replace(slot)
                self.kills.append({"kind": "worker", "at": t, "progress": self.progress,
                                   "restart_s": round(time.time() - t, 2)})  # fmt: skip
            else:
                t = time.time()
                self.srv.kill9()
                await asyncio.sleep(self.rng.uniform(1, 3))
                await asyncio.to_thread(self.srv.start)
                self.kills.append({"kind": "server", "at": t, "progress": self.progress,
                                   "down_s": round(time.time() - t, 2)})  # fmt: skip

    # -- the run

    async def run(self, specs: list[Spec]) -> None:
        total = len(specs) + self.args.reruns
        chaos = asyncio.create_task(self.chaos(total))
        watchdog = asyncio.create_task(self.workers.watchdog())
        pending: set[asyncio.Task[Record]] = {asyncio.create_task(self.cutover(s)) for s in specs}
        share = self.args.reruns / max(1, 0.6 * len(specs))
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                rec = task.result()
                spec = next(s for s in specs if s.plan.app == rec.app)
                # re-run only plain cutovers: the plan (faults, criterion) is per application
                if rec.outcome == "COMPLETED" and not rec.rerun and rec.scenario == "faults-only":
                    self.completed_pool.append(spec)
                    if self.reruns_left > 0 and self.rng.random() < share:
                        pending.add(asyncio.create_task(self._rerun()))
            if not pending and self.reruns_left > 0 and self.completed_pool:
                pending.add(asyncio.create_task(self._rerun()))
        if self.late:
            # the stuck ones get a last chance, then are given up on
            await asyncio.wait(self.late, timeout=self.args.grace)
            for late in self.late:
                late.cancel()
            await self._give_up()
        if not chaos.done():
            # fewer cutovers than planned (too few COMPLETED to re-run): kill what is left
            self.progress = total
            self.progressed.set()
            await chaos
        watchdog.cancel()

    async def _rerun(self) -> Record:
        self.reruns_left -= 1
        spec = self.completed_pool.pop(self.rng.randrange(len(self.completed_pool)))
        again = Spec(
            plan=Plan(spec.plan.app, "rerun-of-completed", spec.plan.dns),
            window_minutes=spec.window_minutes,
            warm=spec.warm,
            passes=spec.passes,
            rerun=True,
        )
        return await self.cutover(again)

    async def _give_up(self) -> None:
        """Record where each still-running cutover hangs, terminate it, judge the world."""
        for rec in self.records:
            if not rec.stuck or rec.outcome != "NOT_STARTED":
                continue
            handle = self.client.get_workflow_handle(
                rec.workflow_id, run_id=rec.run_id, result_type=CutoverResult
            )  # fmt: skip
            desc = await _retry("describe", handle.describe)
            if desc.status != WorkflowExecutionStatus.RUNNING:
                await self._wait(handle, rec, time.time() + 30)
                await self._settle(handle, rec)
                continue
            pending = [
                f"{a.activity_type.name} attempt {a.attempt} "
                f"(last started {time.time() - a.last_started_time.ToSeconds():.0f} s ago)"
                if a.HasField("last_started_time")
                else f"{a.activity_type.name} attempt {a.attempt} (not started)"
                for a in desc.raw_description.pending_activities
            ]
            phase = desc.typed_search_attributes  # Phase search attribute, if set
            rec.stuck_detail = (
                f"running {time.time() - rec.started_at:.0f} s; pending: "
                f"{'; '.join(pending) or 'no activity'}; search attributes: "
                f"{ {p.key.name: p.value for p in phase} }"
            )

            async def terminate(h: WorkflowHandle[Any, CutoverResult] = handle) -> None:
                await h.terminate("bench.chaos: stuck")

            await _retry("terminate", terminate)
            rec.outcome = "STUCK"
            await self._settle(handle, rec)


# --------------------------------------------------------------------- report


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(sorted(values), n=100, method="inclusive")[int(q) - 1]


def summarize(bench: Bench, world: ChaosWorld, wall: float) -> dict[str, Any]:
    recs = bench.records
    violations = world.violations()
    attempts = world.attempts()
    waits = lost_attempt_waits(attempts, time.time(), bench.run_ended)
    times = [r.seconds_to_final for r in recs if r.seconds_to_final is not None]
    expected = Counter(v["kind"] for v in violations if v["kind"].startswith("expected:"))
    violations = [v for v in violations if not v["kind"].startswith("expected:")]
    by_kind: dict[str, dict[str, Any]] = {}
    for v in violations:
        k = by_kind.setdefault(v["kind"], {"occurrences": 0, "cutovers": set(), "example": ""})
        k["occurrences"] += 1
        k["cutovers"].add(v["app"])
        k["example"] = k["example"] or f"{v['app']} {v['step']}: {v['detail']}"
    faults = Counter(a["outcome"] or "died" for a in attempts)
    hist = [r.history for r in recs if r.history]
    worst_hist = max(
        (h for h in hist if h.get("longest_wait_after_timeout_s") is not None),
        key=lambda h: h["longest_wait_after_timeout_s"],
        default=None,
    )
    rollback_lat = [
        r.seconds_from_rollback_to_final for r in recs if r.seconds_from_rollback_to_final
    ]
    clean = {
        r.app
        for r in recs
        if r.outcome in ("COMPLETED", "ROLLED_BACK", "FAILED")
        and not any(not v.startswith("expected:") for v in r.end_violations)
    }
    return {
        "wall_seconds": round(wall, 1),
        "cutovers": len(recs),
        "reruns": sum(r.rerun for r in recs),
        "outcomes": dict(Counter(r.outcome for r in recs).most_common()),
        "outcomes_by_scenario": {
            s: dict(Counter(r.outcome for r in recs if r.scenario == s).most_common())
            for s in sorted({r.scenario for r in recs})
        },
        "stuck_at_bound": sum(r.stuck for r in recs),
        "ended_final_and_intact": len(clean),
        "violations_by_kind": {
            k: {
                "occurrences": v["occurrences"],
                "cutovers": len(v["cutovers"]),
                "example": v["example"],
            }
            for k, v in sorted(by_kind.items())
        },
        "cutovers_with_violations": len({v["app"] for v in violations}),
        "expected_states": dict(expected),
        "seconds_to_final": {
            "p50": pct(times, 50),
            "p95": pct(times, 95),
            "max": max(times, default=None),
        },
        "operator_rollback_to_final_s": {
            "n": len(rollback_lat),
            "p50": pct(rollback_lat, 50),
            "max": max(rollback_lat, default=None),
        },
        "lost_attempts": {
            "count": len(waits),
            "max_wait_s": waits[0]["seconds"] if waits else None,
            "over_bound": sum(w["seconds"] > DEAD_WORKER_BOUND_S for w in waits),
            "longest": waits[:10],
        },
        "history": {
            "activities_timed_out": sum(h["activities_timed_out"] for h in hist),
            "attempts_retried_after_timeout": sum(
                h["attempts_retried_after_timeout"] for h in hist
            ),
            "longest_wait_after_timeout_s": worst_hist["longest_wait_after_timeout_s"]
            if worst_hist
            else None,
            "longest_wait_after_timeout_step": worst_hist["longest_wait_after_timeout_step"]
            if worst_hist
            else None,
            "longest_first_dispatch_s": max(
                (h["longest_first_dispatch_s"] for h in hist), default=None
            ),
        },
        "attempts": {"total": len(attempts), "by_outcome": dict(faults.most_common())},
        "kills": bench.kills,
        "unplanned_worker_exits": bench.workers.unplanned_exits,
        "unmodelled_activities": world.unknown_activities(),
    }


def print_table(summary: dict[str, Any], args: argparse.Namespace) -> None:
    s = summary
    print(
        f"bench.chaos: {s['cutovers']} cutovers ({s['reruns']} re-runs of COMPLETED), seed "
        f"{args.seed}, concurrency {args.concurrency}, {args.workers} workers, p_fault "
        f"{args.p_fault}, wall {s['wall_seconds']} s, {os.cpu_count()} CPUs"
    )
    kills = Counter(k["kind"] for k in s["kills"])
    print(f"kill -9: worker {kills['worker']}, server {kills['server']}; unplanned worker "
          f"exits {len(s['unplanned_worker_exits'])}")  # fmt: skip
    print("\noutcome              n")
    for o, n in s["outcomes"].items():
        print(f"  {o:<18}{n:>3}")
    print("\nscenario             outcomes")
    for sc, c in s["outcomes_by_scenario"].items():
        print(f"  {sc:<19}" + ", ".join(f"{o} {n}" for o, n in c.items()))
    print(f"\ninvariant violations: {s['cutovers_with_violations']} cutovers")
    print(f"  {'kind':<36}{'times':>6}{'cutovers':>9}  example")
    for k, v in s["violations_by_kind"].items():
        print(f"  {k:<36}{v['occurrences']:>6}{v['cutovers']:>9}  {v['example'][:90]}")
    for k, n in s["expected_states"].items():
        print(f"  (not counted) {k}: {n}")
    t = s["seconds_to_final"]

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    print(f"\ntime to final state s: p50 {f(t['p50'])}, p95 {f(t['p95'])}, max {f(t['max'])}; "
          f"STUCK at {args.stuck_after:g} s: {s['stuck_at_bound']}")  # fmt: skip
    r = s["operator_rollback_to_final_s"]
    print(f"operator rollback -> final s: n {r['n']}, p50 {f(r['p50'])}, max {f(r['max'])}")
    lost = s["lost_attempts"]
    print(f"lost attempts (dead worker / lost completion): {lost['count']}, longest wait "
          f"{f(lost['max_wait_s'])} s, over {DEAD_WORKER_BOUND_S:g} s: "
          f"{lost['over_bound']}")  # fmt: skip
    for w in lost["longest"][:5]:
        print(f"  {w['seconds']:>8.1f} s  {w['app']} {w['step']} attempt {w['attempt']}: "
              f"{w['cause']}")  # fmt: skip
    h = s["history"]
    print(f"histories: {h['activities_timed_out']} activities timed out, "
          f"{h['attempts_retried_after_timeout']} retried after a timeout (longest wait "
          f"{f(h['longest_wait_after_timeout_s'])} s, {h['longest_wait_after_timeout_step']}); "
          f"longest first dispatch {f(h['longest_first_dispatch_s'])} s")  # fmt: skip
    print(f"attempts: {s['attempts']['total']} " + ", ".join(
        f"{k} {n}" for k, n in s["attempts"]["by_outcome"].items()))  # fmt: skip
    if s["unmodelled_activities"]:
        print(f"unmodelled activities (answered as no-ops): {s['unmodelled_activities']}")


async def main_async(args: argparse.Namespace, d: Path) -> tuple[dict[str, Any], Bench]:
    srv = Server(d)
    srv.start()
    world_db = d / "world.db"
    world = ChaosWorld(world_db, args.seed)
    rng = random.Random(args.seed)
    prefix = f"chaos-{uuid.UUID(int=rng.getrandbits(128)).hex[:6]}"
    specs = make_specs(args.cutovers, rng, prefix)
    for spec in specs:
        world.add(spec.plan)
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    argv = [srv.address, queue, str(world_db), str(args.seed), str(args.p_fault)]
    workers = Workers(args.workers, argv, d)
    try:
        # The bench outlives two server kills: the SDK's retry warnings would drown the table.
        quiet = Runtime(
            telemetry=TelemetryConfig(
                logging=LoggingConfig(
                    filter=TelemetryFilter(core_level="ERROR", other_level="ERROR")
                )
            )
        )
        client = await connect(srv.address, "default", wait_seconds=60, runtime=quiet)
        await asyncio.gather(*(workers.spawn(i) for i in range(args.workers)))
        bench = Bench(args, client, world, srv, workers, queue)
        t0 = time.perf_counter()
        await asyncio.wait_for(bench.run(specs), args.timeout)
        wall = time.perf_counter() - t0
        return summarize(bench, world, wall), bench
    finally:
        workers.stop()
        srv.stop()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cutovers", type=int, default=200)
    p.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    p.add_argument("--worker-kills", type=int, default=10)
    p.add_argument("--server-kills", type=int, default=2)
    p.add_argument("--p-fault", type=float, default=0.1, help="per activity attempt")
    p.add_argument("--reruns", type=int, default=10, help="second cutovers of COMPLETED apps")
    p.add_argument("--concurrency", type=int, default=15)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--stuck-after", type=float, default=180, help="s from start: STUCK")
    p.add_argument("--grace", type=float, default=30, help="s the STUCK get at the end")
    p.add_argument("--timeout", type=float, default=1800, help="give up after this many s")
    p.add_argument("--out", type=Path, default=None, help="write JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, DBs)")
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    d = Path(tempfile.mkdtemp(prefix="cutover-bench-chaos-"))
    # the workers' own sites: archived here by this process, read by every worker process
    os.environ["CUTOVER_SITE_ARCHIVE"] = str(d / "sites")
    summary, bench = asyncio.run(main_async(args, d))
    print_table(summary, args)
    if args.out is not None:
        doc = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "cpus": os.cpu_count(),
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "temporalio": version("temporalio"),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "summary": summary,
            "cutovers": [asdict(r) for r in bench.records],
            "violations": bench.world.violations(),
        }
        args.out.write_text(json.dumps(doc, indent=2, default=str))
        print(f"\nJSON: {args.out}")
    if args.keep:
        print(f"kept: {d}")
    else:
        import shutil

        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
