"""The cutover as it ran before the `safety-v2` patch: the code paths only runs started
before that patch take, kept so their recorded histories replay exactly as they ran.

A mixin of `workflows.cutover.AppCutoverWorkflow`: its methods use the workflow's state and
steps through `_Cutover`, the part of the workflow they need (checked by mypy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from typing import Any, Protocol

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate
from temporalio.exceptions import ActivityError

from workflows.cutover_text import RollbackNow as _RollbackNow
from workflows.cutover_text import cause as _cause

with workflow.unsafe.imports_passed_through():
    from cutover import search_attributes as sa
    from cutover.catalog import Compensation, Step
    from cutover.models import (
        CheckPhase,
        CheckResult,
        CutoverInput,
        CutoverResult,
        FinalizeRequest,
        Outcome,
        Phase,
        RollbackRequest,
        StepKind,
        StepResult,
    )


class _Cutover(Protocol):
    """What of `AppCutoverWorkflow` the pre-`safety-v2` paths use."""

    _inp: CutoverInput
    _rollback: RollbackRequest | None
    _finalize: FinalizeRequest | None
    _current: str | None
    _deadline: datetime | None
    _window: timedelta
    _wake: bool
    _checks: dict[str, CheckResult]
    _compensations: list[str]
    _down_to: datetime | None

    def _set_phase(self, phase: Phase, *more: SearchAttributeUpdate[Any]) -> None: ...
    def _log(self, level: int, msg: str, **fields: Any) -> None: ...
    def _finish(
        self, outcome: Outcome, reason: str, left: list[str], failures: list[str] | None = None
    ) -> CutoverResult: ...
    async def _run_checks(self, names: list[str], phase: CheckPhase) -> list[CheckResult]: ...
    async def _step(self, name: str, kind: StepKind, pass_number: int = 0) -> StepResult: ...
    async def _warm_phase(self) -> None: ...
    async def _await_approval(self) -> None: ...
    async def _cutover_steps(self) -> None: ...
    async def _rollback_window(self) -> str | None: ...
    async def _evaluate_window(self) -> str | None: ...
    async def _finalize_cutover(self) -> CutoverResult: ...
    async def _roll_back(self, reason: str) -> CutoverResult: ...
    async def _compensate(self) -> list[str]: ...


class CutoverV1:
    """The pre-`safety-v2` run, rollback window, finalize and rollback (replay only)."""

    # What these methods assign (declared here so mypy types them as the workflow does).
    _deadline: datetime | None
    _down_to: datetime | None
    _wake: bool

    async def _run_v1(self: _Cutover) -> CutoverResult:
        """The cutover as it ran before the `safety-v2` patch (replay of older runs only)."""
        inp = self._inp
        rb = inp.runbook
        # One upsert per phase change (each is a history event): identity, outcome and phase
        # go together here.
        self._set_phase(
            Phase.PRE_CHECKS,
            sa.WAVE.value_set(rb.wave_name),
            sa.APPLICATION.value_set(rb.application),
            sa.OUTCOME.value_set(Outcome.RUNNING.value),
        )
        self._log(logging.INFO, "cutover started", requested_by=inp.requestedBy)
        failed = [r for r in await self._run_checks(rb.preChecks, "pre") if not r.passed]
        if failed:
            return self._finish(
                Outcome.FAILED,
                "pre-check failed: " + "; ".join(r.describe() for r in failed),
                ["nothing was changed: the source still serves"],
            )
        if self._rollback:
            return self._finish(
                Outcome.ROLLED_BACK,
                f"cancelled before any change by {self._rollback.requestedBy}: "
                f"{self._rollback.reason}",
                ["nothing was changed: the source still serves"],
            )

        try:
            if rb.dataSync.warm and Step.FINAL_DATA_SYNC in rb.cutoverSteps:
                await self._warm_phase()
            if rb.approval.required:
                await self._await_approval()
            await self._cutover_steps()
        except _RollbackNow as rollback:
            return await self._roll_back(rollback.reason)
        except ActivityError as err:
            return await self._roll_back(f"step {self._current} failed: {_cause(err)}")
        except asyncio.CancelledError:
            # Cancelled from Temporal: undo what was done, then report the cancellation.
            await self._roll_back("the workflow was cancelled")
            raise

        try:
            reason = await self._rollback_window()
        except asyncio.CancelledError:
            # Cancelling a cutover whose rollback is still possible means: go back.
            await self._roll_back("the workflow was cancelled during the rollback window")
            raise
        if reason is not None:
            return await self._roll_back(reason)
        # Finalizing retires the source for good: once begun, it completes.
        return await asyncio.shield(asyncio.ensure_future(self._finalize_cutover()))

    async def _window_v1(self: _Cutover) -> str | None:
        """Hold rollback open; return why to roll back, or None to finalize."""
        rb = self._inp.runbook
        self._set_phase(Phase.ROLLBACK_WINDOW)
        self._deadline = workflow.now() + self._window
        interval = timedelta(seconds=rb.checkIntervalSeconds)
        next_eval = workflow.now()
        while True:
            if self._rollback is not None:
                return (
                    f"rollback requested by {self._rollback.requestedBy}: {self._rollback.reason}"
                )
            if self._finalize is not None:
                return None
            now = workflow.now()
            if now >= self._deadline:
                break
            if now >= next_eval:
                fired = await self._evaluate_window()
                if fired:
                    return fired
                next_eval = workflow.now() + interval
                continue
            self._wake = False
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self._wake,
                    timeout=min(next_eval, self._deadline) - now,
                    timeout_summary="rollback window",
                )
        failing = [n for n in rb.postChecks if not self._checks[n].passed]
        if failing:
            return "rollback window closed with post-checks failing: " + "; ".join(
                self._checks[n].describe() for n in failing
            )
        return None

    async def _finalize_v1(self: _Cutover, steps: list[str]) -> CutoverResult:
        """Run `steps`; a failure is follow-up work, not a reason to roll back."""
        problems: list[str] = []
        for step in steps:
            try:
                await self._step(step, "finalize")
            except ActivityError as err:
                # The target already serves and is healthy: a finalize failure is
                # follow-up work, not a reason to roll back.
                problems.append(f"finalize step {step} failed: {_cause(err)}")
        how = (
            f"finalized early by {self._finalize.requestedBy}"
            if self._finalize
            else "rollback window closed healthy"
        )
        return self._finish(
            Outcome.COMPLETED,
            how,
            ["the target serves the application", "the source is retired", *problems],
        )

    async def _roll_back_v1(self: _Cutover, reason: str) -> CutoverResult:
        # Shielded: a cancellation of the workflow must not stop the undo half-way.
        failures = await asyncio.shield(asyncio.ensure_future(self._compensate()))
        if not self._compensations:
            left = ["nothing was changed: the source still serves"]
        elif failures:
            left = [
                "rollback incomplete: these compensations failed and need an operator",
                *failures,
            ]
        else:
            left = ["the source serves the application again", "the target was removed"]
        outcome = Outcome.FAILED if failures else Outcome.ROLLED_BACK
        return self._finish(outcome, reason, left, failures)

    async def _compensate(self: _Cutover) -> list[str]:
        failures: list[str] = []
        for comp in reversed(self._compensations):
            try:
                await self._step(comp, "compensation")
            except ActivityError as err:
                msg = f"{comp}: {_cause(err)}"
                self._log(logging.ERROR, "compensation failed", compensation=comp, error=msg)
                failures.append(msg)
            if comp == Compensation.RESTART_SOURCE and self._down_to is None:
                self._down_to = workflow.now()
        return failures
