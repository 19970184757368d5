"""Rendering an AuditReport: JSON, Markdown and a self-contained HTML page."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from cutover.audit.model import AuditReport, CheckAudit, StepAudit, UpdateRecord


def to_json(report: AuditReport) -> str:
    return json.dumps(report.model_dump(mode="json"), indent=2)


def _ts(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z" if value else "-"


def _secs(value: float | None) -> str:
    return f"{value:.2f}s" if value is not None else "-"


def _lines(report: AuditReport) -> list[tuple[str, Any]]:
    """The report as a neutral sequence of blocks both renderers share.

    ("h", (level, text)), ("kv", [(key, value)]), ("table", (header, rows)), ("list", items)
    """
    r = report
    title = f"Audit of {r.workflowId}" + (f" ({r.runbook.application})" if r.runbook else "")
    out: list[tuple[str, Any]] = [("h", (1, title))]
    summary = [
        ("Workflow", f"{r.workflowType} {r.workflowId}"),
        ("Runs", ", ".join(r.runIds)),
        ("Status", r.status),
        ("Outcome", r.outcome or "-"),
        ("Reason", r.reason or "-"),
        ("Started", f"{_ts(r.startedAt)} by {r.startedBy}"),
    ]
    if r.requestedBy:
        summary.append(("Requested by", r.requestedBy))
    if r.remigrate:
        summary.append(("Re-migration", r.remigrate))
    if r.parentWorkflowId:
        summary.append(("Started by workflow", r.parentWorkflowId))
    summary.append(("Closed", _ts(r.closedAt)))
    summary.append(("Downtime", _secs(r.downtimeSeconds)))
    summary.append(("Bytes moved", str(r.bytesMoved)))
    if r.targetWrittenBytes is not None:
        summary.append((
            "Written on the target",
            f"{r.targetWrittenBytes / (1 << 20):.2f} MiB ({r.targetWrites or 'fate unknown'})",
        ))  # fmt: skip
    if r.cancelRequestedBy:
        summary.append(("Cancel requested by", r.cancelRequestedBy))
    if r.terminatedBy:
        summary.append(("Terminated by", r.terminatedBy))
    if r.failure:
        summary.append(("Failure", r.failure))
    out.append(("kv", summary))
    if r.runbook:
        rb = r.runbook
        out.append(("h", (2, "Runbook")))
        out.append(
            (
                "kv",
                [
                    ("Application", rb.application),
                    ("Wave", rb.wave),
                    ("Source", f"{rb.sourcePlatform} / {rb.sourceCluster}"),
                    ("Target", rb.targetPlatform),
                    ("Site", rb.site),
                    ("Rollback window", f"{rb.rollbackWindowMinutes:g} min"),
                    (
                        "Approval",
                        f"required from one of {', '.join(rb.approvers)}"
                        if rb.approvalRequired
                        else "not required",
                    ),
                    ("Pre-checks", ", ".join(rb.preChecks) or "-"),
                    ("Cutover steps", ", ".join(rb.cutoverSteps) or "-"),
                    ("Post-checks", ", ".join(rb.postChecks) or "-"),
                    ("Rollback criteria", ", ".join(rb.rollbackCriteria) or "-"),
                ],
            )
        )
    if r.finalState:
        out.append(("h", (2, "Final state")))
        out.append(("list", r.finalState))
    upd_header = ["Request", "At", "Identity", "Named", "Outcome", "Message"]

    def upd_rows(us: Sequence[UpdateRecord]) -> list[list[str]]:
        return [
            [
                u.name,
                _ts(u.acceptedAt),
                u.identity,
                u.requestedBy or "-",
                u.outcome,
                u.message or "",
            ]
            for u in us
        ]

    out.append(("h", (2, "Approvals")))
    if r.approvals:
        out.append(("table", (upd_header, upd_rows(r.approvals))))
    else:
        out.append(("list", ["none recorded"]))
    if r.updates:
        out.append(("h", (2, "Other operator requests")))
        out.append(("table", (upd_header, upd_rows(r.updates))))
    if r.rollback:
        rb2 = r.rollback
        out.append(("h", (2, "Rollback")))
        kv = [("Trigger", rb2.trigger), ("Reason", rb2.reason)]
        if rb2.failedStep:
            kv.append(("Failed step", f"{rb2.failedStep.name}: {rb2.failedStep.error}"))
        if rb2.requestedBy:
            kv.append(
                ("Requested by", f"{rb2.requestedBy.identity} ({rb2.requestedBy.requestedBy})")
            )
        out.append(("kv", kv))
        if rb2.failedChecks:
            out.append(("h", (3, "Checks that triggered it")))
            out.append(("table", _check_table(rb2.failedChecks)))
        out.append(("h", (3, "Compensations")))
        out.append(("table", _step_table(rb2.compensations)))
    if r.steps:
        out.append(("h", (2, "Steps")))
        out.append(("table", _step_table(r.steps)))
    if r.checks:
        out.append(("h", (2, "Checks")))
        out.append(("table", _check_table(r.checks)))
    if r.signals:
        out.append(("h", (2, "Signals")))
        out.append(
            (
                "table",
                (
                    ["Signal", "At", "Identity", "Arguments"],
                    [
                        [g.name, _ts(g.at), g.identity, json.dumps(g.arguments, default=str)]
                        for g in r.signals
                    ],
                ),
            )
        )
    if r.children:
        out.append(("h", (2, f"Child workflows ({len(r.children)})")))
        out.append(
            (
                "kv",
                [(k, str(v)) for k, v in sorted(r.childOutcomes.items())]
                + [("Workflows", ", ".join(c.workflowId for c in r.children))],
            )
        )
    if r.result is not None:
        out.append(("h", (2, "Result")))
        out.append(("code", json.dumps(r.result, indent=2, default=str)))
    if r.notes:
        out.append(("h", (2, "Notes")))
        out.append(("list", r.notes))
    return out


def _step_table(steps: Sequence[StepAudit]) -> tuple[list[str], list[list[str]]]:
    header = ["Step", "Kind", "Scheduled", "Ended", "Took", "Attempts", "Outcome", "Error"]
    rows = [
        [
            s.name + (f" #{s.passNumber}" if s.passNumber else ""),
            s.kind,
            _ts(s.scheduledAt),
            _ts(s.endedAt),
            _secs(s.seconds),
            str(s.attempts or "-"),
            s.outcome,
            s.error or (f"(retried after: {s.lastFailure})" if s.lastFailure else ""),
        ]
        for s in steps
    ]
    return header, rows


def _check_table(checks: Sequence[CheckAudit]) -> tuple[list[str], list[list[str]]]:
    header = ["Check", "Phase", "At", "Verdict", "Measured", "Threshold", "Detail"]
    rows = [
        [
            c.name,
            c.phase,
            _ts(c.at),
            "passed" if c.passed else "FAILED",
            c.measured or "-",
            c.threshold or "-",
            c.detail,
        ]
        for c in checks
    ]
    return header, rows


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*[]<>|"})


def _md_cell(text: str) -> str:
    """Literal text in markdown: punctuation that would format, link or open raw HTML
    (a reason or comment is operator input) is backslash-escaped, lines joined."""
    return text.translate(_MD_SPECIAL).replace("\n", " ")


def to_markdown(report: AuditReport, level: int = 0) -> str:
    parts: list[str] = []
    for kind, body in _lines(report):
        if kind == "h":
            lvl, text = body
            parts.append("#" * min(lvl + level, 6) + " " + _md_cell(text))
        elif kind == "kv":
            parts.append("\n".join(f"- **{k}**: {_md_cell(v)}" for k, v in body))
        elif kind == "list":
            parts.append("\n".join(f"- {_md_cell(i)}" for i in body))
        elif kind == "table":
            header, rows = body
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            parts.append("\n".join(lines))
        elif kind == "code":
            parts.append("```json\n" + body + "\n```")
    for child in report.children:
        parts.append(to_markdown(child, level + 1))
    return "\n\n".join(parts) + "\n"


_CSS = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;font-size:90%}"
    ".FAILED{color:#b00;font-weight:bold}section.child{margin-left:1.5em}"
)


def _html_body(report: AuditReport, level: int = 0) -> str:
    e = html.escape
    parts: list[str] = []
    for kind, body in _lines(report):
        if kind == "h":
            lvl, text = body
            n = min(lvl + level, 6)
            parts.append(f"<h{n}>{e(text)}</h{n}>")
        elif kind == "kv":
            rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in body)
            parts.append(f"<table>{rows}</table>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in body) + "</ul>")
        elif kind == "table":
            header, rows = body
            head = "".join(f"<th>{e(h)}</th>" for h in header)
            trs = "".join(
                "<tr>"
                + "".join(
                    f'<td class="{e(c)}">{e(c)}</td>' if c == "FAILED" else f"<td>{e(c)}</td>"
                    for c in row
                )
                + "</tr>"
                for row in rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
        elif kind == "code":
            parts.append(f"<pre>{e(body)}</pre>")
    for child in report.children:
        parts.append(f'<section class="child">{_html_body(child, level + 1)}</section>')
    return "\n".join(parts)


def to_html(report: AuditReport) -> str:
    title = html.escape(f"Audit of {report.workflowId}")
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head><body>\n{_html_body(report)}\n</body></html>\n"
    )


def render(report: AuditReport, fmt: Literal["json", "md", "html"]) -> str:
    if fmt == "json":
        return to_json(report) + "\n"
    if fmt == "md":
        return to_markdown(report)
    return to_html(report)
