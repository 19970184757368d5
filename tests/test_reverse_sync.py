"""Reverse sync against the real components: a target domain (real QEMU, embedded libvirt
driver) booted from an overlay writes through its virtio disk; fenced, its writes go into
the simulator VM's disk through the datastore mount, and nothing else of that disk changes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyVim.task import WaitForTask
from temporalio.exceptions import ApplicationError

from activities.libvirt_target import LibvirtTarget
from activities.reverse_sync import ReverseSync
from adapters.vsphere.client import ClientPool
from adapters.vsphere.inventory import find_vms, read_inventory
from cutover import facts as F
from cutover.disknames import disk_id
from cutover.lab.vcsim import Vcsim
from cutover.models import StepContext, StepInput
from cutover.runbook import Runbook
from cutover.site import Libvirt, SiteConfig, StorageMapping, VCenter
from tests.libvirt_fixtures import guest_write, make_raw
from tests.vcsim_fixtures import VcsimFactory

MiB = 1 << 20
SIZE = 8 * MiB


@pytest.fixture
def sim(vcsim_factory: VcsimFactory) -> Vcsim:
    return vcsim_factory(clusters=1, hosts=1, vms=1)


@pytest.fixture
def pool(sim: Vcsim) -> Iterator[ClientPool]:
    p = ClientPool(password=lambda s: sim.password)
    yield p
    p.close()


def vcenter(sim: Vcsim, mounts: dict[str, str]) -> VCenter:
    return VCenter.model_validate({
        "host": sim.host, "port": sim.port, "user": sim.user,
        "passwordRef": {"env": "CUTOVER_TEST_VC_PASSWORD"}, "caFile": str(sim.ca_file),
        "datacenter": "DC0", "datastoreMounts": mounts,
    })  # fmt: skip


def power_off(pool: ClientPool, vc: VCenter, name: str) -> None:
    [vm] = find_vms(pool.get(vc), [name])
    if str(vm.runtime.powerState) == "poweredOn":
        WaitForTask(vm.PowerOffVM_Task())


def step(site: SiteConfig, facts: dict[str, str], name: str = "reverse_sync") -> StepInput:
    runbook = Runbook.model_validate({
        "application": "web", "wave": 1, "sourcePlatform": "vmware-vsphere",
        "sourceCluster": "DC0_C0", "targetPlatform": "kvm-libvirt",
        "rollbackWindowMinutes": 5, "cutoverSteps": ["convert_image"],
    })  # fmt: skip
    ctx = StepContext(
        workflowId="cutover-web", application="web", wave="1", runbook=runbook, site=site,
        facts=facts,
    )  # fmt: skip
    return StepInput(step=name, context=ctx)


def test_the_targets_writes_go_back_into_the_source_disk_and_nothing_else(
    tmp_path: Path, sim: Vcsim, pool: ClientPool, embed_uri: str, libvirtd_uri: str
) -> None:
    vc = vcenter(sim, {"LocalDS_0": str(sim.datastore_dir)})
    [vm] = [v for v in read_inventory(pool.get(vc)).vms if v.disks]
    power_off(pool, vc, vm.name)
    disk = vm.disks[0]
    key = disk_id(vm.name, disk.key)
    flat = sim.datastore_dir / vm.name / "disk1-flat.vmdk"
    content = make_raw(flat, SIZE)  # the source disk as the final sync left it
    staged = tmp_path / "staging" / "apps" / "web" / f"{key}.raw"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(content)  # the staged copy: the target's frozen base
    site = SiteConfig(
        stagingDir=str(tmp_path / "staging"),
        vcenter=vc,
        libvirt=Libvirt(uri=libvirtd_uri),
        storageMappings=[
            StorageMapping(
                sourceDatastore=disk.datastore, targetPool=f"rs-{os.getpid()}", format="raw"
            )
        ],
    )
    facts = {
        F.SOURCE_VMS: vm.name,
        F.per_vm(F.SOURCE_VM, vm.name): vm.model_dump_json(),
        F.per_disk(F.CONVERTED_PATH, key): str(staged),
        F.per_disk(F.CONVERTED_FORMAT, key): "raw",
    }
    storage = LibvirtTarget(pool_root=tmp_path / "pools")
    domains = LibvirtTarget()
    os.environ["CUTOVER_TEST_VC_PASSWORD"] = sim.password
    try:
        facts |= storage.attach_target_storage_profile(step(site, facts)).facts
        embedded = site.model_copy(update={"libvirt": Libvirt(uri=embed_uri)})
        on = step(embedded, facts, "power_on_target")
        domains.power_on_target(on)
        dom = domains._conn(embedded).lookupByName("web")
        # users write during the window: 4 KiB, and 64 KiB across a cluster boundary
        guest_write(dom, 1 * MiB, 4096, 0x5A)
        guest_write(dom, 5 * MiB - 4096, 65536, 0xA5)
        domains.fence_target(on)  # paused: QEMU flushed, nothing writes
        assert flat.read_bytes() == content  # the source has not seen them

        synced = ReverseSync.for_vsphere(pool).reverse_sync(step(site, facts))
        assert synced.changed and synced.details["targetWrittenBytes"] == 4096 + 65536
        expected = bytearray(content)
        expected[1 * MiB : 1 * MiB + 4096] = b"\x5a" * 4096
        expected[5 * MiB - 4096 : 5 * MiB + 61440] = b"\xa5" * 65536
        assert flat.read_bytes() == bytes(expected)  # the writes, and nothing else
        again = ReverseSync.for_vsphere(pool).reverse_sync(step(site, facts))
        assert flat.read_bytes() == bytes(expected)  # idempotent
        assert again.details["targetWrittenBytes"] == 4096 + 65536
        removed = domains.remove_target_domain(on)
        assert removed.details["targetWrittenBytes"] == 4096 + 65536
    finally:
        domains.remove_target_domain(
            step(
                site.model_copy(update={"libvirt": Libvirt(uri=embed_uri)}),
                facts,
                "remove_target_domain",
            )
        )
        storage.detach_target_storage(step(site, facts, "detach_target_storage"))
        storage.close()
        domains.close()


def test_reverse_sync_refuses_a_running_source_and_names_what_to_configure(
    tmp_path: Path, sim: Vcsim, pool: ClientPool
) -> None:
    os.environ["CUTOVER_TEST_VC_PASSWORD"] = sim.password
    vc = vcenter(sim, {})
    [vm] = [v for v in read_inventory(pool.get(vc)).vms if v.disks]
    key = disk_id(vm.name, vm.disks[0].key)
    overlay = tmp_path / "o.qcow2"
    base = tmp_path / "b.raw"
    make_raw(base, SIZE)
    os.system(f"qemu-img create -q -f qcow2 -b {base} -F raw {overlay}")
    facts = {
        F.SOURCE_VMS: vm.name,
        F.per_disk(F.TARGET_BASE, key): str(base),
        F.per_disk(F.TARGET_VOLUME, key): str(overlay),
    }
    site = SiteConfig(vcenter=vc)
    [found] = find_vms(pool.get(vc), [vm.name])
    if str(found.runtime.powerState) != "poweredOn":
        WaitForTask(found.PowerOnVM_Task())
    with pytest.raises(ApplicationError) as err:
        ReverseSync.for_vsphere(pool).reverse_sync(step(site, facts))
    assert err.value.type == "InvalidState" and "powered off" in str(err.value)
    power_off(pool, vc, vm.name)
    with pytest.raises(ApplicationError) as err:
        ReverseSync.for_vsphere(pool).reverse_sync(step(site, facts))
    assert err.value.type == "ConfigError"
    assert "vcenter.datastoreMounts.LocalDS_0" in str(err.value)
    assert "rollback.reverseSync: false" in str(err.value)
