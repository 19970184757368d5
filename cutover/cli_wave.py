"""`cutover wave ...` and `cutover schedule ...`: running waves, and starting them on a schedule.

Exit codes as for every command: 0 ok, 1 the operation failed (or the wave did not
complete), 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from cutover import cli_lab

if TYPE_CHECKING:
    from temporalio.client import Client, WorkflowHandle

    from cutover.wave import WaveInput, WaveResult, WaveStatus

COMMANDS = ("wave", "schedule")
EXIT_OK, EXIT_FAILED = 0, 1
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([hms])")


def _failed(message: str) -> Exception:
    """An operation refused or failed: exit 1 with this message (the CLI's own error type)."""
    from cutover.cli import _Failed

    return _Failed(message)


def _print(obj: BaseModel | dict[str, Any] | list[Any], as_json: bool, text: str) -> None:
    if as_json:
        data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text)


def parse_duration(text: str, flag: str) -> timedelta:
    """`90m`, `2h`, `1h30m`, `45s`; a bare number is minutes."""
    t = text.strip().lower()
    try:
        minutes = float(t)
    except ValueError:
        pass
    else:
        if minutes > 0:
            return timedelta(minutes=minutes)
        raise ValueError(f"{flag}: expected a positive duration, got '{text}'")
    parts = _DURATION.findall(t)
    if not parts or _DURATION.sub("", t).strip():
        raise ValueError(f"{flag}: expected a duration such as 90m, 2h or 1h30m, got '{text}'")
    unit = {"h": 3600, "m": 60, "s": 1}
    seconds = sum(float(n) * unit[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{flag}: expected a positive duration, got '{text}'")
    return timedelta(seconds=seconds)


def parse_at(text: str) -> datetime:
    """An ISO 8601 time with a UTC offset (or Z), in the future."""
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--at: expected an ISO 8601 time such as 2026-12-05T22:00:00Z, got '{text}'"
        ) from None
    if at.tzinfo is None:
        raise ValueError(f"--at: '{text}' has no time zone; add Z or an offset such as +01:00")
    at = at.astimezone(UTC)
    if at <= datetime.now(UTC):
        raise ValueError(f"--at: {at.isoformat()} is in the past")
    return at


def _load(args: argparse.Namespace, window: timedelta | None = None) -> WaveInput:
    from cutover.site import load_site
    from cutover.temporal import identity
    from cutover.wave import load_wave

    site = load_site(args.site)
    return load_wave(
        args.wave,
        site,
        args.site,
        requested_by=identity(),
        window_seconds=window.total_seconds() if window else None,
    )


async def _client() -> Client:
    from cutover.temporal import connect

    return await connect(wait_seconds=3)


async def _wave_handle(client: Client, ident: str) -> WorkflowHandle[Any, WaveResult]:
    """ID: a wave's workflow ID, or its name (the running wave of that name, which may have
    been started by a schedule, else `wave-<name>`)."""
    from cutover.wave import WaveResult, workflow_id_for_wave

    wf_id = ident if ident.startswith("wave-") else workflow_id_for_wave(ident)
    if not ident.startswith("wave-"):
        # the running one first; else the latest (listed newest first)
        base = f'WorkflowType = "Wave" AND CutoverWave = "{ident}"'
        for query in (f'{base} AND ExecutionStatus = "Running"', base):
            found = [wf.id async for wf in client.list_workflows(query, limit=1)]
            if found:
                wf_id = found[0]
                break
    return client.get_workflow_handle(wf_id, result_type=WaveResult)


# -------------------------------------------------------------------- wave


def cmd_wave_validate(args: argparse.Namespace) -> int:
    inp = _load(args)
    msg = f"wave {inp.name}: {len(inp.apps)} application(s) valid against {args.site}"
    _print({"wave": inp.name, "applications": [a.application for a in inp.apps]}, args.json, msg)
    return EXIT_OK


async def _wave_run(args: argparse.Namespace) -> int:
    from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from cutover.wave import workflow_id_for_wave
    from workflows.wave import WaveWorkflow

    inp = _load(args)
    reasons = remigrate_reasons(args.remigrate, [a.application for a in inp.apps])
    client = await _client()
    inp = await _refuse_migrated(client, inp, reasons)
    wf_id = workflow_id_for_wave(inp.name)
    try:
        handle = await client.start_workflow(
            WaveWorkflow.run,
            inp,
            id=wf_id,
            task_queue=inp.site.taskQueue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            static_summary=f"Wave {inp.name}: {len(inp.apps)} application(s)",
        )
    except WorkflowAlreadyStartedError:
        raise _failed(f"wave {inp.name} is already running (workflow {wf_id})") from None
    if not args.wait:
        _print({"workflowId": wf_id, "runId": handle.result_run_id}, args.json, wf_id)
        return EXIT_OK
    print(f"started {wf_id}; waiting for the result", file=sys.stderr)
    result = await handle.result()
    _print(result, args.json, result_text(result))
    return EXIT_OK if result.outcome.value == "COMPLETED" else EXIT_FAILED


def remigrate_reasons(flags: list[str] | None, apps: list[str]) -> dict[str, str]:
    """`--remigrate APP=REASON` flags as {application: reason}, each naming a wave app."""
    from cutover.remigration import check_reason

    reasons: dict[str, str] = {}
    for flag in flags or []:
        app, sep, reason = flag.partition("=")
        app = app.strip()
        if not sep or not app:
            raise ValueError(f"--remigrate: expected APP=REASON, got '{flag}'")
        if app not in apps:
            raise ValueError(f"--remigrate: '{app}' is not an application of this wave")
        reasons[app] = str(check_reason(reason, f"--remigrate {app}"))
    return reasons


async def _refuse_migrated(client: Client, inp: WaveInput, reasons: dict[str, str]) -> WaveInput:
    """Refuse the whole wave, before it starts, when any application was already cut over
    (its last cutover completed, or its source is marked migrated) without `--remigrate`;
    else the input with each re-migration's reason for its cutover to record."""
    from cutover import remigration

    found, warnings = await remigration.verdicts(client, inp.site, [a.runbook for a in inp.apps])
    for warning in warnings:
        print(f"cutover wave run: warning: {warning}", file=sys.stderr)
    refused = [v for v in found if v.migrated and v.application not in reasons]
    if refused:
        raise _failed(
            f"refused: wave {inp.name}: {len(refused)} application(s) already cut over; "
            "nothing was started.\n"
            + "\n".join(f"  {v.sentence()}" for v in refused)
            + "\nTo cut one over again deliberately: cutover wave run ... --remigrate "
            "APP=REASON (the reason is recorded in its history and audit); or remove it "
            "from the wave file"
        )
    for v in found:
        if v.migrated:
            print(f"re-migrating ({reasons[v.application]}): {v.sentence()}", file=sys.stderr)
    if not reasons:
        return inp
    apps = [
        a.model_copy(update={"remigrate": reasons[a.application]})
        if a.application in reasons
        else a
        for a in inp.apps
    ]
    return inp.model_copy(update={"apps": apps})


def _secs(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}s"


def result_text(r: WaveResult) -> str:
    n = r.counts
    cfr = "-" if r.changeFailureRate is None else f"{r.changeFailureRate:.1%}"
    lines = [
        f"{r.workflowId}: {r.outcome.value} - {r.reason}",
        f"  {n.total} application(s): {n.completed} completed, {n.rolledBack} rolled back, "
        f"{n.failed} failed, {n.skipped} skipped, {n.notStarted} not started",
        f"  change failure rate {cfr}, MTTR {_secs(r.mttrSeconds)}, downtime median "
        f"{_secs(r.downtime.medianSeconds)} p95 {_secs(r.downtime.p95Seconds)} max "
        f"{_secs(r.downtime.maxSeconds)}"
        + (f", {r.bytesMoved} bytes moved" if r.bytesMoved is not None else "")
        + f" ({r.runs} run(s))",
    ]
    lines += [f"  {a.application:<30} {a.state.value:<12} {a.reason}" for a in r.applications]
    return "\n".join(lines)


async def _wave_update(args: argparse.Namespace) -> int:
    from temporalio.service import RPCError, RPCStatusCode

    from cutover.models import ApprovalRequest
    from cutover.temporal import identity, why_finished
    from cutover.wave import CancelRequest, PauseRequest
    from workflows.wave import WaveWorkflow

    client = await _client()
    handle = await _wave_handle(client, args.id)
    who = identity()
    try:
        msg: str
        if args.wave_command == "approve":
            msg = await handle.execute_update(
                WaveWorkflow.approve, ApprovalRequest(approver=args.as_, comment=args.comment)
            )
        elif args.wave_command == "pause":
            msg = await handle.execute_update(
                WaveWorkflow.pause, PauseRequest(requestedBy=who, reason=args.reason)
            )
        elif args.wave_command == "resume":
            msg = await handle.execute_update(
                WaveWorkflow.resume, PauseRequest(requestedBy=who, reason=args.reason)
            )
        else:
            msg = await handle.execute_update(
                WaveWorkflow.cancel,
                CancelRequest(requestedBy=who, reason=args.reason, policy=args.policy),
            )
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        raise _failed(await why_finished(handle, args.wave_command, "wave")) from None
    _print({"workflowId": handle.id, "message": msg}, args.json, msg)
    return EXIT_OK


async def _child_lines(client: Client, st: WaveStatus) -> dict[str, tuple[str, str]]:
    """Phase and progress of each running cutover, from its own status query."""
    from datetime import timedelta as td

    from workflows.cutover import AppCutoverWorkflow

    async def one(wf_id: str) -> tuple[str, str]:
        try:
            cs = await client.get_workflow_handle(wf_id).query(
                AppCutoverWorkflow.status, rpc_timeout=td(seconds=5)
            )
        except Exception:  # not started yet, or the worker is busy: show what we know
            return "-", ""
        done = sum(1 for s in cs.steps if s.outcome == "ok" and s.kind != "check")
        step = f"{cs.currentStep} " if cs.currentStep else ""
        return cs.phase.value, f"{step}({done} step(s) done)"

    running = [a for a in st.applications if a.state.value == "RUNNING"]
    found = await asyncio.gather(*(one(a.workflowId) for a in running))
    return {a.application: f for a, f in zip(running, found, strict=True)}


def status_text(st: WaveStatus, children: dict[str, tuple[str, str]]) -> str:
    n = st.counts
    finished = n.completed + n.rolledBack + n.failed
    lines = [
        f"wave {st.wave} ({st.workflowId}): {st.phase.value}, outcome {st.outcome.value}; "
        f"concurrency {st.concurrency}, failure threshold {st.failureThreshold}"
        + (f", approved by {st.approvedBy}" if st.approvedBy else ""),
        f"  {finished}/{n.total} finished: {n.completed} completed, {n.rolledBack} rolled back, "
        f"{n.failed} failed; {n.running} running, {n.pending} pending, "
        f"{n.skipped} skipped, {n.notStarted} not started",
    ]
    if st.stopReason:
        lines.append(f"  stopping: {st.stopReason}")
    lines.append(f"  {'APPLICATION':<30} {'STATE':<12} {'PHASE':<18} PROGRESS / REASON")
    state = {a.application: a.state.value for a in st.applications}
    for a in st.applications:
        phase, progress = children.get(a.application, ("-", ""))
        detail = progress if a.state.value == "RUNNING" else a.reason
        waits = [d for d in a.dependsOn if state.get(d) != "COMPLETED"]
        if a.state.value == "PENDING" and waits:
            detail = "waits for " + ", ".join(waits)
        lines.append(f"  {a.application:<30} {a.state.value:<12} {phase:<18} {detail}")
    return "\n".join(lines)


async def _status_of(client: Client, handle: WorkflowHandle[Any, WaveResult]) -> WaveStatus:
    from temporalio.client import WorkflowExecutionStatus

    from cutover.wave import WavePhase, WaveStatus
    from workflows.wave import WaveWorkflow

    desc = await handle.describe()
    if desc.status != WorkflowExecutionStatus.RUNNING:
        if desc.status != WorkflowExecutionStatus.COMPLETED:
            raise _failed(f"wave {handle.id} ended {desc.status.name if desc.status else '?'}")
        r = await handle.result()
        return WaveStatus(
            wave=r.wave, workflowId=r.workflowId, phase=WavePhase.DONE, outcome=r.outcome,
            concurrency=0, failureThreshold=0, approvedBy=r.approvedBy,
            stopReason=None, runs=r.runs, counts=r.counts, applications=r.applications,
        )  # fmt: skip
    return await handle.query(WaveWorkflow.status, rpc_timeout=timedelta(seconds=15))


async def _wave_status(args: argparse.Namespace) -> int:
    from temporalio.service import RPCError, RPCStatusCode

    client = await _client()
    if args.id is None:
        return await _wave_list(client, args.json)
    handle = await _wave_handle(client, args.id)
    while True:
        try:
            st = await _status_of(client, handle)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise _failed(f"no wave with workflow ID {handle.id}") from None
            raise
        children = await _child_lines(client, st)
        if args.json:
            data = st.model_dump(mode="json")
            for app in data["applications"]:
                phase, progress = children.get(app["application"], (None, None))
                app["phase"], app["progress"] = phase, progress
            text = json.dumps(data, indent=2)
        else:
            text = status_text(st, children)
        if args.watch and sys.stdout.isatty():
            print("\x1b[H\x1b[2J", end="")
        print(text, flush=True)
        if not args.watch or st.phase.value == "DONE":
            return EXIT_OK
        await asyncio.sleep(args.interval)


async def _wave_list(client: Client, as_json: bool) -> int:
    from cutover import search_attributes as sa

    rows: list[dict[str, Any]] = []
    async for wf in client.list_workflows('WorkflowType = "Wave"', limit=50):
        attrs = wf.typed_search_attributes
        rows.append(
            {
                "workflowId": wf.id,
                "wave": attrs.get(sa.WAVE),
                "status": wf.status.name if wf.status else None,
                "phase": attrs.get(sa.PHASE),
                "outcome": attrs.get(sa.OUTCOME),
                "startTime": wf.start_time.isoformat(),
            }
        )
    text = "\n".join(
        [f"{'WORKFLOW ID':<44} {'STATUS':<11} {'PHASE':<18} {'OUTCOME':<14} STARTED"]
        + [
            f"{r['workflowId']:<44} {r['status'] or '-':<11} {r['phase'] or '-':<18} "
            f"{r['outcome'] or '-':<14} {r['startTime']}"
            for r in rows
        ]
    )
    _print(rows, as_json, text)
    return EXIT_OK


# ---------------------------------------------------------------- schedule


def _schedule_id(ident: str) -> str:
    from cutover.wave import workflow_id_for_wave

    return ident if ident.startswith("wave-") else workflow_id_for_wave(ident)


async def _schedule_create(args: argparse.Namespace) -> int:
    from temporalio.client import (
        Schedule,
        ScheduleActionStartWorkflow,
        ScheduleAlreadyRunningError,
        ScheduleCalendarSpec,
        ScheduleOverlapPolicy,
        SchedulePolicy,
        ScheduleRange,
        ScheduleSpec,
        ScheduleState,
    )
    from temporalio.service import RPCError, RPCStatusCode

    from cutover.wave import workflow_id_for_wave
    from workflows.wave import WaveWorkflow

    window = parse_duration(args.window, "--window") if args.window else None
    at = parse_at(args.at) if args.at else None
    if (
        args.cron is not None
        and len(args.cron.split()) not in (5, 6, 7)
        and not (args.cron.startswith("@"))
    ):
        raise ValueError(
            f"--cron: expected 5 fields (minute hour day-of-month month day-of-week) "
            f"or @hourly/@daily..., got '{args.cron}'"
        )
    inp = _load(args, window)
    if at is not None:
        spec = ScheduleSpec(
            calendars=[
                ScheduleCalendarSpec(
                    second=[ScheduleRange(at.second)], minute=[ScheduleRange(at.minute)],
                    hour=[ScheduleRange(at.hour)], day_of_month=[ScheduleRange(at.day)],
                    month=[ScheduleRange(at.month)], year=[ScheduleRange(at.year)],
                    day_of_week=[ScheduleRange(0, 6)],
                )
            ]
        )  # fmt: skip
        state = ScheduleState(limited_actions=True, remaining_actions=1, note=args.note)
    else:
        spec = ScheduleSpec(cron_expressions=[args.cron])
        state = ScheduleState(note=args.note)
    overlap = (
        ScheduleOverlapPolicy.BUFFER_ONE
        if args.overlap == "buffer-one"
        else ScheduleOverlapPolicy.SKIP
    )
    # A start missed while Temporal was down is still made if within the maintenance window
    # (default: at most 10 minutes late; Temporal's minimum is 10 s).
    catchup = max(window or timedelta(minutes=10), timedelta(seconds=10))
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            WaveWorkflow.run,
            inp,
            id=workflow_id_for_wave(inp.name),
            task_queue=inp.site.taskQueue,
            static_summary=f"Wave {inp.name} (scheduled)",
        ),
        spec=spec,
        # A start missed while Temporal was down still happens if it is within the
        # maintenance window (default: 10 minutes late at most); never two runs at once.
        policy=SchedulePolicy(overlap=overlap, catchup_window=catchup),
        state=state,
    )
    client = await _client()
    sid = _schedule_id(inp.name)
    try:
        handle = await client.create_schedule(sid, schedule)
    except ScheduleAlreadyRunningError:
        raise _failed(f"schedule {sid} already exists (cutover schedule delete {sid})") from None
    except RPCError as exc:
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:
            raise ValueError(f"the schedule was refused: {exc.message}") from None
        raise
    desc = await handle.describe()
    nxt = desc.info.next_action_times[:1]
    when = nxt[0].isoformat() if nxt else "never"
    msg = f"{sid}: starts wave {inp.name} next at {when}"
    _print({"scheduleId": sid, "nextActionTimes": [t.isoformat() for t in nxt]}, args.json, msg)
    return EXIT_OK


async def _schedule_list(args: argparse.Namespace) -> int:
    client = await _client()
    rows: list[dict[str, Any]] = []
    async for s in await client.list_schedules():
        if not s.id.startswith("wave-"):
            continue
        nxt = s.info.next_action_times[:1] if s.info else []
        recent = s.info.recent_actions[-3:] if s.info else []
        rows.append(
            {
                "scheduleId": s.id,
                "paused": bool(s.schedule and s.schedule.state.paused),
                "nextActionTimes": [t.isoformat() for t in nxt],
                "recentActions": [str(getattr(a.action, "workflow_id", "")) for a in recent],
            }
        )
    text = "\n".join(
        [f"{'SCHEDULE':<32} {'PAUSED':<7} {'NEXT':<27} RECENT WAVES"]
        + [
            f"{r['scheduleId']:<32} {'yes' if r['paused'] else 'no':<7} "
            f"{(r['nextActionTimes'] or ['-'])[0]:<27} {', '.join(r['recentActions']) or '-'}"
            for r in rows
        ]
    )
    _print(rows, args.json, text)
    return EXIT_OK


async def _schedule_op(args: argparse.Namespace) -> int:
    from temporalio.service import RPCError, RPCStatusCode

    client = await _client()
    sid = _schedule_id(args.id)
    handle = client.get_schedule_handle(sid)
    op = args.schedule_command
    try:
        if op == "pause":
            await handle.pause(note=args.note or "paused with cutover schedule pause")
            msg = f"{sid}: paused (no new wave starts; a running wave continues)"
        elif op == "resume":
            await handle.unpause(note=args.note or "resumed with cutover schedule resume")
            msg = f"{sid}: resumed"
        elif op == "trigger":
            await handle.trigger()
            msg = f"{sid}: triggered (skipped if a wave of this schedule is still running)"
        else:
            await handle.delete()
            msg = f"{sid}: deleted (a running wave continues)"
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise _failed(f"no schedule {sid}") from None
        raise
    _print({"scheduleId": sid, "message": msg}, args.json, msg)
    return EXIT_OK


# ------------------------------------------------------------------ parser


def register(sub: Any) -> None:
    """Add `wave` and `schedule` (with their subcommands) to the CLI's subparsers."""

    def add(parent: Any, name: str, help_: str, json_flag: bool = True) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print machine-readable JSON")
        return sp

    wave = add(sub, "wave", "Run a wave of cutovers; steer it; watch it.", json_flag=False)
    ws = wave.add_subparsers(dest="wave_command", required=True, metavar="WAVE_COMMAND")
    sp = add(ws, "validate", "Check a wave file, its runbooks and dependencies against a site.")
    sp.add_argument("wave", metavar="WAVE", help="wave YAML file")
    sp.add_argument("--site", help=cli_lab.SITE_HELP)
    sp = add(ws, "run", "Start a wave; prints its workflow ID.")
    sp.add_argument("wave", metavar="WAVE", help="wave YAML file")
    sp.add_argument("--site", help=cli_lab.SITE_HELP)
    sp.add_argument("--wait", action="store_true", help="wait for and print the result")
    sp.add_argument(
        "--remigrate",
        action="append",
        metavar="APP=REASON",
        help="cut over APP although it was already migrated (its last cutover completed, or "
        "its source is marked migrated); the reason is recorded (repeatable)",
    )
    sp = add(ws, "approve", "Approve a wave waiting for approval before its first cutover.")
    sp.add_argument("id", metavar="ID", help="wave workflow ID or wave name")
    sp.add_argument("--as", dest="as_", required=True, metavar="NAME", help="approver's name")
    sp.add_argument("--comment", default="", help="recorded with the approval")
    for name, help_ in (
        ("pause", "Start no new cutover until resumed (running ones continue)."),
        ("resume", "Resume starting cutovers."),
        ("cancel", "Start no new cutover; running ones finish or roll back (onCancel)."),
    ):
        sp = add(ws, name, help_)
        sp.add_argument("id", metavar="ID", help="wave workflow ID or wave name")
        sp.add_argument("--reason", default="", help="recorded in the history")
        if name == "cancel":
            sp.add_argument(
                "--policy",
                choices=["finish", "rollback"],
                help="override the wave file's onCancel",
            )
    sp = add(ws, "status", "A wave's applications: state, phase, progress, outcome.")
    sp.add_argument("id", metavar="ID", nargs="?", help="wave workflow ID or name (none: list)")
    sp.add_argument("--watch", action="store_true", help="refresh until the wave is done")
    sp.add_argument("--interval", type=float, default=1.0, help="--watch refresh seconds")

    sched = add(sub, "schedule", "Start waves on a Temporal Schedule.", json_flag=False)
    ss = sched.add_subparsers(dest="schedule_command", required=True, metavar="SCHEDULE_COMMAND")
    sp = add(ss, "create", "Schedule a wave (never two runs of it at once).")
    sp.add_argument("wave", metavar="WAVE", help="wave YAML file")
    sp.add_argument("--site", help=cli_lab.SITE_HELP)
    when = sp.add_mutually_exclusive_group(required=True)
    when.add_argument("--at", metavar="TIME", help="once, at this ISO 8601 time (with offset)")
    when.add_argument("--cron", metavar="EXPR", help="repeatedly, e.g. '0 22 * * SAT' (UTC)")
    sp.add_argument(
        "--window",
        metavar="DURATION",
        help="maintenance window, e.g. 4h: no cutover starts after it closes, and a start "
        "missed while Temporal was down is made up only within it",
    )
    sp.add_argument(
        "--overlap",
        choices=["skip", "buffer-one"],
        default="skip",
        help="a start while the wave still runs: skip it (default) or run it after",
    )
    sp.add_argument("--note", default="", help="a note shown with the schedule")
    add(ss, "list", "Wave schedules: paused, next start, recent waves.")
    for name, help_ in (
        ("pause", "Pause a schedule (a running wave continues)."),
        ("resume", "Resume a paused schedule."),
        ("trigger", "Start the wave now (skipped while one of it runs)."),
        ("delete", "Delete a schedule (a running wave continues)."),
    ):
        sp = add(ss, name, help_)
        sp.add_argument("id", metavar="ID", help="schedule ID (wave-<name>) or wave name")
        if name in ("pause", "resume"):
            sp.add_argument("--note", default="", help="recorded with the schedule")


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "wave":
        if args.wave_command == "validate":
            return cmd_wave_validate(args)
        if args.wave_command == "run":
            return asyncio.run(_wave_run(args))
        if args.wave_command == "status":
            if args.interval <= 0:
                raise ValueError("--interval: expected a positive number of seconds")
            return asyncio.run(_wave_status(args))
        return asyncio.run(_wave_update(args))
    if args.schedule_command == "create":
        return asyncio.run(_schedule_create(args))
    if args.schedule_command == "list":
        return asyncio.run(_schedule_list(args))
    return asyncio.run(_schedule_op(args))
