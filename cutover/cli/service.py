"""`cutover server` and `cutover worker`: the long-running processes."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from cutover import server
from cutover.cli.common import EXIT_FAILED, EXIT_OK, Group
from cutover.signing import public_key_text
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
    worker = build_worker(client, args.task_queue, sites=store, audit=audit, key=key)
    # SIGTERM (what process supervisors send) drains the worker instead of killing it
    # mid-task, and lets the tracer flush its last spans.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        logs.get_logger().info(
            "worker started",
            task_queue=args.task_queue,
            metrics_address=address,
            sites=[str(r) for r in refs],
            audit_log=str(log),
            key=key[0],
            public_key=public_key_text(key[1].public_key()),
        )
        await stop.wait()
        logs.get_logger().info("worker stopping", task_queue=args.task_queue)
    telemetry.shutdown()
    return EXIT_OK


def _default_site() -> str:
    from cutover.cli.lab import default_site

    return default_site()


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
    sp.add_argument("--log-level", default="INFO", help="log level")
    sp.add_argument(
        "--metrics-address",
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics "
        "(default: $CUTOVER_METRICS_ADDRESS; unset means off)",
    )
