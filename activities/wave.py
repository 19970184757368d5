"""What a wave asks of Temporal itself: roll back a running cutover (its `rollback` update).

A workflow cannot send an update to another workflow; this activity does it with a client,
so the cutover unwinds exactly as when an operator runs `cutover rollback`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from cutover.keyfiles import Key
from cutover.models import CutoverResult, RollbackRequest
from cutover.signing import sign
from cutover.wave import AWAIT_CUTOVER, REQUEST_ROLLBACK, CutoverRollback, CutoverWait


class WaveActivities:
    def __init__(self, client: Client, signer: Key | None = None) -> None:
        """`signer`: the worker's key, which signs the rollbacks it relays (the cutover
        takes only signed requests; the wave verified the operator's)."""
        self._client = client
        self._signer = signer

    def activities(self) -> list[Callable[..., Any]]:
        return [self.request_rollback, self.await_cutover]

    @activity.defn(name=AWAIT_CUTOVER)
    async def await_cutover(self, req: CutoverWait) -> CutoverResult:
        """The result of a cutover an earlier run of the wave started, heartbeating while
        it runs (a dead worker's wait is taken over after one heartbeat timeout)."""
        handle = self._client.get_workflow_handle(req.workflowId, result_type=CutoverResult)
        result: asyncio.Future[CutoverResult] = asyncio.ensure_future(handle.result())
        try:
            while True:  # the result follows the cutover's continued windows
                done, _ = await asyncio.wait({result}, timeout=5)
                if done:
                    return result.result()
                activity.heartbeat()
        except WorkflowFailureError as exc:
            raise ApplicationError(
                f"the cutover workflow failed: {getattr(exc.cause, 'message', exc.cause)}",
                type="CutoverFailed",
                non_retryable=True,
            ) from None
        finally:
            result.cancel()

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
