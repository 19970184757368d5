"""The shipped worker (`cutover worker`) as a real process: real probes, JSON logs, no secrets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt
import yaml
from temporalio.client import Client
from temporalio.service import RPCError

from adapters.qemu.img import guest_extents, read_guest
from adapters.vsphere.client import ClientPool
from adapters.vsphere.inventory import find_vms
from cutover.lab import vcsim as vcsim_mod
from cutover.lab.vcsim import Vcsim
from cutover.site import SiteConfig
from tests.conftest import DevServer
from tests.factories import SEED, UNSIGNED, unique_app
from tests.libvirt_fixtures import make_raw
from tests.site_refs import serve
from tests.test_cli import acli
from tests.vcsim_fixtures import VcsimFactory

CUTOVER = str(Path(sys.executable).parent / "cutover")


VM0, VM1 = "DC0_C0_H0_VM0", "DC0_C0_H0_VM1"
DISK = 32 << 20


def seed_disk(sim: Vcsim, vm: str) -> bytes:
    """A real disk behind the simulated VM: an MBR, scattered data, its CBT file."""
    flat = sim.datastore_dir / vm / "disk1-flat.vmdk"
    content = make_raw(flat, DISK)
    bs = vcsim_mod.BLOCK_SIZE
    written = {i // bs for i in range(0, DISK, 4096) if any(content[i : i + 4096])}
    vcsim_mod.record_writes(sim.datastore_dir / vm / "disk1-ctk.json", written, capacity=DISK)
    return content


def write(
    tmp: Path,
    queue: str,
    sim: Vcsim,
    *,
    pre_ok: bool = True,
    vm: str = VM0,
    libvirt_uri: str = "test:///default",
    approval: bool = False,
    staging: Path | None = None,
    fmt: str = "raw",
) -> tuple[str, str, str]:
    staging = staging or tmp / "staging"
    app = unique_app("wrk")
    site: dict[str, Any] = {
        "name": "worker-test",
        "taskQueue": queue,
        "stagingDir": str(staging),
        "libvirt": {"uri": libvirt_uri},
        "storageMappings": [
            {"sourceDatastore": "LocalDS_0", "targetPool": f"cutover-test-{app}", "format": fmt}
        ],
        "vcenter": {
            "host": sim.host,
            "port": sim.port,
            "user": sim.user,
            "passwordRef": {"env": "VC_PASSWORD"},
            "caFile": str(sim.ca_file),
        },
        "access": UNSIGNED,
        "checks": {
            "migration_concerns": {"type": "vsphere-concerns"},
            "backup_success_last_24h": {
                "type": "command",
                "argv": [sys.executable, "-c", f"raise SystemExit({0 if pre_ok else 4})"],
            },
            "orchestrator_reachable": {
                "type": "tcp",
                "host": "127.0.0.1",
                "port": 1,
                "timeoutSeconds": 1,
            },
            "data_consistency_confirmed": {"type": "data-consistency"},
        },
    }
    if pre_ok:
        del site["checks"]["orchestrator_reachable"]
    rb = {
        **{k: SEED[k] for k in ("wave", "sourcePlatform", "sourceCluster", "targetPlatform")},
        "application": app,
        "rollbackWindowMinutes": 0.1,
        "checkIntervalSeconds": 2,
        "preChecks": [c for c in site["checks"] if c != "data_consistency_confirmed"],
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
    (tmp / f"{app}-site.yaml").write_text(yaml.safe_dump(site))
    (tmp / f"{app}.yaml").write_text(yaml.safe_dump(rb))
    return app, str(tmp / f"{app}.yaml"), serve(str(tmp / f"{app}-site.yaml"))


def power_state(sim: Vcsim, site: str, vm: str) -> str:
    vc = SiteConfig.model_validate(yaml.safe_load(Path(site).read_text())).vcenter
    assert vc is not None
    pool = ClientPool(password=lambda s: sim.password)
    try:
        return str(find_vms(pool.get(vc), [vm])[0].runtime.powerState)
    finally:
        pool.close()


async def test_shipped_worker_migrates_through_every_real_component(
    client: Client,
    temporal_server: DevServer,
    tmp_path: Path,
    vcsim_factory: VcsimFactory,
    libvirtd_uri: str,
    qemu_dir: Path,
) -> None:
    """`cutover worker` as a process: real probes; a warm cutover from the simulator's VM
    disk through staging, conversion, a libvirt volume and a running QEMU domain; and a
    cutover whose CBT missed a write, caught in the window and rolled back to the source."""
    sim = vcsim_factory(clusters=1, hosts=1, vms=2)
    content = seed_disk(sim, VM0)
    seed_disk(sim, VM1)
    queue = f"wrk-{uuid.uuid4().hex[:8]}"
    log, spans = tmp_path / "worker.log", tmp_path / "spans.out"
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": temporal_server.address,
        "VC_PASSWORD": sim.password,
        "CUTOVER_OTEL_EXPORTER": "console",
    }
    # the worker's own site at start; the ones written below reach it through its archive
    # ($CUTOVER_SITE_ARCHIVE, as `serve` archives them)
    (tmp_path / "base-site.yaml").write_text("name: base\n")
    with log.open("wb") as err, spans.open("wb") as out:
        worker = subprocess.Popen(
            [CUTOVER, "worker", "--task-queue", queue, "--site", str(tmp_path / "base-site.yaml")],
            stderr=err,
            stdout=out,
            env=env,
            start_new_session=True,
        )
    try:
        async with asyncio.timeout(30):
            while b"worker started" not in log.read_bytes():
                assert worker.poll() is None, log.read_text()
                await asyncio.sleep(0.1)

        # 1. A failing pre-check: nothing changes.
        _, runbook, site = write(tmp_path, queue, sim, pre_ok=False)
        res = await acli(temporal_server, "run", runbook, "--site", site, "--wait", "--json")
        assert res.returncode == 1, res.stderr
        result = json.loads(res.stdout)
        assert result["outcome"] == "FAILED"
        assert result["leftWhere"] == ["nothing was changed: the source still serves"]
        checks = {c["name"]: c for c in result["checks"]}
        assert checks["backup_success_last_24h"]["measured"] == "exit code 4"
        assert checks["orchestrator_reachable"]["measured"] == "no connection"
        assert not [s for s in result["steps"] if s["kind"] not in ("guard", "check")]

        # 2. A warm cutover that completes.
        app2, runbook2, site2 = write(
            tmp_path, queue, sim, libvirt_uri=libvirtd_uri, staging=qemu_dir
        )
        res = await acli(temporal_server, "run", runbook2, "--site", site2, "--wait", "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        result = json.loads(res.stdout)
        assert result["outcome"] == "COMPLETED", result["reason"]
        steps = {s["name"]: s for s in result["steps"] if s["kind"] != "check"}
        assert [s["name"] for s in result["steps"] if s["kind"] == "warm"] == [
            "snapshot_source",
            "pre_copy",
            "incremental_sync #1",
        ]
        for name in SEED["cutoverSteps"][:6]:
            assert steps[name]["outcome"] == "ok", steps[name]
        assert {"remove_converted_image", "discard_staging"} <= set(steps)  # at finalize
        checks = {c["name"]: c for c in result["checks"]}
        assert checks["migration_concerns"]["measured"].startswith("0 critical")
        assert checks["data_consistency_confirmed"]["passed"] is True
        assert checks["data_consistency_confirmed"]["measured"] == "0 of 32 blocks differ"
        conn = libvirt.open(libvirtd_uri)
        try:
            dom = conn.lookupByName(app2)
            assert dom.isActive()  # a real QEMU process, booted from the migrated disk
            [disk] = ET.fromstring(dom.XMLDesc(0)).findall("devices/disk")
            # finalize merged its overlay: it runs on the base, the migrated disk
            source, driver = disk.find("source"), disk.find("driver")
            assert source is not None and driver is not None
            booted = Path(source.get("file", ""))
            assert ".target." in booted.name and not booted.name.endswith(".overlay.qcow2")
            seen = b"".join(d for _, d in read_guest(guest_extents(booted, driver.get("type", ""))))
            assert seen == content
        finally:
            conn.close()
        assert not (qemu_dir / "apps" / app2).exists()  # no staging debt after finalize
        assert power_state(sim, site2, VM0) == "poweredOff"  # retired

        # 3. A qcow2 target (converted in the warm phase, the final pass writes into the
        # image); CBT misses a write: the window's full comparison of the image catches it.
        app3, runbook3, site3 = write(
            tmp_path, queue, sim, vm=VM1, libvirt_uri=libvirtd_uri, approval=True,
            staging=qemu_dir, fmt="qcow2",
        )  # fmt: skip
        run = asyncio.ensure_future(
            acli(temporal_server, "run", runbook3, "--site", site3, "--wait", "--json")
        )
        handle = client.get_workflow_handle(f"cutover-{app3}")
        async with asyncio.timeout(60):
            while True:
                with contextlib.suppress(RPCError):  # not started yet
                    desc = await handle.describe()
                    if desc.search_attributes.get("CutoverPhase") == ["AWAITING_APPROVAL"]:
                        break
                await asyncio.sleep(0.2)
        flat = sim.datastore_dir / VM1 / "disk1-flat.vmdk"
        with flat.open("r+b") as f:  # written behind change tracking's back
            f.seek(7 << 20)
            f.write(os.urandom(4096))
        res = await acli(temporal_server, "approve", app3, "--as", "ops-lead")
        assert res.returncode == 0, res.stderr
        res = await run
        result = json.loads(res.stdout)
        assert result["outcome"] == "ROLLED_BACK", result
        assert "data_consistency_confirmed" in result["reason"]
        checks = {c["name"]: c for c in result["checks"]}
        assert checks["data_consistency_confirmed"]["measured"] == "1 of 32 blocks differ"
        undo = [s["name"] for s in result["steps"] if s["kind"] == "compensation"]
        assert undo[:2] == ["remove_target_domain", "detach_target_storage"]
        assert {"remove_converted_image", "discard_staging", "restart_source"} <= set(undo)
        conn = libvirt.open(libvirtd_uri)
        try:
            assert app3 not in [d.name() for d in conn.listAllDomains(0)]
        finally:
            conn.close()
        assert not (qemu_dir / app3).exists()
        assert not list(qemu_dir.glob(f"{app3}-*"))
        assert power_state(sim, site3, VM1) == "poweredOn"
        done: dict[str, dict[str, Any]] = {}
        for e in (await handle.fetch_history()).events:
            if e.HasField("activity_task_completed_event_attributes"):
                for p in e.activity_task_completed_event_attributes.result.payloads:
                    r = json.loads(p.data)
                    if isinstance(r, dict) and "step" in r:
                        done[r["step"]] = r["details"]
        assert any(v == "pre-converted" for v in done["pre_copy"].values()), done["pre_copy"]
        assert "cbt->image" in done["final_data_sync"].values(), done["final_data_sync"]
        assert "pre-converted" in done["convert_image"].values(), done["convert_image"]
        history = await client.get_workflow_handle(f"cutover-{app2}").fetch_history()
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(20)

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(
        e.get("event") == "cutover started" and e.get("workflow_id") == f"cutover-{app2}"
        for e in lines
    )
    assert any(
        e.get("event") == "rolling back"
        and e.get("workflow_id") == f"cutover-{app3}"
        and "data_consistency_confirmed" in e.get("reason", "")
        for e in lines
    )
    # OpenTelemetry spans for the workflow and its activities, through the interceptor
    traced = spans.read_text()
    assert '"name": "RunWorkflow:AppCutover"' in traced
    assert '"name": "RunActivity:quiesce_application"' in traced
    assert "Logging error" not in log.read_text()  # every log call rendered, sandbox included
    # the vCenter password was used (logins succeeded) but never logged or recorded
    assert sim.password not in log.read_text() + spans.read_text()
    # payloads are base64 in history JSON: search the events' raw bytes instead
    raw = b"".join(e.SerializeToString() for e in history.events)
    assert sim.password.encode() not in raw and sim.password not in history.to_json()
