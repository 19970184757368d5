"""Pure helpers of the cutover workflow (`workflows.cutover`): its ID, reading its input,
and the texts it shows (current details, where a blocked rollback left things, causes,
refusals). No commands: nothing here changes what a history records.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import NoReturn

from temporalio import workflow
from temporalio.exceptions import ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from cutover.catalog import Compensation, Step
    from cutover.config import format_path
    from cutover.errors import ErrorKind
    from cutover.models import (
        INPUT_PLACEHOLDER,
        WITHOUT_PLATFORM_RULE,
        CheckResult,
        CutoverInput,
        Outcome,
        Phase,
        RollbackRequest,
        WorkflowInput,
    )


def workflow_id_for(application: str) -> str:
    """One workflow ID per application, so two cutovers of it can never run at once."""
    return f"cutover-{application}"


class RollbackNow(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_input(inp: WorkflowInput) -> tuple[CutoverInput, str | None, str | None]:
    """The cutover's input, why it is invalid (then a placeholder input), and why its
    target platform is not bound by its site (then read without that rule)."""
    # Input that fails validation (e.g. typed into the Temporal UI's start form) arrives
    # as a plain dict; run() then fails the workflow with every field named, instead
    # of the workflow task failing forever on decoding.
    input_error: str | None = None
    # --- issue 15, target platforms (begin) ---
    # Input that breaks only the platform rule ran on workers before the rule: read it
    # without the rule, so a run they started replays as it ran; run() refuses a new one.
    platform_error: str | None = None
    if not isinstance(inp, CutoverInput):
        with contextlib.suppress(ValidationError):
            relaxed = CutoverInput.model_validate(inp, context=WITHOUT_PLATFORM_RULE)
            unbound = (
                None
                if relaxed.site is None
                else relaxed.site.platform_problem(relaxed.runbook.targetPlatform)
            )
            if unbound is not None:
                platform_error = f"invalid cutover input: runbook.targetPlatform: {unbound}"
                inp = relaxed
    # --- issue 15, target platforms (end) ---
    if not isinstance(inp, CutoverInput):
        try:
            inp = CutoverInput.model_validate(inp)
        except ValidationError as exc:
            input_error = "invalid cutover input: " + problems(exc)
            inp = INPUT_PLACEHOLDER
    return inp, input_error, platform_error


def problems(exc: ValidationError) -> str:
    """Every problem of an input, each at its field."""
    return "; ".join(
        f"{format_path(e['loc']) or '(input)'}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    )


def cause(err: BaseException) -> str:
    """The innermost message of a Temporal failure chain, which is what a person needs."""
    while isinstance(err, FailureError) and err.cause is not None:
        err = err.cause
    if isinstance(err, ApplicationError) and err.type:
        return f"{err.type}: {err.message}"
    return str(err) or type(err).__name__


def refuse(message: str) -> NoReturn:
    raise ApplicationError(message, type=ErrorKind.REFUSED.value, non_retryable=True)


def wall_clock() -> datetime:
    """Now, for queries only: workflow time stands still while the workflow waits (e.g. for
    an approval), and a query adds nothing to the history, so it may read the clock."""
    with workflow.unsafe.sandbox_unrestricted():
        return datetime.now(UTC)


def rollback_text(req: RollbackRequest) -> str:
    return f"rollback requested by {req.requestedBy}: {req.reason}"


def next_pass(
    left: list[tuple[str, str]],
    compensations: list[str],
    discard: bool = False,
    stop_source_first: bool = False,
) -> list[str]:
    """The undos a resumed rollback runs, in order: what was left, with the target fenced
    again and its writes synced back before the source starts (a pass that could not
    start the source unfenced it, and the target may have written since), in that order
    whatever order they were left in; without the reverse sync once an operator discarded
    the target's writes; with the source stopped first (`stop_source_first`) when a start
    that failed may have started it."""
    fence, sync, restart = (
        Compensation.FENCE_TARGET,
        Compensation.REVERSE_SYNC,
        Compensation.RESTART_SOURCE,
    )
    once = (Compensation.UNFENCE_TARGET, Step.QUIESCE_APPLICATION, fence, sync)
    pending = [c for c, _ in left if c not in once]
    if restart in pending:
        before: list[str] = [fence] if fence in compensations else []
        if sync in compensations and not discard:
            before += [Step.QUIESCE_APPLICATION, sync] if stop_source_first else [sync]
        at = pending.index(restart)
        pending[at:at] = before
    return pending


def where_left(
    left: list[tuple[str, str]],
    compensations: list[str],
    inp: CutoverInput,
    target_fenced: bool = False,
    then: list[str] | None = None,
) -> list[str]:
    """Where each side is after a blocked rollback, and what to do next. `target_fenced`:
    the target is paused (fenced) and stays so while the rollback waits."""
    names = {c for c, _ in left}
    lb = inp.runbook.lb_backend
    lines: list[str] = []
    # Always where users are: a FAILED result must say what serves.
    traffic = {Compensation.RESTORE_LOAD_BALANCER, Compensation.RESTORE_DNS}
    if not names & traffic:
        moved = traffic & set(compensations)
        lines.append("traffic: back on the source" if moved else "traffic: on the source")
    if Step.QUIESCE_APPLICATION in names:
        lines.append("the source runs, and takes no traffic: it did not stop again")
    elif Compensation.RESTART_SOURCE in names:
        lines.append("the source is not running again")
    elif Compensation.RESTART_SOURCE in compensations:
        lines.append("the source runs again")
    to = "the fenced target (paused: users there get errors)" if target_fenced else "the target"
    if Compensation.RESTORE_LOAD_BALANCER in names:
        lines.append(f"load balancer backend {lb}: traffic still goes to {to}")
    if Compensation.RESTORE_DNS in names:
        lines.append(f"DNS: the name still points at {to}")
    if target_fenced:
        lines.append(
            "the target is fenced (paused): it takes no writes while the source serves, and "
            "keeps its memory and disks"
        )
    elif Compensation.FENCE_TARGET in compensations and Compensation.RESTART_SOURCE in names:
        lines.append("the target runs (not fenced): it serves until the source can start")
    if Compensation.REMOVE_TARGET_DOMAIN in names and not target_fenced:
        lines.append("the target is kept running: it may be serving users")
    if Compensation.REVERSE_SYNC in names:
        lines.append(
            "what the target wrote is not on the source yet: the source is not started "
            "without it (fix the cause and resume, or resume with discardTargetWrites: "
            "`cutover resume APP --discard-target-writes REASON`)"
        )
    if Compensation.DETACH_TARGET_STORAGE in names:
        lines.append("the target's volumes are kept: they hold what the target wrote")
    lines += [f"{c}: {why}" for c, why in left]
    lines.append(
        "fix the cause, then resume the rollback: Update `resume` (CLI: `cutover resume "
        f"{inp.runbook.application}`); it runs, in order: "
        + ", ".join(next_pass(left, compensations) if then is None else then)
    )
    return lines


def snapshot_warning(
    snapshot_at: datetime | None, phase: Phase, limit_hours: float, now: datetime
) -> str | None:
    """The warm snapshot's delta grows on the production datastore while it is open."""
    if snapshot_at is None or phase in (Phase.FINALIZING, Phase.DONE):
        return None
    age = (now - snapshot_at).total_seconds() / 3600
    if age <= limit_hours:
        return None
    return (
        f"the source snapshot is {age:.1f} h old (runbook limit "
        f"dataSync.maxSnapshotAgeHours: {limit_hours:g} h): its delta keeps growing on the "
        "production datastore; approve, roll back, or finish the cutover"
    )


def details_markdown(
    *,
    inp: CutoverInput,
    workflow_id: str,
    phase: Phase,
    outcome: Outcome,
    reason: str,
    current: str | None,
    deadline: datetime | None,
    checks: dict[str, CheckResult],
    left: list[str],
    rollback_reason: str | None,
    warning: str | None,
) -> str:
    """What the Temporal UI shows as the workflow's current details (markdown): what the
    cutover waits for and how to act on it, from the UI (More Actions -> Send an Update)
    or the CLI."""
    rb = inp.runbook
    lines = [f"**{rb.application}** (wave {rb.wave_name}): {phase.value}"]
    if phase == Phase.AWAITING_APPROVAL:
        lines += [
            f"waiting for approval by one of: {', '.join(rb.approval.approvers)}",
            'approve: Update `approve` with `{"approver": "NAME"}` '
            f"(CLI: `cutover approve {workflow_id} --as NAME`); "
            'abort: Update `rollback` with `{"reason": "..."}`',
        ]
    elif phase == Phase.ROLLBACK_WINDOW:
        if deadline:
            lines.append(f"rollback window closes {deadline:%Y-%m-%d %H:%M:%S} UTC")
        post = [checks[n] for n in rb.postChecks if n in checks]
        if post:
            passing = sum(1 for c in post if c.passed)
            lines.append(f"post-checks passing: {passing} of {len(rb.postChecks)}")
        lines.append(
            'Updates: `rollback` `{"reason": "..."}`, `extend` `{"minutes": 30}`'
            + (", `finalize` `{}`" if rb.approval.allowEarlyFinalize else "")
        )
    elif phase in (Phase.ROLLBACK_BLOCKED, Phase.FINALIZE_BLOCKED):
        lines += left
    elif phase == Phase.DONE:
        lines.append(f"{outcome.value}: {reason}")
    elif current:
        lines.append(f"current: `{current}`")
    if rollback_reason:
        lines.append(f"rollback: {rollback_reason}")
    if warning:
        lines.append(f"warning: {warning}")
    return "\n\n".join(lines)
