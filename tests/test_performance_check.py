"""The `performance-baseline` check (issue 14: the seed's baseline before migration, compared
during the window): pure arithmetic over libvirt's counters, and a real QEMU domain's
stats against a stored baseline."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from activities.checks import performance_check
from activities.libvirt_target import LibvirtTarget
from cutover.models import CheckInput
from cutover.plan.baseline import Stat, VmBaseline, compare, observe, store
from cutover.site import PerformanceBaselineProbe
from tests.libvirt_fixtures import make_raw
from tests.test_libvirt_target import SIZE, disk_facts, make_vm, step_input

FLOORS = {"cpuReadyPercent": 5.0, "diskLatencyMs": 20.0, "netDropPercent": 0.1}


def baseline(vm: str, p95: float) -> VmBaseline:
    stat = Stat(avg=p95, p95=p95, max=p95)
    return VmBaseline(
        vm=vm, moref="vm-7", takenAt=datetime(2026, 12, 1, tzinfo=UTC), samples=10,
        intervalSeconds=20, cpuReadyPercent=stat, diskLatencyMs=stat, netDropPercent=stat,
    )  # fmt: skip


def test_counters_become_the_baselines_units_and_each_limit_is_p95_times_factor_or_floor() -> None:
    a = {
        "vcpu.current": 2,
        "vcpu.0.delay": 0,
        "vcpu.1.delay": 0,
        "block.0.rd.reqs": 10,
        "block.0.rd.times": 0,
        "block.0.wr.reqs": 0,
        "block.0.wr.times": 0,
        "net.0.rx.pkts": 0,
        "net.0.rx.drop": 0,
        "net.0.tx.pkts": 0,
        "net.0.tx.drop": 0,
    }
    b = {**a, "vcpu.0.delay": 300_000_000, "vcpu.1.delay": 100_000_000,  # 0.4 s of 2 x 2 s
         "block.0.rd.reqs": 20, "block.0.rd.times": 300_000_000,  # 10 requests, 30 ms each
         "net.0.rx.pkts": 990, "net.0.rx.drop": 10}  # fmt: skip
    obs = observe("web-1", "web", a, b, 2.0)
    assert (obs.cpuReadyPercent, obs.diskLatencyMs, obs.netDropPercent) == (10.0, 30.0, 1.0)
    assert compare(baseline("web-1", 100), obs, 1.5, FLOORS) == []
    problems = compare(baseline("web-1", 4), obs, 1.5, FLOORS)  # limits 6 %, 20 ms, 6 %
    assert [p.split()[2] for p in problems] == ["cpuReadyPercent", "diskLatencyMs"]
    assert "floor 20" in problems[1] and "baseline p95 4" in problems[0]


def test_a_running_target_is_measured_against_its_baseline_and_a_missing_one_is_named(
    tmp_path: Path, embed_uri: str
) -> None:
    make_raw(tmp_path / "web.raw", SIZE)
    inp = step_input(embed_uri, tmp_path, disk_facts(tmp_path / "web.raw", "raw"))
    vm = make_vm()
    file = tmp_path / "baselines.json"
    probe = PerformanceBaselineProbe(
        type="performance-baseline", baselineFile=str(file), baselineSite="lab",
        sampleSeconds=1,
    )  # fmt: skip
    check = CheckInput(
        name="perf", phase="post", application="web", probe=probe, context=inp.context
    )
    domains = LibvirtTarget()
    try:
        domains.power_on_target(inp)
        missing = performance_check(check, probe)
        assert not missing.passed and missing.measured == "no baseline"
        assert f"cutover baseline --site SITE --vm {vm.name}" in (missing.detail or "")
        store(file, "lab", [baseline(vm.name, 1000)])
        ok = performance_check(check, probe)
        assert ok.passed, ok
        assert ok.measured is not None and "CPU ready" in ok.measured
        assert "disk latency" in ok.measured and "network drops" in ok.measured
        domains.remove_target_domain(inp)
        gone = performance_check(check, probe)
        assert not gone.passed and "not running: web" in (gone.measured or "")
    finally:
        domains.remove_target_domain(inp)
        domains.close()
