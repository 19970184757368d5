"""Rendering an AuditReport: JSON, Markdown and a self-contained HTML page."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
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
    upd_header = ["Request", "At", "Identity", "Named", "Signed by", "Outcome", "Message"]

    def upd_rows(us: Sequence[UpdateRecord]) -> list[list[str]]:
        return [
            [
                u.name,
                _ts(u.acceptedAt),
                u.identity,
                u.requestedBy or "-",
                u.signedBy or "(unsigned)",
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
    if any(s.dataHost for s in steps):  # a fleet (issue 17): which host ran each data step
        header.insert(2, "Data host")
        for row, s in zip(rows, steps, strict=True):
            row.insert(2, s.dataHost or "-")
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


# ------------------------------------------------------------------- the timeline

_OUTCOME_COLOUR = {
    "ok": "#43a047",
    "failed": "#e53935",
    "timed_out": "#e53935",
    "canceled": "#9e9e9e",
    "running": "#1e88e5",
}
_LABEL_W, _PLOT_W, _ROW_H, _TOP, _PAD = 250, 640, 16, 34, 10


@dataclass
class Span:
    """A stretch of the cutover drawn across every row (downtime, the rollback window)."""

    kind: Literal["downtime", "window"]
    start: datetime
    end: datetime
    label: str


def timeline_spans(r: AuditReport) -> list[Span]:
    """Downtime: from the first cutover step for the recorded downtime (the workflow counts
    from there). The rollback window: from the end of the last cutover step, once every
    one of them succeeded, to the first finalize step or undo after it (else the close,
    else its planned end)."""
    spans: list[Span] = []
    cut = [s for s in r.steps if s.kind == "step"]
    if cut and r.downtimeSeconds is not None:
        start = min(s.scheduledAt for s in cut)
        spans.append(
            Span("downtime", start, start + timedelta(seconds=r.downtimeSeconds),
                 f"downtime {r.downtimeSeconds:.1f}s")
        )  # fmt: skip
    done = {s.name for s in cut if s.outcome == "ok"}
    wanted = set(r.runbook.cutoverSteps) if r.runbook else {s.name for s in cut}
    ended = [s.endedAt for s in cut if s.endedAt is not None]
    if cut and wanted <= done and not any(s.outcome != "ok" for s in cut) and ended:
        opened = max(ended)
        after = [
            s.scheduledAt
            for s in r.steps
            if s.kind in ("finalize", "compensation") and s.scheduledAt >= opened
        ]
        label = "rollback window"
        if after:
            closed = min(after)
        elif r.closedAt is not None:
            closed = r.closedAt
        elif r.runbook is not None:
            closed = opened + timedelta(minutes=r.runbook.rollbackWindowMinutes)
            label += " (planned)"
        else:
            closed = opened
        spans.append(Span("window", opened, closed, label))
    return spans


def _tick_step(seconds: float) -> float:
    """A round tick interval giving about six ticks over `seconds`."""
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600,
                 7200, 14400, 28800, 86400):  # fmt: skip
        if seconds / step <= 6:
            return step
    return 86400.0 * max(1, round(seconds / 86400 / 6))


def _offset(seconds: float) -> str:
    if seconds < 60:
        return f"+{seconds:g}s"
    whole = round(seconds)
    if whole < 3600:
        m, sec = divmod(whole, 60)
        return f"+{m}m{sec:02d}s" if sec else f"+{m}m"
    h, m = divmod(whole // 60, 60)
    return f"+{h}h{m:02d}m" if m else f"+{h}h"


def timeline_svg(r: AuditReport) -> str | None:
    """The cutover as an inline SVG: one bar per step on a time axis (colour: outcome;
    hatched: an undo), the downtime and the rollback window as bands, each check's
    evaluations as marks (filled: passed, cross: failed). None without steps."""
    if not r.steps:
        return None
    e = html.escape
    spans = timeline_spans(r)
    check_names = list(dict.fromkeys(c.name for c in r.checks))
    times = [r.startedAt, *(s.scheduledAt for s in r.steps), *(c.at for c in r.checks)]
    times += [s.endedAt for s in r.steps if s.endedAt] + [x.end for x in spans]
    times += [r.closedAt] if r.closedAt else []
    t0, t1 = min(times), max(times)
    total = max((t1 - t0).total_seconds(), 0.001)

    def x(t: datetime) -> float:
        return _LABEL_W + _PLOT_W * (t - t0).total_seconds() / total

    rows = len(r.steps) + len(check_names)
    height = _TOP + rows * _ROW_H + 40
    width = _LABEL_W + _PLOT_W + _PAD
    bottom = _TOP + rows * _ROW_H
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" '
        'font-size="11">',
        "<title>Timeline of " + e(r.workflowId) + "</title>",
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="6" stroke="#fff" '
        'stroke-width="2.5"/></pattern></defs>',
    ]
    colour = {"downtime": "#e53935", "window": "#1e88e5"}
    for i, span in enumerate(spans):
        x0, x1 = x(span.start), max(x(span.end), x(span.start) + 1)
        out.append(
            f'<rect class="span {span.kind}" x="{x0:.1f}" y="{_TOP - 4}" width="{x1 - x0:.1f}" '
            f'height="{rows * _ROW_H + 8}" fill="{colour[span.kind]}" fill-opacity="0.12" '
            f'stroke="{colour[span.kind]}" stroke-opacity="0.5" stroke-dasharray="3,2">'
            f"<title>{e(span.label)}: {_ts(span.start)} to {_ts(span.end)}</title></rect>"
        )
        out.append(
            f'<text x="{x0 + 2:.1f}" y="{12 + 11 * i}" fill="{colour[span.kind]}">'
            f"{e(span.label)}</text>"
        )
    for i, s in enumerate(r.steps):
        y = _TOP + i * _ROW_H
        name = s.name + (f" #{s.passNumber}" if s.passNumber else "")
        label = ("undo " if s.kind == "compensation" else "") + name
        end = s.endedAt or r.closedAt or t1
        x0, x1 = x(s.scheduledAt), max(x(end), x(s.scheduledAt) + 2)
        fill = _OUTCOME_COLOUR.get(s.outcome, "#9e9e9e")
        tip = f"{s.kind} {name}: {s.outcome}, {_secs(s.seconds)}" + (
            f", {s.attempts} attempt(s)" if s.attempts else ""
        )
        out.append(
            f'<text x="{_LABEL_W - 6}" y="{y + 11}" text-anchor="end">{e(label[:40])}</text>'
        )
        out.append(
            f'<rect class="bar {e(s.kind)} {e(s.outcome)}" x="{x0:.1f}" y="{y + 2}" '
            f'width="{x1 - x0:.1f}" height="{_ROW_H - 4}" fill="{fill}">'
            f"<title>{e(tip)}</title></rect>"
        )
        if s.kind == "compensation":
            out.append(
                f'<rect class="hatch" x="{x0:.1f}" y="{y + 2}" width="{x1 - x0:.1f}" '
                f'height="{_ROW_H - 4}" fill="url(#hatch)" stroke="#000" stroke-width="0.5"/>'
            )
    for j, check in enumerate(check_names):
        cy = _TOP + (len(r.steps) + j) * _ROW_H + _ROW_H / 2
        out.append(
            f'<text x="{_LABEL_W - 6}" y="{cy + 4}" text-anchor="end" font-style="italic">'
            f"check {e(check[:34])}</text>"
        )
        for c in (c for c in r.checks if c.name == check):
            tip = e(
                f"{c.phase} {c.name} {'passed' if c.passed else 'FAILED'} at {_ts(c.at)}"
                + (f": measured {c.measured}" if c.measured is not None else "")
                + (f", expected {c.threshold}" if c.threshold is not None else "")
            )
            cx = x(c.at)
            if c.passed:
                out.append(
                    f'<circle class="mark passed" cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" '
                    f'fill="#43a047"><title>{tip}</title></circle>'
                )
            else:
                out.append(
                    f'<path class="mark failed" d="M{cx - 4:.1f},{cy - 4:.1f}l8,8m0,-8l-8,8" '
                    f'stroke="#e53935" stroke-width="2"><title>{tip}</title></path>'
                )
    step = _tick_step(total)
    n = 0
    while n * step <= total + 1e-9:
        tx = _LABEL_W + _PLOT_W * n * step / total
        out.append(
            f'<line x1="{tx:.1f}" y1="{_TOP - 4}" x2="{tx:.1f}" y2="{bottom + 4}" '
            'stroke="#ccc" stroke-width="0.5"/>'
            f'<text x="{tx:.1f}" y="{bottom + 16}" text-anchor="middle">{_offset(n * step)}</text>'
        )
        n += 1
    out.append(
        f'<text x="{_PAD}" y="{bottom + 16}">from {_ts(t0)}</text>'
        f'<text x="{_PAD}" y="{bottom + 32}" fill="#555">bars: ok green, failed red, running '
        "blue, cancelled grey; hatched: an undo (compensation); checks: passed dot, failed "
        "cross</text>"
    )
    out.append("</svg>")
    return "\n".join(out)


_CSS = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;font-size:90%}"
    ".FAILED{color:#b00;font-weight:bold}section.child{margin-left:1.5em}"
)


def _html_body(report: AuditReport, level: int = 0) -> str:
    e = html.escape
    parts: list[str] = []
    timeline = timeline_svg(report)
    for kind, body in _lines(report):
        if timeline is not None and kind == "h" and body[0] == 2:
            # the picture before the first section: right below the summary
            n = min(2 + level, 6)
            parts.append(f'<h{n}>Timeline</h{n}><figure class="timeline">{timeline}</figure>')
            timeline = None
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
