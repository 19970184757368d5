"""The wave promotion gate: its rule (pure), and `cutover wave run` refusing a wave whose
predecessors' change failure rate and MTTR did not go down, and recording an override."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from temporalio.client import Client

from cutover.catalog import BUILTIN_CHECKS
from cutover.plan.gate import WaveFigures, promotion_gate
from tests.conftest import DevServer
from tests.factories import UNSIGNED, unique_app
from tests.site_refs import serve
from tests.world import World
from workers.worker import build_worker

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fig(wave: str, hours: int, cfr: float | None, mttr: float | None) -> WaveFigures:
    return WaveFigures(wave=wave, workflowId=f"wave-{wave}", endedAt=T0 + timedelta(hours=hours),
                       changeFailureRate=cfr, mttrSeconds=mttr)  # fmt: skip


def test_the_gate_passes_only_when_both_figures_went_down() -> None:
    assert promotion_gate([], "3").passed
    assert promotion_gate([fig("1", 1, 0.5, 300)], "3").passed  # no trend yet
    assert promotion_gate([fig("1", 1, 0.5, 300), fig("2", 2, 0.2, 100)], "3").passed
    assert promotion_gate([fig("1", 1, 0.5, 300), fig("2", 2, 0.0, None)], "3").passed
    up = promotion_gate([fig("1", 1, 0.0, None), fig("2", 2, 0.5, 60)], "3")
    assert not up.passed
    assert up.figures == (
        "wave 1 then wave 2: change failure rate 0% -> 50% (did not go down), MTTR none -> "
        "60 s (did not go down)"
    )
    flat = promotion_gate([fig("1", 1, 0.2, 100), fig("2", 2, 0.2, 90)], "3")
    assert not flat.passed and "MTTR 100 s -> 90 s (down)" in flat.figures
    # the latest run of each wave, the wave being started left out, in the order they ended
    runs = [fig("2", 2, 0.5, 60), fig("1", 1, 0.5, 300), fig("2", 5, 0.1, 30),
            fig("3", 9, 0.9, 900)]  # fmt: skip
    again = promotion_gate(runs, "3")
    assert again.passed and again.before == runs[1] and again.last == runs[2]


# ------------------------------------------------------------------ the CLI

CUTOVER = str(Path(sys.executable).parent / "cutover")
ROOT = str(Path(__file__).parent.parent)


async def cli(server: DevServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TEMPORAL_ADDRESS": server.address, "PYTHONPATH": ROOT}
    return await asyncio.to_thread(
        subprocess.run, [CUTOVER, *args], capture_output=True, text=True, env=env, timeout=90,
        check=False,
    )  # fmt: skip


def write_wave(tmp: Path, queue: str, name: str, apps: list[str]) -> tuple[str, str]:
    site = {
        "name": "gate-test",
        "taskQueue": queue,
        "checks": {n: {"type": "command", "argv": ["true"]} for n in BUILTIN_CHECKS},
        "access": UNSIGNED,
        "vcenter": {"host": "127.0.0.1", "user": "svc", "passwordRef": {"env": "UNUSED"}},
    }
    rb: dict[str, Any] = {
        "sourcePlatform": "vmware-vsphere", "sourceCluster": "c1",
        "targetPlatform": "kvm-libvirt", "rollbackWindowMinutes": 0.000001,
        "checkIntervalSeconds": 60, "cutoverSteps": ["quiesce_application"],
    }  # fmt: skip
    doc = {"wave": name, "concurrency": 2, "failureThreshold": 5,
           "applications": [{"runbook": {"application": a, **rb}} for a in apps]}  # fmt: skip
    (tmp / "site.yaml").write_text(yaml.safe_dump(site))
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    return str(tmp / f"{name}.yaml"), serve(str(tmp / "site.yaml"))


async def test_wave_run_refuses_when_the_figures_did_not_go_down_and_records_an_override(
    client: Client, temporal_server: DevServer, tmp_path: Path
) -> None:
    queue = f"gate-{uuid.uuid4().hex[:8]}"
    good, bad, fails = unique_app("g"), unique_app("b"), unique_app("f")
    tag = uuid.uuid4().hex[:6]
    world = World(fail_for={fails: {"quiesce_application"}})
    async with build_worker(client, queue, activities=world.activities()):
        wave, site = write_wave(tmp_path, queue, f"one-{tag}", [good])
        res = await cli(temporal_server, "wave", "run", wave, "--site", site, "--wait")
        assert res.returncode == 0, res.stderr  # no earlier wave: no trend, the gate passes
        wave, site = write_wave(tmp_path, queue, f"two-{tag}", [bad, fails])
        res = await cli(temporal_server, "wave", "run", wave, "--site", site, "--wait", "--json")
        assert res.returncode == 1, res.stderr  # one rolled back: PARTIAL
        assert json.loads(res.stdout)["changeFailureRate"] == 0.5
        third = unique_app("t")
        wave, site = write_wave(tmp_path, queue, f"three-{tag}", [third])
        res = await cli(temporal_server, "wave", "run", wave, "--site", site)
        assert res.returncode == 1
        assert (
            f"refused: wave three-{tag}: promotion gate: wave one-{tag} then wave two-{tag}: "
            "change failure rate 0% -> 50% (did not go down), MTTR none -> "
        ) in res.stderr
        assert "--override-gate REASON" in res.stderr
        res = await cli(temporal_server, "wave", "run", wave, "--site", site, "--override-gate",
                        "canary app, approved by the CAB", "--wait")  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert "promotion gate overridden" in res.stderr
    desc = await client.get_workflow_handle(f"wave-three-{tag}").describe()
    gate = (await desc.memo())["promotionGate"]
    assert gate["passed"] is False and gate["override"] == "canary app, approved by the CAB"
    assert "change failure rate 0% -> 50% (did not go down)" in gate["figures"]
    assert gate["overriddenBy"]
