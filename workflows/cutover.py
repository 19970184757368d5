"""The application cutover: a saga with a rollback window, on Temporal.

Pre-checks -> warm sync (source serving) -> approval -> cutover steps (each registering its
compensation first) -> rollback window (durable timer; post-checks and rollback criteria on
an interval) -> finalize. Any failure, fired criterion or operator rollback unwinds the
registered compensations in reverse, shielded from cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, ValidationError

    from cutover import search_attributes as sa
    from cutover.catalog import (
        COMPENSATIONS,
        RUN_CHECK,
        TRAFFIC_STEPS,
        Compensation,
        FinalizeStep,
        Step,
        WarmStep,
    )
    from cutover.config import format_path
    from cutover.models import (
        INPUT_PLACEHOLDER,
        ApprovalRequest,
        CheckInput,
        CheckPhase,
        CheckResult,
        CutoverInput,
        CutoverResult,
        CutoverStatus,
        ExtendRequest,
        FinalizeRequest,
        Outcome,
        Phase,
        RollbackRequest,
        StepContext,
        StepInput,
        StepKind,
        StepRecord,
        StepResult,
        WorkflowInput,
    )
    from cutover.site import DataConsistencyProbe, DnsProbe, VSphereConcernsProbe
    from cutover.telemetry import BYTES_MOVED, CUTOVERS, DOWNTIME
    from cutover.templating import expand, values_for

R = TypeVar("R", bound=BaseModel)

#: Steps that move data for a long time: they heartbeat, and resume from it on retry.
_LONG = {
    WarmStep.PRE_COPY,
    WarmStep.INCREMENTAL_SYNC,
    Step.FINAL_DATA_SYNC,
    Step.CONVERT_IMAGE,
    Step.ATTACH_TARGET_STORAGE_PROFILE,
    # traffic steps wait on health checks and drains, heartbeating
    Step.UPDATE_LOAD_BALANCER,
    Compensation.RESTORE_LOAD_BALANCER,
    FinalizeStep.RETIRE_SOURCE_FROM_LOAD_BALANCER,
}
#: Errors no retry can fix; activities raise ApplicationError with these types.
NON_RETRYABLE = [
    "ConfigError",
    "StepNotImplemented",
    "IntegrityError",
    "InvalidState",
    "SmokeTestFailed",
    "TargetUnhealthy",
]


def workflow_id_for(application: str) -> str:
    """One workflow ID per application, so two cutovers of it can never run at once."""
    return f"cutover-{application}"


class _RollbackNow(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _cause(err: BaseException) -> str:
    """The innermost message of a Temporal failure chain, which is what a person needs."""
    while isinstance(err, FailureError) and err.cause is not None:
        err = err.cause
    if isinstance(err, ApplicationError) and err.type:
        return f"{err.type}: {err.message}"
    return str(err) or type(err).__name__


@workflow.defn(name="AppCutover")
class AppCutoverWorkflow:
    @workflow.init
    def __init__(self, inp: WorkflowInput) -> None:
        # Input that fails validation (e.g. typed into the Temporal UI's start form) arrives
        # as a plain dict; run() then fails the workflow with every field named, instead
        # of the workflow task failing forever on decoding.
        self._input_error: str | None = None
        if not isinstance(inp, CutoverInput):
            try:
                inp = CutoverInput.model_validate(inp)
            except ValidationError as exc:
                problems = [
                    (format_path(e["loc"]) or "(input)", e["msg"].removeprefix("Value error, "))
                    for e in exc.errors()
                ]
                self._input_error = "invalid cutover input: " + "; ".join(
                    f"{path}: {msg}" for path, msg in problems
                )
                inp = INPUT_PLACEHOLDER
        rb = inp.runbook
        self._inp = inp
        self._id = workflow.info().workflow_id
        self._phase = Phase.PENDING
        self._outcome = Outcome.RUNNING
        self._records: list[StepRecord] = []
        self._checks: dict[str, CheckResult] = {}
        self._streaks: dict[str, int] = {}
        self._compensations: list[str] = []
        self._facts: dict[str, str] = {}
        self._current: str | None = None
        self._approved_by: str | None = None
        self._rollback: RollbackRequest | None = None
        self._finalize: FinalizeRequest | None = None
        self._window = timedelta(minutes=rb.rollbackWindowMinutes)
        self._deadline: datetime | None = None
        self._wake = False
        self._down_from: datetime | None = None
        self._down_to: datetime | None = None
        self._rollback_reason: str | None = None
        self._reason = ""
        self._bytes_moved = 0
        # Steps get the site without its check catalog: checks travel in CheckInput, and
        # every activity input is stored in the history.
        self._step_site = inp.site.model_copy(update={"checks": {}})

    # ----------------------------------------------------------------- run

    @workflow.run
    async def run(self, _: WorkflowInput) -> CutoverResult:
        if self._input_error is not None:
            raise ApplicationError(self._input_error, type="ConfigError", non_retryable=True)
        inp = self._inp
        rb = inp.runbook
        expected_id = workflow_id_for(rb.application)
        # The workflow ID is what keeps two cutovers of one application apart; the UI's start
        # form takes any ID (it even offers a random one). Patched: runs that started under
        # another ID before this check replay unchanged.
        if self._id != expected_id and workflow.patched("workflow-id-is-application"):
            raise ApplicationError(
                f"this cutover must run as workflow ID {expected_id}, not {self._id}: one "
                f"workflow ID per application keeps two cutovers of {rb.application} from "
                "running at once; start it again with that ID",
                type="ConfigError",
                non_retryable=True,
            )
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

    # --------------------------------------------------------------- phases

    async def _warm_phase(self) -> None:
        self._set_phase(Phase.WARM_SYNC)
        for step in (WarmStep.SNAPSHOT_SOURCE, WarmStep.PRE_COPY):
            self._register_for(step)
            await self._step(step, "warm")
            self._raise_if_rollback()
        for n in range(1, self._inp.runbook.dataSync.incrementalPasses + 1):
            await self._step(WarmStep.INCREMENTAL_SYNC, "warm", pass_number=n)
            self._raise_if_rollback()

    async def _await_approval(self) -> None:
        if self._approved_by is None:
            self._set_phase(Phase.AWAITING_APPROVAL)
            timeout = self._inp.runbook.approval.timeoutMinutes
            try:
                await workflow.wait_condition(
                    lambda: self._approved_by is not None or self._rollback is not None,
                    timeout=timedelta(minutes=timeout) if timeout else None,
                    timeout_summary="approval timeout",
                )
            except TimeoutError:
                raise _RollbackNow(f"no approval within {timeout:g} minutes") from None
        self._raise_if_rollback()

    async def _cutover_steps(self) -> None:
        rb = self._inp.runbook
        self._set_phase(Phase.CUTOVER)
        self._down_from = workflow.now()
        for step in rb.cutoverSteps:
            self._raise_if_rollback()
            if step in TRAFFIC_STEPS and Step.QUIESCE_APPLICATION in rb.cutoverSteps:
                # Undoing a switch needs a live source to switch back to: register
                # "restart the source" above the traffic undo, so it unwinds first.
                self._register_for(step)
                self._register(Compensation.RESTART_SOURCE, again=True)
            else:
                self._register_for(step)
            await self._step(step, "step")
        self._down_to = workflow.now()

    async def _rollback_window(self) -> str | None:
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

    async def _evaluate_window(self) -> str | None:
        rb = self._inp.runbook
        await self._run_checks(rb.postChecks, "post")
        fired: list[str] = []
        for result in await self._run_checks(rb.rollbackCriteria, "criterion"):
            streak = 0 if result.passed else self._streaks.get(result.name, 0) + 1
            self._streaks[result.name] = streak
            if streak >= self._inp.site.checks[result.name].failAfter:
                fired.append(f"{result.describe()} ({streak} consecutive)")
        self._details()
        return "rollback criterion fired: " + "; ".join(fired) if fired else None

    async def _finalize_cutover(self) -> CutoverResult:
        rb = self._inp.runbook
        self._set_phase(Phase.FINALIZING)
        steps: list[str] = []
        retire_lb = Step.UPDATE_LOAD_BALANCER in rb.cutoverSteps
        # Retire the source from the LB before its NICs go: should a reload have put traffic
        # back on the source, retiring re-applies the switch first. Patched so that
        # cutovers already finalizing in the old order replay unchanged.
        lb_first = workflow.patched("retire-lb-before-nics")
        if retire_lb and lb_first:
            steps.append(FinalizeStep.RETIRE_SOURCE_FROM_LOAD_BALANCER)
        if Compensation.REMOVE_SOURCE_SNAPSHOT in self._compensations:
            steps.append(FinalizeStep.REMOVE_SOURCE_SNAPSHOT)
        if Step.QUIESCE_APPLICATION in rb.cutoverSteps:
            steps.append(FinalizeStep.DISCONNECT_SOURCE_NICS)
        steps.append(FinalizeStep.MARK_SOURCE_MIGRATED)
        if retire_lb and not lb_first:
            steps.append(FinalizeStep.RETIRE_SOURCE_FROM_LOAD_BALANCER)
        # The staged copies and converted images served the window (rollback, the
        # consistency check); the target's volumes are their own files: no debt left.
        leftovers = [
            c
            for c in (Compensation.REMOVE_CONVERTED_IMAGE, Compensation.DISCARD_STAGING)
            if c in self._compensations
        ]
        if leftovers and workflow.patched("discard-staging-at-finalize"):
            steps += leftovers
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

    async def _roll_back(self, reason: str) -> CutoverResult:
        self._rollback_reason = reason
        self._set_phase(Phase.ROLLING_BACK)
        self._log(logging.WARNING, "rolling back", reason=reason)
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

    async def _compensate(self) -> list[str]:
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

    # -------------------------------------------------------------- helpers

    def _register_for(self, step: str) -> None:
        comp = COMPENSATIONS.get(step)
        if comp is None and step == Step.FINAL_DATA_SYNC:
            comp = Compensation.DISCARD_STAGING
        if comp is not None:
            self._register(comp)

    def _register(self, comp: str, again: bool = False) -> None:
        if again or comp not in self._compensations:
            self._compensations.append(comp)

    def _raise_if_rollback(self) -> None:
        if self._rollback is not None:
            raise _RollbackNow(
                f"rollback requested by {self._rollback.requestedBy}: {self._rollback.reason}"
            )

    def _context(self) -> StepContext:
        return StepContext(
            workflowId=self._id,
            application=self._inp.runbook.application,
            wave=self._inp.runbook.wave_name,
            runbook=self._inp.runbook,
            site=self._step_site,
            facts=dict(self._facts),
        )

    async def _step(self, name: str, kind: StepKind, pass_number: int = 0) -> StepResult:
        inp = StepInput(step=name, context=self._context(), passNumber=pass_number)
        attempts = (
            self._inp.tuning.compensationAttempts
            if kind == "compensation"
            else self._inp.tuning.maxAttempts
        )
        label = f"{name} #{pass_number}" if pass_number else name
        result = await self._activity(label, kind, name, inp, StepResult, attempts)
        self._facts.update(result.facts)
        moved = result.details.get("bytesMoved")
        if isinstance(moved, int | float) and not isinstance(moved, bool):
            self._bytes_moved += int(moved)
        return result

    async def _activity(
        self, label: str, kind: StepKind, name: str, arg: Any, result_type: type[R], attempts: int
    ) -> R:
        t = self._inp.tuning
        record = StepRecord(name=label, kind=kind, startedAt=workflow.now())
        self._records.append(record)
        self._current = label
        self._details()
        try:
            result: R = await workflow.execute_activity(
                name,
                arg,
                result_type=result_type,
                start_to_close_timeout=timedelta(minutes=t.stepTimeoutMinutes),
                heartbeat_timeout=timedelta(seconds=t.heartbeatSeconds) if name in _LONG else None,
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=t.initialRetrySeconds),
                    maximum_interval=timedelta(seconds=t.maxRetrySeconds),
                    maximum_attempts=attempts,
                    non_retryable_error_types=NON_RETRYABLE,
                ),
                summary=f"{kind} {label} for {self._inp.runbook.application}",
            )
        except ActivityError as err:
            record.endedAt, record.outcome, record.error = workflow.now(), "failed", _cause(err)
            self._log(logging.WARNING, "step failed", step=label, kind=kind, error=record.error)
            raise
        record.endedAt, record.outcome = workflow.now(), "ok"
        if isinstance(result, StepResult):
            record.attempts, record.changed = result.attempt, result.changed
            moved = result.details.get("bytesMoved")
            if isinstance(moved, int) and not isinstance(moved, bool):
                record.bytesMoved = moved
        return result

    async def _run_checks(self, names: list[str], phase: CheckPhase) -> list[CheckResult]:
        async def one(name: str) -> CheckResult:
            probe = expand(self._inp.site.checks[name], values_for(self._inp.runbook, self._facts))
            about_vms = isinstance(probe, VSphereConcernsProbe)
            inp = CheckInput(
                name=name,
                phase=phase,
                application=self._inp.runbook.application,
                probe=probe,
                runbook=self._inp.runbook if about_vms else None,
                vcenter=self._inp.site.vcenter if about_vms else None,
                dns=self._inp.site.dns if isinstance(probe, DnsProbe) else None,
                context=self._context() if isinstance(probe, DataConsistencyProbe) else None,
            )
            try:
                res = await self._activity(name, "check", RUN_CHECK, inp, CheckResult, 3)
            except ActivityError as err:
                res = CheckResult(name=name, phase=phase, passed=False, detail=_cause(err))
            res.at = workflow.now()
            self._checks[name] = res
            if phase == "pre":
                self._facts.update(res.facts)
            return res

        return list(await asyncio.gather(*(one(n) for n in names)))

    def _set_phase(self, phase: Phase, *more: SearchAttributeUpdate[Any]) -> None:
        self._phase = phase
        workflow.upsert_search_attributes([sa.PHASE.value_set(phase.value), *more])
        self._details()

    def _details(self) -> None:
        """What the Temporal UI shows as the workflow's current details (markdown).

        Served by the SDK's metadata query: no command, no history event, so changing the
        text never affects replay. It says what the cutover waits for and how to act on
        it, from the UI (More Actions -> Send an Update) or the CLI.
        """
        rb = self._inp.runbook
        lines = [f"**{rb.application}** (wave {rb.wave_name}): {self._phase.value}"]
        if self._phase == Phase.AWAITING_APPROVAL:
            lines += [
                f"waiting for approval by one of: {', '.join(rb.approval.approvers)}",
                'approve: Update `approve` with `{"approver": "NAME"}` '
                f"(CLI: `cutover approve {self._id} --as NAME`); "
                'abort: Update `rollback` with `{"reason": "..."}`',
            ]
        elif self._phase == Phase.ROLLBACK_WINDOW:
            if self._deadline:
                lines.append(f"rollback window closes {self._deadline:%Y-%m-%d %H:%M:%S} UTC")
            post = [self._checks[n] for n in rb.postChecks if n in self._checks]
            if post:
                passing = sum(1 for c in post if c.passed)
                lines.append(f"post-checks passing: {passing} of {len(rb.postChecks)}")
            lines.append(
                'Updates: `rollback` `{"reason": "..."}`, `extend` `{"minutes": 30}`'
                + (", `finalize` `{}`" if rb.approval.allowEarlyFinalize else "")
            )
        elif self._phase == Phase.DONE:
            lines.append(f"{self._outcome.value}: {self._reason}")
        elif self._current:
            lines.append(f"current: `{self._current}`")
        if self._rollback_reason:
            lines.append(f"rollback: {self._rollback_reason}")
        workflow.set_current_details("\n\n".join(lines))

    def _finish(
        self, outcome: Outcome, reason: str, left: list[str], failures: list[str] | None = None
    ) -> CutoverResult:
        self._outcome = outcome
        self._reason = reason
        self._current = None
        self._set_phase(Phase.DONE, sa.OUTCOME.value_set(outcome.value))
        downtime = None
        if self._down_from is not None:
            end = self._down_to or workflow.now()
            downtime = (end - self._down_from).total_seconds()
        self._log(
            logging.INFO,
            "cutover finished",
            outcome=outcome.value,
            reason=reason,
            downtime_seconds=downtime,
            bytes_moved=self._bytes_moved,
        )
        self._record_metrics(outcome, downtime)
        rb = self._inp.runbook
        return CutoverResult(
            workflowId=self._id,
            application=rb.application,
            wave=rb.wave_name,
            outcome=outcome,
            reason=reason,
            leftWhere=left,
            approvedBy=self._approved_by,
            downtimeSeconds=downtime,
            steps=self._records,
            checks=list(self._checks.values()),
            compensationFailures=failures or [],
        )

    def _log(self, level: int, msg: str, **fields: Any) -> None:
        """workflow.logger (silent during replay), bound to the application and wave."""
        rb = self._inp.runbook
        extra = {"application": rb.application, "wave": rb.wave_name, **fields}
        if self._current is not None:
            extra.setdefault("step", self._current)
        workflow.logger.log(level, msg, extra=extra)

    def _record_metrics(self, outcome: Outcome, downtime: float | None) -> None:
        """Our metrics, once per cutover. workflow.metric_meter() records nothing during
        replay and adds no command to the history, so this needs no patch."""
        meter = workflow.metric_meter().with_additional_attributes(
            {"wave": self._inp.runbook.wave_name}
        )
        meter.create_counter(CUTOVERS, "Cutovers ended, by outcome").add(
            1, {"outcome": outcome.value}
        )
        if downtime is not None:
            meter.create_histogram_float(
                DOWNTIME, "Downtime taken per cutover (quiesce to traffic switched)", "s"
            ).record(downtime, {"outcome": outcome.value})
        meter.create_counter(BYTES_MOVED, "Disk bytes moved to targets", "By").add(
            self._bytes_moved, {"outcome": outcome.value}
        )

    # ------------------------------------------------- queries and updates

    @workflow.query(
        description="Phase, steps, checks and registered compensations (`cutover status`)."
    )
    def status(self) -> CutoverStatus:
        rb = self._inp.runbook
        return CutoverStatus(
            workflowId=self._id,
            application=rb.application,
            wave=rb.wave_name,
            phase=self._phase,
            outcome=self._outcome,
            currentStep=self._current,
            approvedBy=self._approved_by,
            windowClosesAt=self._deadline,
            rollbackReason=self._rollback_reason,
            steps=self._records,
            checks=list(self._checks.values()),
            compensationsRegistered=list(self._compensations),
        )

    @workflow.update(
        description='Approve the cutover at its approval gate. Input: {"approver": "NAME", '
        '"comment": "optional"}; NAME must be on the runbook\'s approvers list.'
    )
    def approve(self, req: ApprovalRequest) -> str:
        self._approved_by = req.approver
        self._log(logging.INFO, "approved", approver=req.approver)
        return f"approved by {req.approver}"

    @approve.validator
    def _validate_approve(self, req: ApprovalRequest) -> None:
        policy = self._inp.runbook.approval
        if not policy.required:
            _refuse("this cutover's runbook does not require approval")
        if self._approved_by is not None:
            _refuse(f"already approved by {self._approved_by}")
        if self._phase not in (
            Phase.PENDING,
            Phase.PRE_CHECKS,
            Phase.WARM_SYNC,
            Phase.AWAITING_APPROVAL,
        ):
            _refuse(f"nothing to approve in phase {self._phase.value}")
        if req.approver not in policy.approvers:
            _refuse(
                f"'{req.approver}' is not an allowed approver for "
                f"{self._inp.runbook.application} (allowed: {', '.join(policy.approvers)})"
            )

    @workflow.update(
        description='Roll back to the source now. Input: {"reason": "why", "requestedBy": '
        '"NAME"}. Refused once finalizing has begun.'
    )
    def rollback(self, req: RollbackRequest) -> str:
        self._rollback = req
        self._wake = True
        return f"rollback requested by {req.requestedBy}"

    @rollback.validator
    def _validate_rollback(self, req: RollbackRequest) -> None:
        if self._phase in (Phase.FINALIZING, Phase.DONE):
            _refuse(
                f"rollback refused: the cutover is {self._phase.value.lower()} "
                f"({self._outcome.value}); after finalize the source is retired"
            )
        if self._phase == Phase.ROLLING_BACK:
            _refuse("already rolling back")

    @workflow.update(
        description='Extend the rollback window. Input: {"minutes": 30, "requestedBy": "NAME"}.'
    )
    def extend(self, req: ExtendRequest) -> str:
        self._window += timedelta(minutes=req.minutes)
        if self._deadline is not None:
            self._deadline += timedelta(minutes=req.minutes)
        self._wake = True
        self._details()
        return f"rollback window extended by {req.minutes:g} minutes"

    @extend.validator
    def _validate_extend(self, req: ExtendRequest) -> None:
        if self._phase in (Phase.FINALIZING, Phase.DONE, Phase.ROLLING_BACK):
            _refuse(f"cannot extend: the cutover is in phase {self._phase.value}")

    @workflow.update(
        description='Finalize before the rollback window closes. Input: {"requestedBy": "NAME"} '
        "or {}. Only in the window, when the runbook allows it and post-checks pass."
    )
    def finalize(self, req: FinalizeRequest) -> str:
        self._finalize = req
        self._wake = True
        return f"finalize requested by {req.requestedBy}"

    @finalize.validator
    def _validate_finalize(self, req: FinalizeRequest) -> None:
        if self._phase != Phase.ROLLBACK_WINDOW:
            _refuse(f"finalize is possible only in the rollback window (phase {self._phase.value})")
        if not self._inp.runbook.approval.allowEarlyFinalize:
            _refuse("this runbook does not allow finalizing before the window closes")
        failing = [
            n
            for n in self._inp.runbook.postChecks
            if n not in self._checks or not self._checks[n].passed
        ]
        if failing:
            _refuse("post-checks not passing yet: " + ", ".join(failing))


def _refuse(message: str) -> NoReturn:
    raise ApplicationError(message, type="Refused", non_retryable=True)
