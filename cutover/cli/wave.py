"""`cutover wave ...`: running a wave of cutovers, steering it, watching it.

Exit codes as for every command: 0 ok, 1 the operation failed (or the wave did not
complete), 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from cutover import search_attributes as sa
from cutover.cli.common import EXIT_FAILED, EXIT_OK, Failed, Group, emit, send_update
from cutover.cli.keys import add_key_option, operator_key, signed, signer_name
from cutover.cli.prepare import add_policy_arguments, wave_policy_check
from cutover.cli.remigration import check_reason, verdicts
from cutover.cli.signed_start import signed_start
from cutover.fleet import QUERY_STATE, FleetState, fleet_workflow_id
from cutover.models import ApprovalRequest
from cutover.plan.gate import WaveFigures, promotion_gate
from cutover.site import load_site
from cutover.temporal import connect, identity
from cutover.wave import (
    CancelRequest,
    PauseRequest,
    WaveInput,
    WavePhase,
    WaveResult,
    WaveStatus,
    load_wave,
    workflow_id_for_wave,
)

#: How many finished waves of a task queue the promotion gate reads (newest first).
GATE_LOOKBACK = 50


def load_input(args: argparse.Namespace, window: timedelta | None = None) -> WaveInput:
    """The wave file (`args.wave`) checked against the site (`args.site`)."""
    site = load_site(args.site)
    return load_wave(
        args.wave,
        site,
        args.site,
        requested_by=identity(),
        window_seconds=window.total_seconds() if window else None,
    )


async def _wave_handle(client: Client, ident: str) -> WorkflowHandle[Any, WaveResult]:
    """ID: a wave's workflow ID, or its name (the running wave of that name, which may have
    been started by a schedule, else `wave-<name>`)."""
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


def cmd_wave_validate(args: argparse.Namespace) -> int:
    if not args.site:
        # no site: the file's structure only (what a planner's output or a hand-written
        # file must satisfy before any site binds its checks and platforms)
        from cutover.plan.structure import wave_structure

        wave_policy_check(args, [], False)  # --policy without --site: refused, naming why
        name, apps = wave_structure(args.wave)
        msg = f"wave {name}: {len(apps)} application(s) structurally valid (no site checked)"
        emit({"wave": name, "applications": apps, "site": None}, args.json, msg)
        return EXIT_OK
    inp = load_input(args)
    notes = wave_policy_check(args, [a.runbook for a in inp.apps], inp.approval.required)
    msg = f"wave {inp.name}: {len(inp.apps)} application(s) valid against {args.site}"
    if args.policy:
        msg = "".join(f"note: {n}\n" for n in notes) + f"{msg} and {args.policy}"
    report: dict[str, Any] = {"wave": inp.name, "applications": [a.application for a in inp.apps]}
    emit(report | ({"notes": notes} if args.policy else {}), args.json, msg)
    return EXIT_OK


async def cmd_wave_run(args: argparse.Namespace) -> int:
    from workflows.wave import WaveWorkflow  # the workflow module: slow to import

    inp = load_input(args)
    key = operator_key(args.key)  # a bad key file: refused before any connection
    reasons = remigrate_reasons(args.remigrate, [a.application for a in inp.apps])
    override = check_reason(args.override_gate, "--override-gate")
    client = await connect(wait_seconds=3)
    inp = await _refuse_migrated(client, inp, reasons)
    memo = await promotion_gate_memo(client, inp, override)
    wf_id = workflow_id_for_wave(inp.name)
    # the worker resolves the site from its own config; the key's principal signs the start
    sent = signed_start(inp, key, wf_id, "wave run")
    try:
        handle = await client.start_workflow(
            WaveWorkflow.run,
            sent,
            id=wf_id,
            task_queue=inp.resolved_site.taskQueue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            static_summary=f"Wave {inp.name}: {len(inp.apps)} application(s)",
            memo=memo,
        )
    except WorkflowAlreadyStartedError:
        raise Failed(f"wave {inp.name} is already running (workflow {wf_id})") from None
    if not args.wait:
        emit({"workflowId": wf_id, "runId": handle.result_run_id}, args.json, wf_id)
        return EXIT_OK
    print(f"started {wf_id}; waiting for the result", file=sys.stderr)
    result = await handle.result()
    emit(result, args.json, result_text(result))
    return EXIT_OK if result.outcome.value == "COMPLETED" else EXIT_FAILED


async def _finished_waves(client: Client, queue: str) -> list[WaveFigures]:
    """The figures of the waves that finished on this task queue (the same site), newest
    first, from their workflows' results."""
    quoted = queue.replace("\\", "\\\\").replace('"', '\\"')
    query = f'WorkflowType = "Wave" AND ExecutionStatus = "Completed" AND TaskQueue = "{quoted}"'
    out: list[WaveFigures] = []
    async for wf in client.list_workflows(query, limit=GATE_LOOKBACK):
        handle = client.get_workflow_handle(wf.id, run_id=wf.run_id, result_type=WaveResult)
        result = await handle.result()
        out.append(
            WaveFigures(
                wave=result.wave,
                workflowId=wf.id,
                endedAt=wf.close_time or result.endedAt or wf.start_time,
                changeFailureRate=result.changeFailureRate,
                mttrSeconds=result.mttrSeconds,
            )
        )
    return out


async def promotion_gate_memo(
    client: Client, inp: WaveInput, override: str | None
) -> dict[str, Any]:
    """The promotion gate (cutover/plan/gate.py) before a wave starts: refuses when the
    predecessors' change failure rate and MTTR did not both go down, unless overridden;
    what it judged (and any override) becomes the wave's memo, kept in its history."""
    verdict = promotion_gate(await _finished_waves(client, inp.resolved_site.taskQueue), inp.name)
    if not verdict.passed and override is None:
        raise Failed(
            f"refused: wave {inp.name}: promotion gate: {verdict.figures}; do not scale the "
            "migration until both go down, or start it anyway with --override-gate REASON "
            "(recorded in the wave's history)"
        )
    gate: dict[str, Any] = {"passed": verdict.passed, "figures": verdict.figures}
    if override is not None:
        gate |= {"override": override, "overriddenBy": identity()}
        if not verdict.passed:
            print(f"promotion gate overridden: {verdict.figures}", file=sys.stderr)
    return {"promotionGate": gate}


def remigrate_reasons(flags: list[str] | None, apps: list[str]) -> dict[str, str]:
    """`--remigrate APP=REASON` flags as {application: reason}, each naming a wave app."""

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
    found, warnings = await verdicts(client, inp.resolved_site, [a.runbook for a in inp.apps])
    for warning in warnings:
        print(f"cutover wave run: warning: {warning}", file=sys.stderr)
    refused = [v for v in found if v.migrated and v.application not in reasons]
    if refused:
        raise Failed(
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


async def cmd_wave_update(args: argparse.Namespace) -> int:
    """approve, pause, resume, cancel: one update to the running wave, signed when a key is
    given (--key FILE or $CUTOVER_KEY): its name is who asks."""
    key = operator_key(args.key)
    who = signer_name(key, None) or identity()

    def request() -> BaseModel:
        if args.wave_command == "approve":
            approver = signer_name(key, args.as_)
            if approver is None:
                raise ValueError(
                    "--as NAME: who approves (or sign with --key FILE / $CUTOVER_KEY: the "
                    "key's name approves)"
                )
            return ApprovalRequest(approver=approver, comment=args.comment)
        if args.wave_command in ("pause", "resume"):
            return PauseRequest(requestedBy=who, reason=args.reason)
        return CancelRequest(requestedBy=who, reason=args.reason, policy=args.policy)

    req = request()  # refused here before any connection
    client = await connect(wait_seconds=3)
    handle = await _wave_handle(client, args.id)
    # signed for the wave the name resolved to (a scheduled wave's ID is not wave-<name>)
    payload = signed(key, handle.id, args.wave_command, req)

    async def send() -> str:
        done: str = await handle.execute_update(args.wave_command, payload, result_type=str)
        return done

    return await send_update(
        handle, send, command=args.wave_command, what="wave", as_json=args.json
    )


async def _child_lines(client: Client, st: WaveStatus) -> dict[str, tuple[str, str]]:
    """Phase and progress of each running cutover, from its own status query."""

    from workflows.cutover import AppCutoverWorkflow  # the workflow module: slow to import

    async def one(wf_id: str) -> tuple[str, str]:
        try:
            cs = await client.get_workflow_handle(wf_id).query(
                AppCutoverWorkflow.status, rpc_timeout=timedelta(seconds=5)
            )
        except Exception:  # not started yet, or the worker is busy: show what we know
            return "-", ""
        done = sum(1 for s in cs.steps if s.outcome == "ok" and s.kind != "check")
        step = f"{cs.currentStep} " if cs.currentStep else ""
        host = f", data host {cs.dataHost}" if cs.dataHost else ""
        return cs.phase.value, f"{step}({done} step(s) done{host})"

    running = [a for a in st.applications if a.state.value == "RUNNING"]
    found = await asyncio.gather(*(one(a.workflowId) for a in running))
    return {a.application: f for a, f in zip(running, found, strict=True)}


async def _fleet_state(client: Client, task_queue: str) -> FleetState | None:
    """The fleet's ledger for the wave's task queue (issue 17), when there is one."""
    handle = client.get_workflow_handle(fleet_workflow_id(task_queue))
    try:
        desc = await handle.describe()
        if desc.status != WorkflowExecutionStatus.RUNNING:
            return None
        state: FleetState = await handle.query(
            QUERY_STATE, result_type=FleetState, rpc_timeout=timedelta(seconds=5)
        )
    except RPCError:
        return None
    return state


def fleet_text(state: FleetState) -> list[str]:
    hosts = ", ".join(f"{h} {n}" for h, n in sorted(state.hosts.items())) or "none"
    lost = f"; lost recently: {', '.join(state.lost)}" if state.lost else ""
    lines = [f"  fleet: cutovers per data host: {hosts}; {state.waiting} request(s) waiting{lost}"]
    for r in state.resources:
        limit = f"/{r.limit}" if r.limit is not None else ""
        waits = f", {r.waiting} waiting" if r.waiting else ""
        lines.append(f"    {r.resource:<40} {r.inUse}{limit} copies{waits}")
    return lines


def status_text(
    st: WaveStatus, children: dict[str, tuple[str, str]], fleet: FleetState | None = None
) -> str:
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
    if fleet is not None:
        lines += fleet_text(fleet)
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
    from workflows.wave import WaveWorkflow  # the workflow module: slow to import

    desc = await handle.describe()
    if desc.status != WorkflowExecutionStatus.RUNNING:
        if desc.status != WorkflowExecutionStatus.COMPLETED:
            raise Failed(f"wave {handle.id} ended {desc.status.name if desc.status else '?'}")
        r = await handle.result()
        return WaveStatus(
            wave=r.wave, workflowId=r.workflowId, phase=WavePhase.DONE, outcome=r.outcome,
            concurrency=0, failureThreshold=0, approvedBy=r.approvedBy,
            stopReason=None, runs=r.runs, counts=r.counts, applications=r.applications,
        )  # fmt: skip
    return await handle.query(WaveWorkflow.status, rpc_timeout=timedelta(seconds=15))


async def cmd_wave_status(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise ValueError("--interval: expected a positive number of seconds")
    client = await connect(wait_seconds=3)
    if args.id is None:
        return await _wave_list(client, args.json)
    handle = await _wave_handle(client, args.id)
    queue: str | None = None
    while True:
        try:
            st = await _status_of(client, handle)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise Failed(f"no wave with workflow ID {handle.id}") from None
            raise
        children = await _child_lines(client, st)
        if queue is None:
            queue = (await handle.describe()).task_queue
        fleet = await _fleet_state(client, queue) if queue else None
        if args.json:
            data = st.model_dump(mode="json")
            for app in data["applications"]:
                phase, progress = children.get(app["application"], (None, None))
                app["phase"], app["progress"] = phase, progress
            data["fleet"] = fleet.model_dump(mode="json") if fleet is not None else None
            text = json.dumps(data, indent=2)
        else:
            text = status_text(st, children, fleet)
        if args.watch and sys.stdout.isatty():
            print("\x1b[H\x1b[2J", end="")
        print(text, flush=True)
        if not args.watch or st.phase.value == "DONE":
            return EXIT_OK
        await asyncio.sleep(args.interval)


async def _wave_list(client: Client, as_json: bool) -> int:
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
    emit(rows, as_json, text)
    return EXIT_OK


def register(cli: Group) -> None:
    wave = cli.group("wave", "Run a wave of cutovers; steer it; watch it.", "wave_command",
                     "WAVE_COMMAND")  # fmt: skip
    sp = wave.command(
        "validate",
        "Check a wave file, its runbooks and dependencies: against a site with --site, else "
        "their structure only.",
        cmd_wave_validate,
    )
    sp.add_argument("wave", metavar="WAVE", help="wave YAML file")
    sp.add_argument("--site", help="site config YAML (absent: structure only, no site)")
    add_policy_arguments(sp)
    sp = wave.command("run", "Start a wave; prints its workflow ID.", cmd_wave_run, site=True)
    sp.add_argument("wave", metavar="WAVE", help="wave YAML file")
    sp.add_argument("--wait", action="store_true", help="wait for and print the result")
    sp.add_argument(
        "--remigrate",
        action="append",
        metavar="APP=REASON",
        help="cut over APP although it was already migrated (its last cutover completed, or "
        "its source is marked migrated); the reason is recorded (repeatable)",
    )
    sp.add_argument(
        "--override-gate",
        metavar="REASON",
        help="start although the promotion gate refuses (the last two finished waves' change "
        "failure rate and MTTR did not both go down); the reason is recorded in the wave's memo",
    )
    add_key_option(sp)
    sp = wave.command(
        "approve", "Approve a wave waiting for approval before its first cutover.", cmd_wave_update
    )
    sp.add_argument("id", metavar="ID", help="wave workflow ID or wave name")
    sp.add_argument(
        "--as",
        dest="as_",
        metavar="NAME",
        help="approver's name (signed: the key's name, the default; unsigned: required)",
    )
    sp.add_argument("--comment", default="", help="recorded with the approval")
    add_key_option(sp)
    for name, help_ in (
        ("pause", "Start no new cutover until resumed (running ones continue)."),
        ("resume", "Resume starting cutovers."),
        ("cancel", "Start no new cutover; running ones finish or roll back (onCancel)."),
    ):
        sp = wave.command(name, help_, cmd_wave_update)
        sp.add_argument("id", metavar="ID", help="wave workflow ID or wave name")
        sp.add_argument("--reason", default="", help="recorded in the history")
        if name == "cancel":
            sp.add_argument(
                "--policy",
                choices=["finish", "rollback"],
                help="override the wave file's onCancel",
            )
        add_key_option(sp)
    sp = wave.command(
        "status", "A wave's applications: state, phase, progress, outcome.", cmd_wave_status
    )
    sp.add_argument("id", metavar="ID", nargs="?", help="wave workflow ID or name (none: list)")
    sp.add_argument("--watch", action="store_true", help="refresh until the wave is done")
    sp.add_argument("--interval", type=float, default=1.0, help="--watch refresh seconds")
