"""Worker roles (issue 17): what an orchestration worker and a data host run.

- `all` (the default, the lab's): every workflow and activity on the task queue.
- `orchestration`: the workflows and the light activities (checks, traffic, vCenter and
  target-platform calls, the fleet's) on the task queue; never a data step.
- `data`: only the data steps (`cutover.fleet.DATA_STEPS`, plus `run_check` for checks that
  read the staged copies) on its own queue `<taskQueue>-data-<host>`, in its own staging
  directory, at most `--max-copies` copies at once; at start and every CLEAN_EVERY it removes
  the staging of cutovers that ended or moved to another host (`clean_staging`).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import structlog
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
)

from cutover.catalog import RUN_CHECK
from cutover.fleet import COPY_STEPS, DATA_STEPS, STAGING_UNDOS, data_queue
from cutover.logs import LoggingInterceptor
from cutover.models import CutoverStatus, StepInput
from cutover.telemetry import tracing_interceptor
from workers.heartbeat import HeartbeatKeepAlive
from workers.sites import SiteInterceptor, SiteStore

Role = Literal["all", "orchestration", "data"]
ROLES: tuple[Role, ...] = ("all", "orchestration", "data")
#: What a data host registers.
DATA_ACTIVITIES: frozenset[str] = DATA_STEPS | {RUN_CHECK}
#: Written into each application's staging directory on a data host: whose it is.
OWNER_FILE = ".cutover-owner.json"
CLEAN_EVERY = timedelta(minutes=5)

log = structlog.get_logger()


def activity_name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__temporal_activity_definition").name)


def for_role(acts: Sequence[Callable[..., Any]], role: Role) -> list[Callable[..., Any]]:
    """The activities a worker of `role` registers."""
    if role == "data":
        return [a for a in acts if activity_name(a) in DATA_ACTIVITIES]
    if role == "orchestration":
        return [a for a in acts if activity_name(a) not in DATA_STEPS]
    return list(acts)


class _Owner(ActivityInboundInterceptor):
    """Marks an application's staging with its workflow before a data step writes it."""

    def __init__(self, next: ActivityInboundInterceptor, staging: Path, host: str) -> None:
        super().__init__(next)
        self._staging, self._host = staging, host

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        inp = input.args[0] if input.args else None
        name = getattr(input.fn, "__temporal_activity_definition").name
        if isinstance(inp, StepInput) and name in DATA_STEPS and name not in STAGING_UNDOS:
            ctx = inp.context
            app = self._staging / "apps" / ctx.application
            marker = app / OWNER_FILE
            if not marker.exists():
                app.mkdir(parents=True, exist_ok=True)
                marker.write_text(json.dumps({"workflowId": ctx.workflowId, "host": self._host}))
        return await super().execute_activity(input)


class _CopyLimit(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, sem: asyncio.Semaphore) -> None:
        super().__init__(next)
        self._sem = sem

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        if getattr(input.fn, "__temporal_activity_definition").name not in COPY_STEPS:
            return await super().execute_activity(input)
        async with self._sem:  # the keep-alive heartbeats while it waits
            return await super().execute_activity(input)


class DataHostInterceptor(Interceptor):
    def __init__(self, staging: Path, host: str, max_copies: int | None) -> None:
        self._staging, self._host = staging, host
        self._sem = asyncio.Semaphore(max_copies) if max_copies else None

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        inner: ActivityInboundInterceptor = _Owner(next, self._staging, self._host)
        return _CopyLimit(inner, self._sem) if self._sem is not None else inner


def build_data_worker(
    client: Client,
    task_queue: str,
    host: str,
    activities: Sequence[Callable[..., Any]],
    sites: SiteStore,
    staging_dir: Path,
    max_copies: int | None = None,
    interceptors: Sequence[Interceptor] | None = None,
    **kwargs: Any,
) -> Worker:
    """A data host's worker: its data steps only, on `<task_queue>-data-<host>`."""
    return Worker(
        client,
        task_queue=data_queue(task_queue, host),
        activities=for_role(activities, "data"),
        activity_executor=ThreadPoolExecutor(max_workers=16),
        graceful_shutdown_timeout=timedelta(seconds=10),
        interceptors=[
            SiteInterceptor(sites, staging_dir),
            *(interceptors if interceptors is not None else [tracing_interceptor()]),
            LoggingInterceptor(),
            HeartbeatKeepAlive(),
            DataHostInterceptor(staging_dir, host, max_copies),
        ],
        **kwargs,
    )


async def clean_staging(client: Client, staging_dir: Path, host: str) -> list[Path]:
    """Remove the staging of cutovers that ended, or whose data path moved to another host
    (this host was taken for gone). Only directories this host marked as its own; a
    cutover whose state cannot be read keeps its staging (never guess)."""
    removed: list[Path] = []
    apps = staging_dir / "apps"
    if not apps.is_dir():
        return removed
    for app in sorted(apps.iterdir()):
        marker = app / OWNER_FILE
        if app.is_symlink() or not marker.is_file():
            continue
        try:
            wid = str(json.loads(marker.read_text())["workflowId"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        handle = client.get_workflow_handle(wid)
        try:
            desc = await handle.describe()
            running = desc.status == WorkflowExecutionStatus.RUNNING
            holder = None
            if running:
                holder = (await handle.query("status", result_type=CutoverStatus)).dataHost
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                log.warning("staging kept: cutover state unknown", dir=str(app), error=str(err))
                continue
            running, holder = False, None
        except Exception as err:  # a query the workflow could not answer: keep
            log.warning("staging kept: cutover state unknown", dir=str(app), error=str(err))
            continue
        if running and holder in (None, host):
            continue
        shutil.rmtree(app, ignore_errors=True)
        removed.append(app)
        why = "moved to " + str(holder) if running else "ended"
        log.info("staging removed", dir=str(app), workflow_id=wid, cutover=why)
    return removed


async def clean_forever(
    client: Client,
    staging_dir: Path,
    host: str,
    removed: Callable[[list[Path]], None] | None = None,
) -> None:
    """`clean_staging` at once and every CLEAN_EVERY, for a data host's life; a failed pass
    is logged and tried again later (it never stops the worker). `removed`: told each pass's
    removals (benchmarks record them)."""
    while True:
        try:
            gone = await clean_staging(client, staging_dir, host)
            if removed is not None:
                removed(gone)
        except Exception as err:
            log.warning("staging cleanup failed", host=host, error=str(err))
        await asyncio.sleep(CLEAN_EVERY.total_seconds())
