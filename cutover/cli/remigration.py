"""A finished application is not cut over again by accident: the CLI's guard.

`cutover run` and `cutover wave run` ask, before they start any workflow, whether an
application was already migrated: its last cutover workflow (`cutover-<app>`) closed
COMPLETED with outcome COMPLETED, or its source VMs carry the migrated marks a finalize
writes (read with the same function as the workflow's `verify_not_migrated` step). A
deliberate re-migration passes `--remigrate REASON`, which the workflow records.

The workflow checks the marks itself, first, whatever started it: when the CLI cannot read
vCenter (an operator's machine often cannot), it says so and leaves that check to the
workflow instead of refusing.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from cutover.runbook import Runbook
from cutover.site import SiteConfig

T = TypeVar("T")

#: How long the CLI waits for vCenter before leaving the marks to the workflow's own check.
VCENTER_SECONDS = 30.0


@dataclass
class Verdict:
    """What the guard found for one application."""

    application: str
    #: Sentences naming what shows it was migrated (empty: not migrated, as far as known).
    evidence: list[str] = field(default_factory=list)

    @property
    def migrated(self) -> bool:
        return bool(self.evidence)

    def sentence(self) -> str:
        return f"{self.application} was already cut over: " + "; ".join(self.evidence)


async def last_cutover_completed(client: Client, application: str) -> str | None:
    """A sentence naming the application's last cutover workflow (ID, run, close time) when
    it closed COMPLETED with outcome COMPLETED; None otherwise (never run, running, rolled
    back, failed, ...)."""
    from workflows.cutover import workflow_id_for  # the workflow module: slow to import

    wf_id = workflow_id_for(application)
    try:
        desc = await client.get_workflow_handle(wf_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    if desc.status != WorkflowExecutionStatus.COMPLETED:
        return None
    # The result as a mapping: also a result recorded by an older version decodes.
    handle = client.get_workflow_handle(wf_id, run_id=desc.run_id, result_type=dict)
    result: dict[str, Any] = await handle.result(follow_runs=False)
    if result.get("outcome") != "COMPLETED":
        return None
    when = desc.close_time.isoformat(timespec="seconds") if desc.close_time else "(unknown)"
    reason = f" ({result['reason']})" if result.get("reason") else ""
    run = f"workflow {wf_id} run {desc.run_id}"
    return f"its last cutover, {run}, finished COMPLETED at {when}{reason}"


def read_marks(site: SiteConfig, runbooks: list[Runbook]) -> tuple[dict[str, str], list[str]]:
    """({application: evidence} for those whose source VMs carry migrated marks, warnings
    for what could not be read). One connection; a vCenter that cannot be reached at all
    gives one warning, not one per application. Blocking: run it in a thread."""
    # pyVmomi: slow to import
    from adapters.vsphere.client import ClientPool
    from adapters.vsphere.inventory import resolve_vms
    from adapters.vsphere.vm import migrated_marks, migration_evidence

    if site.vcenter is None or not runbooks:
        return {}, []
    later = "the cutover workflow checks them itself before it changes anything"
    client = ClientPool().get(site.vcenter)
    found: dict[str, str] = {}
    warnings: list[str] = []
    try:
        try:
            client.connect()
        except Exception as exc:  # any failure: the workflow's own check still runs first
            return {}, [
                f"could not read the migrated marks of the source VMs in vCenter "
                f"{site.vcenter.host} ({_message(exc)}); {later}"
            ]
        for rb in runbooks:
            try:
                names = resolve_vms(client, rb)
                marks = migrated_marks(client, names)
            except Exception as exc:
                warnings.append(
                    f"could not read the migrated marks of {rb.application}'s source VMs "
                    f"({_message(exc)}); {later}"
                )
                continue
            if marks:
                found[rb.application] = migration_evidence(names, marks)
    finally:
        client.close()
    return found, warnings


def _message(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or exc or type(exc).__name__)


def _in_daemon_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """fn() in a daemon thread: a vCenter that never answers must not hold the CLI's exit
    (asyncio.run waits for the default executor's threads)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(value: T) -> None:
        if not fut.done():  # abandoned after a timeout
            fut.set_result(value)

    def target() -> None:
        value = fn()
        # RuntimeError: the loop has closed, nobody waits any more
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, value)

    threading.Thread(target=target, name="remigration-marks", daemon=True).start()
    return fut


async def verdicts(
    client: Client, site: SiteConfig, runbooks: list[Runbook], parallel: int = 8
) -> tuple[list[Verdict], list[str]]:
    """For each runbook, in order: what Temporal's last run and the source VMs' marks say;
    and what could not be checked, and why."""
    marks = _in_daemon_thread(lambda: read_marks(site, runbooks))
    gate = asyncio.Semaphore(parallel)

    async def previous(rb: Runbook) -> str | None:
        async with gate:
            return await last_cutover_completed(client, rb.application)

    found = [Verdict(rb.application) for rb in runbooks]
    for v, p in zip(found, await asyncio.gather(*(previous(rb) for rb in runbooks)), strict=True):
        if p:
            v.evidence.append(p)
    seconds = VCENTER_SECONDS + 0.5 * len(runbooks)
    try:
        evidence, warnings = await asyncio.wait_for(marks, seconds)
    except TimeoutError:
        host = site.vcenter.host if site.vcenter else "?"
        evidence, warnings = (
            {},
            [
                f"vCenter {host} did not answer within {seconds:g}s; the cutover workflow checks "
                "the source VMs' migrated marks itself before it changes anything"
            ],
        )
    for v in found:
        if v.application in evidence:
            v.evidence.append(evidence[v.application])
    return found, warnings


def check_reason(reason: str | None, flag: str = "--remigrate") -> str | None:
    """A re-migration needs a reason a person can read later."""
    if reason is None:
        return None
    if not reason.strip():
        raise ValueError(f"{flag}: give the reason for cutting the application over again")
    return reason.strip()
