"""Waves: many applications' cutovers under one concurrency cap, dependency order and
failure threshold. The wave file (YAML, camelCase), the workflow's input, status and result,
and the figures a wave reports (change failure rate, MTTR, downtime).

Shared by the wave workflow and the CLI; imports nothing that touches the world.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    model_validator,
)

from cutover.config import (
    ConfigError,
    Problem,
    format_path,
    parse_yaml,
    read_text,
    validate_document,
)
from cutover.models import CutoverInput, CutoverResult, Outcome, Tuning
from cutover.runbook import Runbook
from cutover.signing import Signature
from cutover.site import SiteConfig, SiteRef, load_runbook, site_ref

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
NonEmpty = Annotated[StrictStr, Field(min_length=1)]


# -------------------------------------------------------------------- rules
# One set of rules for the wave file and the workflow's input (a wave started from the
# Temporal UI, a schedule, or `wave run`): the numbers' bounds, names, dependencies.

#: Validation context that reads a wave input without these rules, as workers before them
#: did: only to replay a wave that such a worker started (see `WaveWorkflow.__init__`).
WITHOUT_RULES: dict[str, Any] = {"waveRules": False}


def _rules_apply(info: ValidationInfo) -> bool:
    return (info.context or {}).get("waveRules", True) is not False


def _wave_name(value: int | str, info: ValidationInfo) -> str:
    name = str(value)
    if _rules_apply(info) and (not _DNS_LABEL.fullmatch(name) or len(name) > 58):
        raise ValueError(
            f"'{name}' is not a wave name: expected a number or 1-58 lowercase letters, digits "
            "or '-', starting and ending with a letter or digit (it becomes the workflow ID "
            "wave-<name> and each cutover's `wave`)"
        )
    return name


def _app_name(value: str) -> str:
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError(f"'{value}' is not an application name (a DNS-1123 label)")
    return value


def _bounded(low: int, high: int | None, why: str) -> AfterValidator:
    def check(value: int, info: ValidationInfo) -> int:
        if _rules_apply(info) and (value < low or (high is not None and value > high)):
            span = f"at least {low}" if high is None else f"between {low} and {high}"
            raise ValueError(f"{value} is out of range: must be {span} ({why})")
        return value

    return AfterValidator(check)


WaveName = Annotated[StrictInt | StrictStr, AfterValidator(_wave_name)]
AppName = Annotated[StrictStr, AfterValidator(_app_name)]
#: At most this many cutovers run at once (0 would never start one).
CONCURRENCY = _bounded(1, 1000, "at most this many cutovers run at once")
#: Blast radius: once more than this many cutovers failed or rolled back, no new one starts.
FAILURE_THRESHOLD = _bounded(0, None, "failures tolerated before no new cutover starts")
#: Continue-as-new after this many cutovers finished in one run (0 would continue-as-new
#: before starting any, forever).
CONTINUE_AS_NEW_AFTER = _bounded(1, 2000, "cutovers finished per run before continue-as-new")


def dependency_problems(
    apps: list[tuple[str, list[str]]], done: frozenset[str] = frozenset()
) -> list[tuple[int, int | None, str]]:
    """`dependsOn` of each application (in order), as (app index, dependency index or None,
    problem): unknown or self dependencies, else the first cycle. `done`: applications a
    previous run of the wave already dealt with (known, and outside any cycle)."""
    known = {name for name, _ in apps} | done
    problems: list[tuple[int, int | None, str]] = []
    for i, (name, deps) in enumerate(apps):
        for j, dep in enumerate(deps):
            if dep == name:
                problems.append((i, j, f"'{dep}' depends on itself"))
            elif dep not in known:
                problems.append(
                    (i, j, f"unknown application '{dep}': dependsOn names applications of "
                           f"this wave ({', '.join(sorted(known))})")
                )  # fmt: skip
    if not problems:
        cycle = find_cycle({name: deps for name, deps in apps})
        if cycle:
            first = next(i for i, (name, _) in enumerate(apps) if name == cycle[0])
            problems.append((first, None, "dependency cycle: " + " -> ".join(cycle)))
    return problems


class InputProblems(ValueError):
    """Problems across a wave input's fields, each with its path (see `input_problems`)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))
        self.problems = problems


def input_problems(exc: ValidationError, limit: int = 20) -> list[str]:
    """A wave input's validation errors as `path: problem` lines."""
    lines: list[str] = []
    for e in exc.errors():
        err = (e.get("ctx") or {}).get("error")
        if isinstance(err, InputProblems):
            lines += [f"{path}: {msg}" for path, msg in err.problems]
        else:
            lines.append(
                f"{format_path(e['loc']) or '(input)'}: " + e["msg"].removeprefix("Value error, ")
            )
    return lines[:limit]


#: The wave's input is one Temporal payload (2 MB hard limit); keep a margin.
MAX_INPUT_BYTES = 1_800_000


def workflow_id_for_wave(name: str) -> str:
    """One workflow ID per wave, so one wave cannot run twice at once from `wave run`."""
    return f"wave-{name}"


# ------------------------------------------------------------------- the file


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WaveApproval(_File):
    """Who must approve before the wave starts its first cutover."""

    required: StrictBool = False
    approvers: list[NonEmpty] = Field(default_factory=list)

    @model_validator(mode="after")
    def _approvers_when_required(self) -> WaveApproval:
        if self.required and not self.approvers:
            raise ValueError("`approvers` must name at least one person when `required` is true")
        return self


OnCancel = Literal["finish", "rollback"]


class WaveEntry(_File):
    """One application: a runbook file (relative to the wave file) or an inline runbook."""

    runbook: NonEmpty | dict[StrictStr, Any]
    dependsOn: list[AppName] = Field(default_factory=list)


class WaveFile(_File):
    wave: WaveName
    applications: Annotated[list[WaveEntry], Field(min_length=1)]
    #: At most this many cutovers run at once.
    concurrency: Annotated[StrictInt, CONCURRENCY] = 1
    approval: WaveApproval = Field(default_factory=WaveApproval)
    #: Blast radius: once more than this many cutovers failed or rolled back, no new one
    #: starts (running ones finish).
    failureThreshold: Annotated[StrictInt, FAILURE_THRESHOLD] = 0
    #: What `wave cancel` does to running cutovers: let them finish, or roll them back.
    onCancel: OnCancel = "finish"
    #: Continue-as-new after this many cutovers finished in one run (history stays small).
    continueAsNewAfter: Annotated[StrictInt, CONTINUE_AS_NEW_AFTER] = 200


# ---------------------------------------------------------- workflow input


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WaveApp(_M):
    application: str
    runbook: Runbook
    dependsOn: list[str] = Field(default_factory=list)
    #: Why this application is cut over again though already migrated
    #: (`wave run --remigrate APP=REASON`); passed on to its cutover's input.
    remigrate: Annotated[str, Field(min_length=1)] | None = None

    @field_serializer("runbook")
    def _compact(self, rb: Runbook) -> dict[str, Any]:
        # Defaults omitted: a wave of 1,800 seed runbooks stays well under Temporal's 2 MB
        # payload limit (the defaults come back when the runbook is decoded).
        return rb.model_dump(mode="json", exclude_defaults=True)


class AppState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    ROLLED_BACK = "ROLLED_BACK"
    FAILED = "FAILED"
    #: Not started: a dependency did not complete, or the cutover could not start.
    SKIPPED = "SKIPPED"
    #: Not started: the wave stopped (failure threshold, cancel, window closed).
    NOT_STARTED = "NOT_STARTED"


FINISHED = (AppState.COMPLETED, AppState.ROLLED_BACK, AppState.FAILED)
NEVER_STARTED = (AppState.SKIPPED, AppState.NOT_STARTED)


class AppSummary(_M):
    """What the wave keeps of one application (not the whole CutoverResult: a wave of
    thousands must fit in one payload and one continue-as-new input)."""

    application: str
    workflowId: str
    state: AppState = AppState.PENDING
    dependsOn: list[str] = Field(default_factory=list)
    reason: str = ""
    startedAt: datetime | None = None
    endedAt: datetime | None = None
    downtimeSeconds: float | None = None
    #: Failure detected -> source serving again (rolled-back cutovers only).
    recoverySeconds: float | None = None
    bytesMoved: int | None = None


class WavePhase(StrEnum):
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    #: No new start until the running cutovers finished, then continue-as-new.
    DRAINING = "DRAINING"
    #: Stopped starting (threshold, cancel, window); running cutovers finish.
    STOPPING = "STOPPING"
    DONE = "DONE"


class WaveOutcome(StrEnum):
    RUNNING = "RUNNING"
    #: Every application completed.
    COMPLETED = "COMPLETED"
    #: Every application was tried; some did not complete.
    PARTIAL = "PARTIAL"
    #: The failure threshold stopped it.
    STOPPED = "STOPPED"
    CANCELLED = "CANCELLED"
    #: The maintenance window closed before every application started.
    WINDOW_CLOSED = "WINDOW_CLOSED"


class WaveCarry(_M):
    """The state a run hands to the next one at continue-as-new."""

    apps: list[AppSummary]
    approvedBy: str | None = None
    paused: bool = False
    cancelledBy: str | None = None
    cancelPolicy: OnCancel | None = None
    stopReason: str | None = None
    outcome: WaveOutcome = WaveOutcome.RUNNING
    startedAt: datetime | None = None
    notAfter: datetime | None = None
    runs: int = 1
    #: Signed requests' nonces still fresh enough to be replayed (issue 13).
    nonces: dict[str, datetime] = Field(default_factory=dict)


class WaveInput(_M):
    """The wave workflow's input, under the wave file's rules (bounds, names, dependencies)
    and, for each application, the cutover workflow's input rules: an input that breaks one
    fails the wave at once with every problem named, however it was started."""

    name: Annotated[str, AfterValidator(_wave_name)]
    #: The worker's site this wave runs on, by name and digest (issue 13), as for a cutover.
    siteRef: SiteRef | None = None
    #: Only in inputs of waves started before issue 13, and in the workflow's own copy once
    #: the worker resolved `siteRef`; a new input carrying one is refused.
    site: SiteConfig | None = None
    #: Applications not started yet (all of them on the first run).
    apps: list[WaveApp]
    concurrency: Annotated[int, CONCURRENCY] = 1
    approval: WaveApproval = Field(default_factory=WaveApproval)
    failureThreshold: Annotated[int, FAILURE_THRESHOLD] = 0
    onCancel: OnCancel = "finish"
    continueAsNewAfter: Annotated[int, CONTINUE_AS_NEW_AFTER] = 200
    #: No new cutover starts this long after the wave started (a maintenance window).
    windowSeconds: float | None = None
    requestedBy: str = "unknown"
    tuning: Tuning = Field(default_factory=Tuning)
    carry: WaveCarry | None = None
    #: The start, signed by the operator's key over the digest of this input (issue 13).
    signature: Signature | None = None
    #: A scheduled wave's start is signed once, when its schedule is made: valid until
    #: then (covered by the signature) rather than for minutes.
    startValidUntil: datetime | None = None

    @model_validator(mode="after")
    def _applications(self, info: ValidationInfo) -> WaveInput:
        if _rules_apply(info):
            problems = self.application_problems()
            if problems:
                raise InputProblems(problems)
        return self

    def application_problems(self) -> list[tuple[str, str]]:
        """The applications under the wave file's rules (at least one, each once, known
        dependencies, no cycle) and each one's cutover input (runbook against the site)."""
        done = frozenset(a.application for a in (self.carry.apps if self.carry else []))
        problems: list[tuple[str, str]] = []
        if not self.apps and not done:
            problems.append(("apps", "a wave needs at least one application"))
        if self.site is None and self.siteRef is None:
            problems.append(("siteRef", "expected the site's name and digest ({name, digest})"))
        first: dict[str, int] = {}
        for i, app in enumerate(self.apps):
            where = format_path(["apps", i])
            name = app.application
            if app.runbook.application != name:
                why = f"'{name}' is not its runbook's application '{app.runbook.application}'"
                problems.append((f"{where}.application", why))
            if name in first or name in done:
                earlier = f"as apps[{first[name]}]" if name in first else "in an earlier run"
                why = (
                    f"application '{name}' is listed twice (first {earlier}); each may appear once"
                )
                problems.append((f"{where}.application", why))
                continue
            first[name] = i
            if self.site is None:
                continue  # checked against the site once the worker resolved it
            try:
                CutoverInput(runbook=app.runbook, site=self.site)
            except ValidationError as exc:
                problems += [
                    (format_path(["apps", i, *e["loc"]]), e["msg"].removeprefix("Value error, "))
                    for e in exc.errors()
                ]
        deps = [(a.application, a.dependsOn) for a in self.apps]
        for i, j, msg in dependency_problems(deps, done):
            loc: list[int | str] = ["apps", i, "dependsOn"]
            loc += [] if j is None else [j]
            problems.append((format_path(loc), msg))
        return problems

    @property
    def resolved_site(self) -> SiteConfig:
        if self.site is None:
            raise RuntimeError(f"site {self.siteRef} not resolved yet")
        return self.site

    def by_reference(self) -> WaveInput:
        """What is sent to Temporal: the site named by its digest, not carried."""
        site = self.resolved_site
        return self.model_copy(update={"site": None, "siteRef": site_ref(site)})

    def cutover_input(self, app: WaveApp) -> CutoverInput:
        # Children name the site too (a wave started before issue 13 names the version it
        # carries: the worker runs it only if it has that version of the file).
        ref = self.siteRef
        if ref is None:
            assert self.site is not None  # one of the two, by application_problems
            ref = site_ref(self.site)
        return CutoverInput(
            runbook=app.runbook,
            siteRef=ref,
            requestedBy=self.requestedBy,
            tuning=self.tuning,
            remigrate=app.remigrate,
        )


#: What the wave workflow accepts: a WaveInput or (only when that fails, e.g. typed into the
#: Temporal UI's start form) the raw mapping, so the workflow fails with the fields named.
WaveWorkflowInput = Annotated[WaveInput | dict[str, Any], Field(union_mode="left_to_right")]

#: Stands in for an input that failed validation until run() fails the workflow.
WAVE_INPUT_PLACEHOLDER = WaveInput.model_validate(
    {"name": "invalid-input", "site": SiteConfig(), "apps": []}, context=WITHOUT_RULES
)


class WaveCounts(_M):
    total: int = 0
    pending: int = 0
    running: int = 0
    completed: int = 0
    rolledBack: int = 0
    failed: int = 0
    skipped: int = 0
    notStarted: int = 0


class WaveStatus(_M):
    wave: str
    workflowId: str
    phase: WavePhase
    outcome: WaveOutcome
    concurrency: int
    failureThreshold: int
    approvedBy: str | None = None
    stopReason: str | None = None
    runs: int = 1
    counts: WaveCounts
    applications: list[AppSummary]


class DowntimeStats(_M):
    count: int = 0
    medianSeconds: float | None = None
    p95Seconds: float | None = None
    maxSeconds: float | None = None


class WaveResult(_M):
    wave: str
    workflowId: str
    outcome: WaveOutcome
    reason: str
    approvedBy: str | None = None
    counts: WaveCounts
    #: (failed + rolled back) / cutovers that finished; None when none finished.
    changeFailureRate: float | None = None
    #: Mean of failure detected -> source serving again, over rolled-back cutovers.
    mttrSeconds: float | None = None
    downtime: DowntimeStats
    #: Sum over the cutovers that report it; None when none does.
    bytesMoved: int | None = None
    runs: int = 1
    startedAt: datetime | None = None
    endedAt: datetime | None = None
    applications: list[AppSummary]


#: The activity that asks a running cutover to roll back (its `rollback` update).
REQUEST_ROLLBACK = "request_cutover_rollback"
#: The activity that waits for a cutover a wave's earlier run started (its result, by ID):
#: a wave continues as new without draining its running cutovers (issue 17).
AWAIT_CUTOVER = "await_cutover_result"


class CutoverWait(_M):
    workflowId: str


class CutoverRollback(_M):
    workflowId: str
    reason: str
    requestedBy: str = "unknown"


class PauseRequest(_M):
    requestedBy: str = "unknown"
    reason: str = ""
    signature: Signature | None = None


class CancelRequest(_M):
    requestedBy: str = "unknown"
    reason: str = ""
    #: Overrides the wave file's `onCancel` for this cancellation.
    policy: OnCancel | None = None
    signature: Signature | None = None


# ------------------------------------------------------------------ figures


def recovery_seconds(result: CutoverResult) -> float | None:
    """Failure detected -> source serving again, from the cutover's step records.

    Detected: the end of the step that failed, else (a rollback criterion fired, or an
    operator asked) the start of the first compensation. Serving again: the end of
    `restart_source`, else of the last compensation. Only for ROLLED_BACK results (a FAILED
    rollback has not recovered; a pre-check failure changed nothing)."""
    if result.outcome != Outcome.ROLLED_BACK:
        return None
    comps = [s for s in result.steps if s.kind == "compensation"]
    if not comps:
        return None
    failed = [s for s in result.steps if s.outcome == "failed" and s.kind != "compensation"]
    detected = failed[0].endedAt if failed and failed[0].endedAt else comps[0].startedAt
    restart = [s for s in comps if s.name == "restart_source" and s.endedAt]
    served = restart[0].endedAt if restart else comps[-1].endedAt
    if served is None:
        return None
    return max(0.0, (served - detected).total_seconds())


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of the values; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def counts_of(apps: list[AppSummary]) -> WaveCounts:
    def n(state: AppState) -> int:
        return sum(1 for a in apps if a.state == state)

    return WaveCounts(
        total=len(apps),
        pending=n(AppState.PENDING),
        running=n(AppState.RUNNING),
        completed=n(AppState.COMPLETED),
        rolledBack=n(AppState.ROLLED_BACK),
        failed=n(AppState.FAILED),
        skipped=n(AppState.SKIPPED),
        notStarted=n(AppState.NOT_STARTED),
    )


def figures(apps: list[AppSummary]) -> tuple[float | None, float | None, DowntimeStats, int | None]:
    """(change failure rate, MTTR seconds, downtime stats, bytes moved) of finished cutovers."""
    done = [a for a in apps if a.state in FINISHED]
    bad = [a for a in done if a.state != AppState.COMPLETED]
    cfr = len(bad) / len(done) if done else None
    rec = [a.recoverySeconds for a in done if a.recoverySeconds is not None]
    mttr = sum(rec) / len(rec) if rec else None
    down = [a.downtimeSeconds for a in done if a.downtimeSeconds is not None]
    stats = DowntimeStats(
        count=len(down), medianSeconds=median(down), p95Seconds=percentile(down, 95),
        maxSeconds=max(down) if down else None,
    )  # fmt: skip
    moved = [a.bytesMoved for a in done if a.bytesMoved is not None]
    return cfr, mttr, stats, sum(moved) if moved else None


def find_cycle(deps: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle as a path (first == last), or None. Deterministic order.
    Iterative: a chain of thousands of applications (a wave's size) must not recurse."""
    color: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in deps:
        if color.get(root, 0):
            continue
        color[root] = 1
        path, todo = [root], [iter(deps.get(root, []))]
        while path:
            nxt = next(todo[-1], None)
            if nxt is None:
                color[path.pop()] = 2
                todo.pop()
            elif color.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif color.get(nxt, 0) == 0 and nxt in deps:
                color[nxt] = 1
                path.append(nxt)
                todo.append(iter(deps.get(nxt, [])))
    return None


# ------------------------------------------------------------------ loading


def _subnode(node: yaml.Node | None, loc: list[int | str]) -> yaml.Node | None:
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next(
                (v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part),
                None,
            )
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if 0 <= part < len(node.value) else None
        else:
            return None
    return node


def _line(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def _site_problems(
    rb: Runbook, site: SiteConfig, file: str, loc: list[int | str], node: yaml.Node | None
) -> list[Problem]:
    """What load_runbook checks against a site, for an inline runbook."""
    prefix = format_path(loc) + "."

    def line(field: str, i: int) -> int | None:
        return _line(_subnode(node, [*loc, field, i]))

    problems = [
        Problem(file, f"{prefix}{field}[{i}]",
                f"check '{name}' has no probe in the site config (add it under `checks`)",
                line(field, i))
        for field in ("preChecks", "postChecks", "rollbackCriteria")
        for i, name in enumerate(getattr(rb, field))
        if name not in site.checks
    ]  # fmt: skip
    unbound = site.platform_problem(rb.targetPlatform)
    if unbound is not None:
        where = _line(_subnode(node, [*loc, "targetPlatform"]))
        problems.insert(0, Problem(file, f"{prefix}targetPlatform", unbound, where))
    needs = {"update_load_balancer": ("loadBalancer", site.loadBalancer),
             "update_dns": ("dns", site.dns),
             "quiesce_application": ("vcenter", site.vcenter)}  # fmt: skip
    problems += [
        Problem(file, f"{prefix}cutoverSteps[{i}]",
                f"step '{step}' needs a `{needs[step][0]}` section in the site config",
                line("cutoverSteps", i))
        for i, step in enumerate(rb.cutoverSteps)
        if step in needs and needs[step][1] is None
    ]  # fmt: skip
    return problems


def load_wave(
    path: str | Path,
    site: SiteConfig,
    site_file: str = "",
    requested_by: str = "unknown",
    window_seconds: float | None = None,
) -> WaveInput:
    """Read a wave file and its runbooks; every problem in every file, or a WaveInput with
    each runbook's `wave` set to the wave's name."""
    file = str(path)
    data, node = parse_yaml(read_text(path), file)
    wf = validate_document(WaveFile, data, file, node)
    name = str(wf.wave)
    base = Path(path).parent
    problems: list[Problem] = []
    apps: list[WaveApp] = []
    where: dict[str, int] = {}
    context = {"site_checks": frozenset(site.checks)}
    for i, entry in enumerate(wf.applications):
        loc: list[int | str] = ["applications", i, "runbook"]
        try:
            if isinstance(entry.runbook, str):
                rb_path = base / entry.runbook
                rb = load_runbook(rb_path, site, site_file)
            else:
                inline = dict(entry.runbook)
                inline.setdefault("wave", name)
                sub = _subnode(node, loc)
                rb = site.with_endpoints(validate_document(Runbook, inline, file, sub, context))
                sp = _site_problems(rb, site, file, loc, node)
                if sp:
                    raise ConfigError(sp)
        except ConfigError as exc:
            prefix = format_path(loc) + "." if not isinstance(entry.runbook, str) else ""
            for p in exc.problems:
                if prefix and p.file == file and not p.path.startswith(prefix):
                    p = Problem(p.file, prefix + p.path, p.message, p.line)
                problems.append(p)
            continue
        rb = rb.model_copy(update={"wave": name})
        if rb.application in where:
            problems.append(
                Problem(file, format_path(loc),
                        f"application '{rb.application}' is listed twice (first as "
                        f"applications[{where[rb.application]}]); each may appear once",
                        _line(_subnode(node, loc[:2])))
            )  # fmt: skip
            continue
        where[rb.application] = i
        apps.append(WaveApp(application=rb.application, runbook=rb, dependsOn=entry.dependsOn))
    if not problems:
        for i, j, msg in dependency_problems([(a.application, a.dependsOn) for a in apps]):
            at: list[int | str] = ["applications", where[apps[i].application], "dependsOn"]
            at += [] if j is None else [j]
            problems.append(Problem(file, format_path(at), msg, _line(_subnode(node, at))))
    if problems:
        raise ConfigError(problems)
    try:  # the input's rules, as the workflow checks them (also each cutover's input)
        inp = WaveInput(
            name=name,
            site=site,
            apps=apps,
            concurrency=wf.concurrency,
            approval=wf.approval,
            failureThreshold=wf.failureThreshold,
            onCancel=wf.onCancel,
            continueAsNewAfter=wf.continueAsNewAfter,
            windowSeconds=window_seconds,
            requestedBy=requested_by,
        )
    except ValidationError as exc:  # pragma: no cover - the file's checks caught these above
        raise ConfigError([Problem(file, "", p) for p in input_problems(exc)]) from None
    size = len(inp.model_dump_json())
    if size > MAX_INPUT_BYTES:
        msg = (
            f"{len(apps)} applications make a workflow input of {size:,} bytes; Temporal "
            f"refuses payloads over 2 MB: split the wave (at most {MAX_INPUT_BYTES:,} bytes)"
        )
        raise ConfigError([Problem(file, "applications", msg)])
    return inp
