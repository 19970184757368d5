"""The audit report's model: what an auditor reads about one workflow (and its children).

Built by `cutover.audit.reader` from a history alone; printed by `cutover.audit.render`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

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
    #: Whose key signed it (the workflow verified the signature before accepting it).
    signedBy: str | None = None
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
    #: the data host whose queue ran it (a site with a fleet, issue 17)
    dataHost: str | None = None
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
    #: What the target wrote in its window, and what became of it (kept / discarded, why).
    targetWrittenBytes: int | None = None
    targetWrites: str | None = None
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
