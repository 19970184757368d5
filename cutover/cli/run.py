"""`cutover run`, `cutover status` and the steering of one cutover: approve, rollback,
extend, finalize, resume."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from cutover.cli.common import EXIT_FAILED, EXIT_OK, Failed, Group, emit, send_update, workflow_id
from cutover.cli.keys import add_key_option, operator_key, signed, signer_name
from cutover.cli.remigration import check_reason, verdicts
from cutover.cli.signed_start import printable, signed_start
from cutover.models import (
    ApprovalRequest,
    CutoverInput,
    ExtendRequest,
    FinalizeRequest,
    Outcome,
    ResumeRequest,
    RollbackRequest,
)
from cutover.signing import DEFAULT_MAX_AGE
from cutover.site import load_runbook, load_site
from cutover.temporal import connect, identity


async def cmd_run(args: argparse.Namespace) -> int:
    from cutover import telemetry  # the OpenTelemetry SDK: slow to import
    from workflows.cutover import AppCutoverWorkflow, workflow_id_for  # slow to import

    reason = check_reason(args.remigrate)
    site = load_site(args.site)
    runbook = load_runbook(args.runbook, site, args.site)
    # the workflow records a re-migration's reason in its history and audit
    again: dict[str, Any] = {"remigrate": reason} if reason else {}
    inp = CutoverInput(runbook=runbook, site=site, requestedBy=identity(), **again)
    wf_id = workflow_id_for(runbook.application)
    # the worker resolves the site from its own config; the key's principal signs the start
    sent = signed_start(inp, operator_key(args.key), wf_id, "run")
    if args.print_input:
        # For the Temporal UI's Start Workflow form: the input as JSON on stdout, the
        # form's other fields on stderr. Nothing is started; no server is needed.
        print(json.dumps(printable(sent), indent=2))
        valid = ""
        if sent.signature is not None:
            until = sent.signature.signedAt + DEFAULT_MAX_AGE
            valid = f"; signed by {sent.signature.signer}, start it before {until:%H:%M:%S %Z}"
        print(
            f"Start Workflow form: Workflow ID {wf_id}, "
            f"Task Queue {site.taskQueue}, Workflow Type AppCutover, "
            f"Input: the JSON above (encoding json/plain){valid}",
            file=sys.stderr,
        )
        return EXIT_OK
    # Traced from here when CUTOVER_OTEL_EXPORTER is set: the start span's context travels
    # in the history, so the workflow's and activities' spans join this trace for good.
    client = await connect(wait_seconds=3, interceptors=[telemetry.tracing_interceptor()])
    # A finished application is not cut over again by accident: refused before any start.
    [found], warnings = await verdicts(client, site, [runbook])
    for warning in warnings:
        print(f"cutover run: warning: {warning}", file=sys.stderr)
    if found.migrated and reason is None:
        raise Failed(
            f"refused: {found.sentence()}. Nothing was started. To cut it over again "
            f"deliberately: cutover run {args.runbook} --remigrate REASON (the reason is "
            "recorded in the history and the audit)"
        )
    if found.migrated:
        print(f"re-migrating ({reason}): {found.sentence()}", file=sys.stderr)
    try:
        handle = await client.start_workflow(
            AppCutoverWorkflow.run,
            sent,
            id=wf_id,
            task_queue=site.taskQueue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            static_summary=f"Cutover of {runbook.application} (wave {runbook.wave_name})",
        )
    except WorkflowAlreadyStartedError:
        raise Failed(
            f"a cutover of {runbook.application} is already running (workflow {wf_id}); "
            "one application is cut over by one workflow at a time"
        ) from None
    finally:
        telemetry.flush()
    if not args.wait:
        emit({"workflowId": wf_id, "runId": handle.result_run_id}, args.json, wf_id)
        return EXIT_OK
    print(f"started {wf_id}; waiting for the result", file=sys.stderr)
    result = await handle.result()
    text = "\n".join(
        [
            f"{result.workflowId}: {result.outcome.value} - {result.reason}",
            *(f"  {line}" for line in result.leftWhere),
            *(
                f"  step {s.name:<40} {s.outcome:<7} {s.seconds or 0:7.2f}s"
                + (f"  {s.error}" if s.error else "")
                for s in result.steps
            ),
        ]
    )
    emit(result, args.json, text)
    return EXIT_OK if result.outcome == Outcome.COMPLETED else EXIT_FAILED


async def cmd_status(args: argparse.Namespace) -> int:
    from workflows.cutover import AppCutoverWorkflow  # the workflow module: slow to import

    client = await connect(wait_seconds=3)
    handle = client.get_workflow_handle(workflow_id(args.id))
    st = await handle.query(AppCutoverWorkflow.status, rpc_timeout=timedelta(seconds=15))
    text = "\n".join(
        [
            f"{st.workflowId}: phase {st.phase.value}, outcome {st.outcome.value}",
            # a blocked rollback or finalize: what is left, and how to go on (read first)
            *(["  left where:", *(f"    {line}" for line in st.leftWhere)] if st.leftWhere else []),
            *([f"  warning: {st.snapshotWarning}"] if st.snapshotWarning else []),
            *([f"  current step: {st.currentStep}"] if st.currentStep else []),
            *([f"  data host: {st.dataHost}"] if st.dataHost else []),
            *([f"  approved by: {st.approvedBy}"] if st.approvedBy else []),
            *([f"  rollback window closes: {st.windowClosesAt}"] if st.windowClosesAt else []),
            *([f"  rollback reason: {st.rollbackReason}"] if st.rollbackReason else []),
            *([f"  window check rounds: {st.checkRounds}"] if st.checkRounds else []),
            *(
                f"  {s.kind:<12} {s.name:<40} {s.outcome}" + (f" on {s.host}" if s.host else "")
                for s in st.steps
            ),
            *(f"  check {c.describe()}" for c in st.checks),
        ]
    )
    emit(st, args.json, text)
    return EXIT_OK


async def cmd_update(args: argparse.Namespace) -> int:
    """approve, rollback, extend, finalize, resume: one update to the running cutover,
    signed when a key is given (--key FILE or $CUTOVER_KEY): its name is who asks."""
    key = operator_key(args.key)
    who = signer_name(key, None) or identity()
    wf_id = workflow_id(args.id)

    def request() -> BaseModel:
        if args.command == "approve":
            approver = signer_name(key, args.as_)
            if approver is None:
                raise ValueError(
                    "--as NAME: who approves (or sign with --key FILE / $CUTOVER_KEY: the "
                    "key's name approves)"
                )
            return ApprovalRequest(approver=approver, comment=args.comment)
        if args.command == "rollback":
            return RollbackRequest(reason=args.reason, requestedBy=who)
        if args.command == "extend":
            if not args.minutes > 0:
                raise ValueError("--minutes: expected a positive number")
            return ExtendRequest(minutes=args.minutes, requestedBy=who)
        if args.command == "resume":
            discard = args.discard_target_writes is not None
            if discard and not args.discard_target_writes.strip():
                raise ValueError("--discard-target-writes: expected a reason (it is recorded)")
            return ResumeRequest(
                requestedBy=signer_name(key, args.as_) or who,
                reason=args.discard_target_writes if discard else args.reason,
                discardTargetWrites=discard,
            )
        return FinalizeRequest(requestedBy=who)

    req = signed(key, wf_id, args.command, request())  # refused here before any connection
    client = await connect(wait_seconds=3)
    handle = client.get_workflow_handle(wf_id)

    async def send() -> str:
        done: str = await handle.execute_update(args.command, req, result_type=str)
        return done

    return await send_update(handle, send, command=args.command, what="cutover", as_json=args.json)


def register(cli: Group) -> None:
    sp = cli.command("run", "Start the cutover of one application; prints the workflow ID.",
                     cmd_run, site=True)  # fmt: skip
    sp.add_argument("runbook", metavar="RUNBOOK", help="runbook YAML file")
    sp.add_argument("--wait", action="store_true", help="wait for and print the final result")
    sp.add_argument(
        "--print-input",
        action="store_true",
        help="print the workflow input as JSON (for the Temporal UI's Start Workflow form) "
        "instead of starting; signed with --key (valid for 15 minutes)",
    )
    sp.add_argument(
        "--remigrate",
        metavar="REASON",
        help="cut over an application that was already migrated (its last cutover "
        "completed, or its source is marked migrated); the reason is recorded",
    )
    add_key_option(sp)

    sp = cli.command("status", "Show a cutover's phase, steps and checks.", cmd_status)
    sp.add_argument("id", metavar="ID", help="workflow ID or application name")

    sp = cli.command("approve", "Approve a cutover waiting at its approval gate.", cmd_update)
    sp.add_argument("id", metavar="ID", help="workflow ID or application name")
    sp.add_argument(
        "--as",
        dest="as_",
        metavar="NAME",
        help="approver's name (signed: the key's name, the default; unsigned: required)",
    )
    sp.add_argument("--comment", default="", help="recorded with the approval")
    add_key_option(sp)

    sp = cli.command("rollback", "Roll a cutover back to the source now.", cmd_update)
    sp.add_argument("id", metavar="ID", help="workflow ID or application name")
    sp.add_argument("--reason", required=True, help="why; recorded in the history")
    add_key_option(sp)

    sp = cli.command("extend", "Extend a cutover's rollback window.", cmd_update)
    sp.add_argument("id", metavar="ID", help="workflow ID or application name")
    sp.add_argument("--minutes", type=float, required=True, help="minutes to add")
    add_key_option(sp)

    sp = cli.command(
        "finalize", "Finalize a healthy cutover before its rollback window closes.", cmd_update
    )
    sp.add_argument("id", metavar="ID", help="workflow ID or application name")
    add_key_option(sp)

    sp = cli.command(
        "resume",
        "Go on with a cutover whose rollback or finalize is blocked (phase ROLLBACK_BLOCKED "
        "or FINALIZE_BLOCKED), once its cause is fixed.",
        cmd_update,
    )
    sp.add_argument("id", metavar="ID", help="workflow ID or application name")
    sp.add_argument(
        "--as",
        dest="as_",
        metavar="NAME",
        help="who resumes (default: the key's name when signed, else you, as user@host)",
    )
    sp.add_argument("--reason", default="", help="what was fixed; recorded in the history")
    sp.add_argument(
        "--discard-target-writes",
        metavar="REASON",
        help="a rollback blocked on reverse_sync: go on without writing the target's writes "
        "back, discarding them (REASON is recorded in the history)",
    )
    add_key_option(sp)
