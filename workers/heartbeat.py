"""Keep every activity's heartbeat going while it runs, so a heartbeat timeout notices a dead
worker in seconds without each adapter having to heartbeat between its calls.

The keep-alive re-sends the activity's own last heartbeat details (or, before it sent any,
the previous attempt's), so details that a retry resumes from are never overwritten. The
heartbeat also carries cancellation to the activity: a workflow that stops waiting (an
operator's rollback during a check round) cancels the activity at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ActivityOutboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)


class HeartbeatKeepAlive(Interceptor):
    """Heartbeat every third of the activity's heartbeat timeout until it returns."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _KeepAlive(next)


class _Recording(ActivityOutboundInterceptor):
    def __init__(self, next: ActivityOutboundInterceptor, keep: _KeepAlive) -> None:
        super().__init__(next)
        self._keep = keep

    def heartbeat(self, *details: Any) -> None:
        self._keep.last = details
        super().heartbeat(*details)


class _KeepAlive(ActivityInboundInterceptor):
    last: tuple[Any, ...] = ()

    def init(self, outbound: ActivityOutboundInterceptor) -> None:
        self._outbound = _Recording(outbound, self)
        super().init(self._outbound)

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        if not info.heartbeat_timeout:
            return await super().execute_activity(input)
        self.last = tuple(info.heartbeat_details)
        period = max(info.heartbeat_timeout.total_seconds() / 3, 0.05)

        async def beat() -> None:
            while True:
                await asyncio.sleep(period)
                self._outbound.heartbeat(*self.last)

        task = asyncio.create_task(beat())
        try:
            return await super().execute_activity(input)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
