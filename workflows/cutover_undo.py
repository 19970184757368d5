"""Finalize and rollback of `safety-v2` runs: finalize steps in order, undos in reverse
(held back when their precondition does not hold), and the bounded wait for `resume` when
either is blocked.

A mixin of `workflows.cutover.AppCutoverWorkflow`: its methods use the workflow's state and
steps through `_Cutover`, the part of the workflow they need (checked by mypy).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Protocol

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.cutover_text import cause as _cause
from workflows.cutover_text import next_pass, where_left

with workflow.unsafe.imports_passed_through():
    from cutover import search_attributes as sa
    from cutover.catalog import (
        UNDO_ESTABLISHES,
        Compensation,
        FinalizeStep,
        Holds,
        Step,
        undo_blocked_by,
    )
    from cutover.models import (
        CutoverInput,
        CutoverResult,
        FinalizeRequest,
        Outcome,
        Phase,
        ResumeRequest,
        StepKind,
        StepRecord,
        StepResult,
    )


_TRAFFIC_UNDOS = frozenset({Compensation.RESTORE_LOAD_BALANCER, Compensation.RESTORE_DNS})


def _traffic_on(err: ActivityError) -> str:
    """Where a failed traffic undo said the traffic is (`trafficOn` in its error's details,
    as the load balancer's activities report it), else "unknown"."""
    cause = err.cause
    details = cause.details if isinstance(cause, ApplicationError) else ()
    first = details[0] if details else None
    return str(first.get("trafficOn", "unknown")) if isinstance(first, dict) else "unknown"


#: Registered above each traffic switch, run at most once per pass (one fact each).
_ONCE_PER_PASS = frozenset({Compensation.FENCE_TARGET, Compensation.REVERSE_SYNC})
_UNDO_OF = {
    Step.UPDATE_LOAD_BALANCER: Compensation.RESTORE_LOAD_BALANCER,
    Step.UPDATE_DNS: Compensation.RESTORE_DNS,
}


class _Cutover(Protocol):
    """What of `AppCutoverWorkflow` finalize and rollback use."""

    _inp: CutoverInput
    _finalize: FinalizeRequest | None
    _resume: ResumeRequest | None
    _cancel_requested: bool
    _outcome: Outcome
    _left: list[str]
    _once: bool
    _compensations: list[str]
    _records: list[StepRecord]
    _down_to: datetime | None
    _target_fenced: bool
    _target_written: int | None
    _target_writes: str | None
    _discarded_by: str | None
    _moved_back: set[str]
    _traffic_unsure: set[str]

    def _set_phase(self, phase: Phase, *more: SearchAttributeUpdate[Any]) -> None: ...
    def _log(self, level: int, msg: str, **fields: Any) -> None: ...
    def _finish(
        self, outcome: Outcome, reason: str, left: list[str], failures: list[str] | None = None
    ) -> CutoverResult: ...
    def _dns_configured(self) -> bool: ...
    async def _step(self, name: str, kind: StepKind, pass_number: int = 0) -> StepResult: ...
    async def _blocked(self, phase: Phase, left: list[str]) -> bool: ...
    async def _compensate_v2(self, pending: list[str]) -> list[tuple[str, str]]: ...
    async def _unfence(self) -> list[tuple[str, str]]: ...
    async def _stop_source_then_unfence(self) -> list[tuple[str, str]]: ...
    def _target_writes_fate(self, comp: str, result: StepResult) -> None: ...
    async def _back_to_target(self, left: list[tuple[str, str]]) -> list[tuple[str, str]]: ...
    def _paths_on_target(self) -> bool: ...


class CutoverUndo:
    """The `safety-v2` finalize steps, rollback (unwind) and blocked waits."""

    # What these methods assign (declared here so mypy types them as the workflow does).
    _resume: ResumeRequest | None
    _outcome: Outcome
    _left: list[str]
    _once: bool
    _down_to: datetime | None
    #: the last rollback pass left the target paused (fence_target ran, not undone)
    _target_fenced: bool = False
    _target_written: int | None
    _target_writes: str | None
    _discarded_by: str | None

    async def _finalize_steps(self: _Cutover, steps: list[str]) -> CutoverResult:
        """Finalize in order; a failed step stops the ones after it (they retire the source
        further) until an operator resumes, bounded; the result says what is left."""
        how = (
            f"finalized early by {self._finalize.requestedBy}"
            if self._finalize
            else "rollback window closed healthy"
        )
        i = 0
        while i < len(steps):
            try:
                result = await self._step(steps[i], "finalize")
            except ActivityError as err:
                left = [
                    f"finalize step {steps[i]} failed: {_cause(err)}",
                    "not run yet: " + ", ".join(steps[i:]),
                    "the target serves the application; the source is not retired further "
                    "until these run",
                    f"fix the cause, then resume: Update `resume` (CLI: `cutover resume "
                    f"{self._inp.runbook.application}`)",
                ]
                if await self._blocked(Phase.FINALIZE_BLOCKED, left):
                    self._set_phase(Phase.FINALIZING)
                    continue
                return self._finish(
                    Outcome.COMPLETED,
                    f"{how}; finalize incomplete",
                    ["finalize incomplete:", *self._left],
                )
            written = result.details.get("targetWrittenBytes")
            if steps[i] == FinalizeStep.COMMIT_TARGET_OVERLAY and isinstance(written, int):
                self._target_written = written
                self._target_writes = "kept: merged into the target's disks at finalize"
            i += 1
        return self._finish(
            Outcome.COMPLETED, how, ["the target serves the application", "the source is retired"]
        )

    async def _blocked(self: _Cutover, phase: Phase, left: list[str]) -> bool:
        """Wait, bounded, for an operator's `resume`; False when the wait ended without one
        (time bound or a cancel request). The phase and search attributes say so meanwhile."""
        self._left = left
        if phase == Phase.ROLLBACK_BLOCKED:
            self._outcome = Outcome.FAILED
        self._set_phase(phase, sa.OUTCOME.value_set(self._outcome.value))
        self._log(logging.ERROR, "blocked: waiting for an operator", left=left)
        hours = self._inp.tuning.blockedWaitHours
        self._resume = None
        try:
            await workflow.wait_condition(
                lambda: self._resume is not None or self._cancel_requested,
                timeout=timedelta(hours=hours),
                timeout_summary=f"{phase.value}: waiting for resume",
            )
        except TimeoutError:
            self._left.append(f"nobody resumed within {hours:g} h: the workflow ended here")
            return False
        if self._resume is None:
            self._left.append("the workflow was cancelled while waiting for resume")
            return False
        self._log(logging.INFO, "resumed", requested_by=self._resume.requestedBy)
        self._left = []
        self._outcome = Outcome.RUNNING
        return True

    async def _unwind(self: _Cutover, reason: str) -> CutoverResult:
        """Undo in reverse; an undo whose precondition does not hold is held back (never
        destroy what may serve), and a blocked rollback waits for an operator's `resume`."""
        if not self._compensations:
            return self._finish(
                Outcome.ROLLED_BACK, reason, ["nothing was changed: the source still serves"]
            )
        pending = list(reversed(self._compensations))
        self._once = workflow.patched("one-source-restart-per-pass")
        if self._dns_configured() and Compensation.RESTORE_DNS not in pending:
            # The TTL was lowered for the cutover (`cutover lower-ttl`) but the name never
            # moved: put the TTL from before back (restore_dns does that when it runs).
            pending.append(FinalizeStep.RESTORE_DNS_TTL)
        while True:
            left = await self._compensate_v2(pending)
            if not left:
                return self._finish(
                    Outcome.ROLLED_BACK,
                    reason,
                    ["the source serves the application again", "the target was removed"],
                )
            # a start that failed may have started it: stop it before writing under it,
            # only when no user can be on it
            stop_first = (
                any(c == Compensation.RESTART_SOURCE and w.startswith("failed") for c, w in left)
                and Compensation.REVERSE_SYNC in self._compensations
                and self._paths_on_target()
            )
            then = next_pass(left, self._compensations, False, stop_first)
            where = where_left(left, self._compensations, self._inp, self._target_fenced, then)
            if not await self._blocked(Phase.ROLLBACK_BLOCKED, where):
                return self._finish(
                    Outcome.FAILED,
                    reason,
                    ["rollback incomplete:", *self._left],
                    [f"{c}: {why}" for c, why in left],
                )
            if self._resume is not None and self._resume.discardTargetWrites:
                self._discarded_by = (
                    f"{self._resume.requestedBy}: {self._resume.reason or 'no reason given'}"
                )
                self._log(logging.WARNING, "target writes discarded", by=self._discarded_by)
            pending = next_pass(
                left, self._compensations, self._discarded_by is not None, stop_first
            )
            self._set_phase(Phase.ROLLING_BACK, sa.OUTCOME.value_set(Outcome.RUNNING.value))

    async def _compensate_v2(self: _Cutover, pending: list[str]) -> list[tuple[str, str]]:
        """Run `pending` undos in order; return each that failed or was held back, and why."""
        doubt: dict[Holds, set[str]] = {h: set() for h in Holds}
        # Not yet true in this pass until their undo runs in it: the target takes no
        # writes (unless still fenced from the last pass), its writes are on the source.
        # (A resumed pass must fence before it syncs, and sync before the source starts.)
        if Compensation.FENCE_TARGET in pending and not self._target_fenced:
            doubt[Holds.TARGET_FENCED].add(Compensation.FENCE_TARGET)
        if Compensation.REVERSE_SYNC in pending:
            doubt[Holds.TARGET_WRITES_KEPT].add(Compensation.REVERSE_SYNC)
        left: list[tuple[str, str]] = []
        # Whether the source runs is one fact per pass: `restart_source` is registered
        # again above each traffic switch, but once it ran (or failed for good) in this pass,
        # a second registration must neither repeat its retries nor, succeeding late, let
        # one traffic path move back while another was held (users split across two sides).
        # The same holds for the fence registered above it.
        restarted: bool | None = None
        fence_tried = False
        moved_back = False
        tried: set[str] = set()
        for comp in pending:
            establishes = UNDO_ESTABLISHES.get(comp)
            if comp == Compensation.RESTART_SOURCE and restarted is not None and self._once:
                continue
            if comp in _ONCE_PER_PASS and comp in tried:
                continue
            tried.add(comp)
            blocked = undo_blocked_by(comp, {h for h, by in doubt.items() if by})
            if blocked:
                why = "held back: needs " + " and ".join(h.value for h in blocked)
                now = workflow.now()
                self._records.append(
                    StepRecord(
                        name=comp,
                        kind="compensation",
                        startedAt=now,
                        endedAt=now,
                        outcome="skipped",
                        error=why,
                    )
                )
                self._log(logging.ERROR, "compensation held back", compensation=comp, why=why)
            else:
                if comp == Compensation.FENCE_TARGET:
                    fence_tried = True
                try:
                    result = await self._step(comp, "compensation")
                except ActivityError as err:
                    why = f"failed: {_cause(err)}"
                    self._log(logging.ERROR, "compensation failed", compensation=comp, error=why)
                    if comp in _TRAFFIC_UNDOS and _traffic_on(err) != "target":
                        self._traffic_unsure.add(comp)  # it may have moved traffic back
                else:
                    self._target_writes_fate(comp, result)
                    if establishes is not None:
                        doubt[establishes].discard(comp)
                    if comp == Compensation.FENCE_TARGET:
                        self._target_fenced = True
                    elif comp == Compensation.REMOVE_TARGET_DOMAIN:
                        self._target_fenced = False
                    elif comp == Compensation.RESTART_SOURCE:
                        restarted = True
                        if self._down_to is None:
                            self._down_to = workflow.now()
                    elif comp in _TRAFFIC_UNDOS:
                        moved_back = True
                        self._moved_back.add(comp)
                        self._traffic_unsure.discard(comp)
                    continue
            if establishes is not None:
                doubt[establishes].add(comp)
            left.append((comp, why))
            if comp == Compensation.RESTART_SOURCE:
                restarted = False
                if fence_tried:
                    # The source did not start: the target, holding the data, serves again
                    # while the rollback waits (it is fenced again before the next start).
                    # A start that failed may have landed (a power-on whose answer was
                    # lost): the source is stopped first, so two VMs with one address never
                    # run at once, but only while every path surely points at the target
                    # (none moved back in an earlier pass: then the source may serve).
                    if (
                        not blocked
                        and workflow.patched("stop-source-before-unfence")
                        and self._paths_on_target()
                    ):
                        left += await self._stop_source_then_unfence()
                    else:
                        left += await self._unfence()
        if (
            self._target_fenced
            and restarted
            and not moved_back
            and any(c in _TRAFFIC_UNDOS for c, _ in left)
            and self._paths_on_target()
        ):
            left = await self._back_to_target(left)
        return left

    async def _back_to_target(self: _Cutover, left: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """No traffic path moved back, so users write only to the fenced target, and none
        reached the restarted source: stop the source again and unfence the target, back
        to where the pass began (a resume starts the source again). Never two live sides:
        when the source does not stop, the target stays fenced."""
        try:
            await self._step(Step.QUIESCE_APPLICATION, "compensation")
        except ActivityError as err:
            why = f"failed: {_cause(err)}"
            self._log(logging.ERROR, "stopping the source again failed", error=why)
            return [*left, (Step.QUIESCE_APPLICATION, why)]
        again = (Compensation.RESTART_SOURCE, "stopped again: no traffic could move back to it")
        return [again, *left, *await self._unfence()]

    def _paths_on_target(self: _Cutover) -> bool:
        """Whether every traffic path surely points at the target: its switch completed
        and no undo moved it back. Only then may the source be stopped again (a switch
        that failed may never have landed: its users would still be on the source)."""
        if self._traffic_unsure and workflow.patched("traffic-undo-failure-where"):
            # a traffic undo failed without saying traffic stayed on the target (the load
            # balancer's says where it is; one whose change landed before it failed did
            # move users back): the source may be serving, never stop it then
            return False
        switched = {s.name for s in self._records if s.kind == "step" and s.outcome == "ok"}
        return all(
            step in switched and _UNDO_OF[step] not in self._moved_back
            for step in _UNDO_OF
            if _UNDO_OF[step] in self._compensations
        )

    def _target_writes_fate(self: _Cutover, comp: str, result: StepResult) -> None:
        """What became of the target's writes, from the undo that settled it."""
        written = result.details.get("targetWrittenBytes")
        if not isinstance(written, int) or isinstance(written, bool):
            return
        if comp == Compensation.REVERSE_SYNC:
            self._target_written = written
            self._target_writes = "kept: written back to the source before it started"
        elif comp == Compensation.REMOVE_TARGET_DOMAIN and self._target_writes is None:
            self._target_written = written
            if Compensation.REVERSE_SYNC in self._compensations and self._discarded_by:
                why = f"the operator said so ({self._discarded_by})"
            elif Compensation.FENCE_TARGET in self._compensations:
                why = "the runbook says rollback.reverseSync: false"
            else:
                why = "no user reached the target (rolled back before the traffic switch)"
            self._target_writes = f"discarded: {why}"

    async def _stop_source_then_unfence(self: _Cutover) -> list[tuple[str, str]]:
        """Stop the source whose start failed (a no-op when it is off), then unfence the
        target; when the source may not be off, the target stays fenced (no two live
        sides with one address; users get errors until someone looks)."""
        try:
            await self._step(Step.QUIESCE_APPLICATION, "compensation")
        except ActivityError as err:
            why = f"failed: {_cause(err)}: the target stays fenced (the source may run)"
            self._log(logging.ERROR, "stopping the source before the unfence failed", error=why)
            return [(Step.QUIESCE_APPLICATION, why)]
        return await self._unfence()

    async def _unfence(self: _Cutover) -> list[tuple[str, str]]:
        """Resume the fenced target; what failed, if it did."""
        try:
            await self._step(Compensation.UNFENCE_TARGET, "compensation")
        except ActivityError as err:
            why = f"failed: {_cause(err)}"
            self._log(logging.ERROR, "unfencing the target failed", error=why)
            return [(Compensation.UNFENCE_TARGET, why)]
        self._target_fenced = False
        return []
