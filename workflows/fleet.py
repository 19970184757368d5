"""The fleet's ledger (issue 17): which cutover runs on which data host, and the copy
permits per data host, ESXi host and datastore, across every worker and every wave.

One `CutoverFleet` workflow per task queue (`cutover.fleet.fleet_workflow_id`), started by
the first request (`fleet_request`: signal-with-start). Cutovers ask by signal and get their
grant by signal (`fleet_grant`); they release by signal. A holder that ended without
releasing (terminated, say) is found by a sweep and its grants are freed, so nothing leaks
for longer than SWEEP. It continues as new when Temporal suggests it, and completes when it
has held nothing for IDLE (the next request starts it again).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, FailureError

with workflow.unsafe.imports_passed_through():
    from cutover.fleet import (
        FLEET_CLOSED_HOLDERS,
        FLEET_WORKFLOW,
        QUERY_STATE,
        SIGNAL_GRANT,
        SIGNAL_LOST,
        SIGNAL_RELEASE,
        SIGNAL_REQUEST,
        FleetBook,
        FleetGrant,
        FleetInput,
        FleetLost,
        FleetRelease,
        FleetRequest,
        FleetState,
        HoldersQuery,
        fleet_state,
    )

#: How often held grants are checked against their holders' workflows.
SWEEP = timedelta(minutes=2)
#: Holding nothing this long, the fleet workflow completes.
IDLE = timedelta(hours=1)
#: Continue as new at this history length at the latest (Temporal suggests earlier).
MAX_EVENTS = 10_000


@workflow.defn(name=FLEET_WORKFLOW)
class FleetWorkflow:
    @workflow.init
    def __init__(self, inp: FleetInput) -> None:
        self._book: FleetBook = inp.book.model_copy(deep=True)
        self._dirty = True

    @workflow.signal(name=SIGNAL_REQUEST)
    def request(self, req: FleetRequest) -> None:
        self._book.add(req)
        self._dirty = True

    @workflow.signal(name=SIGNAL_RELEASE)
    def release(self, rel: FleetRelease) -> None:
        self._book.release(rel)
        self._dirty = True

    @workflow.signal(name=SIGNAL_LOST)
    def lost(self, report: FleetLost) -> None:
        self._book.lost(report.host, workflow.now())

    @workflow.query(name=QUERY_STATE)
    def state(self) -> FleetState:
        return fleet_state(self._book)

    @workflow.run
    async def run(self, inp: FleetInput) -> None:
        idle_since = workflow.now()
        swept = workflow.now()
        while True:
            if self._dirty:
                self._dirty = False
                await self._grant()
            now = workflow.now()
            if self._book.holders():
                idle_since = now
                if now - swept >= SWEEP:
                    swept = now
                    await self._sweep()
                    continue
            elif now - idle_since >= IDLE:
                return
            info = workflow.info()
            if (
                info.is_continue_as_new_suggested()
                or info.get_current_history_length() > MAX_EVENTS
            ):
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(FleetInput(book=self._book))
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self._dirty, timeout=SWEEP, timeout_summary="fleet sweep"
                )

    async def _grant(self) -> None:
        granted = self._book.grant(workflow.now())

        async def tell(req: FleetRequest, host: str | None) -> None:
            handle = workflow.get_external_workflow_handle(req.holder)
            try:
                await handle.signal(SIGNAL_GRANT, FleetGrant(token=req.token, host=host))
            except FailureError:
                # the holder is gone: what it was granted is free again
                self._book.release(FleetRelease(holder=req.holder))
                self._dirty = True

        await asyncio.gather(*(tell(r, h) for r, h in granted))

    async def _sweep(self) -> None:
        try:
            closed: list[str] = await workflow.execute_activity(
                FLEET_CLOSED_HOLDERS,
                HoldersQuery(holders=self._book.holders()),
                result_type=list[str],
                start_to_close_timeout=timedelta(seconds=30),
                # bounded: grants and releases wait while it runs; the next sweep retries
                schedule_to_close_timeout=timedelta(minutes=1),
            )
        except ActivityError:
            return
        for holder in closed:
            self._book.release(FleetRelease(holder=holder))
            self._dirty = True
