"""What the fleet asks of Temporal itself (issue 17): start-or-signal the fleet workflow,
which data hosts have a worker polling, which holders ended. Read-only but for the signal."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from cutover.fleet import (
    FLEET_CLOSED_HOLDERS,
    FLEET_LIVE_HOSTS,
    FLEET_REQUEST,
    FLEET_WORKFLOW,
    LIVE_POLLER_SECONDS,
    SIGNAL_REQUEST,
    FleetCall,
    FleetInput,
    HoldersQuery,
    LiveHostsQuery,
    data_queue,
    fleet_workflow_id,
)


class FleetActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    def activities(self) -> list[Callable[..., Any]]:
        return [self.fleet_request, self.fleet_live_hosts, self.fleet_closed_holders]

    @activity.defn(name=FLEET_REQUEST)
    async def fleet_request(self, call: FleetCall) -> None:
        """Idempotent: the fleet ignores a token it already knows."""
        await self._client.start_workflow(
            FLEET_WORKFLOW,
            FleetInput(),
            id=fleet_workflow_id(call.taskQueue),
            task_queue=call.taskQueue,
            start_signal=SIGNAL_REQUEST,
            start_signal_args=[call.request],
        )

    @activity.defn(name=FLEET_LIVE_HOSTS)
    async def fleet_live_hosts(self, q: LiveHostsQuery) -> list[str]:
        """The hosts whose data queue a worker polled within LIVE_POLLER_SECONDS."""
        now = datetime.now(UTC)
        live: list[str] = []
        for host in q.hosts:
            resp = await self._client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=self._client.namespace,
                    task_queue=TaskQueue(name=data_queue(q.taskQueue, host)),
                    task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
                )
            )
            seen = [p.last_access_time.ToDatetime(tzinfo=UTC) for p in resp.pollers]
            if any(now - t < timedelta(seconds=LIVE_POLLER_SECONDS) for t in seen):
                live.append(host)
        return live

    @activity.defn(name=FLEET_CLOSED_HOLDERS)
    async def fleet_closed_holders(self, q: HoldersQuery) -> list[str]:
        closed: list[str] = []
        for wid in q.holders:
            try:
                desc = await self._client.get_workflow_handle(wid).describe()
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    closed.append(wid)
                    continue
                raise
            if desc.status != WorkflowExecutionStatus.RUNNING:
                closed.append(wid)
        return closed
