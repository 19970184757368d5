"""`cutover`: the operator's front door.

Exit codes: 0 ok, 1 the operation failed (or the cutover did not complete), 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from cutover import cli_audit, cli_lab, cli_wave
from cutover.config import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class _Failed(Exception):
    """An operation that was refused or failed: message for stderr, exit code 1."""


def _print(obj: BaseModel | dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
        print(json.dumps(data, indent=2))
    else:
        print(text)


def _workflow_id(ident: str) -> str:
    from workflows.cutover import workflow_id_for

    return ident if ident.startswith("cutover-") else workflow_id_for(ident)


# ------------------------------------------------------------------ commands


def cmd_validate(args: argparse.Namespace) -> int:
    from cutover.site import load_runbook, load_site

    problems: list[str] = []
    site = None
    if args.site:
        try:
            site = load_site(args.site)
        except ConfigError as exc:
            problems += [str(p) for p in exc.problems]
    valid: list[str] = []
    for path in args.runbooks:
        try:
            load_runbook(path, site, args.site or "")
            valid.append(path)
        except ConfigError as exc:
            problems += [str(p) for p in exc.problems]
    for p in problems:
        print(p, file=sys.stderr)
    if args.json:
        print(json.dumps({"valid": valid, "problems": problems}, indent=2))
    elif not problems:
        print(f"{len(valid)} runbook(s) valid")
    return EXIT_BAD_INPUT if problems else EXIT_OK


async def _run(args: argparse.Namespace) -> int:
    from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from cutover import remigration, telemetry
    from cutover.models import CutoverInput, Outcome
    from cutover.site import load_runbook, load_site
    from cutover.temporal import connect, identity
    from workflows.cutover import AppCutoverWorkflow, workflow_id_for

    reason = remigration.check_reason(args.remigrate)
    site = load_site(args.site)
    runbook = load_runbook(args.runbook, site, args.site)
    # the workflow records a re-migration's reason in its history and audit
    again: dict[str, Any] = {"remigrate": reason} if reason else {}
    inp = CutoverInput(runbook=runbook, site=site, requestedBy=identity(), **again)
    if args.print_input:
        # For the Temporal UI's Start Workflow form: the input as JSON on stdout, the
        # form's other fields on stderr. Nothing is started; no server is needed.
        print(json.dumps(inp.model_dump(mode="json"), indent=2))
        print(
            f"Start Workflow form: Workflow ID {workflow_id_for(runbook.application)}, "
            f"Task Queue {site.taskQueue}, Workflow Type AppCutover, "
            "Input: the JSON above (encoding json/plain)",
            file=sys.stderr,
        )
        return EXIT_OK
    # Traced from here when CUTOVER_OTEL_EXPORTER is set: the start span's context travels
    # in the history, so the workflow's and activities' spans join this trace for good.
    client = await connect(wait_seconds=3, interceptors=[telemetry.tracing_interceptor()])
    wf_id = workflow_id_for(runbook.application)
    # A finished application is not cut over again by accident: refused before any start.
    [found], warnings = await remigration.verdicts(client, site, [runbook])
    for warning in warnings:
        print(f"cutover run: warning: {warning}", file=sys.stderr)
    if found.migrated and reason is None:
        raise _Failed(
            f"refused: {found.sentence()}. Nothing was started. To cut it over again "
            f"deliberately: cutover run {args.runbook} --remigrate REASON (the reason is "
            "recorded in the history and the audit)"
        )
    if found.migrated:
        print(f"re-migrating ({reason}): {found.sentence()}", file=sys.stderr)
    try:
        handle = await client.start_workflow(
            AppCutoverWorkflow.run,
            inp,
            id=wf_id,
            task_queue=site.taskQueue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            static_summary=f"Cutover of {runbook.application} (wave {runbook.wave_name})",
        )
    except WorkflowAlreadyStartedError:
        raise _Failed(
            f"a cutover of {runbook.application} is already running (workflow {wf_id}); "
            "one application is cut over by one workflow at a time"
        ) from None
    finally:
        telemetry.flush()
    if not args.wait:
        _print({"workflowId": wf_id, "runId": handle.result_run_id}, args.json, wf_id)
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
    _print(result, args.json, text)
    return EXIT_OK if result.outcome == Outcome.COMPLETED else EXIT_FAILED


async def _status(args: argparse.Namespace) -> int:
    from cutover.temporal import connect
    from workflows.cutover import AppCutoverWorkflow

    client = await connect(wait_seconds=3)
    handle = client.get_workflow_handle(_workflow_id(args.id))
    st = await handle.query(AppCutoverWorkflow.status, rpc_timeout=timedelta(seconds=15))
    text = "\n".join(
        [
            f"{st.workflowId}: phase {st.phase.value}, outcome {st.outcome.value}",
            # a blocked rollback or finalize: what is left, and how to go on (read first)
            *(["  left where:", *(f"    {line}" for line in st.leftWhere)] if st.leftWhere else []),
            *([f"  warning: {st.snapshotWarning}"] if st.snapshotWarning else []),
            *([f"  current step: {st.currentStep}"] if st.currentStep else []),
            *([f"  approved by: {st.approvedBy}"] if st.approvedBy else []),
            *([f"  rollback window closes: {st.windowClosesAt}"] if st.windowClosesAt else []),
            *([f"  rollback reason: {st.rollbackReason}"] if st.rollbackReason else []),
            *([f"  window check rounds: {st.checkRounds}"] if st.checkRounds else []),
            *(f"  {s.kind:<12} {s.name:<40} {s.outcome}" for s in st.steps),
            *(f"  check {c.describe()}" for c in st.checks),
        ]
    )
    _print(st, args.json, text)
    return EXIT_OK


async def _update(args: argparse.Namespace) -> int:
    from cutover.temporal import connect, identity, why_finished

    who = identity()
    client = await connect(wait_seconds=3)
    handle = client.get_workflow_handle(_workflow_id(args.id))
    try:
        msg = await _send_update(args, handle, who)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        raise _Failed(await why_finished(handle, args.command, "cutover")) from None
    _print({"workflowId": handle.id, "message": msg}, args.json, msg)
    return EXIT_OK


async def _send_update(args: argparse.Namespace, handle: WorkflowHandle[Any, Any], who: str) -> str:
    from cutover.models import (
        ApprovalRequest,
        ExtendRequest,
        FinalizeRequest,
        ResumeRequest,
        RollbackRequest,
    )
    from workflows.cutover import AppCutoverWorkflow

    msg: str
    if args.command == "approve":
        msg = await handle.execute_update(
            AppCutoverWorkflow.approve, ApprovalRequest(approver=args.as_, comment=args.comment)
        )
    elif args.command == "rollback":
        msg = await handle.execute_update(
            AppCutoverWorkflow.rollback, RollbackRequest(reason=args.reason, requestedBy=who)
        )
    elif args.command == "extend":
        if not args.minutes > 0:
            raise ValueError("--minutes: expected a positive number")
        msg = await handle.execute_update(
            AppCutoverWorkflow.extend, ExtendRequest(minutes=args.minutes, requestedBy=who)
        )
    elif args.command == "resume":
        msg = await handle.execute_update(
            AppCutoverWorkflow.resume,
            ResumeRequest(requestedBy=args.as_ or who, reason=args.reason),
        )
    else:
        msg = await handle.execute_update(
            "finalize", FinalizeRequest(requestedBy=who), result_type=str
        )
    return msg


def cmd_inventory(args: argparse.Namespace) -> int:
    from activities.vsphere import ClientPool, Tagging, read_inventory
    from cutover.site import load_site

    site = load_site(args.site)
    if site.vcenter is None:
        raise ValueError(f"{args.site}: vcenter: the site config has no vCenter to read")
    client = ClientPool().get(site.vcenter)
    try:
        tags = Tagging(client).tags_by_vm() if args.tags else {}
        inv = read_inventory(client, tags)
    finally:
        client.close()
    if args.json:
        print(inv.model_dump_json(indent=2))
        return EXIT_OK
    print(
        f"{inv.source}: {len(inv.datacenters)} datacenter(s), {len(inv.clusters)} cluster(s), "
        f"{len(inv.hosts)} host(s), {len(inv.datastores)} datastore(s), "
        f"{len(inv.networks)} network(s), {len(inv.vms)} VM(s); "
        f"{inv.roundTrips} PropertyCollector round trips"
    )
    print(f"{'VM':<28} {'power':<11} {'cpu':>3} {'mem MiB':>8} {'disks':>5} {'GiB':>7}  host")
    for vm in sorted(inv.vms, key=lambda v: v.name):
        gib = sum(d.capacityBytes for d in vm.disks) / (1 << 30)
        print(
            f"{vm.name:<28} {vm.powerState or '-':<11} {vm.numCpu:>3} {vm.memoryMB:>8} "
            f"{len(vm.disks):>5} {gib:>7.1f}  {vm.host or '-'}"
        )
    return EXIT_OK


def cmd_concerns(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from cutover.concerns import evaluate
    from cutover.inventory import Inventory

    if args.inventory:
        try:
            inv = Inventory.model_validate_json(Path(args.inventory).read_bytes())
        except OSError as exc:
            raise ValueError(f"{args.inventory}: cannot read file: {exc.strerror}") from None
        except ValidationError as exc:
            e = exc.errors()[0]
            loc = ".".join(str(p) for p in e["loc"]) or "(document)"
            raise ValueError(
                f"{args.inventory}: {loc}: {e['msg']} (an inventory JSON from "
                "`cutover inventory --json` was expected)"
            ) from None
    else:
        from activities.vsphere import ClientPool, read_inventory
        from cutover.site import load_site

        site = load_site(args.site)
        if site.vcenter is None:
            raise ValueError(f"{args.site}: vcenter: the site config has no vCenter to read")
        client = ClientPool().get(site.vcenter)
        try:
            inv = read_inventory(client)
        finally:
            client.close()
    missing = [n for n in args.vm if n not in {v.name for v in inv.vms}]
    if missing:
        raise ValueError(f"--vm: no VM named {', '.join(missing)} in {inv.source}")
    vms = [inv.vm(n) for n in args.vm] if args.vm else inv.vms
    found = {vm.name: evaluate(inv, vm) for vm in vms}
    if args.json:
        print(json.dumps({n: [c.model_dump() for c in cs] for n, cs in found.items()}, indent=2))
    else:
        for name, concerns in found.items():
            for c in concerns:
                where = f" ({c.disk})" if c.disk else ""
                print(f"{c.severity:<8} {name}{where}: {c.id}: {c.message}")
    critical = any(c.severity == "critical" for cs in found.values() for c in cs)
    return EXIT_FAILED if critical else EXIT_OK


def cmd_lower_ttl(args: argparse.Namespace) -> int:
    """The optional preparation step: lower the application's DNS TTL ahead of its wave."""
    from activities.dns import lower_ttl
    from cutover.site import load_runbook, load_site

    site = load_site(args.site)
    runbook = load_runbook(args.runbook, site, args.site)
    if site.dns is None or runbook.endpoint.dns is None:
        raise ValueError(
            f"{args.runbook}: endpoint.dns and {args.site}: dns are both needed to lower a TTL"
        )
    ttl = min(runbook.endpoint.dns.ttl, site.dns.ttlThresholdSeconds)
    done = lower_ttl(site.dns, runbook.endpoint.dns.name, ttl)
    msg = (
        f"{done.name}: TTL {done.previous_ttl}s -> {done.ttl}s; dns_ttl_lowered passes once "
        f"the old TTL has passed ({done.previous_ttl}s)"
        if done.changed
        else f"{done.name}: TTL already {done.ttl}s, nothing changed"
    )
    _print({"name": done.name, "ttl": done.ttl, "previousTtl": done.previous_ttl,
            "changed": done.changed}, args.json, msg)  # fmt: skip
    return EXIT_OK


def cmd_server(args: argparse.Namespace) -> int:
    from cutover import server

    argv = server.command(Path(args.db), args.port, None if args.headless else args.ui_port)
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    print(f"Temporal dev server on 127.0.0.1:{args.port}, database {args.db}", file=sys.stderr)
    os.execv(argv[0], argv)
    return EXIT_FAILED  # pragma: no cover - execv does not return


async def _worker(args: argparse.Namespace) -> int:
    from cutover import logs, telemetry
    from cutover.temporal import connect
    from workers.worker import build_worker

    logs.configure(args.log_level)
    address = telemetry.metrics_address(args.metrics_address)
    runtime = telemetry.metrics_runtime(address) if address else None
    # a worker may start alongside its server
    client = await connect(wait_seconds=60, runtime=runtime)
    worker = build_worker(client, args.task_queue)
    # SIGTERM (what process supervisors send) drains the worker instead of killing it
    # mid-task, and lets the tracer flush its last spans.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        logs.get_logger().info(
            "worker started", task_queue=args.task_queue, metrics_address=address
        )
        await stop.wait()
        logs.get_logger().info("worker stopping", task_queue=args.task_queue)
    telemetry.shutdown()
    return EXIT_OK


#: Commands that need a site; without --site they take the default one.
NEEDS_SITE = {"run", "inventory", "lower-ttl"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cutover",
        description="Durable, auditable application cutovers from vSphere to KVM, on Temporal.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, json_flag: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print machine-readable JSON")
        return sp

    sp = add("validate", "Check runbooks (and optionally a site config) without running anything.")
    sp.add_argument("runbooks", nargs="+", metavar="RUNBOOK", help="runbook YAML file(s)")
    sp.add_argument("--site", help="site config: also checks every named check is bound")

    sp = add("run", "Start the cutover of one application; prints the workflow ID.")
    sp.add_argument("runbook", metavar="RUNBOOK", help="runbook YAML file")
    sp.add_argument("--site", help=cli_lab.SITE_HELP)
    sp.add_argument("--wait", action="store_true", help="wait for and print the final result")
    sp.add_argument(
        "--print-input",
        action="store_true",
        help="print the workflow input as JSON (for the Temporal UI's Start Workflow form) "
        "instead of starting",
    )
    sp.add_argument(
        "--remigrate",
        metavar="REASON",
        help="cut over an application that was already migrated (its last cutover "
        "completed, or its source is marked migrated); the reason is recorded",
    )

    sp = add("status", "Show a cutover's phase, steps and checks.")
    sp.add_argument("id", metavar="ID", help="workflow ID or application name")

    sp = add("approve", "Approve a cutover waiting at its approval gate.")
    sp.add_argument("id", metavar="ID", help="workflow ID or application name")
    sp.add_argument("--as", dest="as_", required=True, metavar="NAME", help="approver's name")
    sp.add_argument("--comment", default="", help="recorded with the approval")

    sp = add("rollback", "Roll a cutover back to the source now.")
    sp.add_argument("id", metavar="ID", help="workflow ID or application name")
    sp.add_argument("--reason", required=True, help="why; recorded in the history")

    sp = add("extend", "Extend a cutover's rollback window.")
    sp.add_argument("id", metavar="ID", help="workflow ID or application name")
    sp.add_argument("--minutes", type=float, required=True, help="minutes to add")

    sp = add("finalize", "Finalize a healthy cutover before its rollback window closes.")
    sp.add_argument("id", metavar="ID", help="workflow ID or application name")

    sp = add(
        "resume",
        "Go on with a cutover whose rollback or finalize is blocked (phase ROLLBACK_BLOCKED "
        "or FINALIZE_BLOCKED), once its cause is fixed.",
    )
    sp.add_argument("id", metavar="ID", help="workflow ID or application name")
    sp.add_argument(
        "--as", dest="as_", metavar="NAME", help="who resumes (default: you, as user@host)"
    )
    sp.add_argument("--reason", default="", help="what was fixed; recorded in the history")

    sp = add("inventory", "Read the vCenter inventory named in a site config.")
    sp.add_argument("--site", help=cli_lab.SITE_HELP)
    sp.add_argument("--no-tags", dest="tags", action="store_false", help="skip the tagging API")

    sp = add("concerns", "Pre-migration concerns of VMs; exit 1 when any is critical.")
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--site", help="read the inventory from this site config's vCenter")
    src.add_argument("--inventory", help="an inventory JSON file (`cutover inventory --json`)")
    sp.add_argument("--vm", action="append", default=[], help="only this VM (repeatable)")

    sp = add("lower-ttl", "Lower an application's DNS TTL ahead of its wave (preparation).")
    sp.add_argument("runbook", metavar="RUNBOOK", help="runbook YAML file (its endpoint.dns)")
    sp.add_argument("--site", help=cli_lab.SITE_HELP)

    sp = add("server", "Run the embedded Temporal dev server (SQLite, UI).", json_flag=False)
    sp.add_argument("--db", default=".cutover/temporal.db", help="SQLite database file")
    sp.add_argument("--port", type=int, default=7233, help="frontend gRPC port")
    sp.add_argument("--ui-port", type=int, default=8233, help="Web UI port")
    sp.add_argument("--headless", action="store_true", help="no Web UI")

    sp = add("worker", "Run a worker for cutover workflows and activities.", json_flag=False)
    sp.add_argument("--task-queue", default="cutover", help="task queue to poll")
    sp.add_argument("--log-level", default="INFO", help="log level")
    sp.add_argument(
        "--metrics-address",
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics "
        "(default: $CUTOVER_METRICS_ADDRESS; unset means off)",
    )

    cli_audit.add_parser(sub)
    cli_lab.add_parser(sub)
    cli_wave.register(sub)  # `wave ...`, `schedule ...`
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        needs_site = args.command in NEEDS_SITE or args.command in cli_wave.COMMANDS
        if needs_site and hasattr(args, "site") and not args.site:
            args.site = cli_lab.default_site()
        if args.command == "validate":
            return cmd_validate(args)
        if args.command == "server":
            return cmd_server(args)
        if args.command == "inventory":
            return cmd_inventory(args)
        if args.command == "concerns":
            return cmd_concerns(args)
        if args.command == "lower-ttl":
            return cmd_lower_ttl(args)
        if args.command == "run":
            return asyncio.run(_run(args))
        if args.command == "status":
            return asyncio.run(_status(args))
        if args.command == "worker":
            return asyncio.run(_worker(args))
        if args.command == "lab":
            return cli_lab.cmd_lab(args)
        if args.command == "audit":
            return asyncio.run(cli_audit.cmd_audit(args))
        if args.command in cli_wave.COMMANDS:
            return cli_wave.dispatch(args)
        return asyncio.run(_update(args))
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as exc:
        print(f"cutover {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return EXIT_FAILED
    except Exception as exc:  # operator-facing: a message, never a traceback
        print(f"cutover {args.command}: {_explain(exc)}", file=sys.stderr)
        return EXIT_FAILED


def _explain(exc: BaseException) -> str:
    from temporalio.client import WorkflowFailureError, WorkflowUpdateFailedError
    from temporalio.exceptions import ApplicationError

    if isinstance(exc, _Failed):
        return str(exc)
    if isinstance(exc, ApplicationError):
        return f"{exc.type}: {exc.message}" if exc.type else exc.message
    if isinstance(exc, WorkflowUpdateFailedError) and exc.cause is not None:
        return str(exc.cause.message if hasattr(exc.cause, "message") else exc.cause)
    if isinstance(exc, WorkflowFailureError) and exc.cause is not None:
        return f"the workflow failed: {exc.cause}"
    if isinstance(exc, RPCError):
        if exc.status == RPCStatusCode.NOT_FOUND:
            return f"no such running cutover ({exc.message})"
        if exc.status == RPCStatusCode.UNAVAILABLE:
            return f"cannot reach Temporal ({exc.message}); is `cutover server` running?"
        return f"Temporal refused: {exc.message}"
    if isinstance(exc, RuntimeError) and "Failed client connect" in str(exc):
        return f"cannot reach Temporal: {exc}"
    return f"{type(exc).__name__}: {exc}"


def entry() -> None:
    """Console-script entry: exit without interpreter finalization, which can abort while
    the Temporal core runtime's threads are still alive ("PyGILState_Release")."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
