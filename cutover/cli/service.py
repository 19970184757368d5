"""`cutover server` and `cutover worker`: the long-running processes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

from cutover import server
from cutover.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, Group
from cutover.fleet import data_queue
from cutover.signing import public_key_text
from cutover.site import SiteConfig
from cutover.temporal import connect


def cmd_server(args: argparse.Namespace) -> int:
    argv = server.command(Path(args.db), args.port, None if args.headless else args.ui_port)
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    print(f"Temporal dev server on 127.0.0.1:{args.port}, database {args.db}", file=sys.stderr)
    os.execv(argv[0], argv)
    return EXIT_FAILED  # pragma: no cover - execv does not return


async def cmd_worker(args: argparse.Namespace) -> int:
    from cutover import logs, telemetry  # structlog and the OpenTelemetry SDK: slow to import
    from workers.sites import SiteStore, default_archive
    from workers.worker import build_worker  # every activity and adapter: slow to import

    # The worker's own sites: the only ones its workflows and steps act on (issue 13).
    store = SiteStore(Path(args.site_archive) if args.site_archive else default_archive())
    sites = args.site or [_default_site()]
    refs = store.load(sites)
    problem = _role_problem(args, [store.resolve(r) for r in refs])
    if problem is not None:
        print(f"cutover worker: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    logs.configure(args.log_level)
    address = telemetry.metrics_address(args.metrics_address)
    runtime = telemetry.metrics_runtime(address) if address else None
    # a worker may start alongside its server
    client = await connect(wait_seconds=60, runtime=runtime)
    from workers.audit import audit_activities, audit_log, worker_key

    key_path = args.key or os.environ.get("CUTOVER_WORKER_KEY")
    log_path = args.audit_log or os.environ.get("CUTOVER_AUDIT_LOG")
    if key_path is None or log_path is None:
        # serving the lab's site while it is up: the lab's worker key and audit log
        from cutover.cli.lab import lab_worker_files

        lab = lab_worker_files(sites)
        if lab is not None:
            key_path, log_path = key_path or str(lab[0]), log_path or str(lab[1])
    key = worker_key(key_path)
    log = audit_log(log_path)
    audit = audit_activities(client, key, log)
    from workers.fleet import build_data_worker, clean_forever, for_role
    from workers.worker import default_activities

    role, host = args.role, args.data_host
    versioning = _versioning(args)
    workers = []
    cleaner = None
    if role != "data":
        acts = for_role(default_activities(client, key), role)
        workers.append(
            build_worker(
                client,
                args.task_queue,
                activities=acts,
                sites=store,
                audit=audit,
                key=key,
                **versioning,
            )
        )
    if host is not None:
        staging = Path(args.staging_dir)  # absolute (argparse made it so)
        workers.append(
            build_data_worker(
                client,
                args.task_queue,
                host,
                default_activities(client, key),
                store,
                staging,
                args.max_copies,  # never versioned: see _role_problem
            )
        )
        cleaner = asyncio.ensure_future(clean_forever(client, staging, host))
    # SIGTERM (what process supervisors send) drains the worker instead of killing it
    # mid-task, and lets the tracer flush its last spans.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        for w in workers:
            await stack.enter_async_context(w)
        logs.get_logger().info(
            "worker started",
            role=role,
            task_queue=args.task_queue,
            data_host=host,
            data_queue=data_queue(args.task_queue, host) if host else None,
            staging_dir=args.staging_dir if host else None,
            max_copies=args.max_copies if host else None,
            build_id=args.build_id,
            metrics_address=address,
            sites=[str(r) for r in refs],
            audit_log=str(log),
            key=key[0],
            public_key=public_key_text(key[1].public_key()),
        )
        await stop.wait()
        if cleaner is not None:
            cleaner.cancel()
        logs.get_logger().info("worker stopping", task_queue=args.task_queue)
    telemetry.shutdown()
    return EXIT_OK


def _role_problem(args: argparse.Namespace, sites: list[SiteConfig]) -> str | None:
    """Why this role cannot serve these sites (named, with what to fix), or None."""
    if args.build_id is not None and args.deployment is None:
        return "--build-id needs --deployment NAME (the Worker Deployment it belongs to)"
    if args.build_id is not None and args.role == "data":
        # a cutover pinned to another build would send its data steps to a queue whose
        # only worker never takes them: the host would count as lost (a rollback)
        return (
            "a data host is not versioned: drop --build-id/--deployment (only orchestration "
            "workers are; data steps go to whatever data worker polls the host's queue)"
        )
    if args.role == "data" and args.data_host is None:
        return "--role data needs --data-host NAME (one of the site's fleet.dataHosts)"
    if args.role == "orchestration" and args.data_host is not None:
        return "--data-host runs data steps: use --role data (or --role all for both)"
    if args.data_host is not None:
        if args.staging_dir is None:
            return "--data-host needs --staging-dir DIR (this host's own staging directory)"
        for site in sites:
            fleet = site.fleet
            if fleet is None or fleet.host(args.data_host) is None:
                named = ", ".join(h.name for h in fleet.dataHosts) if fleet else "none"
                return (
                    f"site {site.name}: --data-host {args.data_host} is not in its "
                    f"fleet.dataHosts (it names: {named}); add it there first"
                )
    elif args.staging_dir is not None or args.max_copies is not None:
        return "--staging-dir and --max-copies are a data host's: add --data-host NAME"
    if args.role == "orchestration":
        for site in sites:
            if site.fleet is None:
                return (
                    f"site {site.name} has no fleet.dataHosts: its data steps run on "
                    f"{site.taskQueue} itself, which an orchestration worker does not serve; "
                    "run --role all, or add the site's data hosts (fleet.dataHosts)"
                )
    return None


def _versioning(args: argparse.Namespace) -> dict[str, Any]:
    """Worker Deployment versioning (`workers.worker.deployment_config`), when asked for."""
    if args.build_id is None:
        return {}
    from workers.worker import deployment_config

    return {"deployment_config": deployment_config(args.deployment, args.build_id)}


def _default_site() -> str:
    from cutover.cli.lab import default_site

    return default_site()


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a count of 1 or more, not {value}")
    return n


def register(cli: Group) -> None:
    sp = cli.command("server", "Run the embedded Temporal dev server (SQLite, UI).", cmd_server,
                     json_flag=False)  # fmt: skip
    sp.add_argument("--db", default=".cutover/temporal.db", help="SQLite database file")
    sp.add_argument("--port", type=int, default=7233, help="frontend gRPC port")
    sp.add_argument("--ui-port", type=int, default=8233, help="Web UI port")
    sp.add_argument("--headless", action="store_true", help="no Web UI")

    sp = cli.command("worker", "Run a worker for cutover workflows and activities.", cmd_worker,
                     json_flag=False)  # fmt: skip
    sp.add_argument("--task-queue", default="cutover", help="task queue to poll")
    sp.add_argument(
        "--site",
        action="append",
        metavar="FILE",
        help="a site config this worker serves (repeat for several; default: $CUTOVER_SITE, "
        "else the lab's when it is up). Workflows name their site and its digest; the "
        "worker acts only on its own copy",
    )
    sp.add_argument(
        "--key",
        metavar="FILE",
        help="the worker's Ed25519 key, which signs its audit log records and the "
        "rollbacks a wave relays (default: $CUTOVER_WORKER_KEY, else the lab's when it serves "
        "the lab's site, else one created under ~/.local/state/cutover/keys)",
    )
    sp.add_argument(
        "--audit-log",
        metavar="FILE",
        help="the hash-chained audit log the worker appends each finished cutover and wave "
        "to (default: $CUTOVER_AUDIT_LOG, else the lab's when it serves the lab's site, else "
        "~/.local/state/cutover/audit.jsonl)",
    )
    sp.add_argument(
        "--site-archive",
        metavar="DIR",
        help="where the worker keeps every site version it served, so cutovers started "
        "before a site file changed finish on their version (default: $CUTOVER_SITE_ARCHIVE, "
        "else ~/.local/state/cutover/sites)",
    )
    sp.add_argument(
        "--role",
        choices=("all", "orchestration", "data"),
        default=os.environ.get("CUTOVER_WORKER_ROLE", "all"),
        help="all: every workflow and step (default, the lab's); orchestration: workflows and "
        "light steps, never a data step; data: a conversion host's data steps only "
        "(with --data-host). Default: $CUTOVER_WORKER_ROLE, else all",
    )
    sp.add_argument(
        "--data-host",
        metavar="NAME",
        default=os.environ.get("CUTOVER_DATA_HOST"),
        help="serve the data steps routed to this host (one of the site's fleet.dataHosts), "
        "on queue <task-queue>-data-NAME (default: $CUTOVER_DATA_HOST)",
    )
    sp.add_argument(
        "--staging-dir",
        metavar="DIR",
        type=lambda v: str(Path(v).resolve()),
        default=os.environ.get("CUTOVER_STAGING_DIR"),
        help="this data host's own staging directory, in place of the site's stagingDir "
        "(default: $CUTOVER_STAGING_DIR)",
    )
    sp.add_argument(
        "--max-copies",
        type=_positive,
        metavar="N",
        default=os.environ.get("CUTOVER_MAX_COPIES"),
        help="copies this data host runs at once (more wait on it, heartbeating); the site's "
        "fleet.limits bound them across hosts (default: $CUTOVER_MAX_COPIES, else no limit)",
    )
    sp.add_argument(
        "--deployment",
        metavar="NAME",
        default=os.environ.get("CUTOVER_DEPLOYMENT"),
        help="the Worker Deployment this worker belongs to (with --build-id; default: "
        "$CUTOVER_DEPLOYMENT)",
    )
    sp.add_argument(
        "--build-id",
        metavar="ID",
        default=os.environ.get("CUTOVER_BUILD_ID"),
        help="this worker's build in its deployment: cutovers stay on the build they started "
        "on (pinned); set a build current with `temporal worker deployment "
        "set-current-version` (default: $CUTOVER_BUILD_ID; unset: no versioning)",
    )
    sp.add_argument("--log-level", default="INFO", help="log level")
    sp.add_argument(
        "--metrics-address",
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics "
        "(default: $CUTOVER_METRICS_ADDRESS; unset means off)",
    )
