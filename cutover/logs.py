"""structlog, configured once per process: JSON lines bound to the Temporal context."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from temporalio import activity, workflow

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
        for key in ("requested_by", "reason", "outcome", "approver", "compensation"):
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
