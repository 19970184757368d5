"""Data-host routing and copy permits of a cutover (issue 17), for sites with a `fleet`.

A mixin of `workflows.cutover.AppCutoverWorkflow`. When the cutover's first data step is
due it picks a live data host (the site's placement rules, then the least-loaded host, via
the fleet workflow) and records it (fact `data_host`, status, each step's record); every
later data step and data undo goes to that host's queue, bounded by `hostWaitSeconds`
(schedule-to-start). Each copy first takes its permits (data host, ESXi hosts, datastores).

When a host does not take a step within the bound it counts as gone: a warm copy moves the
data path to another host from the pre-copy (`HostLost`, caught by the warm phase); a step in
the downtime rolls the cutover back (`HostLost` is a rollback); an undo that only deletes
staging is left to that host's own cleanup when it starts again, recorded, never holding a
rollback or a finalize.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Protocol

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, FailureError, TimeoutType
from temporalio.exceptions import TimeoutError as ActivityTimeout

from workflows.cutover_text import RollbackNow, cause

with workflow.unsafe.imports_passed_through():
    from cutover import facts as F
    from cutover.catalog import WarmStep
    from cutover.fleet import (
        COPY_STEPS,
        DATA_STEPS,
        FLEET_LIVE_HOSTS,
        FLEET_REQUEST,
        SIGNAL_LOST,
        SIGNAL_RELEASE,
        STAGING_UNDOS,
        URGENT_STEPS,
        Fleet,
        FleetCall,
        FleetGrant,
        FleetLost,
        FleetRelease,
        FleetRequest,
        LiveHostsQuery,
        data_queue,
        fleet_workflow_id,
    )
    from cutover.models import CutoverInput, RollbackRequest

#: The fact naming the cutover's data host (carried with the facts across its window).
DATA_HOST = "data_host"
#: Facts a data host's pre-copy left that mean nothing on another host.
_HOST_FACTS = (
    F.STAGING_PATH,
    F.CHANGE_ID,
    F.DIGEST_ROOT,
    F.CONVERTED_PATH,
    F.CONVERTED_FORMAT,
)
_LIGHT = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=10))


class HostLost(RollbackNow):
    """A data host did not take a step within the fleet's bound."""

    def __init__(self, host: str, step: str, reason: str) -> None:
        super().__init__(reason)
        self.host, self.step = host, step


class _Cutover(Protocol):
    _inp: CutoverInput
    _id: str
    _by_ref: bool
    _facts: dict[str, str]
    _rollback: RollbackRequest | None
    _grants: dict[str, FleetGrant]
    _dead_hosts: list[str]
    _fleet_seq: int
    _placement: tuple[list[str], list[str]]

    def _raise_if_rollback(self) -> None: ...


class CutoverFleet:
    def _fleet(self: _Cutover) -> Fleet | None:
        return self._inp.resolved_site.fleet if self._by_ref else None

    def _data_host(self: _Cutover) -> str | None:
        return self._facts.get(DATA_HOST)

    def _token(self: _Cutover, what: str) -> str:
        self._fleet_seq += 1
        # the run ID (not the workflow ID) makes it unique across the fleet and stays the
        # same when the run's history is replayed
        return f"{workflow.info().run_id}/{what}-{self._fleet_seq}"

    async def _route(
        self: _Cutover, name: str, on_data_host: bool = False
    ) -> tuple[str, str, timedelta] | None:
        """(host, queue, how long it may take to take the step) for a data step of a site
        with a fleet (picking the host first when none is yet); None: the workflow's queue.
        `on_data_host`: a check that reads the staged copies, on the host that has them."""
        fleet = CutoverFleet._fleet(self)
        host = self._facts.get(DATA_HOST)
        if fleet is None or not (name in DATA_STEPS or (on_data_host and host is not None)):
            return None
        if host is None and name in STAGING_UNDOS:
            return None  # no host was ever assigned: nothing was staged (never pick for an undo)
        if host is None:
            try:
                host = await CutoverFleet._pick_host(self, fleet)
            except ActivityError as err:  # Temporal itself did not answer (bounded retries)
                raise RollbackNow(f"could not pick a data host for {name}: {cause(err)}") from None
        wait = timedelta(seconds=fleet.hostWaitSeconds)
        return host, data_queue(workflow.info().task_queue, host), wait

    async def _pick_host(self: _Cutover, fleet: Fleet) -> str:
        tq = workflow.info().task_queue
        _, datastores = self._placement
        maps = self._inp.resolved_site.storageMappings
        pools = [m.targetPool for m in maps if not datastores or m.sourceDatastore in datastores]
        near = fleet.candidates(datastores, pools)
        everyone = [h.name for h in fleet.dataHosts]
        order = [h for h in near + everyone if h not in self._dead_hosts]
        order = list(dict.fromkeys(order))
        if not order:
            raise RollbackNow(
                f"no data host left: {', '.join(self._dead_hosts)} did not take their steps "
                "within the fleet's hostWaitSeconds; start their workers "
                "(`cutover worker --role data --data-host NAME`) or add a host to the site's "
                "fleet.dataHosts"
            )
        deadline = workflow.now() + timedelta(seconds=fleet.hostWaitSeconds)
        while True:
            live: list[str] = await workflow.execute_activity(
                FLEET_LIVE_HOSTS,
                LiveHostsQuery(taskQueue=tq, hosts=order),
                result_type=list[str],
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_LIGHT,
            )
            # placement first: a live host near the data, else any live host
            pick = [h for h in near if h in live] or [h for h in order if h in live]
            if pick:
                break
            self._raise_if_rollback()
            if workflow.now() >= deadline:
                raise RollbackNow(
                    f"no data host is live (none of {', '.join(order)} has a worker polling "
                    f"its queue {data_queue(tq, '<host>')} within {fleet.hostWaitSeconds} s): "
                    "start one with `cutover worker --role data --data-host NAME`"
                )
            await workflow.sleep(timedelta(seconds=5), summary="waiting for a live data host")
        grant = await CutoverFleet._ask(
            self,
            FleetRequest(
                token=CutoverFleet._token(self, "host"),
                holder=self._id,
                kind="host",
                pick=pick,
                label=self._inp.runbook.application,
            ),
            timedelta(seconds=fleet.hostWaitSeconds),
        )
        if grant is None or grant.host not in pick:
            raise RollbackNow(
                f"the fleet workflow ({fleet_workflow_id(tq)}) assigned no data host within "
                f"{fleet.hostWaitSeconds} s: is an orchestration worker polling {tq}?"
            )
        self._facts[DATA_HOST] = grant.host
        return grant.host

    async def _ask(self: _Cutover, req: FleetRequest, bound: timedelta) -> FleetGrant | None:
        """Send `req` to the fleet; its grant, or None after `bound` (the request withdrawn).
        An operator's rollback ends the wait (withdrawn, then raised)."""
        tq = workflow.info().task_queue
        await workflow.execute_activity(
            FLEET_REQUEST,
            FleetCall(taskQueue=tq, request=req),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_LIGHT,
            summary=f"fleet: {req.kind} for {req.label}",
        )
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: req.token in self._grants or self._rollback is not None,
                timeout=bound,
                timeout_summary=f"fleet {req.kind}",
            )
        grant = self._grants.pop(req.token, None)
        if grant is None:
            await CutoverFleet._release(self, req.token)
            self._raise_if_rollback()
        return grant

    async def _permits(self: _Cutover, name: str, label: str) -> str | None:
        """Hold the copy permits `name` needs (its token), or None when none are limited."""
        fleet = CutoverFleet._fleet(self)
        host = self._facts.get(DATA_HOST)
        if fleet is None or host is None or name not in COPY_STEPS:
            return None
        esxi, datastores = self._placement
        resources = fleet.copy_resources(host, esxi, datastores)
        if not resources:
            return None
        try:
            return await CutoverFleet._copy_permits(self, fleet, name, label, resources)
        except ActivityError as err:
            raise RollbackNow(
                f"{label}: could not ask the fleet for permits: {cause(err)}"
            ) from None

    async def _copy_permits(
        self: _Cutover, fleet: Fleet, name: str, label: str, resources: dict[str, int]
    ) -> str:
        token = CutoverFleet._token(self, "copy")
        req = FleetRequest(
            token=token,
            holder=self._id,
            kind="permits",
            resources=resources,
            urgent=name in URGENT_STEPS,
            label=f"{self._inp.runbook.application} {label}",
        )
        if await CutoverFleet._ask(self, req, timedelta(minutes=fleet.permitWaitMinutes)) is None:
            raise RollbackNow(
                f"{label}: no copy permit within {fleet.permitWaitMinutes} minutes "
                f"(limits {', '.join(f'{r} {n}' for r, n in resources.items())}); "
                "`cutover wave status` shows who holds them"
            )
        return token

    async def _release(self: _Cutover, token: str | None) -> None:
        """Give back one grant (or, None, everything this cutover holds)."""
        handle = workflow.get_external_workflow_handle(
            fleet_workflow_id(workflow.info().task_queue)
        )
        # no fleet workflow: nothing is held (its sweep frees a closed holder's grants)
        with contextlib.suppress(FailureError):
            await handle.signal(SIGNAL_RELEASE, FleetRelease(holder=self._id, token=token))

    async def _fleet_done(self: _Cutover) -> None:
        if self._grants or self._fleet_seq or DATA_HOST in self._facts:
            await CutoverFleet._release(self, None)

    def _lost(
        self: _Cutover,
        err: ActivityError,
        route: tuple[str, str, timedelta],
        name: str,
        label: str,
    ) -> HostLost | None:
        """A HostLost (for the step `name`, its record `label`) when `err` says the host's
        worker never took the step."""
        cause = err.cause
        if not (isinstance(cause, ActivityTimeout) and cause.type == TimeoutType.SCHEDULE_TO_START):
            return None
        host, queue, wait = route
        return HostLost(
            host,
            name,
            f"data host {host} did not take {label} within {wait.total_seconds():g} s "
            f"(no worker polls {queue})",
        )

    async def _host_lost(self: _Cutover, host: str) -> None:
        """This cutover takes `host` for gone: no later step waits on it again (its staging
        undos are left to its cleanup at once), and the fleet's ledger stops offering it to
        other cutovers for a while (each would wait `hostWaitSeconds` on it)."""
        if host in self._dead_hosts:
            return
        self._dead_hosts.append(host)
        if workflow.patched("fleet-lost-host-report"):
            handle = workflow.get_external_workflow_handle(
                fleet_workflow_id(workflow.info().task_queue)
            )
            with contextlib.suppress(FailureError):
                await handle.signal(SIGNAL_LOST, FleetLost(host=host, reportedBy=self._id))

    async def _move_host(self: _Cutover, lost: HostLost) -> None:
        """The warm data path starts again from the pre-copy on another host."""
        await CutoverFleet._host_lost(self, lost.host)
        self._facts = {
            k: v for k, v in self._facts.items() if k != DATA_HOST and not k.startswith(_HOST_FACTS)
        }
        # the lease on the lost host: freed now (its staging is its own cleanup's matter)
        tokens = [t for t in list(self._grants) if "/host-" in t]
        for t in tokens:
            self._grants.pop(t, None)
        await CutoverFleet._release(self, None)


WARM_DATA = frozenset({WarmStep.PRE_COPY, WarmStep.INCREMENTAL_SYNC})
