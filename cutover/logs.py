"""structlog, configured once per process: JSON lines bound to the Temporal context.

Every line an activity logs carries workflow_id, run_id, application, wave, step (the
activity; for checks, the check's name) and attempt: `LoggingInterceptor` binds them for the
activity's duration (structlog contextvars, which Temporal carries into activity threads)
and logs each activity's start and end. Workflow code logs through `workflow.logger` (silent
during replay) with application, wave and step as `extra`, merged here.

Secrets never reach a log line by construction (the site config holds references only, and
activities resolve them into local variables); as a second line, any field whose name looks
like a secret is redacted.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import structlog
from temporalio import activity, workflow
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from cutover.models import AuditAppend, CheckInput, SiteLookup, StepInput

#: Fields workflow code passes as `extra` that become top-level fields of the JSON line.
EXTRA_FIELDS = (
    "application",
    "wave",
    "step",
    "kind",
    "attempt",
    "requested_by",
    "reason",
    "outcome",
    "approver",
    "compensation",
    "error",
    "downtime_seconds",
    "bytes_moved",
)

_SECRET_HINTS = ("password", "secret", "token", "tsig_key", "authorization")


def _temporal_context(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Merge who is logging: the activity's workflow/run/attempt, or the workflow's."""
    if activity.in_activity():
        info = activity.info()
        event.setdefault("workflow_id", info.workflow_id)
        event.setdefault("run_id", info.workflow_run_id)
        event.setdefault("activity", info.activity_type)
        event.setdefault("attempt", info.attempt)
    record = event.get("_record")
    wf = getattr(record, "temporal_workflow", None) if record is not None else None
    if isinstance(wf, dict):
        event.setdefault("workflow_id", wf.get("workflow_id"))
        event.setdefault("run_id", wf.get("run_id"))
        event.setdefault("workflow_type", wf.get("workflow_type"))
    act = getattr(record, "temporal_activity", None) if record is not None else None
    if isinstance(act, dict):
        event.setdefault("workflow_id", act.get("workflow_id"))
        event.setdefault("run_id", act.get("workflow_run_id"))
        event.setdefault("activity", act.get("activity_type"))
        event.setdefault("attempt", act.get("attempt"))
    if record is not None:
        for key in EXTRA_FIELDS:
            if hasattr(record, key):
                event.setdefault(key, getattr(record, key))
    return event


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if any(h in key.lower() for h in _SECRET_HINTS):
            event[key] = "[redacted]"
    return event


def configure(level: str = "INFO") -> None:
    """Route structlog and stdlib logging (Temporal's workflow.logger too) to JSON on stderr."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _temporal_context,
        _redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    # Context goes into fields (above), not appended to the message text.
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def get_logger(name: str = "cutover") -> Any:
    return structlog.get_logger(name)


class LoggingInterceptor(Interceptor):
    """Binds every activity's log context, and logs its start and its end."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityLogging(next)


class _ActivityLogging(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        fields: dict[str, Any] = {
            "workflow_id": info.workflow_id,
            "run_id": info.workflow_run_id,
            "activity": info.activity_type,
            "step": info.activity_type,
            "attempt": info.attempt,
        }
        arg = input.args[0] if input.args else None
        if isinstance(arg, StepInput):
            fields["application"], fields["wave"] = arg.context.application, arg.context.wave
            if arg.passNumber:
                fields["pass_number"] = arg.passNumber
        elif isinstance(arg, AuditAppend):
            fields.update({k: v for k, v in (("application", arg.application),
                                             ("wave", arg.wave)) if v is not None})  # fmt: skip
        elif isinstance(arg, SiteLookup):
            fields["wave"] = arg.wave
            if arg.application is not None:
                fields["application"] = arg.application
        elif isinstance(arg, CheckInput):
            fields["application"], fields["step"] = arg.application, arg.name
            fields["check_phase"] = arg.phase
            if arg.runbook is not None:
                fields["wave"] = arg.runbook.wave_name
        log = get_logger("cutover.activity")
        with structlog.contextvars.bound_contextvars(**fields):
            t0 = time.monotonic()
            log.debug("activity started")
            try:
                result = await super().execute_activity(input)
            except BaseException as exc:
                log.warning(
                    "activity failed",
                    error=f"{type(exc).__name__}: {exc}",
                    seconds=round(time.monotonic() - t0, 3),
                )
                raise
            log.info("activity completed", seconds=round(time.monotonic() - t0, 3))
            return result
