"""A worker process of the chaos benchmark: the real workflows, activities on the chaos world.

    python -m bench.chaos_worker ADDRESS TASK_QUEUE WORLD_DB SEED P_FAULT READY_FILE

Every step, warm step, compensation and finalize step under its real name, `run_check`,
and `verify_not_migrated`, each changing the shared SQLite world (`bench.chaos_world`) as
the real adapter would. Faults are injected per attempt (p = P_FAULT): retryable
(`Transient`) or not (`InvalidState`), raised before the change or after it landed; the
plan's broken undo step fails on every attempt. Activities not modelled are answered by a
dynamic activity that records their names (the bench reports them). The bench kill -9s
these processes (by process group) and starts new ones.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

from bench.chaos_world import (
    RESTORE_DNS_TTL,
    VERIFY_NOT_MIGRATED,
    ChaosWorld,
    Fault,
    Refused,
    fault_for,
    roll,
)
from cutover.catalog import RUN_CHECK, Compensation, FinalizeStep, Step, WarmStep
from cutover.models import CheckInput, CheckResult, StepInput, StepResult

STEP_NAMES: list[str] = sorted(
    {s.value for e in (Step, WarmStep, Compensation, FinalizeStep) for s in e}
)
#: Steps that move data in the real world: slower, and heartbeating as the real ones do.
SLOW = {"pre_copy", "incremental_sync", "final_data_sync", "convert_image"}
#: How long a restore waits for a booting source before giving up for this attempt.
HEALTH_WAIT_S = 3.0


def _duration(seed: int, name: str, workflow_id: str, activity_id: str, attempt: int) -> float:
    rng = roll(seed, "duration", workflow_id, activity_id, attempt)
    if name == RUN_CHECK:
        return rng.uniform(0.02, 0.1)
    if name in SLOW:
        return rng.uniform(0.3, 1.0)
    return rng.uniform(0.05, 0.25)


async def _work(seconds: float) -> None:
    """The attempt's own time, heartbeating (a no-op without a heartbeat timeout)."""
    end = asyncio.get_running_loop().time() + seconds
    while (left := end - asyncio.get_running_loop().time()) > 0:
        activity.heartbeat()
        await asyncio.sleep(min(0.2, left))


def _run_key(info: activity.Info) -> str:
    """Faults and durations are drawn per workflow run: a re-run of an application (same
    workflow ID, same activity IDs) must not replay its first run's faults."""
    return f"{info.workflow_id}/{info.workflow_run_id}"


#: Steps whose real activities say, when they fail, where the traffic is (`trafficOn`:
#: activities/loadbalancer.py reads the load balancer's state then); modelled here.
LB_STEPS = frozenset({"update_load_balancer", "restore_load_balancer",
                      "retire_source_from_load_balancer"})  # fmt: skip


def _raise(fault: Fault, name: str, when: str, where: str | None = None) -> None:
    raise ApplicationError(
        f"{name}: injected {fault.type} fault {when} (chaos)",
        *([{"trafficOn": where}] if where else []),
        type=fault.type,
        non_retryable=not fault.retryable,
    )


class ChaosActivities:
    def __init__(self, world: ChaosWorld, seed: int, p_fault: float) -> None:
        self.world, self.seed, self.p = world, seed, p_fault

    def activities(self) -> list[Callable[..., Any]]:
        names = sorted({*STEP_NAMES, VERIFY_NOT_MIGRATED, RESTORE_DNS_TTL})
        return [self._step(n) for n in names] + [
            self._check(),
            self._unknown(),
        ]

    def _begin(self, name: str, app: str) -> tuple[int, float]:
        info = activity.info()
        first = info.scheduled_time.timestamp()
        current = (info.current_attempt_scheduled_time or info.scheduled_time).timestamp()
        aid = self.world.attempt_started(
            info.workflow_id or "", info.workflow_run_id or "", info.activity_id, name,
            info.attempt, app, os.getpid(), first, current,
        )  # fmt: skip
        return aid, _duration(self.seed, name, _run_key(info), info.activity_id, info.attempt)

    def _step(self, name: str) -> Callable[..., Any]:
        async def run(inp: StepInput) -> StepResult:
            info = activity.info()
            app = inp.context.application
            aid, seconds = self._begin(name, app)
            outcome = "ok"
            try:
                await _work(seconds)
                if (
                    name == self.world.plan(app).broken_undo
                    and not self.world.state(app).undo_repaired
                ):
                    outcome = "broken"
                    where = self.world.state(app).lb if name in LB_STEPS else None
                    raise ApplicationError(f"{name}: broken for good (chaos)",
                                           *([{"trafficOn": where}] if where else []),
                                           type="Transient")  # fmt: skip
                fault = None
                if name != VERIFY_NOT_MIGRATED:
                    fault = fault_for(
                        self.seed, _run_key(info), info.activity_id, info.attempt, self.p
                    )
                if fault is not None and not fault.after:
                    outcome = f"fault-before:{fault.type}"
                    lb = self.world.state(app).lb if name in LB_STEPS else None
                    _raise(fault, name, "before the change", lb)
                who = f"{info.workflow_id}/{info.workflow_run_id}"
                deadline = asyncio.get_running_loop().time() + HEALTH_WAIT_S
                while True:
                    try:
                        applied = self.world.apply(app, name, info.workflow_run_id or "", who)
                        break
                    except Refused as r:
                        # a booting source: the real restore waits on its health checks
                        if r.wait > 0 and asyncio.get_running_loop().time() + r.wait < deadline:
                            await _work(r.wait + 0.05)
                            continue
                        outcome = f"refused:{r.type}"
                        raise ApplicationError(
                            f"{name}: {r.message}", type=r.type, non_retryable=not r.retryable
                        ) from None
                if applied.details.get("unmodelled"):
                    self.world.unknown_activity(name, info.workflow_id or "")
                if fault is not None:
                    outcome = f"fault-after:{fault.type}"
                    lb = self.world.state(app).lb if name in LB_STEPS else None
                    _raise(fault, name, "after the change landed", lb)
                return StepResult(
                    step=name,
                    changed=applied.changed,
                    facts=applied.facts,
                    details=applied.details,
                    attempt=info.attempt,
                )
            finally:
                self.world.attempt_ended(aid, outcome)

        return activity.defn(name=name)(run)

    def _check(self) -> Callable[..., Any]:
        async def run(inp: CheckInput) -> CheckResult:
            info = activity.info()
            aid, seconds = self._begin(RUN_CHECK, inp.application)
            outcome = "ok"
            try:
                await _work(seconds)
                fault = fault_for(
                    self.seed,
                    _run_key(info),
                    info.activity_id,
                    info.attempt,
                    self.p,
                    check=True,
                )
                if fault is not None:
                    outcome = f"fault-before:{fault.type}"
                    _raise(fault, f"{RUN_CHECK} {inp.name}", "before the check")
                passed, measured = self.world.check(
                    inp.application, inp.name, inp.phase, info.workflow_run_id or ""
                )
                return CheckResult(
                    name=inp.name,
                    phase=inp.phase,
                    passed=passed,
                    measured=measured,
                    threshold="ok",
                )
            finally:
                self.world.attempt_ended(aid, outcome)

        return activity.defn(name=RUN_CHECK)(run)

    def _unknown(self) -> Callable[..., Any]:
        """Activities the workflow gained after this bench was written: record, succeed."""

        async def run(args: Sequence[RawValue]) -> Any:
            info = activity.info()
            self.world.unknown_activity(info.activity_type, info.workflow_id or "")
            arg: Any = (
                activity.payload_converter().from_payload(args[0].payload, dict) if args else {}
            )
            if isinstance(arg, dict) and "probe" in arg:
                return CheckResult(name=arg.get("name", "?"), phase=arg["phase"], passed=True)
            return StepResult(step=info.activity_type, changed=False, attempt=info.attempt)

        return activity.defn(dynamic=True)(run)


async def _main(address: str, queue: str, world_db: str, seed: str, p: str, ready: str) -> None:
    from bench.orchestration import connect_when_ready
    from workers.worker import build_worker

    world = ChaosWorld(Path(world_db), int(seed))
    client = await connect_when_ready(address, timeout=120)
    acts = ChaosActivities(world, int(seed), float(p)).activities()
    worker = build_worker(client, queue, activities=acts)
    Path(ready).touch()
    await worker.run()


if __name__ == "__main__":
    asyncio.run(_main(*sys.argv[1:7]))
