"""What every activity module shares: typed errors (cutover.errors), attempts and heartbeats
that also work when an activity method is called directly (tests, the CLI), outside a worker."""

from __future__ import annotations

from typing import Any

import structlog
from temporalio import activity

from adapters.progress import heartbeat as heartbeat
from cutover.errors import error as error


def attempt() -> int:
    return activity.info().attempt if activity.in_activity() else 1


def log() -> Any:
    """The adapters' logger: JSON lines that carry the workflow ID, run ID, application,
    wave, step and attempt (bound by the worker's LoggingInterceptor around each activity).
    Pass facts as keyword fields; never a secret (fields named like one are redacted)."""
    return structlog.get_logger("cutover.activity")
