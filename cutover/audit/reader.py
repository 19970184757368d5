"""Reading a workflow's history (its continue-as-new chain and its children) into an AuditReport.

Nothing here reads a side database: the history is the record. Payloads are decoded with
the client's data converter (pydantic).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.enums.v1 import EventType, StartChildWorkflowExecutionFailedCause
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory
from temporalio.converter import DataConverter
from temporalio.service import RPCError, RPCStatusCode

from cutover.audit.model import (
    CUTOVER_TYPE,
    MAX_DEPTH,
    MAX_RUNS,
    ActivityOutcome,
    AuditNotFound,
    AuditReport,
    CheckAudit,
    RollbackAudit,
    RunbookSummary,
    SignalRecord,
    StepAudit,
    StepKindName,
    UpdateRecord,
)
from cutover.catalog import (
    APPEND_AUDIT_RECORD,
    RESOLVE_SITE,
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

#: Activities of a workflow that are not steps of it: its site's lookup (the report names the
#: site's version) and its audit record.
_NOT_STEPS = frozenset({RESOLVE_SITE, APPEND_AUDIT_RECORD})


async def audit(
    client: Client,
    workflow_id: str,
    run_id: str | None = None,
    *,
    through_event_id: int | None = None,
) -> AuditReport:
    """The report of a workflow (and of every child it started), from history alone.

    With `through_event_id` (and `run_id`): the report as of that event of that run, the
    runs before it in its continue-as-new chain included, and its children as of that
    event's time: what the histories said then, which later events cannot change (the
    audit ledger's records are digests of these)."""
    if through_event_id is not None and run_id is None:
        raise ValueError("through_event_id: needs the run_id whose event it is")
    return await _audit(client, workflow_id, run_id, depth=0, seen=set(), through=through_event_id)


async def _audit(
    client: Client,
    workflow_id: str,
    run_id: str | None,
    depth: int,
    seen: set[str],
    through: int | None = None,
    until: int | None = None,
) -> AuditReport:
    histories = await _run_chain(client, workflow_id, run_id, through)
    if through is not None and histories[-1].events:
        until = histories[-1].events[-1].event_time.ToNanoseconds()  # the bound's time
    if until is not None:
        # a child as of its parent's bound: nothing it recorded later (it may still run)
        histories = [
            WorkflowHistory(h.workflow_id, cut)
            for h in histories
            if (cut := [e for e in h.events if e.event_time.ToNanoseconds() <= until])
        ]
        if not histories:
            raise AuditNotFound(f"{workflow_id} recorded nothing by then")
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
            report.children.append(
                await _audit(client, child_id, child_run, depth + 1, seen, until=until)
            )
        except AuditNotFound as exc:
            gone = str(exc) if until is not None else "its history is no longer retained"
            report.notes.append(f"child {child_id}: {gone}")
    for child in report.children:
        key = child.outcome or child.status
        report.childOutcomes[key] = report.childOutcomes.get(key, 0) + 1
    if report.children and not report.bytesMoved:  # a wave moves what its cutovers moved
        report.bytesMoved = sum(c.bytesMoved for c in report.children)
    return report


async def _run_chain(
    client: Client, workflow_id: str, run_id: str | None, through: int | None = None
) -> list[WorkflowHistory]:
    """The histories of a workflow's runs, first to last, following continue-as-new; with
    `through`, from the first run of `run_id`'s chain to `run_id`, cut after that event."""

    async def fetch(rid: str | None) -> WorkflowHistory:
        try:
            return await client.get_workflow_handle(workflow_id, run_id=rid).fetch_history()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise AuditNotFound(f"no workflow with ID {workflow_id}") from None
            raise

    history = await fetch(run_id)
    fetched = run_id
    if (run_id is None or through is not None) and history.events:
        # The latest run (or the bound's) was fetched: start again from its chain's first.
        first = history.events[0].workflow_execution_started_event_attributes
        if first.first_execution_run_id and first.continued_execution_run_id:
            fetched = first.first_execution_run_id
            history = await fetch(fetched)
    chain = [history]
    while len(chain) < MAX_RUNS:
        if through is not None and fetched == run_id:
            last_run = chain[-1]
            chain[-1] = WorkflowHistory(
                last_run.workflow_id, [e for e in last_run.events if e.event_id <= through]
            )
            break
        last = chain[-1].events[-1] if chain[-1].events else None
        if (
            last is None
            or last.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        ):
            break
        fetched = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
        chain.append(await fetch(fetched))
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
        self._data_prefix: str | None = None
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
        self._data_prefix = f"{a.task_queue.name}-data-"  # a data host's queue (issue 17)
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
        inp = None if name == RUN_CHECK else await self._decode(a.input, StepInput)
        if isinstance(inp, StepInput) and inp.kind is not None:
            kind: StepKindName = inp.kind  # structured: what the workflow ran it as
        else:  # recorded before steps carried their kind: the summary's first word
            summary = (
                await self._text(e.user_metadata.summary)
                if e.user_metadata.HasField("summary")
                else None
            )
            kind = _kind(name, summary)
        queue = a.task_queue.name
        prefix = self._data_prefix
        step = StepAudit(
            name=name,
            kind=kind,
            activityId=a.activity_id,
            scheduledAt=_time(e),
            scheduledEventId=e.event_id,
            dataHost=queue[len(prefix) :] if prefix and queue.startswith(prefix) else None,
        )
        if isinstance(inp, StepInput):
            step.passNumber = inp.passNumber
        if kind == "compensation" and self._checks_before_undo is None:
            self._checks_before_undo = len(self._checks)
        self._activities[(self._run, e.event_id)] = step
        if name not in _NOT_STEPS:
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
        sig = data.get("signature")
        rec = UpdateRecord(
            signedBy=str(sig["signer"]) if isinstance(sig, dict) and sig.get("signer") else None,
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
                site=self._input.site.name if self._input.site else str(self._input.siteRef),
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
            rep.targetWrittenBytes, rep.targetWrites = res.targetWrittenBytes, res.targetWrites
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
