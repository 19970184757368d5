"""`cutover schedule ...`: starting waves on a Temporal Schedule."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import Any

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

from cutover.cli.common import EXIT_OK, Failed, Group, emit
from cutover.cli.keys import add_key_option, operator_key
from cutover.cli.signed_start import signed_start
from cutover.cli.wave import load_input
from cutover.signing import DEFAULT_MAX_AGE
from cutover.temporal import connect
from cutover.wave import workflow_id_for_wave

#: A scheduled wave's start signature holds at most this long (the workflow's own bound).
MAX_VALID_DAYS = 365
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([hms])")


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


def _schedule_id(ident: str) -> str:
    return ident if ident.startswith("wave-") else workflow_id_for_wave(ident)


async def cmd_schedule_create(args: argparse.Namespace) -> int:
    from workflows.wave import WaveWorkflow  # the workflow module: slow to import

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
    if not 1 <= args.valid_days <= MAX_VALID_DAYS:
        raise ValueError(f"--valid-days: expected 1 to {MAX_VALID_DAYS}, got {args.valid_days:g}")
    inp = load_input(args, window)
    key = operator_key(args.key)  # a bad key file: refused before any connection
    # A start missed while Temporal was down is still made if within the maintenance window
    # (default: at most 10 minutes late; Temporal's minimum is 10 s).
    catchup = max(window or timedelta(minutes=10), timedelta(seconds=10))
    end: datetime | None = None
    if at is not None:
        # its one start may come as late as the catch-up window lets it, its workflow's
        # first task a little later still (a busy worker)
        valid_until = at + catchup + DEFAULT_MAX_AGE
        if valid_until - datetime.now(UTC) > timedelta(days=MAX_VALID_DAYS):
            raise ValueError(f"--at: more than {MAX_VALID_DAYS} days ahead (a start is signed now)")
    else:
        # each run starts with the signature made now: the schedule ends before it expires
        valid_until = datetime.now(UTC) + timedelta(days=args.valid_days)
        if key is not None:
            end = valid_until - catchup - DEFAULT_MAX_AGE
    wf_id = workflow_id_for_wave(inp.name)  # each run's ID: this and its start time
    sent = signed_start(inp, key, wf_id, "schedule create", valid_until=valid_until)
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
        spec = ScheduleSpec(cron_expressions=[args.cron], end_at=end)
        state = ScheduleState(note=args.note)
    overlap = (
        ScheduleOverlapPolicy.BUFFER_ONE
        if args.overlap == "buffer-one"
        else ScheduleOverlapPolicy.SKIP
    )
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            WaveWorkflow.run,
            sent,  # the site by reference; signed, valid until `valid_until`
            id=wf_id,
            task_queue=inp.resolved_site.taskQueue,
            static_summary=f"Wave {inp.name} (scheduled)",
        ),
        spec=spec,
        # A start missed while Temporal was down still happens if it is within the
        # maintenance window (default: 10 minutes late at most); never two runs at once.
        policy=SchedulePolicy(overlap=overlap, catchup_window=catchup),
        state=state,
    )
    client = await connect(wait_seconds=3)
    sid = _schedule_id(inp.name)
    try:
        handle = await client.create_schedule(sid, schedule)
    except ScheduleAlreadyRunningError:
        raise Failed(f"schedule {sid} already exists (cutover schedule delete {sid})") from None
    except RPCError as exc:
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:
            raise ValueError(f"the schedule was refused: {exc.message}") from None
        raise
    desc = await handle.describe()
    nxt = desc.info.next_action_times[:1]
    when = nxt[0].isoformat() if nxt else "never"
    msg = f"{sid}: starts wave {inp.name} next at {when}"
    report: dict[str, Any] = {"scheduleId": sid, "nextActionTimes": [t.isoformat() for t in nxt]}
    if sent.signature is not None:
        report |= {"signedBy": sent.signature.signer, "startValidUntil": valid_until.isoformat()}
        msg += f"; start signed by {sent.signature.signer}, valid until {valid_until.isoformat()}"
        if end is not None:
            msg += f" (the schedule ends at {end.isoformat()}: create it again to sign anew)"
    emit(report, args.json, msg)
    return EXIT_OK


async def cmd_schedule_list(args: argparse.Namespace) -> int:
    client = await connect(wait_seconds=3)
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
    emit(rows, args.json, text)
    return EXIT_OK


async def cmd_schedule_op(args: argparse.Namespace) -> int:
    client = await connect(wait_seconds=3)
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
            raise Failed(f"no schedule {sid}") from None
        raise
    emit({"scheduleId": sid, "message": msg}, args.json, msg)
    return EXIT_OK


def register(cli: Group) -> None:
    sched = cli.group("schedule", "Start waves on a Temporal Schedule.", "schedule_command",
                      "SCHEDULE_COMMAND")  # fmt: skip
    sp = sched.command("create", "Schedule a wave (never two runs of it at once).",
                       cmd_schedule_create, site=True)  # fmt: skip
    sp.add_argument("wave", metavar="WAVE", help="wave YAML file")
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
    sp.add_argument(
        "--valid-days",
        type=float,
        default=30,
        metavar="N",
        help="--cron: days the signed start stays valid; the schedule ends before then "
        f"(default 30, at most {MAX_VALID_DAYS}). --at: valid until the time, its "
        "catch-up window and 15 minutes",
    )
    add_key_option(sp)
    sched.command("list", "Wave schedules: paused, next start, recent waves.", cmd_schedule_list)
    for name, help_ in (
        ("pause", "Pause a schedule (a running wave continues)."),
        ("resume", "Resume a paused schedule."),
        ("trigger", "Start the wave now (skipped while one of it runs)."),
        ("delete", "Delete a schedule (a running wave continues)."),
    ):
        sp = sched.command(name, help_, cmd_schedule_op)
        sp.add_argument("id", metavar="ID", help="schedule ID (wave-<name>) or wave name")
        if name in ("pause", "resume"):
            sp.add_argument("--note", default="", help="recorded with the schedule")
