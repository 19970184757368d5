"""The plan's files: plan.json, waves/<wave>.yaml, runbooks/<app>.yaml, report.md and a
self-contained report.html (inline CSS and SVG drawn here: no scripts, no fetches).

Every wave file and runbook is validated with the project's own models (`WaveFile`,
`Runbook`, `dependency_problems`) before it is written: a plan never produces a file that
`cutover wave validate` would refuse for its structure.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from cutover.plan.model import AppFacts, PlanResult
from cutover.runbook import Runbook
from cutover.wave import WaveFile, dependency_problems

_STEPS = [
    "quiesce_application",
    "final_data_sync",
    "convert_image",
    "attach_target_storage_profile",
    "validate_guest_tools_and_drivers",
    "power_on_target",
]


def runbook_doc(app: AppFacts, result: PlanResult) -> dict[str, Any]:
    """The runbook for one planned application, from its class's template."""
    policy = result.policy
    doc: dict[str, Any] = {
        "application": app.name,
        "wave": app.wave,
        "sourcePlatform": "vmware-vsphere",
        "sourceCluster": app.sourceCluster,
        "targetPlatform": policy.targetPlatform,
        "rollbackWindowMinutes": policy.rollbackWindowMinutes[app.criticality],
        "vms": app.vms,
        "preChecks": ["migration_concerns"],
    }
    if app.template == "stateless-warm":
        doc |= {
            "dataSync": {"warm": True, "incrementalPasses": 1},
            "cutoverSteps": [*_STEPS, "smoke_test"],
            "postChecks": [],
            "rollbackCriteria": ["app_health_check_failure"],
        }
    elif app.template == "stateful-warm":
        doc |= {
            "dataSync": {"warm": True, "incrementalPasses": 2, "quiesceSnapshot": True},
            "cutoverSteps": [*_STEPS, "smoke_test"],
            "postChecks": ["data_consistency_confirmed"],
            "rollbackCriteria": ["data_consistency_confirmed", "app_health_check_failure"],
        }
        if app.owner:
            doc["approval"] = {"required": True, "approvers": [app.owner]}
    else:
        doc |= {
            "dataSync": {"warm": False},
            "cutoverSteps": list(_STEPS),
            "postChecks": ["data_consistency_confirmed"],
            "rollbackCriteria": ["data_consistency_confirmed"],
        }
    Runbook.model_validate(doc)
    return doc


def wave_docs(result: PlanResult) -> dict[str, dict[str, Any]]:
    """Each wave's file, its applications in the planned order (dependencies first)."""
    apps = {a.name: a for a in result.apps}
    out: dict[str, dict[str, Any]] = {}
    for wave in result.plan.waves:
        members = [apps[n] for n in wave.applications]
        members.sort(key=lambda a: _order(a, apps))
        owners = sorted({a.owner for a in members if a.owner})
        approvers = result.policy.approvers or owners
        needs = wave.name.split("-")[0] != "1" and bool(approvers)
        doc: dict[str, Any] = {
            "wave": wave.name,
            "concurrency": result.policy.waveConcurrency,
            "failureThreshold": 0,
            "onCancel": "finish",
            "approval": {"required": needs, "approvers": approvers if needs else []},
            "applications": [
                {"runbook": f"../runbooks/{a.name}.yaml", "dependsOn": a.dependsOn} for a in members
            ],
        }
        WaveFile.model_validate(doc)
        problems = dependency_problems([(a.name, a.dependsOn) for a in members])
        if problems:  # the planner's invariant: a bug, not bad input
            raise AssertionError(f"wave {wave.name}: {problems[0][2]}")
        out[wave.name] = doc
    return out


def _order(app: AppFacts, apps: dict[str, AppFacts]) -> tuple[int, str]:
    """Depth in the wave's dependency order (what others depend on first), then name."""
    depth, seen, todo = 0, {app.name}, list(app.dependsOn)
    while todo:
        depth += 1
        nxt: list[str] = []
        for d in todo:
            if d not in seen:
                seen.add(d)
                nxt += apps[d].dependsOn
        todo = nxt
    return depth, app.name


def plan_json(result: PlanResult) -> str:
    """plan.json: stable order, no timestamps, so the same inputs give the same bytes."""
    return json.dumps(result.plan.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def write_plan(result: PlanResult, out: Path) -> list[Path]:
    """Write every output into `out` (created); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "waves").mkdir(exist_ok=True)
    (out / "runbooks").mkdir(exist_ok=True)
    written: list[Path] = []

    def put(path: Path, text: str) -> None:
        path.write_text(text, encoding="utf-8")
        written.append(path)

    put(out / "plan.json", plan_json(result))
    for app in sorted(result.apps, key=lambda a: a.name):
        if app.wave is not None:
            doc = runbook_doc(app, result)
            put(out / "runbooks" / f"{app.name}.yaml", yaml.safe_dump(doc, sort_keys=False))
    for name, doc in wave_docs(result).items():
        put(out / "waves" / f"{name}.yaml", yaml.safe_dump(doc, sort_keys=False))
    put(out / "report.md", report_md(result))
    put(out / "report.html", report_html(result))
    return written


# ------------------------------------------------------------------ report


def _special_rows(result: PlanResult) -> list[tuple[str, str, str, str]]:
    """(application, where, what, outcome) for every special workload and licensing note."""
    rows: list[tuple[str, str, str, str]] = []
    for a in sorted(result.apps, key=lambda a: a.name):
        outcome = f"wave {a.wave}" if a.wave else "unplanned: a person decides"
        for c in a.critical:
            vm, rule, *_ = [*c.split(": ", 2), ""]
            rows.append((a.name, vm, f"{rule} (critical)", outcome))
        for s in a.special:
            vm, rule = s.split(": ", 1)
            rows.append((a.name, vm, rule, outcome))
        for lic in a.licensing:
            rows.append((a.name, lic.rsplit(" (", 1)[-1].rstrip(")"), f"licensing: {lic}", outcome))
    return rows


#: At most this many application connections are listed in the reports.
MAX_EDGE_ROWS = 500


def _edge_rows(result: PlanResult) -> tuple[list[list[str]], int]:
    """(from, to, connections, ports, database) for the most observed connections first;
    and how many there are in all."""
    rows = sorted(
        (
            (
                -n,
                a.name,
                b,
                ", ".join(str(p) for p in a.callPorts.get(b, [])),
                ", ".join(a.callDatabases.get(b, [])),
            )
            for a in result.apps
            for b, n in a.calls.items()
        ),
    )
    shown = [[a, b, str(-n), ports, db] for n, a, b, ports, db in rows[:MAX_EDGE_ROWS]]
    return shown, len(rows)


def _owners(result: PlanResult) -> list[tuple[str, int, int, str]]:
    by: dict[str, list[AppFacts]] = defaultdict(list)
    for a in result.apps:
        by[a.owner or "(none: little documentation)"].append(a)
    return [
        (
            owner,
            len(apps),
            sum(len(a.vms) for a in apps),
            ", ".join(sorted({a.wave or "unplanned" for a in apps}, key=_wave_key)),
        )
        for owner, apps in sorted(by.items())
    ]


def _wave_key(name: str) -> tuple[int, int, str]:
    head, _, tail = name.partition("-")
    return (int(head) if head.isdigit() else 99, int(tail) if tail.isdigit() else 0, name)


def _summary_lines(result: PlanResult) -> list[tuple[str, str]]:
    s, p, d = result.summary, result.plan, result.dependencies
    return [
        ("source", s.source),
        ("datacenters / clusters / hosts", f"{s.datacenters} / {s.clusters} / {s.hosts}"),
        ("datastores / networks", f"{s.datastores} / {s.networks}"),
        ("VMs (powered on)", f"{s.vms} ({s.poweredOn})"),
        ("templates (excluded)", str(s.templates)),
        ("data (TiB, disk capacity)", f"{s.dataTiB:g}"),
        ("applications planned", str(len(p.applications))),
        (
            "VMs planned / unplanned",
            f"{sum(len(a.vms) for a in p.applications)} / {len(p.unplanned)}",
        ),
        ("waves", str(len(p.waves))),
        ("dependency rows (files)", f"{d.rows} ({len(d.files)})"),
        ("rows naming unknown servers", f"{d.unknownRows} ({len(d.unknown)} servers)"),
        ("missing optional sheets", ", ".join(s.missingSheets) or "none"),
    ]


def _md_table(head: list[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def esc(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return lines or ["(none)"]


def report_md(result: PlanResult) -> str:
    p = result.plan
    out = ["# Wave 0 plan", "", "## Inventory", ""]
    out += _md_table(["what", "count"], _summary_lines(result))
    out += ["", "## Waves (in the order they run)", ""]
    start = 0.0
    rows = []
    for w in p.waves:
        rows.append(
            [
                w.name,
                str(len(w.applications)),
                f"{w.dataTiB:g}",
                f"{w.estimatedHours:g}",
                f"{start:g}-{start + w.estimatedHours:g}",
            ]
        )
        start += w.estimatedHours
    out += _md_table(["wave", "applications", "TiB", "hours", "timeline (h)"], rows)
    edges, total = _edge_rows(result)
    out += ["", "The dependency graph is drawn in report.html.", ""]
    out += [f"## Application dependencies ({len(edges)} of {total}, the most observed first)", ""]
    out += _md_table(["from", "to", "connections", "ports", "database"], edges)
    out += ["", "## Applications", ""]
    out += _md_table(
        [
            "application",
            "wave",
            "VMs",
            "criticality",
            "stateful",
            "complexity",
            "hours",
            "depends on (same wave)",
        ],
        [
            [
                a.name,
                a.wave,
                str(len(a.vms)),
                a.criticality,
                "yes" if a.stateful else "no",
                str(a.complexity),
                f"{a.estimatedHours:g}",
                ", ".join(a.dependsOn),
            ]
            for a in p.applications
        ],
    )
    out += ["", "## Special workloads and why", ""]
    out += _md_table(["application", "VM", "what", "outcome"], _special_rows(result))
    out += ["", "## Unplanned VMs", ""]
    out += _md_table(["VM", "reasons"], [[u.vm, "; ".join(u.reasons)] for u in p.unplanned])
    out += ["", "## Excluded", ""]
    out += _md_table(["VM", "reason"], [[e.vm, e.reason] for e in p.excluded])
    out += ["", "## Ownership", ""]
    out += _md_table(
        ["owner", "applications", "VMs", "waves"],
        [[o, str(n), str(v), w] for o, n, v, w in _owners(result)],
    )
    if result.dependencies.unknown:
        out += ["", "## Servers in the dependency files that are not in the inventory", ""]
        out += _md_table(
            ["server", "rows", "file"],
            [[u.name, str(u.rows), u.file] for u in result.dependencies.unknown],
        )
    return "\n".join(out) + "\n"


_PALETTE = [
    "#2e7d32",
    "#1565c0",
    "#ef6c00",
    "#6a1b9a",
    "#00838f",
    "#c62828",
    "#558b2f",
    "#283593",
    "#ad1457",
    "#4e342e",
    "#00695c",
    "#f9a825",
]
#: At most this many edges are drawn (the most observed first): a readable page.
MAX_EDGES = 3000


def graph_svg(result: PlanResult) -> str:
    """Applications as nodes, a column per wave (unplanned last, grey), coloured by wave;
    an edge per connected pair of applications."""
    waves = [w.name for w in result.plan.waves]
    apps = {a.name: a for a in result.apps}
    columns: list[tuple[str, list[str]]] = [(w.name, w.applications) for w in result.plan.waves]
    unplanned = sorted(a.name for a in result.apps if a.wave is None)
    if unplanned:
        columns.append(("unplanned", unplanned))
    colour = {w: _PALETTE[i % len(_PALETTE)] for i, w in enumerate(waves)}
    colour["unplanned"] = "#9e9e9e"
    dx, dy, top, left = 90, 12, 40, 30
    pos: dict[str, tuple[int, int]] = {}
    for i, (_, names) in enumerate(columns):
        for j, n in enumerate(names):
            pos[n] = (left + i * dx, top + j * dy)
    height = top + dy * max((len(n) for _, n in columns), default=1) + 20
    width = left + dx * max(len(columns), 1) + 40
    edges = sorted(
        ((count, a.name, b) for a in result.apps for b, count in a.calls.items() if b in pos),
        key=lambda e: (-e[0], e[1], e[2]),
    )
    shown = edges[:MAX_EDGES]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="dependency graph">'
    ]
    for i, (name, _) in enumerate(columns):
        label = html.escape(name if name == "unplanned" else f"wave {name}")
        parts.append(
            f'<text x="{left + i * dx}" y="20" font-size="11" text-anchor="middle">{label}</text>'
        )
    parts.append('<g stroke="#607d8b" stroke-opacity="0.25" fill="none">')
    for count, a, b in shown:
        (x1, y1), (x2, y2) = pos[a], pos[b]
        parts.append(
            f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" '
            f'stroke-width="{min(1 + count // 5, 4)}"/>'
        )
    parts.append("</g>")
    label_nodes = len(pos) <= 200
    for n, (x, y) in pos.items():
        wave = apps[n].wave or "unplanned"
        parts.append(
            f'<circle cx="{x}" cy="{y}" r="4" fill="{colour[wave]}"><title>'
            f"{html.escape(n)} ({html.escape(wave)})</title></circle>"
        )
        if label_nodes:
            parts.append(f'<text x="{x + 6}" y="{y + 3}" font-size="8">{html.escape(n)}</text>')
    parts.append("</svg>")
    note = (
        f"<p>{len(shown)} of {len(edges)} application connections drawn (the most observed "
        "first).</p>"
        if len(edges) > len(shown)
        else f"<p>{len(edges)} application connections.</p>"
    )
    return "".join(parts) + note


def timeline_svg(result: PlanResult) -> str:
    waves = result.plan.waves
    total = sum(w.estimatedHours for w in waves) or 1.0
    width, row = 800, 16
    scale = (width - 160) / total
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{row * len(waves) + 10}" role="img" aria-label="wave timeline">'
    ]
    start = 0.0
    for i, w in enumerate(waves):
        x = 80 + start * scale
        parts.append(
            f'<text x="0" y="{i * row + 12}" font-size="11">wave {html.escape(w.name)}</text>'
            f'<rect x="{x:.1f}" y="{i * row + 2}" width="{max(w.estimatedHours * scale, 1):.1f}" '
            f'height="{row - 4}" fill="{_PALETTE[i % len(_PALETTE)]}"><title>wave '
            f"{html.escape(w.name)}: {w.estimatedHours:g} h, {len(w.applications)} "
            f"applications</title></rect>"
            f'<text x="{x + max(w.estimatedHours * scale, 1) + 4:.1f}" y="{i * row + 12}" '
            f'font-size="10">{start:g}-{start + w.estimatedHours:g} h</text>'
        )
        start += w.estimatedHours
    parts.append("</svg>")
    return "".join(parts)


def _html_table(head: list[str], rows: Sequence[Sequence[str]]) -> str:
    if not rows:
        return "<p>(none)</p>"
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def report_html(result: PlanResult) -> str:
    p = result.plan
    waves_rows = [
        [w.name, str(len(w.applications)), f"{w.dataTiB:g}", f"{w.estimatedHours:g}"]
        for w in p.waves
    ]
    apps_rows = [
        [
            a.name,
            a.wave,
            str(len(a.vms)),
            a.criticality,
            "yes" if a.stateful else "no",
            str(a.complexity),
            f"{a.estimatedHours:g}",
            ", ".join(a.dependsOn),
            "; ".join(a.reasons),
        ]
        for a in p.applications
    ]
    unknown = [[u.name, str(u.rows), u.file] for u in result.dependencies.unknown]
    edges, total = _edge_rows(result)
    sections = [
        ("Inventory", _html_table(["what", "count"], _summary_lines(result))),
        (
            "Waves on a timeline",
            timeline_svg(result)
            + _html_table(["wave", "applications", "TiB", "hours"], waves_rows),
        ),
        ("Dependency graph (applications, coloured by wave)", graph_svg(result)),
        (
            f"Application dependencies ({len(edges)} of {total}, the most observed first)",
            _html_table(["from", "to", "connections", "ports", "database"], edges),
        ),
        (
            "Special workloads and why",
            _html_table(["application", "VM", "what", "outcome"], _special_rows(result)),
        ),
        (
            "Unplanned VMs",
            _html_table(["VM", "reasons"], [[u.vm, "; ".join(u.reasons)] for u in p.unplanned]),
        ),
        ("Excluded", _html_table(["VM", "reason"], [[e.vm, e.reason] for e in p.excluded])),
        (
            "Ownership",
            _html_table(
                ["owner", "applications", "VMs", "waves"],
                [[o, str(n), str(v), w] for o, n, v, w in _owners(result)],
            ),
        ),
        (
            "Applications",
            _html_table(
                [
                    "application",
                    "wave",
                    "VMs",
                    "criticality",
                    "stateful",
                    "complexity",
                    "hours",
                    "depends on",
                    "reasons",
                ],
                apps_rows,
            ),
        ),
        (
            "Servers in the dependency files not in the inventory",
            _html_table(["server", "rows", "file"], unknown),
        ),
    ]
    style = (
        "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;"
        "margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;"
        "vertical-align:top;text-align:left}th{background:#f0f0f0}h2{margin-top:2em}"
        ".graph{overflow:auto;max-height:80vh;border:1px solid #ddd}"
    )
    body = "".join(
        f"<h2>{html.escape(title)}</h2>"
        + (f'<div class="graph">{content}</div>' if title.startswith("Dependency") else content)
        for title, content in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Wave 0 plan</title><style>{style}</style></head><body>"
        f"<h1>Wave 0 plan</h1>{body}</body></html>\n"
    )
