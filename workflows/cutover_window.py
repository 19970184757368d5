"""The rollback window of `safety-v2` runs: rounds of post-checks and rollback criteria,
finalize on fresh evidence only, and continue-as-new before the history grows too long.

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

from workflows.cutover_text import rollback_text

with workflow.unsafe.imports_passed_through():
    from cutover import search_attributes as sa
    from cutover.models import (
        CheckPhase,
        CheckResult,
        CutoverInput,
        FinalizeRequest,
        Outcome,
        Phase,
        RollbackRequest,
        StepRecord,
        WindowCarry,
    )

#: Window-check records kept beside the first and the last round: failures, up to this many.
_KEPT_FAILED_CHECKS = 50


class _Cutover(Protocol):
    """What of `AppCutoverWorkflow` the rollback window uses."""

    _inp: CutoverInput
    _v2: bool
    _rollback: RollbackRequest | None
    _finalize: FinalizeRequest | None
    _finalize_verdict: tuple[bool, str] | None
    _cancel_requested: bool
    _window: timedelta
    _deadline: datetime | None
    _next_eval: datetime | None
    _wake: bool
    _rounds: int
    _last_round: list[StepRecord]
    _records: list[StepRecord]
    _checks: dict[str, CheckResult]
    _streaks: dict[str, int]
    _compensations: list[str]
    _facts: dict[str, str]
    _approved_by: str | None
    _down_from: datetime | None
    _down_to: datetime | None
    _bytes_moved: int
    _snapshot_at: datetime | None
    _by_ref: bool
    _nonces: dict[str, datetime]
    _started_by: str | None

    def _set_phase(self, phase: Phase, *more: SearchAttributeUpdate[Any]) -> None: ...
    def _log(self, level: int, msg: str, **fields: Any) -> None: ...
    def _details(self) -> None: ...
    async def _run_checks(self, names: list[str], phase: CheckPhase) -> list[CheckResult]: ...
    def _failing_post_checks(self) -> list[str]: ...
    async def _round(self) -> str | None: ...
    async def _decide_finalize(self) -> str | None: ...
    def _history_full(self) -> bool: ...
    async def _continue_window_as_new(self) -> None: ...
    def _keep_round(self, round_records: list[StepRecord]) -> None: ...
    async def _evaluate_window(self) -> str | None: ...


class CutoverWindow:
    """The `safety-v2` rollback window, its rounds and its continue-as-new carry."""

    # What these methods assign (declared here so mypy types them as the workflow does).
    _deadline: datetime | None
    _next_eval: datetime | None
    _wake: bool
    _finalize: FinalizeRequest | None
    _finalize_verdict: tuple[bool, str] | None
    _rounds: int
    _last_round: list[StepRecord]
    _records: list[StepRecord]
    _checks: dict[str, CheckResult]
    _streaks: dict[str, int]
    _compensations: list[str]
    _facts: dict[str, str]
    _approved_by: str | None
    _down_from: datetime | None
    _down_to: datetime | None
    _bytes_moved: int
    _snapshot_at: datetime | None

    async def _window_v2(self: _Cutover) -> str | None:
        """The window, bounded: rounds an operator's rollback interrupts at once, finalize on
        fresh evidence only, and continue-as-new before the history grows past its limits."""
        rb = self._inp.runbook
        if self._deadline is None or self._next_eval is None:  # not continued from a run
            self._set_phase(Phase.ROLLBACK_WINDOW)
            self._deadline = workflow.now() + self._window
            self._next_eval = workflow.now()
        interval = timedelta(seconds=rb.checkIntervalSeconds)
        last_started: datetime | None = None
        while True:
            if self._rollback is not None:
                return rollback_text(self._rollback)
            if self._finalize is not None:
                fired = await self._decide_finalize()
                self._next_eval = workflow.now() + interval
                if fired is None and self._finalize is not None:
                    return None
                if fired:
                    return fired
                continue
            now = workflow.now()
            if now >= self._deadline:
                break
            if now >= self._next_eval:
                last_started = now
                fired = await self._round()
                if fired:
                    return fired
                self._next_eval = workflow.now() + interval
                if self._history_full():
                    await self._continue_window_as_new()
                continue
            self._wake = False
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self._wake,
                    timeout=min(self._next_eval, self._deadline) - now,
                    timeout_summary="rollback window",
                )
        stale = last_started is None or last_started < self._deadline - interval
        if stale and workflow.patched("fresh-round-at-close"):
            # The last round started long before the close (it waited on a dead worker's
            # check, say): decide on evidence from the end of the window, not its start.
            fired = await self._round()
            if fired:
                return fired
        failing = self._failing_post_checks()
        if failing:
            return "rollback window closed with post-checks failing: " + "; ".join(failing)
        return None

    def _failing_post_checks(self: _Cutover) -> list[str]:
        failing: list[str] = []
        for name in self._inp.runbook.postChecks:
            res = self._checks.get(name)
            # (a window result may carry phase "criterion": the same check can be both)
            if res is None or res.phase == "pre":
                failing.append(f"{name} not evaluated in the window")
            elif not res.passed:
                failing.append(res.describe())
        return failing

    async def _round(self: _Cutover) -> str | None:
        """One round of post-checks and criteria. A rollback request (an operator's, or a
        cancel) cancels the round's in-flight checks at once instead of waiting for it."""
        task = asyncio.ensure_future(self._evaluate_window())
        try:
            await workflow.wait_condition(lambda: task.done() or self._rollback is not None)
        finally:
            if not task.done():
                task.cancel()
        if not task.done() or task.cancelled():
            return None
        return task.result()

    async def _decide_finalize(self: _Cutover) -> str | None:
        """A finalize request proceeds on fresh evidence only: a round that starts after the
        request, with every post-check passing and no criterion firing. Returns why to roll
        back (a criterion fired), or None; `self._finalize` stays set only when accepted."""
        fired = await self._round()
        failing = self._failing_post_checks()
        if fired:
            verdict = f"finalize refused: {fired}; rolling back"
        elif self._rollback is not None:
            verdict = "finalize refused: " + rollback_text(self._rollback)
        elif failing:
            verdict = (
                "finalize refused: the check round that started after the request failed: "
                + "; ".join(failing)
            )
        else:
            self._finalize_verdict = (True, "finalizing: a fresh check round passed")
            return None
        self._finalize_verdict = (False, verdict)
        self._finalize = None
        self._log(logging.WARNING, "finalize refused", reason=verdict)
        return fired

    def _history_full(self: _Cutover) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self._inp.tuning.continueAsNewEvents
        )

    async def _continue_window_as_new(self: _Cutover) -> None:
        """Carry the window into a new run (same workflow ID) so that a 30-day window with
        unlimited extends stays inside Temporal's history limits. Returns (without
        continuing) when a request came in meanwhile: the loop acts on it first."""
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._rollback is not None or self._finalize is not None or self._cancel_requested:
            return
        assert self._deadline is not None and self._next_eval is not None
        if self._rounds > 1:  # this run's last round is not the cutover's last
            drop = {id(r) for r in self._last_round if r.outcome != "failed"}
            self._records = [r for r in self._records if id(r) not in drop]
        carry = WindowCarry(
            compensations=self._compensations,
            facts=self._facts,
            records=self._records,
            checks=list(self._checks.values()),
            streaks=self._streaks,
            approvedBy=self._approved_by,
            deadline=self._deadline,
            nextEval=self._next_eval,
            downFrom=self._down_from,
            downTo=self._down_to,
            bytesMoved=self._bytes_moved,
            rounds=self._rounds,
            snapshotTakenAt=self._snapshot_at,
            nonces=dict(self._nonces),
            startedBy=self._started_by,
        )
        self._log(logging.INFO, "rollback window continues as new", rounds=self._rounds)
        # A site resolved from the worker's config is resolved again by the next run.
        update: dict[str, Any] = {"carry": carry, **({"site": None} if self._by_ref else {})}
        workflow.continue_as_new(self._inp.model_copy(update=update))

    def _restore(self: _Cutover, c: WindowCarry) -> None:
        self._compensations = list(c.compensations)
        self._facts = dict(c.facts)
        self._records = list(c.records)
        self._checks = {r.name: r for r in c.checks}
        self._streaks = dict(c.streaks)
        self._approved_by = c.approvedBy
        self._deadline, self._next_eval = c.deadline, c.nextEval
        self._down_from, self._down_to = c.downFrom, c.downTo
        self._bytes_moved, self._rounds = c.bytesMoved, c.rounds
        self._snapshot_at = c.snapshotTakenAt
        self._nonces, self._started_by = dict(c.nonces), c.startedBy
        rb = self._inp.runbook
        self._set_phase(
            Phase.ROLLBACK_WINDOW,
            sa.WAVE.value_set(rb.wave_name),
            sa.APPLICATION.value_set(rb.application),
            sa.OUTCOME.value_set(Outcome.RUNNING.value),
        )

    def _keep_round(self: _Cutover, round_records: list[StepRecord]) -> None:
        """Bound what the window keeps: the first round, the last one, and failed checks
        (up to a limit); counters say how many rounds ran."""
        self._rounds += 1
        if self._rounds > 2:
            failed = sum(1 for r in self._records if r.kind == "check" and r.outcome == "failed")
            drop = {
                id(r)
                for r in self._last_round
                if r.outcome != "failed" or failed > _KEPT_FAILED_CHECKS
            }
            self._records = [r for r in self._records if id(r) not in drop]
        if self._rounds > 1:
            self._last_round = round_records

    async def _evaluate_window(self: _Cutover) -> str | None:
        rb = self._inp.runbook
        first = len(self._records)
        await self._run_checks(rb.postChecks, "post")
        fired: list[str] = []
        for result in await self._run_checks(rb.rollbackCriteria, "criterion"):
            streak = 0 if result.passed else self._streaks.get(result.name, 0) + 1
            self._streaks[result.name] = streak
            if streak >= self._inp.resolved_site.checks[result.name].failAfter:
                fired.append(f"{result.describe()} ({streak} consecutive)")
        if self._v2:
            self._keep_round(self._records[first:])
        self._details()
        return "rollback criterion fired: " + "; ".join(fired) if fired else None
