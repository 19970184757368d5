"""`cutover baseline`: VMs' performance counters from the simulator's PerformanceManager,
summarised and stored per VM (merged across runs)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from cutover.cli import main
from cutover.lab.vcsim import Vcsim
from cutover.plan.baseline import Baselines, VmSeries, summarise


def test_summaries_normalise_cpu_ready_per_vcpu_and_drops_per_packet() -> None:
    s = VmSeries(vm="a", moref="vm-1", numCpu=2, intervalSeconds=20, series={
        "cpu.ready.summation": [400, 800], "disk.maxTotalLatency.latest": [1, 3],
        "net.droppedRx.summation": [0, 10], "net.droppedTx.summation": [0, 0],
        "net.packetsRx.summation": [100, 80], "net.packetsTx.summation": [0, 10],
    })  # fmt: skip
    b = summarise(s, datetime(2026, 1, 1, tzinfo=UTC))
    assert b.samples == 2
    # 400 ms ready of 20,000 ms over 2 vCPUs = 1 %; 800 ms = 2 %
    assert b.cpuReadyPercent is not None and (b.cpuReadyPercent.avg, b.cpuReadyPercent.max) == (
        1.5, 2.0
    )  # fmt: skip
    assert b.diskLatencyMs is not None and b.diskLatencyMs.p95 == 3.0
    assert b.netDropPercent is not None and b.netDropPercent.max == 10.0  # 10 of 100
    assert b.netDroppedPerSecond is not None and b.netDroppedPerSecond.max == 0.5


def test_baseline_reads_the_simulator_counters_and_stores_them_per_vm(
    vcsim: Vcsim,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    vcenter = {"host": vcsim.host, "port": vcsim.port, "user": vcsim.user,
               "passwordRef": {"env": "CUTOVER_TEST_VC_PASSWORD"},
               "caFile": str(vcsim.ca_file), "datacenter": "DC0"}  # fmt: skip
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"name": "base", "vcenter": vcenter}))
    monkeypatch.setenv("CUTOVER_TEST_VC_PASSWORD", vcsim.password)
    out = tmp_path / "baseline.json"
    capsys.readouterr()
    argv = ["baseline", "--site", str(site), "-o", str(out), "--minutes", "5"]
    assert main([*argv, "--vm", "DC0_H0_VM0", "--json"]) == 0
    taken = json.loads(capsys.readouterr().out)["vms"]
    assert [b["vm"] for b in taken] == ["DC0_H0_VM0"]
    b = taken[0]
    assert b["samples"] == 15  # 5 minutes of 20 s samples
    assert b["cpuReadyPercent"]["avg"] > 0  # the simulator's cpu.ready series
    assert b["diskLatencyMs"]["max"] >= 0 and b["netDropPercent"]["max"] == 0  # no drops there
    assert main([*argv, "--vm", "DC0_C0_H0_VM1"]) == 0
    assert "stored 1 baseline(s)" in capsys.readouterr().out
    stored = Baselines.model_validate_json(out.read_bytes())
    assert stored.site == "base" and list(stored.vms) == ["DC0_C0_H0_VM1", "DC0_H0_VM0"]
    assert main([*argv, "--vm", "no-such-vm"]) == 1
    assert "no-such-vm" in capsys.readouterr().err
