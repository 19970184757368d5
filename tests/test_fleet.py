"""A worker fleet (issue 17) as real processes: one orchestration worker and two data hosts
(`cutover worker --role data`, each with its own staging directory) against the simulator's
VMs, libvirt and QEMU. Each cutover's data steps run on one host; a data host killed with
kill -9 mid-copy: the warm cutover moves to the other host from the pre-copy and completes;
one killed in the downtime rolls back to its source; the killed host, restarted, removes the
staging it was left with. Copy limits hold (from the steps' start and end times)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import Client

from cutover.fleet import COPY_STEPS, DATA_STEPS, fleet_workflow_id
from cutover.lab import vcsim as vcsim_mod
from cutover.models import CutoverResult, CutoverStatus
from tests.conftest import DevServer
from tests.factories import SEED, UNSIGNED, unique_app
from tests.test_cli import acli
from tests.test_worker import VM0, VM1, power_state, seed_disk
from tests.vcsim_fixtures import VcsimFactory

CUTOVER = str(Path(sys.executable).parent / "cutover")
VM2 = "DC0_C0_H0_VM2"


def fleet_site(
    tmp: Path,
    queue: str,
    sim: Any,
    libvirt_uri: str,
    staging: Path,
    near_h1: bool = False,
    host_wait: int = 8,
) -> Path:
    site: dict[str, Any] = {
        "name": f"fleet-{queue}",
        "taskQueue": queue,
        "stagingDir": str(staging / "site"),
        "libvirt": {"uri": libvirt_uri},
        "storageMappings": [
            {
                "sourceDatastore": "LocalDS_0",
                "targetPool": f"cutover-test-fleet-{queue}",  # dropped by drop_pools
                "format": "raw",
            }
        ],
        "vcenter": {
            "host": sim.host,
            "port": sim.port,
            "user": sim.user,
            "passwordRef": {"env": "VC_PASSWORD"},
            "caFile": str(sim.ca_file),
        },
        "access": UNSIGNED,
        "checks": {"data_consistency_confirmed": {"type": "data-consistency"}},
        "fleet": {
            # near_h1: h1 is placed near the VMs' datastore (picked first while it lives);
            # else the least-loaded host is
            "dataHosts": [
                {"name": "h1", "datastores": ["LocalDS_0"] if near_h1 else []},
                {"name": "h2"},
            ],
            "limits": {"perDataHost": 1, "perDatastore": 2},
            "hostWaitSeconds": host_wait,
        },
    }
    path = tmp / "fleet-site.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


def runbook(tmp: Path, vm: str, approval: bool = False) -> tuple[str, Path]:
    app = unique_app("flt")
    rb: dict[str, Any] = {
        **{k: SEED[k] for k in ("wave", "sourcePlatform", "sourceCluster", "targetPlatform")},
        "application": app,
        "rollbackWindowMinutes": 0.1,
        "checkIntervalSeconds": 2,
        "preChecks": [],
        "cutoverSteps": SEED["cutoverSteps"][:6],  # the data path, up to power_on_target
        "postChecks": ["data_consistency_confirmed"],
        "rollbackCriteria": ["data_consistency_confirmed"],
        "dataSync": {"warm": True, "incrementalPasses": 1},
        "vms": [vm],
        "quiesce": {"guestShutdownTimeoutSeconds": 10},
        "endpoint": {"targetAddress": "127.0.0.1:1"},
    }
    if approval:
        rb["approval"] = {"required": True, "approvers": ["ops-lead"]}
    path = tmp / f"{app}.yaml"
    path.write_text(yaml.safe_dump(rb))
    return app, path


class Fleet:
    """The worker processes, each logging to its own file."""

    def __init__(self, tmp: Path, env: dict[str, str], queue: str, site: Path) -> None:
        self.tmp, self.env, self.queue, self.site = tmp, env, queue, site
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    async def start(self, name: str, *args: str) -> None:
        log = self.tmp / f"{name}.log"
        start = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [CUTOVER, "worker", "--task-queue", self.queue, "--site", str(self.site), *args],
                stdout=out,
                stderr=out,
                env=self.env,
                start_new_session=True,
            )
        self.procs[name] = proc
        async with asyncio.timeout(60):
            while b"worker started" not in log.read_bytes()[start:]:
                assert proc.poll() is None, log.read_text()
                await asyncio.sleep(0.1)

    async def data_host(self, name: str, staging: Path) -> None:
        await self.start(name, "--role", "data", "--data-host", name, "--staging-dir", str(staging))

    def kill9(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            with_ = proc.pid
            try:
                os.killpg(with_, signal.SIGTERM)
                proc.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(with_, signal.SIGKILL)


async def start(server: DevServer, raw: Client, queue: str, site: Path, rb: Path, app: str) -> Any:
    res = await acli(server, "run", str(rb), "--site", str(site), "--print-input")
    assert res.returncode == 0, res.stderr
    inp = json.loads(res.stdout)
    # a dead host's heartbeat is missed in 3 s, not the default 30 s
    inp["tuning"] = {**inp.get("tuning", {}), "heartbeatSeconds": 3, "initialRetrySeconds": 1}
    return await raw.start_workflow("AppCutover", inp, id=f"cutover-{app}", task_queue=queue)


def big_disk(sim: Any, vm: str, size: int = 256 << 20) -> None:
    """Every block written and changed: a pre-copy reads all of it."""
    flat = sim.datastore_dir / vm / "disk1-flat.vmdk"
    with flat.open("wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
        f.seek(446 + 4)
        f.write(b"\x83")  # one Linux partition, and the boot signature: it boots
        f.seek(510)
        f.write(b"\x55\xaa")
    bs = vcsim_mod.BLOCK_SIZE
    vcsim_mod.record_writes(
        sim.datastore_dir / vm / "disk1-ctk.json", set(range(size // bs)), capacity=size
    )


async def result_of(client: Client, wid: str) -> dict[str, Any]:
    res = await client.get_workflow_handle(wid, result_type=CutoverResult).result()
    out: dict[str, Any] = res.model_dump(mode="json")
    return out


def data_records(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in result["steps"] if s["name"].split(" ")[0] in DATA_STEPS]


def never_over(results: list[dict[str, Any]], limit: int) -> None:
    """At no instant do more than `limit` copies run on one host (step start/end times)."""
    spans: dict[str, list[tuple[datetime, datetime]]] = {}
    for r in results:
        for s in data_records(r):
            if s["name"].split(" ")[0] in COPY_STEPS and s["outcome"] == "ok":
                t0 = datetime.fromisoformat(s["startedAt"])
                t1 = datetime.fromisoformat(s["endedAt"])
                spans.setdefault(s["host"], []).append((t0, t1))
    assert spans, results
    for host, ss in spans.items():
        for t0, _ in ss:
            running = sum(1 for a, b in ss if a <= t0 < b)
            assert running <= limit, (host, ss)


@pytest.fixture
def fleet_env(
    temporal_server: DevServer, tmp_path: Path, vcsim_factory: VcsimFactory
) -> tuple[Any, dict[str, str]]:
    sim = vcsim_factory(clusters=1, hosts=1, vms=3)
    env = {**os.environ, "TEMPORAL_ADDRESS": temporal_server.address, "VC_PASSWORD": sim.password}
    return sim, env


async def test_a_wave_on_two_data_hosts_runs_each_cutover_on_one_host_within_limits(
    client: Client,
    temporal_server: DevServer,
    tmp_path: Path,
    fleet_env: tuple[Any, dict[str, str]],
    libvirtd_uri: str,
    qemu_dir: Path,
) -> None:
    sim, env = fleet_env
    vms = [VM0, VM1, VM2]
    for vm in vms:
        seed_disk(sim, vm)
    queue = f"flt-{uuid.uuid4().hex[:8]}"
    site = fleet_site(tmp_path, queue, sim, libvirtd_uri, qemu_dir)
    fleet = Fleet(tmp_path, env, queue, site)
    apps = [runbook(tmp_path, vm)[0] for vm in vms]
    wave = tmp_path / "wave.yaml"
    wave.write_text(
        yaml.safe_dump(
            {
                "wave": f"w-{queue}",
                "concurrency": 3,
                "applications": [{"runbook": f"{a}.yaml"} for a in apps],
            }
        )
    )
    seen: list[dict[str, Any]] = []
    text = ""
    try:
        await fleet.start("orch", "--role", "orchestration")
        await fleet.data_host("h1", qemu_dir / "h1")
        await fleet.data_host("h2", qemu_dir / "h2")
        res = await acli(temporal_server, "wave", "run", str(wave), "--site", str(site), "--json")
        assert res.returncode == 0, res.stderr
        wave_id = json.loads(res.stdout)["workflowId"]
        async with asyncio.timeout(240):
            while True:  # what `wave status` shows while it runs
                res = await acli(temporal_server, "wave", "status", wave_id, "--json")
                assert res.returncode == 0, res.stderr
                data = json.loads(res.stdout)
                if data["fleet"] is not None:
                    seen.append(data["fleet"])
                    if not text and data["fleet"]["hosts"]:
                        text = (await acli(temporal_server, "wave", "status", wave_id)).stdout
                if data["phase"] == "DONE":
                    break
                await asyncio.sleep(0.3)
        results = [await result_of(client, f"cutover-{a}") for a in apps]
        fleet_state = await client.get_workflow_handle(fleet_workflow_id(queue)).query("state")
        # the audit, read from the history: which host ran each data step
        audit = await acli(temporal_server, "audit", apps[0], "--format", "json")
        assert audit.returncode == 0, audit.stderr
        report = json.loads(audit.stdout)
        md = (await acli(temporal_server, "audit", apps[0], "--format", "md")).stdout
    finally:
        fleet.stop()
    hosts = set()
    for r in results:
        assert r["outcome"] == "COMPLETED", r["reason"]
        ran_on = {s["host"] for s in data_records(r)}
        assert ran_on == {r["dataHost"]}, data_records(r)  # every data step on one host
        hosts |= ran_on
        for s in r["steps"]:  # the light steps stay on the orchestration worker
            if s["name"].split(" ")[0] not in DATA_STEPS and s["kind"] != "check":
                assert s["host"] is None, s
    assert hosts == {"h1", "h2"}  # spread: the least-loaded host takes the next cutover
    audited = {s["name"]: s["dataHost"] for s in report["steps"]}
    assert audited["pre_copy"] == results[0]["dataHost"], report["steps"]
    assert audited["power_on_target"] is None  # orchestration's
    assert "Data host" in md and results[0]["dataHost"] in md
    never_over(results, 1)
    # `wave status` showed the fleet: cutovers per host and each limit, never over it
    assert any(f["hosts"] for f in seen), seen
    for f in seen:
        for r in f["resources"]:
            assert r["limit"] is not None and r["inUse"] <= r["limit"], f
    assert "fleet: cutovers per data host:" in text and "host:h" in text, text
    # each host's staging is its own, and empty after finalize (no staging debt)
    for h in ("h1", "h2"):
        assert not list((qemu_dir / h / "apps").glob("*")), h
    assert not (qemu_dir / "site" / "apps").exists()  # nothing staged on the site's dir
    assert fleet_state["hosts"] == {} and fleet_state["waiting"] == 0  # all released


async def test_data_host_killed_mid_copy_moves_warm_cutover_and_rolls_back_one_in_downtime(
    client: Client,
    raw_client: Client,
    temporal_server: DevServer,
    tmp_path: Path,
    fleet_env: tuple[Any, dict[str, str]],
    libvirtd_uri: str,
    qemu_dir: Path,
) -> None:
    sim, env = fleet_env
    big_disk(sim, VM0)  # its copy takes seconds: h1 is killed while it copies
    seed_disk(sim, VM1)
    queue = f"flt-{uuid.uuid4().hex[:8]}"
    site = fleet_site(tmp_path, queue, sim, libvirtd_uri, qemu_dir, near_h1=True)
    fleet = Fleet(tmp_path, env, queue, site)
    h1 = qemu_dir / "h1"
    try:
        await fleet.start("orch", "--role", "orchestration")
        await fleet.data_host("h1", h1)
        await fleet.data_host("h2", qemu_dir / "h2")

        # 1. Warm: h1 dies while it copies; the cutover moves to h2 from the pre-copy.
        app, rb = runbook(tmp_path, VM0)
        handle = await start(temporal_server, raw_client, queue, site, rb, app)
        async with asyncio.timeout(60):
            while not list((h1 / "apps" / app).glob("*.raw")):
                await asyncio.sleep(0.05)
        fleet.kill9("h1")
        result = await result_of(client, handle.id)
        assert result["outcome"] == "COMPLETED", result["reason"]
        assert result["dataHost"] == "h2"
        steps = data_records(result)
        lost = [s for s in steps if s["outcome"] == "failed"]
        assert [s["host"] for s in lost] == ["h1"], steps
        assert "data host h1 did not take" in (lost[0]["error"] or ""), lost
        moved = steps[steps.index(lost[0]) + 1 :]
        assert moved[0]["name"] == "pre_copy", steps  # again, from the pre-copy
        assert {s["host"] for s in moved} == {"h2"}  # every later data step on h2
        assert (h1 / "apps" / app).exists()  # h1's partial copy: left for its cleanup

        # 2. Downtime: the cutover waits at approval with its copy on h2; h2 dies;
        # the final sync is never taken: it rolls back, the source serves again.
        app2, rb2 = runbook(tmp_path, VM1, approval=True)
        handle2 = await start(temporal_server, raw_client, queue, site, rb2, app2)
        async with asyncio.timeout(90):
            while True:
                desc = await handle2.describe()
                if desc.search_attributes.get("CutoverPhase") == ["AWAITING_APPROVAL"]:
                    break
                await asyncio.sleep(0.2)
        status = await client.get_workflow_handle(handle2.id).query(
            "status", result_type=CutoverStatus
        )
        host2 = status.dataHost
        assert host2 == "h2"  # h1 is gone: the live one
        fleet.kill9("h2")
        res = await acli(temporal_server, "approve", app2, "--as", "ops-lead")
        assert res.returncode == 0, res.stderr
        result2 = await result_of(client, handle2.id)
        assert result2["outcome"] == "ROLLED_BACK", result2
        assert "data host h2 did not take final_data_sync" in result2["reason"]
        assert power_state(sim, str(site), VM1) == "poweredOn"
        left = {s["name"]: s for s in result2["steps"] if s["kind"] == "compensation"}
        assert left["discard_staging"]["outcome"] == "skipped"
        # not scheduled again on the host it lost: left to that host's cleanup at once
        assert "h2 was lost; left to its staging cleanup" in left["discard_staging"]["error"]

        # 3. Both hosts come back: each removes the staging it was left with.
        await fleet.data_host("h1", h1)
        await fleet.data_host("h2", qemu_dir / "h2")
        async with asyncio.timeout(30):
            while list((h1 / "apps").glob("*")) or list((qemu_dir / "h2" / "apps").glob("*")):
                await asyncio.sleep(0.2)
    finally:
        fleet.stop()


async def test_a_data_host_killed_mid_copy_and_back_within_the_bound_keeps_its_cutover(
    client: Client,
    raw_client: Client,
    temporal_server: DevServer,
    tmp_path: Path,
    fleet_env: tuple[Any, dict[str, str]],
    libvirtd_uri: str,
    qemu_dir: Path,
) -> None:
    sim, env = fleet_env
    big_disk(sim, VM0)
    queue = f"flt-{uuid.uuid4().hex[:8]}"
    site = fleet_site(tmp_path, queue, sim, libvirtd_uri, qemu_dir, near_h1=True, host_wait=60)
    fleet = Fleet(tmp_path, env, queue, site)
    h1 = qemu_dir / "h1"
    try:
        await fleet.start("orch", "--role", "orchestration")
        await fleet.data_host("h1", h1)
        await fleet.data_host("h2", qemu_dir / "h2")
        app, rb = runbook(tmp_path, VM0)
        handle = await start(temporal_server, raw_client, queue, site, rb, app)
        async with asyncio.timeout(60):
            while not list((h1 / "apps" / app).glob("*.raw")):
                await asyncio.sleep(0.05)
        fleet.kill9("h1")
        await fleet.data_host("h1", h1)  # back at once: well within hostWaitSeconds
        result = await result_of(client, handle.id)
    finally:
        fleet.stop()
    assert result["outcome"] == "COMPLETED", result["reason"]
    steps = data_records(result)
    assert {s["host"] for s in steps} == {"h1"}, steps  # it stayed on its host
    assert all(s["outcome"] == "ok" for s in steps), steps
    copy = next(s for s in steps if s["name"] == "pre_copy")
    assert (copy["attempts"] or 0) >= 2, copy  # the copy was retried there, not moved
    assert not list((h1 / "apps").glob("*"))  # finalize removed its staging
