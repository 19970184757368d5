"""Progress reports from adapter code that runs inside an activity (or outside one: tests,
the CLI, benchmarks call adapters directly)."""

from __future__ import annotations

from typing import Any

from temporalio import activity


def heartbeat(details: Any) -> None:
    """Heartbeat `details` when called inside an activity; nothing otherwise."""
    if activity.in_activity():
        activity.heartbeat(details)
