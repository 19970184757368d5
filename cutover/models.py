"""What crosses the Temporal boundary: workflow input/output, activity I/O, operator requests.

Shared by workflows and activities; imports nothing that touches the world.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from cutover.runbook import Runbook
from cutover.signing import Signature
from cutover.site import Dns, Probe, SiteConfig, SiteRef, VCenter, site_ref


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Phase(StrEnum):
    PENDING = "PENDING"
    PRE_CHECKS = "PRE_CHECKS"
    WARM_SYNC = "WARM_SYNC"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    CUTOVER = "CUTOVER"
    ROLLBACK_WINDOW = "ROLLBACK_WINDOW"
    ROLLING_BACK = "ROLLING_BACK"
    #: An undo failed or was held back (it would have destroyed what may serve): waiting
    #: for an operator to fix the cause and send `resume`.
    ROLLBACK_BLOCKED = "ROLLBACK_BLOCKED"
    FINALIZING = "FINALIZING"
    #: A finalize step failed; the steps after it (which retire the source) wait for `resume`.
    FINALIZE_BLOCKED = "FINALIZE_BLOCKED"
    DONE = "DONE"


class Outcome(StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    ROLLED_BACK = "ROLLED_BACK"
    FAILED = "FAILED"


class Tuning(_M):
    """Retry and timeout knobs; the defaults suit production, tests shorten them."""

    maxAttempts: Annotated[int, Field(ge=1)] = 5
    initialRetrySeconds: Annotated[float, Field(gt=0)] = 1.0
    maxRetrySeconds: Annotated[float, Field(gt=0)] = 60.0
    #: Start-to-close of the steps that move or convert data (they heartbeat progress).
    stepTimeoutMinutes: Annotated[float, Field(gt=0)] = 120.0
    #: Start-to-close of every other step (each also has a heartbeat timeout).
    shortStepTimeoutMinutes: Annotated[float, Field(gt=0)] = 10.0
    #: Every activity heartbeats (the worker keeps it alive): a dead worker is noticed
    #: after this long and its activity retried on another.
    heartbeatSeconds: Annotated[float, Field(gt=0)] = 30.0
    compensationAttempts: Annotated[int, Field(ge=1)] = 10
    #: How long a blocked rollback or finalize waits for an operator's `resume`.
    blockedWaitHours: Annotated[float, Field(gt=0)] = 72.0
    #: The rollback window continues as new past this many history events.
    continueAsNewEvents: Annotated[int, Field(ge=100)] = 10_000


#: Validation context that reads a cutover input without the target-platform rule, as
#: workers before it did: the workflow keeps runs they started replaying (issue 15).
WITHOUT_PLATFORM_RULE: dict[str, Any] = {"platformRule": False}


class CutoverInput(_M):
    runbook: Runbook
    #: Which of the worker's site configs this cutover runs on, and its version: the worker
    #: resolves it from its own files (issue 13); an input never brings its own site.
    siteRef: SiteRef | None = None
    #: The site itself: only in inputs of runs started before issue 13 (they replay), and
    #: in the workflow's own copy once the worker resolved `siteRef`. A new input carrying
    #: one is refused.
    site: SiteConfig | None = None
    requestedBy: str = "unknown"
    tuning: Tuning = Field(default_factory=Tuning)
    #: Why an application already migrated is cut over again (`--remigrate REASON`); without
    #: it, a source marked migrated is refused before anything changes.
    remigrate: Annotated[str, Field(min_length=1)] | None = None
    #: Set only by the workflow itself when its rollback window continues as new.
    carry: WindowCarry | None = None
    #: The start, signed by the operator's key over the digest of this input (issue 13);
    #: a wave's cutovers carry none (the wave's start was signed).
    signature: Signature | None = None

    def by_reference(self) -> CutoverInput:
        """What is sent to Temporal: the site named by its digest, not carried."""
        site = self.resolved_site
        return self.model_copy(update={"site": None, "siteRef": site_ref(site)})

    @property
    def resolved_site(self) -> SiteConfig:
        """The site (once the worker resolved `siteRef`, or a legacy input's own)."""
        if self.site is None:
            raise RuntimeError(f"site {self.siteRef} not resolved yet")
        return self.site

    @model_validator(mode="before")
    @classmethod
    def _runbook_against_site(cls, data: Any) -> Any:
        """Check names the site defines are valid in the runbook (also when decoded)."""
        if isinstance(data, dict) and isinstance(data.get("runbook"), dict):
            site = data.get("site")
            if isinstance(site, dict):
                site = SiteConfig.model_validate(site)
            if isinstance(site, SiteConfig):
                context = {"site_checks": frozenset(site.checks)}
                try:
                    runbook = Runbook.model_validate(data["runbook"], context=context)
                except ValidationError:
                    # Let field validation report it, located under `runbook.`.
                    return data
                data = {**data, "runbook": runbook, "site": site}
        return data

    @model_validator(mode="after")
    def _checks_bound(self) -> CutoverInput:
        if self.site is None:
            if self.siteRef is None:
                raise ValueError(
                    "siteRef: expected the site's name and digest ({name, digest}; "
                    "`cutover run --print-input` writes them)"
                )
            return self  # checked against the site once the worker resolved it
        unbound = [n for n in self.runbook.checks if n not in self.site.checks]
        if unbound:
            raise ValueError(
                "checks named in the runbook but without a probe in the site config: "
                + ", ".join(unbound)
            )
        return self

    # -- issue 15 (platform registries): the site must bind the runbook's targetPlatform.
    # An after-validator, not in _runbook_against_site: that one sees only raw mappings,
    # while `cutover run` and the wave build this input from models.
    @model_validator(mode="after")
    def _platform_bound(self, info: ValidationInfo) -> CutoverInput:
        if self.site is None:
            return self
        problem = self.site.platform_problem(self.runbook.targetPlatform)
        if problem is None or (info.context or {}).get("platformRule", True) is False:
            return self
        # Located at the field, so every path (CLI, wave, the workflow's input) names it.
        error = PydanticCustomError("value_error", "{problem}", {"problem": problem})
        raise ValidationError.from_exception_data(
            type(self).__name__,
            [
                InitErrorDetails(
                    type=error,
                    loc=("runbook", "targetPlatform"),
                    input=self.runbook.targetPlatform,
                )
            ],
        )


#: What the workflow accepts: a CutoverInput, or (only when that fails) the raw mapping, so
#: the workflow can fail with the problems named instead of failing its task forever.
WorkflowInput = Annotated[CutoverInput | dict[str, Any], Field(union_mode="left_to_right")]


#: guard: the read-only remigration check that runs first of all.
StepKind = Literal["guard", "check", "warm", "step", "compensation", "finalize"]


class StepContext(_M):
    """What every step activity gets: who it is for, and what earlier steps learned."""

    workflowId: str
    application: str
    wave: str
    runbook: Runbook
    #: The worker fills `site` in from its own config by `siteRef` before the activity runs
    #: (workers.sites); inputs of runs started before issue 13 carry the site itself.
    site: SiteConfig | None = None
    siteRef: SiteRef | None = None
    #: Facts earlier steps reported (e.g. the target's address for the traffic switch).
    facts: dict[str, str] = Field(default_factory=dict)

    @property
    def resolved_site(self) -> SiteConfig:
        """The site this step runs on (filled in by the worker before the activity runs)."""
        if self.site is None:
            raise RuntimeError(
                f"site {self.siteRef} not resolved: the worker's site interceptor "
                "(workers.sites) must run before every activity"
            )
        return self.site


class StepInput(_M):
    step: str
    context: StepContext
    #: For repeatable steps (incremental sync): which pass this is, from 1.
    passNumber: int = 0
    #: What the workflow runs it as (an undo and a finalize step may share a name): the
    #: audit reads this, not the activity's summary text.
    kind: StepKind | None = None


class StepResult(_M):
    step: str
    #: False when the step found the world already as wanted (idempotent re-run).
    changed: bool = True
    facts: dict[str, str] = Field(default_factory=dict)
    details: dict[str, str | int | float | bool] = Field(default_factory=dict)
    attempt: int = 1


CheckPhase = Literal["pre", "post", "criterion"]


class CheckInput(_M):
    name: str
    phase: CheckPhase
    application: str
    probe: Probe
    #: Only for probes about the application's VMs (vsphere-concerns): which VMs, where.
    runbook: Runbook | None = None
    vcenter: VCenter | None = None
    #: Only for dns probes: the site's DNS settings (defaults for server and TTL threshold).
    dns: Dns | None = None
    #: Only for data-consistency and performance-baseline probes: the cutover's context
    #: (staging dir, facts so far: the source VMs and the target domains).
    context: StepContext | None = None


class CheckResult(_M):
    """One evaluation of one check: what was measured, against what, and the verdict."""

    name: str
    phase: CheckPhase
    passed: bool
    measured: str | None = None
    threshold: str | None = None
    detail: str = ""
    at: datetime | None = None
    #: What a pre-check learned for later steps (e.g. the source's latency baseline).
    facts: dict[str, str] = Field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"{self.name} {'passed' if self.passed else 'failed'}"]
        if self.measured is not None:
            parts.append(f"measured {self.measured}")
        if self.threshold is not None:
            parts.append(f"expected {self.threshold}")
        if self.detail:
            parts.append(self.detail)
        return ": ".join(parts[:1]) + (": " + ", ".join(parts[1:]) if len(parts) > 1 else "")


class StepRecord(_M):
    name: str
    kind: StepKind
    startedAt: datetime
    endedAt: datetime | None = None
    outcome: Literal["running", "ok", "failed", "skipped"] = "running"
    attempts: int | None = None
    error: str | None = None
    changed: bool | None = None
    #: data steps: what the pass copied (progress and downtime reports)
    bytesMoved: int | None = None
    #: the data host that ran it (a site with a fleet, issue 17)
    host: str | None = None

    @property
    def seconds(self) -> float | None:
        return (self.endedAt - self.startedAt).total_seconds() if self.endedAt else None


class CutoverStatus(_M):
    workflowId: str
    application: str
    wave: str
    phase: Phase
    outcome: Outcome
    currentStep: str | None = None
    approvedBy: str | None = None
    windowClosesAt: datetime | None = None
    rollbackReason: str | None = None
    steps: list[StepRecord] = Field(default_factory=list)
    checks: list[CheckResult] = Field(default_factory=list)
    compensationsRegistered: list[str] = Field(default_factory=list)
    #: Blocked rollback or finalize: what is left, each with why, and how to go on.
    leftWhere: list[str] = Field(default_factory=list)
    snapshotTakenAt: datetime | None = None
    #: Set when the warm snapshot is older than the runbook's `dataSync.maxSnapshotAgeHours`.
    snapshotWarning: str | None = None
    checkRounds: int = 0
    #: What the target wrote since it booted (its overlay), once measured (rollback), and
    #: what became of it ("kept on the source" by reverse sync, or "discarded ...").
    targetWrittenBytes: int | None = None
    targetWrites: str | None = None
    #: the data host running its data path (a site with a fleet, issue 17)
    dataHost: str | None = None


class CutoverResult(_M):
    workflowId: str
    application: str
    wave: str
    outcome: Outcome
    reason: str
    #: Where each side ends up: an operator reads this first when something went wrong.
    leftWhere: list[str] = Field(default_factory=list)
    approvedBy: str | None = None
    downtimeSeconds: float | None = None
    steps: list[StepRecord] = Field(default_factory=list)
    checks: list[CheckResult] = Field(default_factory=list)
    compensationFailures: list[str] = Field(default_factory=list)
    #: Bytes the data path moved, when it reports them (waves sum it).
    bytesMoved: int | None = None
    #: The operator's reason for cutting over an application already migrated.
    remigrate: str | None = None
    #: Rollback-window check rounds run (only the first, the last and failures are kept).
    checkRounds: int = 0
    #: See `CutoverStatus.targetWrittenBytes` / `targetWrites`.
    targetWrittenBytes: int | None = None
    targetWrites: str | None = None
    dataHost: str | None = None


class SiteLookup(_M):
    """A workflow's request for its worker's own site (`resolve_site`): which, and for whom
    (logs and audit name the application or wave)."""

    siteRef: SiteRef
    application: str | None = None
    wave: str


class AuditAppend(_M):
    """What a workflow asks its worker to record in the audit log: the rest comes from its
    own history (cutover/audit/ledger.py)."""

    kind: Literal["cutover", "wave"]
    outcome: str
    #: for its log lines (the record itself is read from the history)
    application: str | None = None
    wave: str | None = None


class AuditAppended(_M):
    """The record's place in the log (kept in the workflow's history as the result)."""

    seq: int
    hash: str


class ApprovalRequest(_M):
    approver: Annotated[str, Field(min_length=1)]
    comment: str = ""
    #: The operator's signature over the workflow ID, the action and these fields.
    signature: Signature | None = None


class RollbackRequest(_M):
    reason: Annotated[str, Field(min_length=1)]
    requestedBy: str = "unknown"
    #: The operator's signature over the workflow ID, the action and these fields.
    signature: Signature | None = None


class ExtendRequest(_M):
    minutes: Annotated[float, Field(gt=0, le=60 * 24 * 7)]
    requestedBy: str = "unknown"
    #: The operator's signature over the workflow ID, the action and these fields.
    signature: Signature | None = None


class FinalizeRequest(_M):
    requestedBy: str = "unknown"
    #: The operator's signature over the workflow ID, the action and these fields.
    signature: Signature | None = None


class ResumeRequest(_M):
    """Go on with a blocked rollback or finalize once its cause is fixed."""

    requestedBy: str = "unknown"
    reason: str = ""
    #: A rollback blocked on `reverse_sync`: go on without it, discarding what the target
    #: wrote since the switch (said by the operator, in the history, with `reason`).
    discardTargetWrites: bool = False
    signature: Signature | None = None


class WindowCarry(_M):
    """A cutover's state when its rollback window continues as new (bounded history)."""

    compensations: list[str]
    facts: dict[str, str]
    records: list[StepRecord]
    checks: list[CheckResult]
    streaks: dict[str, int]
    approvedBy: str | None
    deadline: datetime
    nextEval: datetime
    downFrom: datetime | None
    downTo: datetime | None
    bytesMoved: int
    rounds: int
    snapshotTakenAt: datetime | None = None
    #: Signed requests' nonces still fresh enough to be replayed, and who started it.
    nonces: dict[str, datetime] = Field(default_factory=dict)
    startedBy: str | None = None


CutoverInput.model_rebuild()


#: Stands in for an input that failed validation, keeping the workflow instance well-formed
#: (queries answer) until run() fails the workflow. Built once, here, outside the sandbox.
INPUT_PLACEHOLDER = CutoverInput(
    runbook=Runbook(
        application="invalid-input",
        wave=0,
        sourcePlatform="vmware-vsphere",
        sourceCluster="none",
        targetPlatform="kvm-libvirt",
        rollbackWindowMinutes=1,
        cutoverSteps=["quiesce_application"],
    ),
    site=SiteConfig(),
)
