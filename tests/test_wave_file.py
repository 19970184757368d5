"""Wave files: what loads, and every problem named with file, field and line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from cutover.config import ConfigError
from cutover.models import CutoverResult, Outcome, StepRecord
from cutover.site import SiteConfig, load_site, site_ref
from cutover.wave import (
    AppState,
    AppSummary,
    figures,
    find_cycle,
    load_wave,
    median,
    percentile,
    recovery_seconds,
)
from tests.factories import SEED, site

EXAMPLES = Path(__file__).parent.parent / "examples"


def inline(app: str, **over: Any) -> dict[str, Any]:
    return {**SEED, "application": app, **over}


def write(tmp: Path, doc: dict[str, Any] | str, name: str = "wave.yaml") -> Path:
    p = tmp / name
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return p


def the_site() -> SiteConfig:
    return site(
        loadBalancer={"socket": "/tmp/x.sock"},
        vcenter={"host": "127.0.0.1", "user": "svc", "passwordRef": {"env": "UNUSED"}},
    )


def problems(path: Path, s: SiteConfig | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_wave(path, s or the_site(), "site.yaml")
    return [str(p) for p in exc.value.problems]


def test_example_wave_loads_against_the_demo_site() -> None:
    s = load_site(EXAMPLES / "demo" / "site.yaml")
    w = load_wave(EXAMPLES / "wave-1.yaml", s, "site.yaml", requested_by="me")
    assert w.name == "1"
    assert [a.application for a in w.apps] == ["demo-app", "demo-reports"]
    assert [a.runbook.wave_name for a in w.apps] == ["1", "1"]
    assert w.apps[1].dependsOn == ["demo-app"]
    assert w.concurrency == 2 and w.failureThreshold == 0 and w.onCancel == "finish"
    assert w.approval.required and w.approval.approvers == ["ops-lead"]
    inp = w.cutover_input(w.apps[0])
    # a wave's cutovers name the site by its digest (their worker runs its own copy)
    assert inp.requestedBy == "me" and inp.site is None and inp.siteRef == site_ref(s)


def test_runbook_paths_are_relative_to_the_wave_file_and_the_wave_is_stamped(
    tmp_path: Path,
) -> None:
    (tmp_path / "rb").mkdir()
    write(tmp_path / "rb", inline("billing", wave=7), "billing.yaml")
    entries = [{"runbook": "rb/billing.yaml"}, {"runbook": inline("api"), "dependsOn": ["billing"]}]
    doc = {"wave": "spring-2", "concurrency": 3, "failureThreshold": 2, "onCancel": "rollback"}
    p = write(tmp_path, {**doc, "applications": entries})
    w = load_wave(p, the_site())
    assert [(a.application, a.runbook.wave) for a in w.apps] == [
        ("billing", "spring-2"),
        ("api", "spring-2"),
    ]
    assert w.onCancel == "rollback"


def test_large_wave_input_stays_small(tmp_path: Path) -> None:
    apps = [{"runbook": inline(f"app-{i}")} for i in range(1800)]
    w = load_wave(write(tmp_path, {"wave": 9, "applications": apps}), the_site())
    # one payload: Temporal refuses payloads over 2 MB
    assert len(w.model_dump_json()) < 2_000_000


def test_cycle_is_named(tmp_path: Path) -> None:
    p = write(tmp_path, {"wave": 1, "applications": [
        {"runbook": inline("a"), "dependsOn": ["b"]},
        {"runbook": inline("b"), "dependsOn": ["c"]},
        {"runbook": inline("c"), "dependsOn": ["a"]},
    ]})  # fmt: skip
    (msg,) = problems(p)
    assert msg.startswith(f"{p}: applications[0].dependsOn: dependency cycle: a -> b -> c -> a")
    assert msg.endswith(")") and "(line " in msg


def test_two_node_cycle(tmp_path: Path) -> None:
    p = write(tmp_path, {"wave": 1, "applications": [
        {"runbook": inline("x")},
        {"runbook": inline("a"), "dependsOn": ["b", "x"]},
        {"runbook": inline("b"), "dependsOn": ["a"]},
    ]})  # fmt: skip
    (msg,) = problems(p)
    assert msg.startswith(f"{p}: applications[1].dependsOn: dependency cycle: a -> b -> a")
    assert "(line " in msg


def test_unknown_dependency_self_dependency_and_duplicates(tmp_path: Path) -> None:
    p = write(tmp_path, {"wave": 1, "applications": [
        {"runbook": inline("a"), "dependsOn": ["nope"]},
        {"runbook": inline("b"), "dependsOn": ["b"]},
    ]})  # fmt: skip
    found = problems(p)
    assert any(
        "applications[0].dependsOn[0]: unknown application 'nope'" in m and "(line" in m
        for m in found
    )
    assert any("applications[1].dependsOn[0]: 'b' depends on itself" in m for m in found)
    p = write(tmp_path, {"wave": 1, "applications": [
        {"runbook": inline("a")}, {"runbook": inline("a")},
    ]})  # fmt: skip
    (msg,) = problems(p)
    assert "applications[1].runbook: application 'a' is listed twice" in msg


def test_file_level_fields(tmp_path: Path) -> None:
    p = write(tmp_path, {"wave": "Bad Name", "concurrency": 0, "failureThreshold": -1,
                         "onCancel": "explode", "colour": "red",
                         "approval": {"required": True},
                         "applications": []})  # fmt: skip
    found = "\n".join(problems(p))
    for field in ("wave", "concurrency", "failureThreshold", "onCancel", "colour",
                  "approval", "applications"):  # fmt: skip
        assert f"{p}: {field}" in found, field
    assert "unknown key" in found and "approvers" in found


def test_duplicate_key_and_bad_yaml(tmp_path: Path) -> None:
    p = write(tmp_path, "wave: 1\nwave: 2\napplications: []\n")
    (msg,) = problems(p)
    assert "duplicate key 'wave'" in msg and "(line 2)" in msg
    (msg,) = problems(tmp_path / "missing.yaml")
    assert "cannot read file" in msg


def test_inline_runbook_problems_are_located_in_the_wave_file(tmp_path: Path) -> None:
    p = write(tmp_path, {"wave": 1, "applications": [
        {"runbook": inline("ok")},
        {"runbook": inline("bad", cutoverSteps=["power_on_target", "fly"],
                           preChecks=["no_such_check"])},
    ]})  # fmt: skip
    found = problems(p)
    assert any(m.startswith(f"{p}: applications[1].runbook.cutoverSteps[1]: unknown step 'fly'")
               for m in found), found  # fmt: skip
    assert any("applications[1].runbook.preChecks[0]" in m for m in found)
    assert all("(line " in m for m in found)


def test_runbook_file_problems_name_the_runbook_file(tmp_path: Path) -> None:
    write(tmp_path, inline("a", rollbackWindowMinutes=-1), "a.yaml")
    p = write(tmp_path, {"wave": 1, "applications": [{"runbook": "a.yaml"},
                                                     {"runbook": "gone.yaml"}]})  # fmt: skip
    found = problems(p)
    assert any(m.startswith(f"{tmp_path / 'a.yaml'}: rollbackWindowMinutes") for m in found)
    assert any(m.startswith(f"{tmp_path / 'gone.yaml'}: ") and "cannot read" in m for m in found)


def test_runbook_needs_what_the_site_has(tmp_path: Path) -> None:
    p = write(tmp_path, {"wave": 1, "applications": [{"runbook": inline("a")}]})
    found = problems(p, site())  # no loadBalancer section
    assert any("applications[0].runbook.cutoverSteps[7]" in m and "loadBalancer" in m
               for m in found)  # fmt: skip


# ------------------------------------------------------------------ figures

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rec(name: str, kind: Any, start: float, end: float, outcome: Any = "ok") -> StepRecord:
    return StepRecord(name=name, kind=kind, startedAt=T0 + timedelta(seconds=start),
                      endedAt=T0 + timedelta(seconds=end), outcome=outcome)  # fmt: skip


def result(outcome: Outcome, steps: list[StepRecord]) -> CutoverResult:
    return CutoverResult(workflowId="w", application="a", wave="1", outcome=outcome,
                         reason="r", steps=steps)  # fmt: skip


def test_recovery_from_failure_detected_to_source_serving() -> None:
    steps = [
        rec("quiesce_application", "step", 0, 2),
        rec("convert_image", "step", 2, 10, "failed"),
        rec("remove_converted_image", "compensation", 10, 11),
        rec("restart_source", "compensation", 11, 15),
        rec("discard_staging", "compensation", 15, 20),
    ]
    assert recovery_seconds(result(Outcome.ROLLED_BACK, steps)) == 5.0
    # a criterion fired (no failed step): from the first compensation
    window = [rec("power_on_target", "step", 0, 1), rec("restart_source", "compensation", 30, 33)]
    assert recovery_seconds(result(Outcome.ROLLED_BACK, window)) == 3.0
    assert recovery_seconds(result(Outcome.COMPLETED, steps)) is None
    assert recovery_seconds(result(Outcome.FAILED, steps)) is None


def test_percentiles_and_wave_figures() -> None:
    assert percentile([], 95) is None and median([]) is None
    values = [float(v) for v in range(1, 21)]
    assert percentile(values, 95) == 19.0 and median(values) == 10.5
    apps = [
        AppSummary(application="a", workflowId="a", state=AppState.COMPLETED, downtimeSeconds=10),
        AppSummary(application="b", workflowId="b", state=AppState.ROLLED_BACK,
                   downtimeSeconds=4, recoverySeconds=6),
        AppSummary(application="c", workflowId="c", state=AppState.FAILED),
        AppSummary(application="d", workflowId="d", state=AppState.SKIPPED),
        AppSummary(application="e", workflowId="e", state=AppState.COMPLETED,
                   downtimeSeconds=20, bytesMoved=100),
    ]  # fmt: skip
    cfr, mttr, down, moved = figures(apps)
    assert cfr == 0.5 and mttr == 6.0 and moved == 100
    assert (down.count, down.medianSeconds, down.p95Seconds, down.maxSeconds) == (3, 10, 20, 20)


def test_find_cycle() -> None:
    assert find_cycle({"a": [], "b": ["a"]}) is None
    assert find_cycle({"a": ["b"], "b": ["a"]}) == ["a", "b", "a"]
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_a_dependency_chain_as_long_as_a_wave_is_checked_without_recursion(
    tmp_path: Path,
) -> None:
    """Each application depends on the next one, 1,800 deep (a large wave): validating it
    crashed with RecursionError (the wave file, and now the workflow's input); a cycle
    closing the chain is named."""
    n = 1800
    chain = {f"a-{i}": [f"a-{i + 1}"] for i in range(n - 1)} | {f"a-{n - 1}": []}
    assert find_cycle(chain) is None
    cycle = find_cycle(chain | {f"a-{n - 1}": ["a-0"]})
    assert cycle is not None and len(cycle) == n + 1 and cycle[0] == cycle[-1] == "a-0"
    apps = [{"runbook": inline(a), "dependsOn": d} for a, d in chain.items()]
    w = load_wave(write(tmp_path, {"wave": 3, "applications": apps}), the_site())
    assert len(w.apps) == n


def test_a_wave_too_large_for_one_payload_is_refused(tmp_path: Path) -> None:
    apps = [{"runbook": inline(f"app-{i}")} for i in range(2600)]
    (msg,) = problems(write(tmp_path, {"wave": 9, "applications": apps}))
    assert msg.startswith(f"{tmp_path / 'wave.yaml'}: applications: 2600 applications make")
    assert "split the wave" in msg


def test_an_inline_runbook_for_a_platform_the_site_does_not_bind_is_named_at_its_line(
    tmp_path: Path,
) -> None:
    """Never run elsewhere: a proxmox runbook in a wave against a libvirt-only site."""
    doc = {"wave": "w1", "applications": [{"runbook": inline("api", targetPlatform="proxmox")}]}
    found = problems(write(tmp_path, doc))
    platform = [p for p in found if "applications[0].runbook.targetPlatform" in p]
    assert platform, found
    assert "proxmox" in platform[0] and "line" in platform[0], platform[0]
