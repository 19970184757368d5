"""The audit report of a cutover (or of a wave of them), derived from its Temporal history alone.

An auditor reads who started it and when, the runbook it followed, who approved and who
asked for what (updates carry the caller's identity), every step with its timings, attempts
and errors, every check with what it measured against what, why a rollback happened and
what each compensation did, the downtime, and where source and target were left.

Nothing here reads a side database: the history is the record. Payloads are decoded with
the client's data converter (pydantic). A workflow that started child workflows (a wave)
gets the children's reports nested, fetched recursively; runs chained by continue-as-new
are followed and read as one.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.enums.v1 import EventType, StartChildWorkflowExecutionFailedCause
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory
from temporalio.converter import DataConverter

from cutover.catalog import (
    RUN_CHECK,
    VERIFY_NOT_MIGRATED,
    Compensation,
    FinalizeStep,
    Step,
    WarmStep,
)
from cutover.models import (
    CheckResult,
    CutoverInput,
    CutoverResult,
    StepInput,
    StepResult,
)

CUTOVER_TYPE = "AppCutover"
#: Children of children of ... are followed this deep (a wave of cutovers needs 2).
MAX_DEPTH = 4
#: Runs of one workflow chained by continue-as-new followed at most (a guard, not a limit
#: anyone should meet).
MAX_RUNS = 1000

StepKindName = Literal["guard", "check", "warm", "step", "compensation", "finalize", "other"]
ActivityOutcome = Literal["running", "ok", "failed", "timed_out", "canceled"]


class _R(BaseModel):
    pass


class UpdateRecord(_R):
    """An operator request the workflow accepted (approve, rollback, extend, finalize)."""

    name: str
    updateId: str
    #: The Temporal client identity that sent it (user@host for the CLI).
    identity: str
    #: Who the request itself names (approver, requestedBy), when it names anyone.
    requestedBy: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    acceptedAt: datetime
    acceptedEventId: int
    completedAt: datetime | None = None
    completedEventId: int | None = None
    outcome: Literal["pending", "completed", "failed"] = "pending"
    #: What the workflow answered, or why it failed.
    message: str | None = None


class SignalRecord(_R):
    name: str
    identity: str
    at: datetime
    eventId: int
    arguments: list[Any] = Field(default_factory=list)


class StepAudit(_R):
    """One activity (a step, check, compensation or finalize step) as the history has it."""

    name: str
    kind: StepKindName
    activityId: str
    passNumber: int = 0
    scheduledAt: datetime
    #: When the last attempt started (Temporal records the started event of the last
    #: attempt only; earlier attempts show in `attempts` and `lastFailure`).
    startedAt: datetime | None = None
    endedAt: datetime | None = None
    attempts: int | None = None
    outcome: ActivityOutcome = "running"
    error: str | None = None
    #: The failure of the attempt before the last one, when it was retried.
    lastFailure: str | None = None
    changed: bool | None = None
    details: dict[str, str | int | float | bool] = Field(default_factory=dict)
    worker: str | None = None
    scheduledEventId: int
    startedEventId: int | None = None
    closedEventId: int | None = None

    @property
    def seconds(self) -> float | None:
        return (self.endedAt - self.scheduledAt).total_seconds() if self.endedAt else None


class CheckAudit(_R):
    """One evaluation of a check: measurement, threshold, verdict."""

    name: str
    phase: str
    passed: bool
    measured: str | None = None
    threshold: str | None = None
    detail: str = ""
    at: datetime
    attempts: int | None = None
    eventId: int


class RunbookSummary(_R):
    application: str
    wave: str
    sourcePlatform: str
    sourceCluster: str
    targetPlatform: str
    site: str
    rollbackWindowMinutes: float
    approvalRequired: bool
    approvers: list[str] = Field(default_factory=list)
    preChecks: list[str] = Field(default_factory=list)
    cutoverSteps: list[str] = Field(default_factory=list)
    postChecks: list[str] = Field(default_factory=list)
    rollbackCriteria: list[str] = Field(default_factory=list)


class RollbackAudit(_R):
    """Why the cutover went back to the source, and what each undo did."""

    reason: str
    trigger: Literal[
        "rollback criterion",
        "post-checks at window close",
        "operator rollback",
        "step failure",
        "approval timeout",
        "cancellation",
        "other",
    ]
    #: The checks whose failure triggered it (latest evaluation of each before the undo).
    failedChecks: list[CheckAudit] = Field(default_factory=list)
    failedStep: StepAudit | None = None
    requestedBy: UpdateRecord | None = None
    compensations: list[StepAudit] = Field(default_factory=list)


class AuditReport(_R):
    workflowId: str
    workflowType: str
    #: Every run, first to last, when continue-as-new chained several.
    runIds: list[str]
    status: str
    startedAt: datetime
    #: The Temporal identity that started the workflow (client user@host, or a parent).
    startedBy: str
    #: Who the cutover input names as requester.
    requestedBy: str | None = None
    #: The recorded reason when an application already migrated was cut over again.
    remigrate: str | None = None
    parentWorkflowId: str | None = None
    closedAt: datetime | None = None
    runbook: RunbookSummary | None = None
    approvals: list[UpdateRecord] = Field(default_factory=list)
    updates: list[UpdateRecord] = Field(default_factory=list)
    cancelRequestedBy: str | None = None
    terminatedBy: str | None = None
    steps: list[StepAudit] = Field(default_factory=list)
    checks: list[CheckAudit] = Field(default_factory=list)
    outcome: str | None = None
    reason: str | None = None
    failure: str | None = None
    rollback: RollbackAudit | None = None
    compensationFailures: list[str] = Field(default_factory=list)
    downtimeSeconds: float | None = None
    bytesMoved: int = 0
    #: Where source and target were left (the workflow's own final account).
    finalState: list[str] = Field(default_factory=list)
    #: A workflow that is not a cutover (e.g. a wave): its result as recorded, decoded.
    result: Any = None
    children: list[AuditReport] = Field(default_factory=list)
    #: Of the children: how many ended how (COMPLETED, ROLLED_BACK, FAILED, RUNNING, ...).
    childOutcomes: dict[str, int] = Field(default_factory=dict)
    #: Signals received, with the sender's identity (cutovers take none; a wave may).
    signals: list[SignalRecord] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    eventCount: int = 0


class AuditNotFound(LookupError):
    """No workflow with that ID (or run) exists in the namespace."""


# ------------------------------------------------------------------ reading


async def audit(client: Client, workflow_id: str, run_id: str | None = None) -> AuditReport:
    """The report of a workflow (and of every child it started), from history alone."""
    return await _audit(client, workflow_id, run_id, depth=0, seen=set())


async def _audit(
    client: Client, workflow_id: str, run_id: str | None, depth: int, seen: set[str]
) -> AuditReport:
    histories = await _run_chain(client, workflow_id, run_id)
    reader = _Reader(client.data_converter, workflow_id)
    for history in histories:
        await reader.read(history)
    report = reader.report()
    seen.update(report.runIds)
    for child_id, child_run in reader.children:
        if child_run is None:
            # Initiated, never started (e.g. a cutover of that application was running):
            # the latest run under that ID is not this child's, so it is not read.
            why = reader.child_failures.get(child_id, "no start recorded")
            report.notes.append(f"child {child_id} was not started: {why}")
            continue
        if child_run in seen:
            continue
        if depth + 1 > MAX_DEPTH:
            report.notes.append(f"child {child_id} not expanded (deeper than {MAX_DEPTH})")
            continue
        try:
            report.children.append(await _audit(client, child_id, child_run, depth + 1, seen))
        except AuditNotFound:
            report.notes.append(f"child {child_id}: its history is no longer retained")
    for child in report.children:
        key = child.outcome or child.status
        report.childOutcomes[key] = report.childOutcomes.get(key, 0) + 1
    if report.children and not report.bytesMoved:  # a wave moves what its cutovers moved
        report.bytesMoved = sum(c.bytesMoved for c in report.children)
    return report


async def _run_chain(client: Client, workflow_id: str, run_id: str | None) -> list[WorkflowHistory]:
    """The histories of a workflow's runs, first to last, following continue-as-new."""
    from temporalio.service import RPCError, RPCStatusCode

    async def fetch(rid: str | None) -> WorkflowHistory:
        try:
            return await client.get_workflow_handle(workflow_id, run_id=rid).fetch_history()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise AuditNotFound(f"no workflow with ID {workflow_id}") from None
            raise

    history = await fetch(run_id)
    if run_id is None and history.events:
        # The latest run was fetched: start again from the first one of its chain.
        first = history.events[0].workflow_execution_started_event_attributes
        if first.first_execution_run_id and first.continued_execution_run_id:
            history = await fetch(first.first_execution_run_id)
    chain = [history]
    while len(chain) < MAX_RUNS:
        last = chain[-1].events[-1] if chain[-1].events else None
        if (
            last is None
            or last.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        ):
            break
        new_run = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
        chain.append(await fetch(new_run))
    return chain


def _time(event: HistoryEvent) -> datetime:
    return event.event_time.ToDatetime(tzinfo=UTC)


def failure_message(failure: Failure) -> str:
    """The innermost message of a failure chain, with its type: what a person needs."""
    while failure.HasField("cause"):
        failure = failure.cause
    kind = (
        failure.application_failure_info.type
        if failure.HasField("application_failure_info")
        else ""
    )
    return f"{kind}: {failure.message}" if kind else failure.message


class _Reader:
    """Walks the events of one workflow's runs, building the report."""

    def __init__(self, converter: DataConverter, workflow_id: str) -> None:
        self.dc = converter
        self.workflow_id = workflow_id
        self.runs: list[str] = []
        #: (workflow ID, run ID once started) of each child, in the order initiated.
        self.children: list[tuple[str, str | None]] = []
        self.child_failures: dict[str, str] = {}
        self._child_initiated: dict[tuple[str, int], int] = {}
        self._activities: dict[tuple[str, int], StepAudit] = {}
        self._order: list[StepAudit] = []
        self._checks: list[CheckAudit] = []
        self._updates: dict[str, UpdateRecord] = {}
        self._update_order: list[UpdateRecord] = []
        self._rep: dict[str, Any] = {}
        self._input: CutoverInput | None = None
        self._result: CutoverResult | None = None
        self._raw_result: Any = None
        self._events = 0
        self._run = ""
        self._checks_before_undo: int | None = None
        self._signals: list[SignalRecord] = []

    async def _decode(self, payloads: Payloads, hint: type | None = None) -> Any:
        if not payloads.payloads:
            return None
        try:
            values = await self.dc.decode(payloads.payloads, [hint] if hint else None)
        except Exception:
            values = await self.dc.decode(payloads.payloads)
        return values[0] if values else None

    async def _text(self, payload: Payload) -> str | None:
        try:
            value = (await self.dc.decode([payload]))[0]
        except Exception:
            return None
        return value if isinstance(value, str) else None

    async def read(self, history: WorkflowHistory) -> None:
        self._run = ""
        for event in history.events:
            self._events += 1
            await self._event(event)

    async def _event(self, e: HistoryEvent) -> None:
        t = e.event_type
        T = EventType
        if t == T.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            await self._started(e)
        elif t == T.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            await self._scheduled(e)
        elif t == T.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            a = e.activity_task_started_event_attributes
            step = self._activities[(self._run, a.scheduled_event_id)]
            step.startedAt, step.startedEventId = _time(e), e.event_id
            step.attempts, step.worker = a.attempt, a.identity or None
            if a.HasField("last_failure"):
                step.lastFailure = failure_message(a.last_failure)
        elif t == T.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            c = e.activity_task_completed_event_attributes
            step = self._close(e, c.scheduled_event_id, "ok")
            await self._completed(step, c.result, e)
        elif t == T.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            f = e.activity_task_failed_event_attributes
            self._close(e, f.scheduled_event_id, "failed").error = failure_message(f.failure)
        elif t == T.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
            o = e.activity_task_timed_out_event_attributes
            self._close(e, o.scheduled_event_id, "timed_out").error = failure_message(o.failure)
        elif t == T.EVENT_TYPE_ACTIVITY_TASK_CANCELED:
            x = e.activity_task_canceled_event_attributes
            self._close(e, x.scheduled_event_id, "canceled").error = "canceled"
        elif t == T.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            await self._update_accepted(e)
        elif t == T.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED:
            await self._update_completed(e)
        elif t == T.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            sig = e.workflow_execution_signaled_event_attributes
            args: list[Any] = []
            if sig.input.payloads:
                try:
                    args = list(await self.dc.decode(sig.input.payloads))
                except Exception:
                    args = ["(undecodable)"]
            self._signals.append(
                SignalRecord(
                    name=sig.signal_name,
                    identity=sig.identity or "unknown",
                    at=_time(e),
                    eventId=e.event_id,
                    arguments=[
                        a.model_dump(mode="json") if isinstance(a, BaseModel) else a for a in args
                    ],
                )
            )
        elif t == T.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED:
            self._rep["cancelRequestedBy"] = (
                e.workflow_execution_cancel_requested_event_attributes.identity or "unknown"
            )
        elif t == T.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED:
            a2 = e.workflow_execution_terminated_event_attributes
            self._close_workflow(e, "TERMINATED")
            self._rep["terminatedBy"] = a2.identity or "unknown"
            self._rep["failure"] = f"terminated: {a2.reason}" if a2.reason else "terminated"
        elif t == T.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            self._close_workflow(e, "COMPLETED")
            await self._workflow_result(e.workflow_execution_completed_event_attributes.result)
        elif t == T.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
            self._close_workflow(e, "FAILED")
            self._rep["failure"] = failure_message(
                e.workflow_execution_failed_event_attributes.failure
            )
        elif t == T.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED:
            self._close_workflow(e, "CANCELED")
        elif t == T.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT:
            self._close_workflow(e, "TIMED_OUT")
        elif t == T.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            self._close_workflow(e, "CONTINUED_AS_NEW")
        elif t == T.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            wid = e.start_child_workflow_execution_initiated_event_attributes.workflow_id
            self._child_initiated[(self._run, e.event_id)] = len(self.children)
            self.children.append((wid, None))
        elif t == T.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
            s = e.child_workflow_execution_started_event_attributes
            i = self._child_initiated.get((self._run, s.initiated_event_id))
            if i is not None:
                self.children[i] = (self.children[i][0], s.workflow_execution.run_id)
        elif t == T.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_FAILED:
            f2 = e.start_child_workflow_execution_failed_event_attributes
            cause = StartChildWorkflowExecutionFailedCause.Name(f2.cause)
            self.child_failures[f2.workflow_id] = (
                cause.removeprefix("START_CHILD_WORKFLOW_EXECUTION_FAILED_CAUSE_")
                .replace("_", " ")
                .lower()
            )

    async def _started(self, e: HistoryEvent) -> None:
        a = e.workflow_execution_started_event_attributes
        # original_execution_run_id: this run's own ID (kept across resets).
        self._run = a.original_execution_run_id
        if not self.runs:
            self._rep.update(
                workflowType=a.workflow_type.name,
                startedAt=_time(e),
                startedBy=a.identity or "unknown",
                parentWorkflowId=a.parent_workflow_execution.workflow_id or None,
            )
        self.runs.append(self._run)
        if a.workflow_type.name == CUTOVER_TYPE and self._input is None:
            value = await self._decode(a.input, CutoverInput)
            if isinstance(value, CutoverInput):
                self._input = value

    async def _scheduled(self, e: HistoryEvent) -> None:
        a = e.activity_task_scheduled_event_attributes
        name = a.activity_type.name
        summary = (
            await self._text(e.user_metadata.summary)
            if e.user_metadata.HasField("summary")
            else None
        )
        kind = _kind(name, summary)
        step = StepAudit(
            name=name,
            kind=kind,
            activityId=a.activity_id,
            scheduledAt=_time(e),
            scheduledEventId=e.event_id,
        )
        if kind != "check":
            inp = await self._decode(a.input, StepInput)
            if isinstance(inp, StepInput):
                step.passNumber = inp.passNumber
        if kind == "compensation" and self._checks_before_undo is None:
            self._checks_before_undo = len(self._checks)
        self._activities[(self._run, e.event_id)] = step
        self._order.append(step)

    def _close(self, e: HistoryEvent, scheduled: int, outcome: ActivityOutcome) -> StepAudit:
        step = self._activities[(self._run, scheduled)]
        step.endedAt, step.closedEventId, step.outcome = _time(e), e.event_id, outcome
        return step

    async def _completed(self, step: StepAudit, result: Payloads, e: HistoryEvent) -> None:
        if step.kind == "check":
            res = await self._decode(result, CheckResult)
            if isinstance(res, CheckResult):
                self._checks.append(
                    CheckAudit(
                        name=res.name,
                        phase=res.phase,
                        passed=res.passed,
                        measured=res.measured,
                        threshold=res.threshold,
                        detail=res.detail,
                        at=_time(e),
                        attempts=step.attempts,
                        eventId=e.event_id,
                    )
                )
            return
        value = await self._decode(result, StepResult)
        if isinstance(value, StepResult):
            step.changed, step.details = value.changed, dict(value.details)

    async def _update_accepted(self, e: HistoryEvent) -> None:
        a = e.workflow_execution_update_accepted_event_attributes
        req = a.accepted_request
        args = await self._decode(req.input.args)
        data: dict[str, Any] = (
            args.model_dump(mode="json")
            if isinstance(args, BaseModel)
            else args
            if isinstance(args, dict)
            else {"value": args}
            if args is not None
            else {}
        )
        who = data.get("approver") or data.get("requestedBy")
        rec = UpdateRecord(
            name=req.input.name,
            updateId=req.meta.update_id,
            identity=req.meta.identity or "unknown",
            requestedBy=str(who) if who else None,
            arguments=data,
            acceptedAt=_time(e),
            acceptedEventId=e.event_id,
        )
        self._updates[rec.updateId] = rec
        self._update_order.append(rec)

    async def _update_completed(self, e: HistoryEvent) -> None:
        a = e.workflow_execution_update_completed_event_attributes
        rec = self._updates.get(a.meta.update_id)
        if rec is None:
            return
        rec.completedAt, rec.completedEventId = _time(e), e.event_id
        if a.outcome.HasField("failure"):
            rec.outcome, rec.message = "failed", failure_message(a.outcome.failure)
        else:
            rec.outcome = "completed"
            value = await self._decode(a.outcome.success)
            rec.message = str(value) if value is not None else None

    def _close_workflow(self, e: HistoryEvent, status: str) -> None:
        self._rep["status"], self._rep["closedAt"] = status, _time(e)

    async def _workflow_result(self, result: Payloads) -> None:
        if self._rep.get("workflowType") == CUTOVER_TYPE:
            value = await self._decode(result, CutoverResult)
            if isinstance(value, CutoverResult):
                self._result = value
                return
        value = await self._decode(result)
        self._raw_result = value.model_dump(mode="json") if isinstance(value, BaseModel) else value

    # ------------------------------------------------------------- the report

    def report(self) -> AuditReport:
        rep = AuditReport(
            workflowId=self.workflow_id,
            workflowType=self._rep.get("workflowType", "unknown"),
            runIds=self.runs,
            status=self._rep.get("status", "RUNNING"),
            startedAt=self._rep["startedAt"],
            startedBy=self._rep.get("startedBy", "unknown"),
            parentWorkflowId=self._rep.get("parentWorkflowId"),
            closedAt=self._rep.get("closedAt"),
            cancelRequestedBy=self._rep.get("cancelRequestedBy"),
            terminatedBy=self._rep.get("terminatedBy"),
            failure=self._rep.get("failure"),
            steps=[s for s in self._order if s.kind != "check"],
            checks=self._checks,
            approvals=[u for u in self._update_order if u.name == "approve"],
            updates=[u for u in self._update_order if u.name != "approve"],
            result=self._raw_result,
            signals=self._signals,
            eventCount=self._events,
        )
        if rep.status == "CONTINUED_AS_NEW":
            rep.status = "RUNNING"  # the last run has not closed yet
            rep.closedAt = None
        rep.bytesMoved = sum(
            int(v)
            for s in rep.steps
            for k, v in s.details.items()
            if k == "bytesMoved" and isinstance(v, int | float) and not isinstance(v, bool)
        )
        rep.notes.append(
            "updates refused by the workflow's validation (e.g. an approver not on the "
            "runbook's list) are answered to the caller and never enter the history"
        )
        if self._input is not None:
            rb = self._input.runbook
            rep.requestedBy = self._input.requestedBy
            rep.remigrate = self._input.remigrate
            rep.runbook = RunbookSummary(
                application=rb.application,
                wave=rb.wave_name,
                sourcePlatform=rb.sourcePlatform,
                sourceCluster=rb.sourceCluster,
                targetPlatform=rb.targetPlatform,
                site=self._input.site.name,
                rollbackWindowMinutes=rb.rollbackWindowMinutes,
                approvalRequired=rb.approval.required,
                approvers=list(rb.approval.approvers),
                preChecks=list(rb.preChecks),
                cutoverSteps=[str(s) for s in rb.cutoverSteps],
                postChecks=list(rb.postChecks),
                rollbackCriteria=list(rb.rollbackCriteria),
            )
        res = self._result
        if res is not None:
            rep.outcome, rep.reason = res.outcome.value, res.reason
            rep.downtimeSeconds = res.downtimeSeconds
            rep.finalState = list(res.leftWhere)
            rep.compensationFailures = list(res.compensationFailures)
        elif rep.status == "CANCELED":
            rep.outcome = rep.status
            rep.reason = f"the workflow was cancelled by {rep.cancelRequestedBy or 'unknown'}"
        elif rep.status not in ("RUNNING", "COMPLETED"):
            rep.outcome = rep.status
            rep.reason = rep.failure
        comps = [s for s in rep.steps if s.kind == "compensation"]
        rolled_back = res is not None and res.outcome.value == "ROLLED_BACK"
        if comps or rolled_back:
            rep.rollback = self._rollback(rep.reason or "unknown", comps, rep)
        if rep.status == "RUNNING" and rep.cancelRequestedBy:
            rep.notes.append(f"cancellation requested by {rep.cancelRequestedBy}; still running")
        return rep

    def _rollback(self, reason: str, comps: list[StepAudit], rep: AuditReport) -> RollbackAudit:
        trigger: Any = "other"
        if rep.cancelRequestedBy and "a Temporal cancel request" in reason:
            trigger = "cancellation"  # a cancel request becomes a rollback request
        elif reason.startswith("rollback criterion fired"):
            trigger = "rollback criterion"
        elif reason.startswith("rollback window closed with post-checks failing"):
            trigger = "post-checks at window close"
        elif reason.startswith("rollback requested by") or reason.startswith("cancelled before"):
            trigger = "operator rollback"
        elif reason.startswith("step "):
            trigger = "step failure"
        elif reason.startswith("no approval within"):
            trigger = "approval timeout"
        elif "cancelled" in reason:
            trigger = "cancellation"
        out = RollbackAudit(reason=reason, trigger=trigger, compensations=comps)
        before = self._checks[: self._checks_before_undo]
        if trigger in ("rollback criterion", "post-checks at window close"):
            phase = "criterion" if trigger == "rollback criterion" else "post"
            latest: dict[str, CheckAudit] = {}
            for c in before:
                if c.phase == phase:
                    latest[c.name] = c
            out.failedChecks = [c for c in latest.values() if not c.passed]
        elif trigger == "step failure":
            out.failedStep = next(
                (
                    s
                    for s in rep.steps
                    if s.outcome in ("failed", "timed_out") and s.kind != "compensation"
                ),
                None,
            )
        elif trigger == "operator rollback":
            out.requestedBy = next((u for u in reversed(rep.updates) if u.name == "rollback"), None)
        return out


def _kind(name: str, summary: str | None) -> StepKindName:
    if summary:
        first = summary.split(" ", 1)[0]
        if first in ("guard", "check", "warm", "step", "compensation", "finalize"):
            return first  # type: ignore[return-value]
    if name == RUN_CHECK:
        return "check"
    if name == VERIFY_NOT_MIGRATED:
        return "guard"
    if name in set(WarmStep):
        return "warm"
    if name in set(Step):
        return "step"
    if name in set(Compensation):
        return "compensation"
    if name in set(FinalizeStep):
        return "finalize"
    return "other"


# ---------------------------------------------------------------- rendering


def to_json(report: AuditReport) -> str:
    return json.dumps(report.model_dump(mode="json"), indent=2)


def _ts(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z" if value else "-"


def _secs(value: float | None) -> str:
    return f"{value:.2f}s" if value is not None else "-"


def _lines(report: AuditReport) -> list[tuple[str, Any]]:
    """The report as a neutral sequence of blocks both renderers share.

    ("h", (level, text)), ("kv", [(key, value)]), ("table", (header, rows)), ("list", items)
    """
    r = report
    title = f"Audit of {r.workflowId}" + (f" ({r.runbook.application})" if r.runbook else "")
    out: list[tuple[str, Any]] = [("h", (1, title))]
    summary = [
        ("Workflow", f"{r.workflowType} {r.workflowId}"),
        ("Runs", ", ".join(r.runIds)),
        ("Status", r.status),
        ("Outcome", r.outcome or "-"),
        ("Reason", r.reason or "-"),
        ("Started", f"{_ts(r.startedAt)} by {r.startedBy}"),
    ]
    if r.requestedBy:
        summary.append(("Requested by", r.requestedBy))
    if r.remigrate:
        summary.append(("Re-migration", r.remigrate))
    if r.parentWorkflowId:
        summary.append(("Started by workflow", r.parentWorkflowId))
    summary.append(("Closed", _ts(r.closedAt)))
    summary.append(("Downtime", _secs(r.downtimeSeconds)))
    summary.append(("Bytes moved", str(r.bytesMoved)))
    if r.cancelRequestedBy:
        summary.append(("Cancel requested by", r.cancelRequestedBy))
    if r.terminatedBy:
        summary.append(("Terminated by", r.terminatedBy))
    if r.failure:
        summary.append(("Failure", r.failure))
    out.append(("kv", summary))
    if r.runbook:
        rb = r.runbook
        out.append(("h", (2, "Runbook")))
        out.append(
            (
                "kv",
                [
                    ("Application", rb.application),
                    ("Wave", rb.wave),
                    ("Source", f"{rb.sourcePlatform} / {rb.sourceCluster}"),
                    ("Target", rb.targetPlatform),
                    ("Site", rb.site),
                    ("Rollback window", f"{rb.rollbackWindowMinutes:g} min"),
                    (
                        "Approval",
                        f"required from one of {', '.join(rb.approvers)}"
                        if rb.approvalRequired
                        else "not required",
                    ),
                    ("Pre-checks", ", ".join(rb.preChecks) or "-"),
                    ("Cutover steps", ", ".join(rb.cutoverSteps) or "-"),
                    ("Post-checks", ", ".join(rb.postChecks) or "-"),
                    ("Rollback criteria", ", ".join(rb.rollbackCriteria) or "-"),
                ],
            )
        )
    if r.finalState:
        out.append(("h", (2, "Final state")))
        out.append(("list", r.finalState))
    upd_header = ["Request", "At", "Identity", "Named", "Outcome", "Message"]

    def upd_rows(us: Sequence[UpdateRecord]) -> list[list[str]]:
        return [
            [
                u.name,
                _ts(u.acceptedAt),
                u.identity,
                u.requestedBy or "-",
                u.outcome,
                u.message or "",
            ]
            for u in us
        ]

    out.append(("h", (2, "Approvals")))
    if r.approvals:
        out.append(("table", (upd_header, upd_rows(r.approvals))))
    else:
        out.append(("list", ["none recorded"]))
    if r.updates:
        out.append(("h", (2, "Other operator requests")))
        out.append(("table", (upd_header, upd_rows(r.updates))))
    if r.rollback:
        rb2 = r.rollback
        out.append(("h", (2, "Rollback")))
        kv = [("Trigger", rb2.trigger), ("Reason", rb2.reason)]
        if rb2.failedStep:
            kv.append(("Failed step", f"{rb2.failedStep.name}: {rb2.failedStep.error}"))
        if rb2.requestedBy:
            kv.append(
                ("Requested by", f"{rb2.requestedBy.identity} ({rb2.requestedBy.requestedBy})")
            )
        out.append(("kv", kv))
        if rb2.failedChecks:
            out.append(("h", (3, "Checks that triggered it")))
            out.append(("table", _check_table(rb2.failedChecks)))
        out.append(("h", (3, "Compensations")))
        out.append(("table", _step_table(rb2.compensations)))
    if r.steps:
        out.append(("h", (2, "Steps")))
        out.append(("table", _step_table(r.steps)))
    if r.checks:
        out.append(("h", (2, "Checks")))
        out.append(("table", _check_table(r.checks)))
    if r.signals:
        out.append(("h", (2, "Signals")))
        out.append(
            (
                "table",
                (
                    ["Signal", "At", "Identity", "Arguments"],
                    [
                        [g.name, _ts(g.at), g.identity, json.dumps(g.arguments, default=str)]
                        for g in r.signals
                    ],
                ),
            )
        )
    if r.children:
        out.append(("h", (2, f"Child workflows ({len(r.children)})")))
        out.append(
            (
                "kv",
                [(k, str(v)) for k, v in sorted(r.childOutcomes.items())]
                + [("Workflows", ", ".join(c.workflowId for c in r.children))],
            )
        )
    if r.result is not None:
        out.append(("h", (2, "Result")))
        out.append(("code", json.dumps(r.result, indent=2, default=str)))
    if r.notes:
        out.append(("h", (2, "Notes")))
        out.append(("list", r.notes))
    return out


def _step_table(steps: Sequence[StepAudit]) -> tuple[list[str], list[list[str]]]:
    header = ["Step", "Kind", "Scheduled", "Ended", "Took", "Attempts", "Outcome", "Error"]
    rows = [
        [
            s.name + (f" #{s.passNumber}" if s.passNumber else ""),
            s.kind,
            _ts(s.scheduledAt),
            _ts(s.endedAt),
            _secs(s.seconds),
            str(s.attempts or "-"),
            s.outcome,
            s.error or (f"(retried after: {s.lastFailure})" if s.lastFailure else ""),
        ]
        for s in steps
    ]
    return header, rows


def _check_table(checks: Sequence[CheckAudit]) -> tuple[list[str], list[list[str]]]:
    header = ["Check", "Phase", "At", "Verdict", "Measured", "Threshold", "Detail"]
    rows = [
        [
            c.name,
            c.phase,
            _ts(c.at),
            "passed" if c.passed else "FAILED",
            c.measured or "-",
            c.threshold or "-",
            c.detail,
        ]
        for c in checks
    ]
    return header, rows


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*[]<>|"})


def _md_cell(text: str) -> str:
    """Literal text in markdown: punctuation that would format, link or open raw HTML
    (a reason or comment is operator input) is backslash-escaped, lines joined."""
    return text.translate(_MD_SPECIAL).replace("\n", " ")


def to_markdown(report: AuditReport, level: int = 0) -> str:
    parts: list[str] = []
    for kind, body in _lines(report):
        if kind == "h":
            lvl, text = body
            parts.append("#" * min(lvl + level, 6) + " " + _md_cell(text))
        elif kind == "kv":
            parts.append("\n".join(f"- **{k}**: {_md_cell(v)}" for k, v in body))
        elif kind == "list":
            parts.append("\n".join(f"- {_md_cell(i)}" for i in body))
        elif kind == "table":
            header, rows = body
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            parts.append("\n".join(lines))
        elif kind == "code":
            parts.append("```json\n" + body + "\n```")
    for child in report.children:
        parts.append(to_markdown(child, level + 1))
    return "\n\n".join(parts) + "\n"


_CSS = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;font-size:90%}"
    ".FAILED{color:#b00;font-weight:bold}section.child{margin-left:1.5em}"
)


def _html_body(report: AuditReport, level: int = 0) -> str:
    e = html.escape
    parts: list[str] = []
    for kind, body in _lines(report):
        if kind == "h":
            lvl, text = body
            n = min(lvl + level, 6)
            parts.append(f"<h{n}>{e(text)}</h{n}>")
        elif kind == "kv":
            rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in body)
            parts.append(f"<table>{rows}</table>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in body) + "</ul>")
        elif kind == "table":
            header, rows = body
            head = "".join(f"<th>{e(h)}</th>" for h in header)
            trs = "".join(
                "<tr>"
                + "".join(
                    f'<td class="{e(c)}">{e(c)}</td>' if c == "FAILED" else f"<td>{e(c)}</td>"
                    for c in row
                )
                + "</tr>"
                for row in rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
        elif kind == "code":
            parts.append(f"<pre>{e(body)}</pre>")
    for child in report.children:
        parts.append(f'<section class="child">{_html_body(child, level + 1)}</section>')
    return "\n".join(parts)


def to_html(report: AuditReport) -> str:
    title = html.escape(f"Audit of {report.workflowId}")
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head><body>\n{_html_body(report)}\n</body></html>\n"
    )


def render(report: AuditReport, fmt: Literal["json", "md", "html"]) -> str:
    if fmt == "json":
        return to_json(report) + "\n"
    if fmt == "md":
        return to_markdown(report)
    return to_html(report)
