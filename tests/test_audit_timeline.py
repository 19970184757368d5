"""The HTML audit report's timeline picture: an inline SVG of steps, downtime, rollback
window and checks (pure rendering of a report)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any

from cutover.audit import AuditReport, CheckAudit, RunbookSummary, StepAudit, to_html
from cutover.audit.render import timeline_spans, timeline_svg

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"
CUT = ["quiesce_application", "final_sync", "update_dns"]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def step(name: str, kind: Any, start: float, end: float, outcome: Any = "ok") -> StepAudit:
    return StepAudit(
        name=name, kind=kind, activityId=name, scheduledAt=at(start), endedAt=at(end),
        outcome=outcome, attempts=1, scheduledEventId=int(start * 10) + 5,
    )  # fmt: skip


def check(name: str, phase: str, when: float, passed: bool = True) -> CheckAudit:
    return CheckAudit(name=name, phase=phase, passed=passed, at=at(when), eventId=1)


def report(steps: list[StepAudit], checks: list[CheckAudit], **kw: Any) -> AuditReport:
    runbook = RunbookSummary(
        application="shop", wave="w1", sourcePlatform="vmware-vsphere", sourceCluster="c1",
        targetPlatform="kvm-libvirt", site="lab", rollbackWindowMinutes=1,
        approvalRequired=False, cutoverSteps=CUT,
    )  # fmt: skip
    return AuditReport(
        workflowId="cutover-shop", workflowType="AppCutover", runIds=["r1"], status="COMPLETED",
        startedAt=T0, startedBy="pytest", runbook=runbook, steps=steps, checks=checks, **kw,
    )  # fmt: skip


def svg_of(r: AuditReport) -> ET.Element:
    text = timeline_svg(r)
    assert text is not None
    return ET.fromstring(text)  # well-formed, self-contained


def rects(svg: ET.Element, cls: str) -> list[ET.Element]:
    return [el for el in svg.iter(f"{SVG}rect") if cls in el.get("class", "").split()]


def test_a_completed_cutover_has_a_bar_per_step_downtime_window_and_check_marks() -> None:
    steps = [
        step("verify_not_migrated", "guard", 0, 1),
        step("initial_sync", "warm", 1, 20),
        *(step(n, "step", 30 + 2 * i, 31.5 + 2 * i) for i, n in enumerate(CUT)),
        step("retire_source", "finalize", 95, 97),
    ]
    checks = [
        check("app_health", "pre", 0.5),
        check("app_health", "post", 40),
        check("app_health", "post", 60),
        check("latency", "criterion", 50, passed=False),
    ]
    r = report(steps, checks, downtimeSeconds=5.5, closedAt=at(98), outcome="COMPLETED")
    svg = svg_of(r)
    bars = rects(svg, "bar")
    assert len(bars) == len(steps)
    assert [b.get("class") for b in bars][-1] == "bar finalize ok"
    [down] = rects(svg, "downtime")
    [window] = rects(svg, "window")
    spans = {s.kind: s for s in timeline_spans(r)}
    assert (spans["downtime"].start, spans["downtime"].end) == (at(30), at(35.5))
    # from the last cutover step's end to the first finalize step
    assert (spans["window"].start, spans["window"].end) == (at(35.5), at(95))

    # drawn where they are: the axis runs from the start (x=250) to the close (x=890)
    def x(seconds: float) -> float:
        return 250 + 640 * seconds / 98

    assert float(down.get("x", "")) == round(x(30), 1)
    assert float(window.get("x", "")) == round(x(35.5), 1)
    assert abs(float(window.get("width", "")) - (x(95) - x(35.5))) < 0.2
    marks = [el for el in svg.iter() if "mark" in el.get("class", "").split()]
    assert len(marks) == len(checks)
    assert sum("failed" in m.get("class", "") for m in marks) == 1
    assert not rects(svg, "hatch")
    page = to_html(r)
    assert '<h2>Timeline</h2><figure class="timeline"><svg' in page
    assert page.index("Timeline") < page.index("<h2>Runbook</h2>")
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # no external assets


def test_a_rollback_draws_its_undos_hatched_and_closes_the_window_there() -> None:
    steps = [
        *(step(n, "step", 10 + i, 11 + i) for i, n in enumerate(CUT)),
        step("restore_dns", "compensation", 40, 41),
        step("restart_source", "compensation", 41, 45, outcome="failed"),
    ]
    r = report(steps, [check("latency", "criterion", 39, passed=False)], downtimeSeconds=3.0)
    svg = svg_of(r)
    assert len(rects(svg, "bar")) == 5
    undos = rects(svg, "compensation")
    assert len(undos) == 2 and len(rects(svg, "hatch")) == 2
    assert "failed" in undos[1].get("class", "").split()
    [window] = [s for s in timeline_spans(r) if s.kind == "window"]
    assert (window.start, window.end) == (at(13), at(40))


def test_no_window_when_a_cutover_step_failed_and_no_picture_without_steps() -> None:
    steps = [
        step("quiesce_application", "step", 10, 11),
        step("final_sync", "step", 11, 20, outcome="failed"),
        step("restart_source", "compensation", 21, 22),
    ]
    r = report(steps, [], downtimeSeconds=12.0)
    kinds = [s.kind for s in timeline_spans(r)]
    assert kinds == ["downtime"]
    assert not rects(svg_of(r), "window")
    assert timeline_svg(report([], [])) is None
    assert "<svg" not in to_html(report([], []))
