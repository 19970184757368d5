"""How long each activity of the cutover workflow may run, and what no retry fixes.

Pure functions of the step, its input and the cutover's input: the workflow
(`workflows.cutover`) passes them to every activity it schedules.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from cutover.catalog import Compensation, FinalizeStep, Step, WarmStep
    from cutover.errors import NON_RETRYABLE as NEVER_RETRIED_KINDS
    from cutover.models import CheckInput, CutoverInput
    from cutover.site import Probe

#: Steps that move data for a long time: they heartbeat, and resume from it on retry.
_LONG = {
    WarmStep.PRE_COPY,
    WarmStep.INCREMENTAL_SYNC,
    Step.FINAL_DATA_SYNC,
    Step.CONVERT_IMAGE,
    Step.ATTACH_TARGET_STORAGE_PROFILE,
    # traffic steps wait on health checks and drains, heartbeating
    Step.UPDATE_LOAD_BALANCER,
    Compensation.RESTORE_LOAD_BALANCER,
    FinalizeStep.RETIRE_SOURCE_FROM_LOAD_BALANCER,
}
#: Steps that move or convert data: sized by `stepTimeoutMinutes` (they heartbeat progress).
_DATA = {
    WarmStep.PRE_COPY,
    WarmStep.INCREMENTAL_SYNC,
    Step.FINAL_DATA_SYNC,
    Step.CONVERT_IMAGE,
    Step.ATTACH_TARGET_STORAGE_PROFILE,
    Step.SMOKE_TEST,
}
#: Steps that wait for a guest to shut down or boot: sized by the runbook's shutdown timeout.
_POWER = {Step.QUIESCE_APPLICATION, Compensation.RESTART_SOURCE}
#: Steps that wait on load-balancer health checks and drains: sized by the site's timeouts.
_LB = {
    Step.UPDATE_LOAD_BALANCER,
    Compensation.RESTORE_LOAD_BALANCER,
    FinalizeStep.RETIRE_SOURCE_FROM_LOAD_BALANCER,
}
#: Errors no retry can fix: cutover.errors.NEVER_RETRIED (in the order histories carry).
NON_RETRYABLE = list(NEVER_RETRIED_KINDS)


def activity_bounds(
    name: str, arg: Any, inp: CutoverInput, v2: bool
) -> tuple[timedelta, timedelta | None]:
    """Start-to-close sized to the step's work, and a heartbeat timeout for every
    activity (the worker keeps heartbeats going), so a dead worker costs one heartbeat
    timeout, not the step's whole budget. `v2`: the run is under the `safety-v2` patch."""
    t = inp.tuning
    if not v2:
        beat = timedelta(seconds=t.heartbeatSeconds) if name in _LONG else None
        return timedelta(minutes=t.stepTimeoutMinutes), beat
    beat = timedelta(seconds=t.heartbeatSeconds)
    short = timedelta(minutes=t.shortStepTimeoutMinutes)
    if isinstance(arg, CheckInput):
        probe: Probe = arg.probe
        return timedelta(seconds=probe.timeoutSeconds) + timedelta(minutes=1), beat
    if name in _DATA:
        return timedelta(minutes=t.stepTimeoutMinutes), beat
    if name in _POWER:
        shutdown = inp.runbook.quiesce.guestShutdownTimeoutSeconds
        return timedelta(seconds=shutdown) + short, beat
    if name in _LB and inp.resolved_site.loadBalancer is not None:
        lb = inp.resolved_site.loadBalancer
        work = timedelta(seconds=lb.healthTimeoutSeconds + lb.drainTimeoutSeconds)
        return work + short, beat
    return short, beat
