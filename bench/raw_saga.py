"""The baseline for bench.orchestration: a plain Temporal saga with no-op activities.

Shaped like the temporal-compensating-transactions sample: before each step its undo is
pushed onto a compensation list, and on failure the list unwinds in reverse. The steps are
instant no-ops that never fail, so the compensations are registered but never run.

Kept apart from bench.orchestration, so the workflow sandbox imports only this small module.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

TIMEOUT = timedelta(minutes=2)
RETRY = RetryPolicy(maximum_attempts=3)


@activity.defn(name="bench_raw_step")
async def raw_step(step: int) -> int:
    return step


@activity.defn(name="bench_raw_undo")
async def raw_undo(step: int) -> int:
    return step


RAW_ACTIVITIES = [raw_step, raw_undo]


@workflow.defn(name="BenchRawSaga")
class RawSagaWorkflow:
    @workflow.run
    async def run(self, groups: list[int]) -> int:
        """Run rounds of activities: each round's activities at once, rounds in sequence,
        mirroring the engine's shape (checks of one phase run concurrently)."""
        compensations: list[int] = []
        done = 0
        try:
            for size in groups:
                compensations.append(done)
                await asyncio.gather(
                    *(
                        workflow.execute_activity(
                            raw_step, done + j, start_to_close_timeout=TIMEOUT, retry_policy=RETRY
                        )
                        for j in range(size)
                    )
                )
                done += size
        except BaseException:
            for i in reversed(compensations):
                await workflow.execute_activity(
                    raw_undo, i, start_to_close_timeout=TIMEOUT, retry_policy=RETRY
                )
            raise
        return done
