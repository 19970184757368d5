"""The audit log's writer: a workflow's record, taken from its own history, appended to the
worker's hash-chained log (cutover/audit/ledger.py) and signed with the worker's key."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.common import log
from cutover.audit import audit
from cutover.audit.ledger import (
    append,
    report_digest,
)
from cutover.catalog import APPEND_AUDIT_RECORD
from cutover.models import AuditAppend, AuditAppended


class AuditLogActivities:
    def __init__(
        self, client: Client, log_path: Path, key_name: str, key: Ed25519PrivateKey
    ) -> None:
        self._client = client
        self._path = log_path
        self._name = key_name
        self._key = key

    def activities(self) -> list[Callable[..., Any]]:
        return [self.append_audit_record]

    async def _scheduled_event_id(self, workflow_id: str, run_id: str, activity_id: str) -> int:
        """This activity's ActivityTaskScheduled event: where its record is taken."""
        history = await self._client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        for e in reversed(history.events):
            if (
                e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
                and e.activity_task_scheduled_event_attributes.activity_id == activity_id
            ):
                return e.event_id
        raise RuntimeError(
            f"{workflow_id} run {run_id}: no scheduled event for activity {activity_id} in "
            "its history"
        )

    @activity.defn(name=APPEND_AUDIT_RECORD)
    async def append_audit_record(self, req: AuditAppend) -> AuditAppended:
        """Idempotent: a retry finds its entry (same run and event) and returns it."""
        info = activity.info()
        wf_id, run_id = info.workflow_id, info.workflow_run_id
        if wf_id is None or run_id is None:
            raise ApplicationError(
                f"{APPEND_AUDIT_RECORD} records the workflow that runs it: none here",
                non_retryable=True,
            )
        through = await self._scheduled_event_id(wf_id, run_id, info.activity_id)
        report = await audit(self._client, wf_id, run_id, through_event_id=through)
        record = {
            "workflowId": wf_id,
            "runId": run_id,
            "kind": req.kind,
            "throughEventId": through,
            "reportDigest": report_digest(report),
            "outcome": req.outcome,
        }
        entry, appended = await asyncio.to_thread(append, self._path, record, self._name, self._key)
        log().info("audit record", appended=appended, seq=entry.seq, hash=entry.hash)
        return AuditAppended(seq=entry.seq, hash=entry.hash)
