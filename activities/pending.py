"""Steps whose adapters are not in the worker yet (the disk data path, the libvirt target:
built in activities/disks.py, convert.py and libvirt_target.py, not wired yet).

Registered under the real activity names so a cutover that reaches one fails at once,
non-retryably, with the step named, and then unwinds, instead of hanging in a task queue
or pretending to succeed. Wiring an adapter into the worker retires its names here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from cutover.catalog import Compensation, Step, WarmStep
from cutover.models import StepInput, StepResult

#: Which adapter each not-yet-built activity waits for.
PENDING: dict[str, str] = {
    **{
        s.value: "the disk data path (built, not wired yet)"
        for s in (
            WarmStep.PRE_COPY,
            WarmStep.INCREMENTAL_SYNC,
            Step.FINAL_DATA_SYNC,
            Step.CONVERT_IMAGE,
            Compensation.DISCARD_STAGING,
            Compensation.REMOVE_CONVERTED_IMAGE,
        )
    },
    **{
        s.value: "the libvirt target (built, not wired yet)"
        for s in (
            Step.ATTACH_TARGET_STORAGE_PROFILE,
            Step.VALIDATE_GUEST_TOOLS_AND_DRIVERS,
            Step.POWER_ON_TARGET,
            Compensation.DETACH_TARGET_STORAGE,
            Compensation.REMOVE_TARGET_DOMAIN,
        )
    },
}


def _pending(name: str, adapter: str) -> Callable[[StepInput], Any]:
    async def run(inp: StepInput) -> StepResult:
        raise ApplicationError(
            f"step '{name}' has no implementation yet: it waits for {adapter}",
            type="StepNotImplemented",
            non_retryable=True,
        )

    return activity.defn(name=name)(run)


def pending_activities(exclude: set[str] | None = None) -> list[Callable[..., Any]]:
    return [_pending(n, a) for n, a in PENDING.items() if n not in (exclude or set())]
