"""Test activities registered under the real activity names (tests only, never shipped).

`World` records every call in order, and can be told to fail a step or a compensation, or
to make a check fail on some evaluations. Workflow tests use it to see exactly what the
workflow asked the world to do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import log
from cutover.catalog import (
    RUN_CHECK,
    VERIFY_NOT_MIGRATED,
    Compensation,
    FinalizeStep,
    Step,
    WarmStep,
)
from cutover.models import CheckInput, CheckResult, StepInput, StepResult

ALL_STEP_NAMES: list[str] = sorted(
    {s.value for e in (Step, WarmStep, Compensation, FinalizeStep) for s in e}
    | {VERIFY_NOT_MIGRATED}
)


@dataclass
class World:
    calls: list[str] = field(default_factory=list)
    fail: set[str] = field(default_factory=set)
    #: application -> steps that fail for that application only (waves)
    fail_for: dict[str, set[str]] = field(default_factory=dict)
    #: check name -> verdicts to return in turn (the last one repeats)
    check_plan: dict[str, list[bool]] = field(default_factory=dict)
    check_calls: list[str] = field(default_factory=list)
    delay: float = 0.0
    target_address: str = "127.0.0.1:18080"
    #: steps whose first attempt fails with a retryable error (the retry succeeds)
    flaky: set[str] = field(default_factory=set)
    #: step name -> bytes it reports moved (StepResult.details["bytesMoved"], as disks do)
    bytes_moved: dict[str, int] = field(default_factory=dict)
    #: steps that fail every attempt with a retryable error (an undo that cannot succeed)
    broken: set[str] = field(default_factory=set)
    #: step name -> calls that succeed; every later call fails with a retryable error (a
    #: step that worked going forward and cannot be undone: e.g. quiesce in a rollback)
    broken_after: dict[str, int] = field(default_factory=dict)
    #: steps whose change lands and then they fail for good: a traffic undo among them
    #: says the traffic is on the source (where it moved), as the load balancer's do
    landed_then_failed: set[str] = field(default_factory=set)
    #: steps that wait this many seconds, heartbeating (cancellable), before they finish
    slow: dict[str, float] = field(default_factory=dict)
    #: application -> seconds each of its steps takes (heartbeating)
    slow_for: dict[str, float] = field(default_factory=dict)
    #: what `verify_not_migrated` finds: the source's marks (None: not migrated)
    migrated: str | None = None
    #: check name -> seconds each evaluation takes (heartbeating, cancellable)
    check_delay: dict[str, float] = field(default_factory=dict)
    #: checks whose evaluation was cancelled (the workflow stopped waiting for them)
    checks_cancelled: list[str] = field(default_factory=list)
    #: read-only guard calls (`verify_not_migrated`), kept apart from `calls`
    guard_calls: list[str] = field(default_factory=list)
    #: step name -> extra result details it reports (e.g. targetWrittenBytes)
    details: dict[str, dict[str, str | int | float | bool]] = field(default_factory=dict)

    def activities(self) -> list[Callable[..., Any]]:
        return [self._step(n) for n in ALL_STEP_NAMES] + [self._check()]

    def _step(self, name: str) -> Callable[..., Any]:
        async def run(inp: StepInput) -> StepResult:
            if name == VERIFY_NOT_MIGRATED:
                self.guard_calls.append(name)
                return StepResult(
                    step=name,
                    changed=False,
                    details={
                        "migrated": self.migrated is not None,
                        "evidence": self.migrated or "",
                        **self.details.get(name, {}),
                    },
                )
            self.calls.append(name)
            log().debug("test step ran", changed=True)  # as adapters log: context is bound
            if self.delay:
                await asyncio.sleep(self.delay)
            if name in self.fail or name in self.fail_for.get(inp.context.application, ()):
                raise ApplicationError(
                    f"{name} broke (test)", type="InvalidState", non_retryable=True
                )
            if name in self.flaky and activity.info().attempt == 1:
                raise ApplicationError(f"{name} hiccup (test)", type="Transient")
            if name in self.broken or self.calls.count(name) > self.broken_after.get(name, 1 << 30):
                # as the load balancer's activities do: say where the traffic is (a restore
                # that cannot succeed left it on the target)
                where = [{"trafficOn": "target"}] if name == "restore_load_balancer" else []
                raise ApplicationError(f"{name} cannot succeed (test)", *where, type="Transient")
            if name in self.landed_then_failed:
                where = [{"trafficOn": "source"}] if name == "restore_load_balancer" else []
                raise ApplicationError(f"{name} landed, then failed (test)", *where,
                                       type="InvalidState", non_retryable=True)  # fmt: skip
            pause = self.slow.get(name, self.slow_for.get(inp.context.application, 0.0))
            if pause:
                end = asyncio.get_running_loop().time() + pause
                while asyncio.get_running_loop().time() < end:
                    activity.heartbeat()
                    await asyncio.sleep(0.05)
            facts = {"target_address": self.target_address} if name == Step.POWER_ON_TARGET else {}
            details: dict[str, str | int | float | bool] = (
                {"bytesMoved": self.bytes_moved[name]} if name in self.bytes_moved else {}
            )
            details |= self.details.get(name, {})
            return StepResult(
                step=name, facts=facts, details=details, attempt=activity.info().attempt
            )

        return activity.defn(name=name)(run)

    def _check(self) -> Callable[..., Any]:
        async def run(inp: CheckInput) -> CheckResult:
            self.check_calls.append(inp.name)
            if inp.name in self.check_delay and inp.phase != "pre":
                try:
                    end = asyncio.get_running_loop().time() + self.check_delay[inp.name]
                    while asyncio.get_running_loop().time() < end:
                        activity.heartbeat()
                        await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    self.checks_cancelled.append(inp.name)
                    raise
            plan = self.check_plan.get(inp.name, [True])
            n = sum(1 for c in self.check_calls if c == inp.name) - 1
            passed = plan[min(n, len(plan) - 1)]
            return CheckResult(
                name=inp.name,
                phase=inp.phase,
                passed=passed,
                measured="ok" if passed else "bad",
                threshold="ok",
            )

        return activity.defn(name=RUN_CHECK)(run)

    def steps_called(self) -> list[str]:
        return list(self.calls)
