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

from cutover.keyfiles import Key
from cutover.models import RollbackRequest
from cutover.signing import sign
from cutover.wave import REQUEST_ROLLBACK, CutoverRollback


class WaveActivities:
    def __init__(self, client: Client, signer: Key | None = None) -> None:
        """`signer`: the worker's key, which signs the rollbacks it relays (the cutover
        takes only signed requests; the wave verified the operator's)."""
        self._client = client
        self._signer = signer

    def activities(self) -> list[Callable[..., Any]]:
        return [self.request_rollback]

    @activity.defn(name=REQUEST_ROLLBACK)
    async def request_rollback(self, req: CutoverRollback) -> str:
        """Idempotent: a cutover already rolling back, finalizing or finished says so."""
        handle = self._client.get_workflow_handle(req.workflowId)
        request = RollbackRequest(reason=req.reason, requestedBy=req.requestedBy)
        if self._signer is not None:
            name, key = self._signer
            request = RollbackRequest(
                reason=f"{req.reason} (asked by {req.requestedBy}; relayed by {name})",
                requestedBy=name,
            )
            args = request.model_dump(mode="json", exclude={"signature"})
            sig = sign(key, name, req.workflowId, "rollback", args)
            request = request.model_copy(update={"signature": sig})
        try:
            answer: str = await handle.execute_update("rollback", request, result_type=str)
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            return f"refused: {getattr(cause, 'message', cause)}"
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            return "already finished"
        return answer
