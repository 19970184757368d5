"""What every adapter module shares: typed errors, attempts and heartbeats that also work
when an activity method is called directly (tests, the CLI), outside a worker."""

from __future__ import annotations

from typing import Any

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError


def error(kind: str, message: str, retryable: bool = False) -> ApplicationError:
    """A typed failure: `kind` names it for people and retry policies alike."""
    return ApplicationError(message, type=kind, non_retryable=not retryable)


def attempt() -> int:
    return activity.info().attempt if activity.in_activity() else 1


def heartbeat(details: Any) -> None:
    if activity.in_activity():
        activity.heartbeat(details)


def log() -> Any:
    """The adapters' logger: JSON lines that carry the workflow ID, run ID, application,
    wave, step and attempt (bound by the worker's LoggingInterceptor around each activity).
    Pass facts as keyword fields; never a secret (fields named like one are redacted)."""
    return structlog.get_logger("cutover.activity")
