"""What a wave asks of Temporal itself: roll back a running cutover (its `rollback` update).

A workflow cannot send an update to another workflow; this activity does it with a client,
so the cutover unwinds exactly as when an operator runs `cutover rollback`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from cutover.models import RollbackRequest
from cutover.wave import REQUEST_ROLLBACK, CutoverRollback


class WaveActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    def activities(self) -> list[Callable[..., Any]]:
        return [self.request_rollback]

    @activity.defn(name=REQUEST_ROLLBACK)
    async def request_rollback(self, req: CutoverRollback) -> str:
        """Idempotent: a cutover already rolling back, finalizing or finished says so."""
        handle = self._client.get_workflow_handle(req.workflowId)
        try:
            answer: str = await handle.execute_update(
                "rollback",
                RollbackRequest(reason=req.reason, requestedBy=req.requestedBy),
                result_type=str,
            )
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            return f"refused: {getattr(cause, 'message', cause)}"
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            return "already finished"
        return answer
