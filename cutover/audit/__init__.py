"""The audit report of a cutover (or of a wave of them), derived from its Temporal history alone.

An auditor reads who started it and when, the runbook it followed, who approved and who
asked for what (updates carry the caller's identity), every step with its timings, attempts
and errors, every check with what it measured against what, why a rollback happened and
what each compensation did, the downtime, and where source and target were left.

Nothing here reads a side database: the history is the record. Payloads are decoded with
the client's data converter (pydantic). A workflow that started child workflows (a wave)
gets the children's reports nested, fetched recursively; runs chained by continue-as-new
are followed and read as one.

The package: `model` (the report), `reader` (history -> report), `render` (json, md, html).
"""

from cutover.audit.model import (
    AuditNotFound,
    AuditReport,
    CheckAudit,
    RollbackAudit,
    RunbookSummary,
    SignalRecord,
    StepAudit,
    UpdateRecord,
)
from cutover.audit.reader import audit, failure_message
from cutover.audit.render import render, to_html, to_json, to_markdown

__all__ = [
    "AuditNotFound",
    "AuditReport",
    "CheckAudit",
    "RollbackAudit",
    "RunbookSummary",
    "SignalRecord",
    "StepAudit",
    "UpdateRecord",
    "audit",
    "failure_message",
    "render",
    "to_html",
    "to_json",
    "to_markdown",
]
