"""A wave: applications' cutovers as child workflows, under a concurrency cap, in dependency
order, with a failure threshold (blast radius), approval, pause/resume/cancel.

Continue-as-new by draining: after `continueAsNewAfter` cutovers finished in one run (or
when Temporal suggests it), the wave stops starting cutovers, waits for the running ones to
finish, and continues as new with what it knows (every application's summary, the ones not
started yet, approval, pause, cancel and stop state). A child's result can be awaited only
by the run that started it, so a run never continues-as-new with a child running: nothing
has to be re-attached, and no result is lost or read twice. The price is a drain at each
boundary (the cap is briefly under-used); `continueAsNewAfter` sets how often.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any, NoReturn

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate, WorkflowIDReusePolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    WorkflowAlreadyStartedError,
)

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, ValidationError

    from cutover import search_attributes as sa
    from cutover import signing
    from cutover.catalog import APPEND_AUDIT_RECORD, RESOLVE_SITE
    from cutover.errors import ErrorKind
    from cutover.models import (
        ApprovalRequest,
        AuditAppend,
        AuditAppended,
        CutoverResult,
        Outcome,
        SiteLookup,
    )
    from cutover.policy import Action
    from cutover.site import SiteConfig
    from cutover.wave import (
        AWAIT_CUTOVER,
        FINISHED,
        REQUEST_ROLLBACK,
        WAVE_INPUT_PLACEHOLDER,
        WITHOUT_RULES,
        AppState,
        AppSummary,
        CancelRequest,
        CutoverRollback,
        CutoverWait,
        PauseRequest,
        WaveApp,
        WaveCarry,
        WaveInput,
        WaveOutcome,
        WavePhase,
        WaveResult,
        WaveStatus,
        WaveWorkflowInput,
        counts_of,
        figures,
        input_problems,
        recovery_seconds,
        workflow_id_for_wave,
    )
    from workflows import trust
    from workflows.cutover import AppCutoverWorkflow, _cause, workflow_id_for

_STATE_OF = {
    Outcome.COMPLETED: AppState.COMPLETED,
    Outcome.ROLLED_BACK: AppState.ROLLED_BACK,
    Outcome.FAILED: AppState.FAILED,
}
_REASON_MAX = 300
#: A dependency in one of these states will never complete: its dependents are skipped.
_BLOCKING = (AppState.ROLLED_BACK, AppState.FAILED, AppState.SKIPPED, AppState.NOT_STARTED)
#: An input that breaks the wave's rules (`cutover.wave`) fails the wave; before, a worker
#: ran it (and hung or continued-as-new forever): such a run replays as it ran.
PATCH_INPUT_RULES = "wave-input-rules"
#: run() waits for running update handlers (a `cancel` sending rollbacks) before returning.
PATCH_WAIT_HANDLERS = "wave-waits-for-handlers"
#: A run continues as new without draining its running cutovers; the next awaits them.
PATCH_REATTACH = "wave-reattach"


def _short(text: str) -> str:
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."


@workflow.defn(name="Wave")
class WaveWorkflow:
    @workflow.init
    def __init__(self, inp: WaveWorkflowInput) -> None:
        self._input_error: str | None = None
        #: Breaks only the rules: what workers before them accepted (see PATCH_INPUT_RULES).
        self._rules_error: str | None = None
        if not isinstance(inp, WaveInput):
            raw = inp
            try:
                inp = WaveInput.model_validate(raw)
            except ValidationError as exc:
                error = "invalid wave input: " + "; ".join(input_problems(exc))
                try:
                    inp = WaveInput.model_validate(raw, context=WITHOUT_RULES)
                    self._rules_error = error
                except ValidationError:
                    self._input_error = error
                    inp = WAVE_INPUT_PLACEHOLDER
        self._inp = inp
        self._id = workflow.info().workflow_id
        carry = inp.carry or WaveCarry(apps=[])
        self._carry = carry
        # The carry holds the applications already dealt with; the ones not started yet are
        # described by the input alone (half the continue-as-new payload of a large wave).
        self._apps: dict[str, AppSummary] = {a.application: a for a in carry.apps}
        for a in inp.apps:
            self._apps.setdefault(
                a.application,
                AppSummary(
                    application=a.application,
                    workflowId=workflow_id_for(a.application),
                    dependsOn=a.dependsOn,
                ),
            )
        self._pending: dict[str, WaveApp] = {a.application: a for a in inp.apps}
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._finished_this_run = 0
        self._changed = False
        self._phase: WavePhase | None = None
        self._draining = False
        #: child starts in flight (a run does not continue as new under one)
        self._starting = 0
        # Issue 13: a wave whose input names its site takes only signed, authorized requests.
        self._signed = inp.site is None
        self._by_ref = False

    # ------------------------------------------------------------------ run

    @workflow.run
    async def run(self, _: WaveWorkflowInput) -> WaveResult:
        if self._input_error is not None:
            raise ApplicationError(
                self._input_error, type=ErrorKind.CONFIG_ERROR.value, non_retryable=True
            )
        if self._rules_error is not None and workflow.patched(PATCH_INPUT_RULES):
            raise ApplicationError(
                self._rules_error, type=ErrorKind.CONFIG_ERROR.value, non_retryable=True
            )
        if workflow.patched("site-by-reference"):
            await self._resolve_site()
        c, inp = self._carry, self._inp
        if c.startedAt is None:
            c.startedAt = workflow.now()
            if inp.windowSeconds is not None:
                c.notAfter = c.startedAt + timedelta(seconds=inp.windowSeconds)
        self._sync(sa.WAVE.value_set(inp.name), sa.OUTCOME.value_set(c.outcome.value))
        try:
            await self._drive()
        except asyncio.CancelledError:
            # A cancel request from Temporal (UI, `temporal workflow cancel`): the wave's
            # onCancel policy, as with `wave cancel`; the result says CANCELLED.
            if c.cancelledBy is None:
                c.cancelledBy, c.cancelPolicy = "a Temporal cancel request", inp.onCancel
                self._changed = True
                if c.cancelPolicy == "rollback":
                    await self._roll_back_running(f"wave {inp.name} cancelled", c.cancelledBy)
            await workflow.wait_condition(lambda: not self._running)
        if not workflow.all_handlers_finished() and workflow.patched(PATCH_WAIT_HANDLERS):
            # A `cancel` may still be sending rollbacks: its caller gets its answer, and no
            # rollback request is abandoned.
            await workflow.wait_condition(workflow.all_handlers_finished)
        result = self._finish()
        if self._by_ref:
            await self._audit_record(result.outcome.value)
        return result

    async def _resolve_site(self) -> None:
        """The worker's own site for the input's `siteRef` (issue 13), the applications
        checked against it; a new input carrying a site body is refused."""
        inp = self._inp
        if inp.site is not None:
            if inp.carry is not None:
                return  # a wave started before this rule: its children name its version
            raise ApplicationError(
                "the wave input carries a site body (`site`): workers act only on their own "
                "site configs. Name the site instead, with `siteRef: {name, digest}` "
                "(`cutover wave run --print-input` writes it)",
                type=ErrorKind.CONFIG_ERROR.value,
                non_retryable=True,
            )
        assert inp.siteRef is not None
        try:
            site = await workflow.execute_activity(
                RESOLVE_SITE,
                SiteLookup(siteRef=inp.siteRef, wave=inp.name),
                result_type=SiteConfig,
                start_to_close_timeout=timedelta(seconds=30),
                heartbeat_timeout=timedelta(seconds=inp.tuning.heartbeatSeconds),
                schedule_to_close_timeout=timedelta(minutes=5),
                retry_policy=RetryPolicy(
                    maximum_attempts=3, non_retryable_error_types=[ErrorKind.CONFIG_ERROR.value]
                ),
                summary=f"site {inp.siteRef}",
            )
        except ActivityError as err:
            raise ApplicationError(
                f"site {inp.siteRef.name}: {_cause(err)}",
                type=ErrorKind.CONFIG_ERROR.value,
                non_retryable=True,
            ) from None
        try:
            full = WaveInput.model_validate(
                {**inp.model_dump(mode="json", exclude={"site"}), "site": site}
            )
        except ValidationError as exc:
            raise ApplicationError(
                f"invalid wave input against site {inp.siteRef}: " + "; ".join(input_problems(exc)),
                type=ErrorKind.CONFIG_ERROR.value,
                non_retryable=True,
            ) from None
        if inp.carry is None:
            verdict = trust.check_request(
                site,
                workflow_id_for_wave(inp.name),  # a scheduled run's ID carries a timestamp
                "start",
                inp,
                named=None,
                apps=[trust.app_attributes(site, a.runbook)[0] for a in full.apps],
                now=workflow.now(),
                seen=(),
                args=trust.start_args(inp),
                max_age=_start_validity(inp),
            )
            if verdict.refusal is not None:
                raise ApplicationError(
                    f"start refused: {verdict.refusal}",
                    type=ErrorKind.REFUSED.value,
                    non_retryable=True,
                )
            # its cutovers record who started the wave (the verified signer)
            full = full.model_copy(update={"requestedBy": verdict.signer or inp.requestedBy})
            violations = [v for a in full.apps for v in trust.policy_problems(site, a.runbook)]
            if violations:
                raise ApplicationError(
                    "refused by workload policy: " + "; ".join(violations),
                    type=ErrorKind.CONFIG_ERROR.value,
                    non_retryable=True,
                )
        self._inp, self._by_ref = full, True

    def _check_request(self, action: Action, req: BaseModel, named: str | None) -> None:
        """Refuse (never entering the history) a request that is not signed by a known key,
        or that the access policy does not allow its signer on every application of the
        wave (issue 13)."""
        if not self._signed or not self._by_ref:
            return  # before issue 13: as it began; before the site is known: `_late_check`
        site = self._inp.resolved_site
        verdict = trust.check_request(
            site,
            self._id,
            action,
            req,
            named=named,
            apps=[trust.app_attributes(site, a.runbook)[0] for a in self._inp.apps],
            now=workflow.now(),
            seen=self._carry.nonces.keys(),
        )
        if verdict.refusal is not None:
            _refuse(f"{action} refused: {verdict.refusal}")

    async def _late_check(self, action: Action, req: BaseModel, named: str | None) -> None:
        """A request that came before the worker's site was resolved (the first instant of
        a run): checked once it is; refused then as a failed update."""
        if self._signed and not self._by_ref:
            await workflow.wait_condition(lambda: self._by_ref or self._phase == WavePhase.DONE)
            if not self._by_ref:
                _refuse(f"{action} refused: the wave ended before its site was resolved")
            self._check_request(action, req, named)

    def _accept(self, req: BaseModel) -> None:
        sig = getattr(req, "signature", None)
        if sig is None:
            return
        if sig.nonce in self._carry.nonces:
            _refuse(f"replayed: the signature by '{sig.signer}' (nonce {sig.nonce}) was used")
        now = workflow.now()
        horizon = signing.DEFAULT_MAX_AGE + signing.DEFAULT_MAX_SKEW
        kept = {n: t for n, t in self._carry.nonces.items() if now - t <= horizon}
        self._carry.nonces = {**kept, sig.nonce: now}

    async def _audit_record(self, outcome: str) -> None:
        """Append the wave's record to the worker's audit log (bounded; a failure is
        logged, the wave's result stands)."""
        try:
            await workflow.execute_activity(
                APPEND_AUDIT_RECORD,
                AuditAppend(kind="wave", outcome=outcome, wave=self._inp.name),
                result_type=AuditAppended,
                start_to_close_timeout=timedelta(minutes=2),
                heartbeat_timeout=timedelta(seconds=self._inp.tuning.heartbeatSeconds),
                schedule_to_close_timeout=timedelta(minutes=30),
                retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
                summary=f"audit record ({outcome})",
            )
        except ActivityError as err:
            workflow.logger.warning("the audit log has no record of this wave: %s", _cause(err))

    async def _drive(self) -> None:
        c, inp = self._carry, self._inp
        self._reattach()
        if inp.approval.required and c.approvedBy is None and c.cancelledBy is None:
            await workflow.wait_condition(
                lambda: c.approvedBy is not None or c.cancelledBy is not None,
                timeout_summary="wave approval",
            )
        while True:
            self._check_window()
            self._skip_blocked()
            if not self._stopping() and not c.paused:
                due = self._continue_as_new_due()
                if due and not self._draining and workflow.patched(PATCH_REATTACH):
                    # No drain: the next run waits for the running cutovers by their IDs,
                    # so no slot idles at the boundary (once no child start is in flight).
                    await workflow.wait_condition(
                        lambda: not self._starting and workflow.all_handlers_finished()
                    )
                    self._continue_as_new()
                self._draining = self._draining or due
                if not self._draining:
                    self._start_ready()
            self._sync()
            if not self._running:
                if not self._pending or self._stopping():
                    return
                if self._draining:
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    self._continue_as_new()
            self._changed = False
            timeout = None
            if c.notAfter is not None and not self._stopping():
                timeout = max(c.notAfter - workflow.now(), timedelta(milliseconds=1))
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self._changed, timeout=timeout, timeout_summary="maintenance window"
                )

    # -------------------------------------------------------------- helpers

    def _stopping(self) -> bool:
        return self._carry.cancelledBy is not None or self._carry.stopReason is not None

    def _continue_as_new_due(self) -> bool:
        if not self._pending:
            return False
        return (
            self._finished_this_run >= self._inp.continueAsNewAfter
            or workflow.info().is_continue_as_new_suggested()
        )

    def _check_window(self) -> None:
        c = self._carry
        due = c.notAfter is not None and workflow.now() >= c.notAfter
        if due and c.notAfter is not None and not self._stopping() and self._pending:
            c.stopReason = (
                f"the maintenance window closed at {c.notAfter.isoformat()} with "
                f"{len(self._pending)} application(s) not started"
            )
            c.outcome = WaveOutcome.WINDOW_CLOSED

    def _skip_blocked(self) -> None:
        """Dependents of an application that did not complete are skipped, transitively."""
        changed = True
        while changed:
            changed = False
            for name in list(self._pending):
                app = self._pending[name]
                bad = [d for d in app.dependsOn if self._apps[d].state in _BLOCKING]
                if bad:
                    dep = self._apps[bad[0]]
                    self._settle(
                        name,
                        AppState.SKIPPED,
                        f"dependency {dep.application} did not complete ({dep.state.value})",
                    )
                    changed = True

    def _start_ready(self) -> None:
        cap = self._inp.concurrency
        for name in list(self._pending):
            if len(self._running) >= cap:
                return
            app = self._pending[name]
            if all(self._apps[d].state == AppState.COMPLETED for d in app.dependsOn):
                del self._pending[name]
                self._running.add(name)
                summary = self._apps[name]
                summary.state = AppState.RUNNING
                summary.startedAt = workflow.now()
                task = asyncio.create_task(self._run_child(app))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _reattach(self) -> None:
        """The cutovers an earlier run started and left running (it continued as new without
        draining them): awaited by ID, in the slots they hold."""
        for name, summary in self._apps.items():
            if summary.state == AppState.RUNNING and name not in self._running:
                self._running.add(name)
                task = asyncio.create_task(self._await_earlier(name))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _await_earlier(self, name: str) -> None:
        summary = self._apps[name]
        try:
            result: CutoverResult = await workflow.execute_activity(
                AWAIT_CUTOVER,
                CutoverWait(workflowId=summary.workflowId),
                result_type=CutoverResult,
                heartbeat_timeout=timedelta(seconds=self._inp.tuning.heartbeatSeconds),
                # a cutover's window, extends and a blocked rollback fit in this bound
                start_to_close_timeout=timedelta(days=90),
                retry_policy=RetryPolicy(
                    maximum_interval=timedelta(minutes=1),
                    non_retryable_error_types=["CutoverFailed"],
                ),
                summary=f"await {summary.workflowId}",
            )
        except ActivityError as err:
            self._running.discard(name)
            self._done(name, AppState.FAILED, _cause(err))
            return
        self._finished(name, result)

    def _finished(self, name: str, result: CutoverResult) -> None:
        summary = self._apps[name]
        self._running.discard(name)
        summary.downtimeSeconds = result.downtimeSeconds
        summary.recoverySeconds = recovery_seconds(result)
        summary.bytesMoved = result.bytesMoved
        self._done(name, _STATE_OF.get(result.outcome, AppState.FAILED), result.reason)

    async def _run_child(self, app: WaveApp) -> None:
        name = app.application
        summary = self._apps[name]
        self._starting += 1
        try:
            handle = await workflow.start_child_workflow(
                AppCutoverWorkflow.run,
                self._inp.cutover_input(app),
                id=summary.workflowId,
                task_queue=workflow.info().task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                # Terminating a wave must never terminate a cutover mid-step (its
                # compensations would not run): children outlive a terminated wave.
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                static_summary=f"Cutover of {name} (wave {self._inp.name})",
            )
            self._starting -= 1
            c = self._carry
            if c.cancelledBy is not None and c.cancelPolicy == "rollback":
                # cancelled while this start was in flight: it rolls back like the others
                await self._request_rollback(
                    summary.workflowId, f"wave {self._inp.name} cancelled", c.cancelledBy
                )
            result: CutoverResult = await handle
        except WorkflowAlreadyStartedError:
            self._starting -= 1
            self._running.discard(name)
            self._settle(
                name,
                AppState.SKIPPED,
                f"not started: a cutover of {name} is already running ({summary.workflowId})",
            )
            return
        except ChildWorkflowError as err:
            self._running.discard(name)
            self._done(name, AppState.FAILED, f"the cutover workflow failed: {_cause(err)}")
            return
        self._finished(name, result)

    def _done(self, name: str, state: AppState, reason: str) -> None:
        self._settle(name, state, reason)
        self._finished_this_run += 1
        c = self._carry
        failed = (AppState.FAILED, AppState.ROLLED_BACK)
        bad = sum(1 for a in self._apps.values() if a.state in failed)
        if bad > self._inp.failureThreshold and c.stopReason is None and c.cancelledBy is None:
            c.stopReason = (
                f"failure threshold exceeded: {bad} cutover(s) failed or rolled back "
                f"(failureThreshold {self._inp.failureThreshold}); no new cutover starts"
            )
            c.outcome = WaveOutcome.STOPPED
            workflow.logger.warning("wave stopping", extra={"reason": c.stopReason})

    def _settle(self, name: str, state: AppState, reason: str) -> None:
        summary = self._apps[name]
        summary.state = state
        summary.reason = _short(reason)
        if state in FINISHED:
            summary.endedAt = workflow.now()
        self._pending.pop(name, None)
        self._changed = True

    def _current_phase(self) -> WavePhase:
        c = self._carry
        if self._phase == WavePhase.DONE:
            return WavePhase.DONE
        if self._inp.approval.required and c.approvedBy is None and c.cancelledBy is None:
            return WavePhase.AWAITING_APPROVAL
        if self._stopping():
            return WavePhase.STOPPING
        if c.paused:
            return WavePhase.PAUSED
        if self._draining:
            return WavePhase.DRAINING
        return WavePhase.RUNNING

    def _sync(self, *more: SearchAttributeUpdate[Any]) -> None:
        """Search attributes and current details, when the phase changed (each upsert is a
        history event)."""
        phase = self._current_phase()
        if phase != self._phase or more:
            self._phase = phase
            workflow.upsert_search_attributes([sa.PHASE.value_set(phase.value), *more])
        n = counts_of(list(self._apps.values()))
        workflow.set_current_details(
            f"**wave {self._inp.name}**: {phase.value}\n\n"
            f"{n.running} running, {n.pending} pending, {n.completed} completed, "
            f"{n.rolledBack} rolled back, {n.failed} failed, "
            f"{n.skipped + n.notStarted} not started"
            + (f"\n\n{self._carry.stopReason}" if self._carry.stopReason else "")
        )

    def _continue_as_new(self) -> NoReturn:
        c = self._carry
        c.apps = [a for a in self._apps.values() if a.state != AppState.PENDING]
        c.runs += 1
        workflow.logger.info(
            "wave continues as new",
            extra={"finished_this_run": self._finished_this_run, "pending": len(self._pending)},
        )
        workflow.continue_as_new(
            self._inp.model_copy(
                update={
                    "apps": list(self._pending.values()),
                    "carry": c,
                    # resolved again by the next run from the worker's own config
                    **({"site": None} if self._inp.siteRef is not None else {}),
                }
            )
        )

    def _finish(self) -> WaveResult:
        c = self._carry
        for name in list(self._pending):
            self._settle(name, AppState.NOT_STARTED, c.stopReason or "the wave was cancelled")
        apps = list(self._apps.values())
        n = counts_of(apps)
        if c.cancelledBy is not None:
            c.outcome = WaveOutcome.CANCELLED
            reason = f"cancelled by {c.cancelledBy} (onCancel: {c.cancelPolicy})"
        elif c.stopReason is not None:
            reason = c.stopReason
        elif n.completed == n.total:
            c.outcome = WaveOutcome.COMPLETED
            reason = f"all {n.total} application(s) cut over"
        else:
            c.outcome = WaveOutcome.PARTIAL
            reason = (
                f"{n.completed} of {n.total} application(s) cut over; {n.rolledBack} rolled "
                f"back, {n.failed} failed, {n.skipped} skipped"
            )
        self._phase = WavePhase.DONE
        workflow.upsert_search_attributes(
            [sa.PHASE.value_set(WavePhase.DONE.value), sa.OUTCOME.value_set(c.outcome.value)]
        )
        cfr, mttr, downtime, moved = figures(apps)
        return WaveResult(
            wave=self._inp.name,
            workflowId=self._id,
            outcome=c.outcome,
            reason=reason,
            approvedBy=c.approvedBy,
            counts=n,
            changeFailureRate=cfr,
            mttrSeconds=mttr,
            downtime=downtime,
            bytesMoved=moved,
            runs=c.runs,
            startedAt=c.startedAt,
            endedAt=workflow.now(),
            applications=apps,
        )

    # ------------------------------------------------- queries and updates

    @workflow.query
    def status(self) -> WaveStatus:
        c = self._carry
        return WaveStatus(
            wave=self._inp.name,
            workflowId=self._id,
            phase=self._current_phase(),
            outcome=c.outcome,
            concurrency=self._inp.concurrency,
            failureThreshold=self._inp.failureThreshold,
            approvedBy=c.approvedBy,
            stopReason=c.stopReason,
            runs=c.runs,
            counts=counts_of(list(self._apps.values())),
            applications=list(self._apps.values()),
        )

    @workflow.update
    async def approve(self, req: ApprovalRequest) -> str:
        await self._late_check("approve", req, req.approver)
        self._accept(req)
        self._carry.approvedBy = req.approver
        self._changed = True
        return f"wave {self._inp.name} approved by {req.approver}"

    @approve.validator
    def _validate_approve(self, req: ApprovalRequest) -> None:
        self._check_request("approve", req, req.approver)
        policy = self._inp.approval
        if not policy.required:
            _refuse(f"wave {self._inp.name} does not require approval")
        if self._carry.approvedBy is not None:
            _refuse(f"already approved by {self._carry.approvedBy}")
        if self._stopping() or self._phase == WavePhase.DONE:
            _refuse(f"nothing to approve: wave {self._inp.name} is {self._current_phase().value}")
        if req.approver not in policy.approvers:
            _refuse(
                f"'{req.approver}' is not an allowed approver for wave {self._inp.name} "
                f"(allowed: {', '.join(policy.approvers)})"
            )

    @workflow.update
    async def pause(self, req: PauseRequest) -> str:
        await self._late_check("pause", req, req.requestedBy)
        self._accept(req)
        self._carry.paused = True
        self._changed = True
        running = len(self._running)
        return (
            f"wave {self._inp.name} paused by {req.requestedBy}: no new cutover starts; "
            f"{running} running cutover(s) continue"
        )

    @pause.validator
    def _validate_pause(self, req: PauseRequest) -> None:
        self._check_request("pause", req, req.requestedBy)
        if self._carry.paused:
            _refuse(f"wave {self._inp.name} is already paused")
        self._refuse_if_over("pause")

    @workflow.update
    async def resume(self, req: PauseRequest) -> str:
        await self._late_check("resume", req, req.requestedBy)
        self._accept(req)
        self._carry.paused = False
        self._changed = True
        return f"wave {self._inp.name} resumed by {req.requestedBy}"

    @resume.validator
    def _validate_resume(self, req: PauseRequest) -> None:
        self._check_request("resume", req, req.requestedBy)
        if not self._carry.paused:
            _refuse(f"wave {self._inp.name} is not paused")
        self._refuse_if_over("resume")

    @workflow.update
    async def cancel(self, req: CancelRequest) -> str:
        await self._late_check("cancel", req, req.requestedBy)
        self._accept(req)
        c = self._carry
        policy = req.policy or self._inp.onCancel
        c.cancelledBy, c.cancelPolicy = req.requestedBy, policy
        self._changed = True
        not_started = len(self._pending)
        running = sorted(self._running)
        if policy == "finish" or not running:
            return (
                f"wave {self._inp.name} cancelled: {not_started} application(s) will not "
                f"start; {len(running)} running cutover(s) finish"
            )
        reason = f"wave {self._inp.name} cancelled by {req.requestedBy}" + (
            f": {req.reason}" if req.reason else ""
        )
        lines = await self._roll_back_running(reason, req.requestedBy)
        return (
            f"wave {self._inp.name} cancelled: {not_started} application(s) will not start; "
            f"rollback requested for {len(running)} running cutover(s):\n" + "\n".join(lines)
        )

    async def _roll_back_running(self, reason: str, who: str) -> list[str]:
        """Send every running cutover its `rollback` update; one line per cutover."""
        running = sorted(self._running)
        answers = await asyncio.gather(
            *(self._request_rollback(self._apps[n].workflowId, reason, who) for n in running)
        )
        return [f"{n}: {a}" for n, a in zip(running, answers, strict=True)]

    async def _request_rollback(self, workflow_id: str, reason: str, who: str) -> str:
        try:
            answer: str = await workflow.execute_activity(
                REQUEST_ROLLBACK,
                CutoverRollback(workflowId=workflow_id, reason=reason, requestedBy=who),
                result_type=str,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=5),
                summary=f"roll back {workflow_id}",
            )
        except ActivityError as err:
            return f"rollback request failed: {_cause(err)}"
        return answer

    @cancel.validator
    def _validate_cancel(self, req: CancelRequest) -> None:
        self._check_request("cancel", req, req.requestedBy)
        if self._carry.cancelledBy is not None:
            _refuse(f"wave {self._inp.name} was already cancelled by {self._carry.cancelledBy}")
        self._refuse_if_over("cancel")

    def _refuse_if_over(self, what: str) -> None:
        if self._phase == WavePhase.DONE:
            _refuse(f"{what} refused: wave {self._inp.name} has finished")
        if self._carry.stopReason is not None and what != "cancel":
            _refuse(f"{what} refused: wave {self._inp.name} is stopping: {self._carry.stopReason}")


def _start_validity(inp: WaveInput) -> timedelta:
    """How long a wave's start signature holds: minutes, or until the time a scheduled
    wave's signed input says (at most a year)."""
    if inp.startValidUntil is None or inp.signature is None:
        return signing.DEFAULT_MAX_AGE
    return min(inp.startValidUntil - inp.signature.signedAt, timedelta(days=366))


def _refuse(message: str) -> NoReturn:
    raise ApplicationError(message, type=ErrorKind.REFUSED.value, non_retryable=True)
