"""The vSphere adapter against our vSphere API simulator (govmomi's, built by the project)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyVmomi import vim
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.vsphere import VSphereActivities
from adapters.vsphere.client import ClientPool, VSphereClient
from adapters.vsphere.datastore import DatastoreFile
from adapters.vsphere.inventory import find_vms, read_inventory, resolve_vms
from adapters.vsphere.properties import wait_task
from adapters.vsphere.tagging import Tagging
from adapters.vsphere.vm import PRIOR_POWER_FIELD, snapshot_name
from cutover.concerns import evaluate
from cutover.inventory import VM
from cutover.lab import vcsim as vcsim_mod
from cutover.lab.vcsim import Vcsim
from cutover.models import CheckInput, StepContext, StepInput
from cutover.runbook import Runbook
from cutover.site import SiteConfig, VCenter, VSphereConcernsProbe
from tests.factories import SEED, unique_app
from tests.vcsim_fixtures import VcsimFactory

CUTOVER = str(Path(sys.executable).parent / "cutover")


@pytest.fixture(scope="module")
def sim(
    vcsim_binary: Path, vcsim_cert: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Vcsim]:
    """This module's own simulator: its tests change VM state."""
    cert, key = vcsim_cert
    s = vcsim_mod.start(
        vcsim_binary,
        tmp_path_factory.mktemp("vsphere"),
        cert=cert,
        key=key,
        clusters=1,
        hosts=2,
        vms=3,
        standalone_hosts=1,
    )
    yield s
    s.stop()


def settings(sim: Vcsim, **over: Any) -> VCenter:
    data: dict[str, Any] = {
        "host": sim.host,
        "port": sim.port,
        "user": sim.user,
        "passwordRef": {"env": "CUTOVER_TEST_VC_PASSWORD"},
        "caFile": str(sim.ca_file),
        "datacenter": "DC0",
        **over,
    }
    return VCenter.model_validate(data)


@pytest.fixture
def pool(sim: Vcsim) -> Iterator[ClientPool]:
    p = ClientPool(password=lambda s: sim.password)
    yield p
    p.close()


def client_for(pool: ClientPool, sim: Vcsim) -> VSphereClient:
    return pool.get(settings(sim))


def step_input(sim: Vcsim, step: str, vms: list[str], **runbook: Any) -> StepInput:
    app = unique_app("vs")
    rb = Runbook.model_validate({**SEED, "application": app, "vms": vms, **runbook})
    site = SiteConfig(vcenter=settings(sim))
    ctx = StepContext(workflowId=f"cutover-{app}", application=app, wave="2", runbook=rb, site=site)
    return StepInput(step=step, context=ctx)


def vm_state(client: VSphereClient, name: str) -> Any:
    return find_vms(client, [name])[0]


# ------------------------------------------------------------------ inventory


def test_inventory_matches_the_simulator(sim: Vcsim, pool: ClientPool) -> None:
    client = client_for(pool, sim)
    inv = read_inventory(client)
    assert [d.name for d in inv.datacenters] == ["DC0"]
    assert [c.name for c in inv.clusters] == ["DC0_C0"]
    assert sorted(h.name for h in inv.hosts) == sorted(["DC0_C0_H0", "DC0_C0_H1", "DC0_H0"])
    names = sorted(v.name for v in inv.vms)
    assert names == sorted(
        f"{h}_VM{i}" for h in ("DC0_C0_H0", "DC0_C0_H1", "DC0_H0") for i in range(3)
    )
    assert "LocalDS_0" in [d.name for d in inv.datastores]

    # independently of the adapter: what the simulator itself reports per VM
    def raw(si: Any) -> dict[str, Any]:
        view = si.content.viewManager.CreateContainerView(
            si.content.rootFolder, [vim.VirtualMachine], True
        )
        try:
            return {v.name: v for v in view.view}
        finally:
            view.Destroy()

    sim_vms = client.call("raw read", raw)
    for vm in inv.vms:
        real = sim_vms[vm.name]
        disks = [d for d in real.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
        nics = [
            d
            for d in real.config.hardware.device
            if isinstance(d, vim.vm.device.VirtualEthernetCard)
        ]
        assert [d.key for d in vm.disks] == [d.key for d in disks]
        assert [d.capacityBytes for d in vm.disks] == [d.capacityInKB * 1024 for d in disks]
        assert vm.disks[0].fileName == f"[LocalDS_0] {vm.name}/disk1.vmdk"
        assert vm.disks[0].datastore == "LocalDS_0" and vm.disks[0].controllerType is not None
        assert [n.macAddress for n in vm.nics] == [n.macAddress for n in nics]
        assert all(n.network for n in vm.nics)
        assert (
            vm.numCpu == real.config.hardware.numCPU
            and vm.memoryMB == real.config.hardware.memoryMB
        )
        assert vm.powerState == str(real.runtime.powerState)
        assert vm.host in {h.name for h in inv.hosts}
        assert vm.uuid == real.config.uuid
    assert {n.name for n in inv.networks} >= {
        net for vm in inv.vms for net in (n.network for n in vm.nics) if net
    }
    # JSON export round-trips
    assert type(inv).model_validate_json(inv.model_dump_json()) == inv


def test_inventory_of_1000_vms_takes_a_handful_of_round_trips(vcsim_factory: VcsimFactory) -> None:
    big = vcsim_factory(clusters=1, hosts=10, vms=100)
    pool = ClientPool(password=lambda s: big.password)
    try:
        inv = read_inventory(pool.get(settings(big)))
    finally:
        pool.close()
    assert len(inv.vms) == 1000
    # 1 for the datacenters, then one per object type (clusters, hosts, datastores,
    # networks, VMs) per datacenter, plus page continuations: not one per VM or property.
    assert inv.roundTrips <= 8, inv.roundTrips
    assert all(vm.disks and vm.nics for vm in inv.vms)


# ------------------------------------------------------------------ activities


def test_snapshot_is_created_once_and_removed_once(sim: Vcsim, pool: ClientPool) -> None:
    acts = VSphereActivities(pool)
    inp = step_input(sim, "snapshot_source", ["DC0_C0_H0_VM0"])
    first = acts.snapshot_source(inp)
    again = acts.snapshot_source(inp)
    assert first.changed and not again.changed
    inv = read_inventory(client_for(pool, sim))
    snaps = [s.name for s in inv.vm("DC0_C0_H0_VM0").snapshots]
    assert snaps.count(snapshot_name(inp.context.workflowId)) == 1
    removed = acts.remove_source_snapshot(inp)
    removed_again = acts.remove_source_snapshot(inp)
    assert removed.changed and not removed_again.changed
    inv = read_inventory(client_for(pool, sim))
    assert snapshot_name(inp.context.workflowId) not in [
        s.name for s in inv.vm("DC0_C0_H0_VM0").snapshots
    ]


def test_revert_to_the_pre_cutover_snapshot(sim: Vcsim, pool: ClientPool) -> None:
    acts = VSphereActivities(pool)
    inp = step_input(sim, "snapshot_source", ["DC0_C0_H0_VM1"])
    with pytest.raises(ApplicationError) as missing:
        acts.revert_source_snapshot(inp)
    assert missing.value.type == "NotFound" and missing.value.non_retryable
    acts.snapshot_source(inp)
    assert acts.revert_source_snapshot(inp).changed
    acts.remove_source_snapshot(inp)


def test_quiesce_and_restart_are_idempotent_and_compensate(sim: Vcsim, pool: ClientPool) -> None:
    acts = VSphereActivities(pool)
    client = client_for(pool, sim)
    inp = step_input(
        sim,
        "quiesce_application",
        ["DC0_C0_H0_VM2", "DC0_C0_H1_VM2"],
        quiesce={"guestShutdownTimeoutSeconds": 10},
    )
    assert str(vm_state(client, "DC0_C0_H0_VM2").runtime.powerState) == "poweredOn"
    quiesced = acts.quiesce_application(inp)
    assert quiesced.changed
    assert not acts.quiesce_application(inp).changed
    # the source VMs' models travel on as facts: the target's domain is built from them
    model = VM.model_validate_json(quiesced.facts["source_vm.DC0_C0_H0_VM2"])
    assert model.name == "DC0_C0_H0_VM2" and model.disks and model.nics
    assert model.powerState == "poweredOff"
    for name in ("DC0_C0_H0_VM2", "DC0_C0_H1_VM2"):
        assert str(vm_state(client, name).runtime.powerState) == "poweredOff"
    assert acts.restart_source(inp).changed
    assert not acts.restart_source(inp).changed
    for name in ("DC0_C0_H0_VM2", "DC0_C0_H1_VM2"):
        assert str(vm_state(client, name).runtime.powerState) == "poweredOn"


def power(client: VSphereClient, name: str, on: bool) -> None:
    vm = find_vms(client, [name])[0]
    task = vm.PowerOnVM_Task if on else vm.PowerOffVM_Task
    client.call(f"powering {name}", lambda si: wait_task(si, task(), f"powering {name}"))


def test_restart_source_restores_the_power_state_before_the_cutover(
    vcsim_factory: VcsimFactory,
) -> None:
    # A fresh simulator: this test leaves a VM off.
    small = vcsim_factory(clusters=0, hosts=1, vms=2, standalone_hosts=1)
    pool = ClientPool(password=lambda s: small.password)
    client = pool.get(settings(small))
    off, on = "DC0_H0_VM0", "DC0_H0_VM1"
    power(client, off, on=False)  # e.g. a standby VM, off before the cutover
    inp = step_input(small, "quiesce_application", [off, on])
    first = VSphereActivities(pool).quiesce_application(inp)
    # a retry on another worker (its own connections) finds both VMs off
    retry_pool = ClientPool(password=lambda s: small.password)
    retried = VSphereActivities(retry_pool).quiesce_application(inp)
    assert not retried.changed
    restarted = VSphereActivities(retry_pool).restart_source(inp)
    assert str(vm_state(client, off).runtime.powerState) == "poweredOff"
    assert str(vm_state(client, on).runtime.powerState) == "poweredOn"
    assert restarted.changed and restarted.details["changed"] == on
    assert not VSphereActivities(pool).restart_source(inp).changed

    # what was recorded, and that the retry did not overwrite it with "poweredOff"
    recorded = f"{off}=poweredOff,{on}=poweredOn"
    assert first.details["priorPowerState"] == retried.details["priorPowerState"] == recorded
    assert restarted.details["priorPowerState"] == recorded
    inv = read_inventory(client)  # the marks are cleared once restored
    assert all(inv.vm(n).customAttributes.get(PRIOR_POWER_FIELD, "") == "" for n in (off, on))
    pool.close()
    retry_pool.close()


def test_the_prior_power_state_is_on_the_vm_before_quiesce_changes_it(
    sim: Vcsim, pool: ClientPool
) -> None:
    client = client_for(pool, sim)
    name = "DC0_C0_H1_VM1"
    inp = step_input(sim, "quiesce_application", [name])
    VSphereActivities(pool).quiesce_application(inp)
    mark = read_inventory(client).vm(name).customAttributes[PRIOR_POWER_FIELD]
    assert mark == f"poweredOn by {inp.context.workflowId}"
    VSphereActivities(pool).restart_source(inp)
    assert str(vm_state(client, name).runtime.powerState) == "poweredOn"


def test_a_later_cutover_records_the_power_state_afresh(sim: Vcsim, pool: ClientPool) -> None:
    # A mark left by an earlier cutover that never restored (it finalized, or was
    # terminated) must not decide a later cutover's restart.
    client = client_for(pool, sim)
    name = "DC0_C0_H1_VM1"
    earlier = step_input(sim, "quiesce_application", [name])
    VSphereActivities(pool).quiesce_application(earlier)  # on -> recorded poweredOn, now off
    later = step_input(sim, "quiesce_application", [name])
    assert later.context.workflowId != earlier.context.workflowId
    quiesced = VSphereActivities(pool).quiesce_application(later)
    VSphereActivities(pool).restart_source(later)
    assert str(vm_state(client, name).runtime.powerState) == "poweredOff"
    assert quiesced.details["priorPowerState"] == f"{name}=poweredOff"
    power(client, name, on=True)  # as the module's other tests expect it


def test_in_an_activity_the_record_belongs_to_the_workflow_run(
    sim: Vcsim, pool: ClientPool
) -> None:
    # Under Temporal a cutover's workflow ID is the same for every run of one application:
    # a retry keeps its run's record, a new run (a re-migration) records afresh.
    client = client_for(pool, sim)
    name = "DC0_C0_H1_VM1"
    inp = step_input(sim, "quiesce_application", [name])
    acts = VSphereActivities(pool)

    def in_run(run_id: str, fn: Any) -> Any:
        env = ActivityEnvironment()
        env.info = dataclasses.replace(
            env.info, workflow_id=inp.context.workflowId, workflow_run_id=run_id
        )
        return env.run(fn, inp)

    assert in_run("run-1", acts.quiesce_application).details["priorPowerState"] == (
        f"{name}=poweredOn"
    )
    assert in_run("run-1", acts.quiesce_application).details["priorPowerState"] == (
        f"{name}=poweredOn"
    )
    mark = read_inventory(client).vm(name).customAttributes[PRIOR_POWER_FIELD]
    assert mark == f"poweredOn by {inp.context.workflowId}/run-1"
    assert in_run("run-2", acts.quiesce_application).details["priorPowerState"] == (
        f"{name}=poweredOff"
    )
    power(client, name, on=True)
    in_run("run-2", acts.restart_source)  # clears the mark; the VM stays as it is


def test_nics_disconnect_and_reconnect(sim: Vcsim, pool: ClientPool) -> None:
    acts = VSphereActivities(pool)
    client = client_for(pool, sim)
    inp = step_input(sim, "disconnect_source_nics", ["DC0_H0_VM0"])

    def nic_states() -> list[tuple[bool, bool]]:
        vm = vm_state(client, "DC0_H0_VM0")
        return [
            (
                bool(d.connectable and d.connectable.connected),
                bool(d.connectable and d.connectable.startConnected),
            )
            for d in vm.config.hardware.device
            if isinstance(d, vim.vm.device.VirtualEthernetCard)
        ]

    assert acts.disconnect_source_nics(inp).changed
    assert not acts.disconnect_source_nics(inp).changed
    assert nic_states() and all(s == (False, False) for s in nic_states())
    assert acts.reconnect_source_nics(inp).changed
    assert not acts.reconnect_source_nics(inp).changed
    assert all(s == (True, True) for s in nic_states())


def test_mark_migrated_sets_attributes_and_posts_events(sim: Vcsim, pool: ClientPool) -> None:
    acts = VSphereActivities(pool)
    client = client_for(pool, sim)
    inp = step_input(sim, "mark_source_migrated", ["DC0_H0_VM1"])
    assert acts.mark_source_migrated(inp).changed
    assert not acts.mark_source_migrated(inp).changed
    vm = read_inventory(client).vm("DC0_H0_VM1")
    assert vm.customAttributes["cutover.workflowId"] == inp.context.workflowId
    assert vm.customAttributes["cutover.migratedTo"].startswith("pextra-cloud:")
    assert "cutover.migratedAt" in vm.customAttributes

    def events(si: Any) -> list[str]:
        spec = vim.event.EventFilterSpec(
            entity=vim.event.EventFilterSpec.ByEntity(
                entity=vm_state(client, "DC0_H0_VM1"), recursion="self"
            )
        )
        return [
            e.fullFormattedMessage or e.message
            for e in si.content.eventManager.QueryEvents(spec)
            if isinstance(e, vim.event.GeneralUserEvent)
        ]

    posted = client.call("events", events)
    assert any(
        "cutover: mark migrated DC0_H0_VM1" in m and inp.context.workflowId in m for m in posted
    )


def test_verify_not_migrated_reads_the_marks_a_finalized_cutover_left(
    sim: Vcsim, pool: ClientPool
) -> None:
    acts = VSphereActivities(pool)
    name = "DC0_C0_H0_VM0"
    inp = step_input(sim, "verify_not_migrated", [name])
    fresh = acts.verify_not_migrated(inp)
    assert not fresh.changed and fresh.details["migrated"] is False
    assert fresh.details["evidence"] == f"no source VM carries a migrated mark (checked {name})"

    acts.mark_source_migrated(inp.model_copy(update={"step": "mark_source_migrated"}))
    marked = acts.verify_not_migrated(inp)
    attrs = read_inventory(client_for(pool, sim)).vm(name).customAttributes
    assert not marked.changed and marked.details["migrated"] is True
    assert marked.details["marked"] == name
    assert marked.details["evidence"] == (
        f"source VM {name} is marked migrated to {attrs['cutover.migratedTo']} at "
        f"{attrs['cutover.migratedAt']} by workflow {inp.context.workflowId}"
    )
    assert attrs["cutover.migratedAt"].startswith("20")  # a time, as marked
    # only read: verifying twice changes nothing on the VM
    acts.verify_not_migrated(inp)
    assert read_inventory(client_for(pool, sim)).vm(name).customAttributes == attrs
    assert acts.verify_not_migrated in acts.activities()


def test_vms_resolved_by_tag_and_by_custom_attribute(sim: Vcsim, pool: ClientPool) -> None:
    client = client_for(pool, sim)
    app = unique_app("tagged")
    tagging = Tagging(client)
    tag = tagging.ensure_tag("application", app)
    assert tagging.ensure_tag("application", app) == tag  # idempotent
    for name in ("DC0_C0_H1_VM0", "DC0_H0_VM2"):
        tagging.attach(tag, find_vms(client, [name])[0]._moId)
    rb = Runbook.model_validate({**SEED, "application": app})
    assert resolve_vms(client, rb) == ["DC0_C0_H1_VM0", "DC0_H0_VM2"]
    inv = read_inventory(client, tagging.tags_by_vm())
    assert {t.name for t in inv.vm("DC0_H0_VM2").tags} == {app}

    def set_attr(si: Any) -> None:
        cfm = si.content.customFieldsManager
        keys = {f.name: f.key for f in (cfm.field or [])}
        key = (
            keys.get("application")
            or cfm.AddFieldDefinition(name="application", moType=vim.VirtualMachine).key
        )
        cfm.SetField(entity=find_vms(client, ["DC0_C0_H1_VM1"])[0], key=key, value=app)

    client.call("set attribute", set_attr)
    rb2 = Runbook.model_validate(
        {**SEED, "application": app, "vmSelector": {"customAttribute": "application"}}
    )
    assert resolve_vms(client, rb2) == ["DC0_C0_H1_VM1"]
    none = Runbook.model_validate({**SEED, "application": unique_app("nobody")})
    with pytest.raises(ApplicationError) as err:
        resolve_vms(client, none)
    assert err.value.type == "NotFound" and "tag" in err.value.message


# ------------------------------------------------------------------ disk bytes


def test_datastore_file_stream_is_byte_identical_with_ranges(sim: Vcsim, pool: ClientPool) -> None:
    client = client_for(pool, sim)
    data = os.urandom(3 * 1024 * 1024 + 123)
    path = sim.datastore_dir / "DC0_H0_VM0" / "data-flat.vmdk"
    path.write_bytes(data)
    stream = DatastoreFile(client, "[LocalDS_0] DC0_H0_VM0/data-flat.vmdk", "DC0", chunk=1 << 20)
    assert stream.size == len(data)
    assert stream.read() == data
    stream.seek(1_000_003)
    assert stream.read(70_000) == data[1_000_003:1_070_003]
    stream.seek(-10, os.SEEK_END)
    assert stream.read() == data[-10:]
    with pytest.raises(ApplicationError) as missing:
        DatastoreFile(client, "[LocalDS_0] DC0_H0_VM0/nope.vmdk", "DC0")
    assert missing.value.type == "NotFound"


# ------------------------------------------------------------------ faults


def test_wrong_password_is_authentication_failed(sim: Vcsim) -> None:
    bad = ClientPool(password=lambda s: "wrong")
    with pytest.raises(ApplicationError) as err:
        read_inventory(bad.get(settings(sim, user="nobody")))
    assert err.value.type == "AuthenticationFailed" and err.value.non_retryable
    assert "password" in err.value.message


def test_unknown_vm_is_not_found(sim: Vcsim, pool: ClientPool) -> None:
    with pytest.raises(ApplicationError) as err:
        VSphereActivities(pool).quiesce_application(
            step_input(sim, "quiesce_application", ["no-such-vm"])
        )
    assert err.value.type == "NotFound" and err.value.non_retryable
    assert "no-such-vm" in err.value.message


def test_invalid_power_state_is_invalid_state(sim: Vcsim, pool: ClientPool) -> None:
    client = client_for(pool, sim)
    vm = find_vms(client, ["DC0_C0_H0_VM2"])[0]
    VSphereActivities(pool).quiesce_application(step_input(sim, "q", ["DC0_C0_H0_VM2"]))
    try:
        with pytest.raises(ApplicationError) as err:
            client.call("shutting down DC0_C0_H0_VM2", lambda si: vm.ShutdownGuest())
        assert err.value.type == "InvalidState" and err.value.non_retryable
        assert "DC0_C0_H0_VM2" in err.value.message
    finally:
        VSphereActivities(pool).restart_source(step_input(sim, "r", ["DC0_C0_H0_VM2"]))


def test_expired_session_reconnects_and_dropped_connection_is_retryable(
    vcsim_factory: VcsimFactory,
) -> None:
    small = vcsim_factory(clusters=0, hosts=1, vms=1, standalone_hosts=1)
    pool = ClientPool(password=lambda s: small.password)
    client = pool.get(settings(small))
    first = len(read_inventory(client).vms)
    client.call("logout", lambda si: si.content.sessionManager.Logout())
    assert len(read_inventory(client).vms) == first  # re-established transparently
    small.stop()
    with pytest.raises(ApplicationError) as err:
        read_inventory(client)
    assert err.value.type == "VSphereUnavailable" and not err.value.non_retryable


def test_tls_is_verified_by_default(sim: Vcsim, tmp_path: Path) -> None:
    other_cert, _ = vcsim_mod.generate_cert(tmp_path, "other")
    untrusted = ClientPool(password=lambda s: sim.password)
    with pytest.raises(ApplicationError) as err:
        read_inventory(untrusted.get(settings(sim, caFile=str(other_cert))))
    assert err.value.type == "VSphereUnavailable"
    assert "CERTIFICATE_VERIFY_FAILED" in err.value.message
    lab = ClientPool(password=lambda s: sim.password)
    assert read_inventory(lab.get(settings(sim, caFile=None, insecure=True))).vms
    lab.close()


# ------------------------------------------------------------------ CLI


def test_cli_inventory(sim: Vcsim, tmp_path: Path) -> None:
    site = {"name": "inv", "vcenter": settings(sim).model_dump(exclude_none=True)}
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
    env = {**os.environ, "CUTOVER_TEST_VC_PASSWORD": sim.password}
    res = subprocess.run(
        [CUTOVER, "inventory", "--site", str(tmp_path / "site.yaml"), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    inv = json.loads(res.stdout)
    assert len(inv["vms"]) == 9 and inv["roundTrips"] >= 1
    table = subprocess.run(
        [CUTOVER, "inventory", "--site", str(tmp_path / "site.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert table.returncode == 0 and "DC0_H0_VM1" in table.stdout and "round trips" in table.stdout
    nopw = subprocess.run(
        [CUTOVER, "inventory", "--site", str(tmp_path / "site.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "CUTOVER_TEST_VC_PASSWORD"},
    )
    assert nopw.returncode == 1 and "CUTOVER_TEST_VC_PASSWORD" in nopw.stderr
    # concerns from the same inventory, read back from the JSON file
    (tmp_path / "inv.json").write_text(res.stdout)
    concerns = subprocess.run(
        [CUTOVER, "concerns", "--inventory", str(tmp_path / "inv.json"), "--vm", "DC0_H0_VM1",
         "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert concerns.returncode == 0, concerns.stderr
    ids = {c["id"] for c in json.loads(concerns.stdout)["DC0_H0_VM1"]}
    assert "cbt.disabled" in ids
    (tmp_path / "bad.json").write_text('{"source": 3}')
    bad = subprocess.run([CUTOVER, "concerns", "--inventory", str(tmp_path / "bad.json")],
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert bad.returncode == 2 and "bad.json: source" in bad.stderr
    assert "Traceback" not in nopw.stderr + res.stderr


# ------------------------------------------------------------------ concerns


def test_concerns_for_passthrough_device_and_existing_snapshot(
    sim: Vcsim, pool: ClientPool
) -> None:
    client = client_for(pool, sim)
    gpu_vm, snap_vm = "DC0_C0_H1_VM2", "DC0_C0_H0_VM1"

    def add_gpu(si: Any) -> None:
        vm = find_vms(client, [gpu_vm])[0]
        backing = vim.vm.device.VirtualPCIPassthrough.DeviceBackingInfo(
            id="0000:3b:00.0",
            deviceId="1eb8",
            systemId="5f0e-sim",
            vendorId=0x10DE,
            deviceName="NVIDIA T4",
        )
        dev = vim.vm.device.VirtualPCIPassthrough(key=-1, backing=backing)
        spec = vim.vm.ConfigSpec(
            deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="add", device=dev)]
        )
        wait_task(si, vm.ReconfigVM_Task(spec=spec), "adding a GPU")

    client.call("adding a GPU", add_gpu)
    snap_inp = step_input(sim, "snapshot_source", [snap_vm])
    VSphereActivities(pool).snapshot_source(snap_inp)  # an existing snapshot, from vSphere's view
    try:
        inv = read_inventory(client)
        assert [d.kind for d in inv.vm(gpu_vm).pciDevices] == ["passthrough"]
        gpu = {c.id: c for c in evaluate(inv, inv.vm(gpu_vm))}
        assert gpu["device.passthrough"].severity == "critical"
        snap = {c.id: c for c in evaluate(inv, inv.vm(snap_vm))}
        assert snap["snapshot.present"].severity == "warning"

        # as a pre-check: a critical concern fails it, with the concern's message
        probe = VSphereConcernsProbe(type="vsphere-concerns")
        rb = Runbook.model_validate(
            {**SEED, "application": unique_app("c"), "vms": [gpu_vm, snap_vm]}
        )
        check = CheckInput(
            name="migration_concerns",
            phase="pre",
            application=rb.application,
            probe=probe,
            runbook=rb,
            vcenter=settings(sim),
        )
        result = VSphereActivities(pool).concerns_check(check, probe)
        assert not result.passed
        assert "device.passthrough" in result.detail and gpu_vm in result.detail
        assert result.measured is not None and "critical" in result.measured
        accepted = VSphereConcernsProbe(type="vsphere-concerns", ignore=["device.passthrough"])
        assert VSphereActivities(pool).concerns_check(check, accepted).passed
        strict = VSphereConcernsProbe(
            type="vsphere-concerns", failOn="warning", ignore=["device.passthrough"]
        )
        warned = VSphereActivities(pool).concerns_check(check, strict)
        assert not warned.passed and "snapshot.present" in warned.detail
    finally:
        VSphereActivities(pool).remove_source_snapshot(snap_inp)


def test_cutovers_of_one_wave_define_a_new_custom_field_at_the_same_moment(
    sim: Vcsim, pool: ClientPool
) -> None:
    """Before: the quiesce steps of a wave's cutovers, at one instant, each added the
    custom-field definition vCenter lacked; all but one failed with DuplicateName."""
    from concurrent.futures import ThreadPoolExecutor

    from adapters.vsphere.vm import custom_values, set_custom_value

    site = settings(sim)
    vms = find_vms(pool.get(site), [v.name for v in read_inventory(pool.get(site)).vms])
    names = [f"cutover.race-{uuid.uuid4().hex[:8]}" for _ in range(4)]  # 4 races
    clients = [ClientPool(password=lambda s: sim.password) for _ in vms]  # one per cutover
    try:
        found = [find_vms(c.get(site), [vm.name])[0] for c, vm in zip(clients, vms, strict=True)]
        sis = [c.get(site).connect() for c in clients]
        for name in names:
            with ThreadPoolExecutor(len(vms)) as ex:
                list(ex.map(lambda i, n=name: set_custom_value(sis[i], found[i], n, vms[i].name),
                            range(len(vms))))  # fmt: skip
    finally:
        for c in clients:
            c.close()
    si = pool.get(site).connect()
    assert all(custom_values(si, vm).get(n) == vm.name for vm in vms for n in names)
