"""The libvirt target against real libvirt: the test driver for the fast cases, an embedded
QEMU driver for a real domain, a libvirtd started here for storage upload streams."""

from __future__ import annotations

import os
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt
import pytest
from temporalio.exceptions import ApplicationError

from activities.convert import ConvertActivities
from activities.libvirt_target import LibvirtTarget
from adapters.libvirt.connection import open_connection
from adapters.qemu.img import guest_extents, image_info, overlay_extents, read_guest
from cutover.inventory import VM, Disk, Nic
from cutover.models import StepContext, StepInput
from cutover.runbook import Runbook
from cutover.site import Libvirt, NetworkMapping, SiteConfig, StorageMapping
from tests.libvirt_fixtures import guest_write, make_raw, make_vmdk

SIZE = 8 << 20


def make_vm(firmware: str = "bios", guest: str = "debian12_64Guest") -> VM:
    return VM(
        moref="vm-7",
        name="web-1",
        numCpu=2,
        coresPerSocket=1,
        memoryMB=64,
        firmware=firmware,
        guestId=guest,
        disks=[Disk(key=2000, capacityBytes=SIZE, datastore="ds1")],
        nics=[
            Nic(key=4000, macAddress="00:50:56:AA:BB:01", network="VM Network"),
            Nic(key=4001, macAddress="00:50:56:aa:bb:02", network="backup-net"),
            Nic(key=4002, macAddress="00:50:56:aa:bb:03", network="unmapped"),
        ],
    )


def step_input(
    uri: str,
    staging: Path,
    facts: dict[str, str],
    vm: VM | None = None,
    step: str = "power_on_target",
    target_address: str | None = "192.0.2.10:8080",
    fmt: str = "qcow2",
    application: str = "web",
) -> StepInput:
    site = SiteConfig(
        stagingDir=str(staging),
        libvirt=Libvirt(uri=uri),
        storageMappings=[
            StorageMapping(sourceDatastore="ds1", targetPool="cutover-test", format=fmt)
        ],
        networkMappings=[
            NetworkMapping(sourceNetwork="VM Network", targetNetwork="default"),
            NetworkMapping(sourceNetwork="backup-net", targetNetwork="backup", keepMac=False),
        ],
    )
    runbook = Runbook.model_validate(
        {
            "application": application,
            "wave": 1,
            "sourcePlatform": "vmware-vsphere",
            "sourceCluster": "c1",
            "targetPlatform": "kvm-libvirt",
            "rollbackWindowMinutes": 5,
            "cutoverSteps": ["convert_image"],
            "endpoint": {"targetAddress": target_address} if target_address else {},
        }
    )
    vm = vm or make_vm()
    ctx = StepContext(
        workflowId=f"cutover-{application}",
        application=application,
        wave="1",
        runbook=runbook,
        site=site,
        facts={**facts, f"source_vm.{vm.name}": vm.model_dump_json()},
    )
    return StepInput(step=step, context=ctx)


# ------------------------------------------------------------ test:///default (fast)


@pytest.fixture
def test_target() -> Any:
    target = LibvirtTarget()
    yield target
    target.close()


def disk_facts(path: Path, fmt: str = "qcow2") -> dict[str, str]:
    return {"target_volume.web-1-2000": str(path), "target_format.web-1-2000": fmt}


def test_domain_xml_content(tmp_path: Path, test_target: LibvirtTarget) -> None:
    inp = step_input("test:///default", tmp_path, disk_facts(tmp_path / "web.qcow2"))
    result = test_target.power_on_target(inp)
    assert result.changed and result.facts["target_domain"] == "web"
    assert result.facts["target_address"] == "192.0.2.10:8080"
    conn = test_target._conn(inp.context.resolved_site)
    root = ET.fromstring(conn.lookupByName("web").XMLDesc(0))
    assert root.findtext("vcpu") == "2"
    assert int(root.findtext("memory") or 0) == 64 * 1024  # KiB
    assert root.find("devices/graphics") is None
    disk = root.find("devices/disk")
    assert disk is not None
    assert disk.find("target").get("bus") == "virtio"  # type: ignore[union-attr]
    assert disk.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert disk.find("source").get("file") == str(tmp_path / "web.qcow2")  # type: ignore[union-attr]
    ifaces = root.findall("devices/interface")
    # "default" exists on the test driver, "backup" does not: user-mode networking
    assert [i.get("type") for i in ifaces] == ["network", "user", "user"]
    assert ifaces[0].find("source").get("network") == "default"  # type: ignore[union-attr]
    assert ifaces[0].find("mac").get("address") == "00:50:56:aa:bb:01"  # type: ignore[union-attr]
    # keepMac false: libvirt assigns a new MAC
    assert ifaces[1].find("mac").get("address") != "00:50:56:aa:bb:02"  # type: ignore[union-attr]
    assert ifaces[2].find("mac").get("address") == "00:50:56:aa:bb:03"  # type: ignore[union-attr]
    assert all(i.find("model").get("type") == "virtio" for i in ifaces)  # type: ignore[union-attr]
    test_target.remove_target_domain(inp)


def test_idempotent_and_compensation(tmp_path: Path, test_target: LibvirtTarget) -> None:
    inp = step_input("test:///default", tmp_path, disk_facts(tmp_path / "web.qcow2"))
    assert test_target.power_on_target(inp).changed
    again = test_target.power_on_target(inp)
    assert not again.changed  # reused, left running
    conn = test_target._conn(inp.context.resolved_site)
    dom = conn.lookupByName("web")
    dom.destroy()  # defined but stopped: started again, not redefined
    assert test_target.power_on_target(inp).changed and dom.isActive()
    assert test_target.remove_target_domain(inp).changed
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName("web")
    assert not test_target.remove_target_domain(inp).changed  # no-op when absent
    assert not test_target.fence_target(inp).changed  # nothing to fence
    assert not test_target.unfence_target(inp).changed


def test_foreign_domain_untouched(tmp_path: Path, test_target: LibvirtTarget) -> None:
    inp = step_input("test:///default", tmp_path, disk_facts(tmp_path / "web.qcow2"))
    conn = test_target._conn(inp.context.resolved_site)
    conn.defineXML(
        "<domain type='test'><name>web</name><memory>65536</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    try:
        for act in (
            test_target.power_on_target,
            test_target.remove_target_domain,
            test_target.fence_target,
            test_target.unfence_target,
        ):
            with pytest.raises(ApplicationError) as err:
                act(inp)
            assert err.value.type == "ForeignDomain"
        conn.lookupByName("web")  # still there
    finally:
        conn.lookupByName("web").undefine()


def test_efi_and_windows_xml(tmp_path: Path, test_target: LibvirtTarget) -> None:
    vm = make_vm(firmware="efi", guest="windows2019srv_64Guest")
    facts = {**disk_facts(tmp_path / "w.raw", "raw"),
             "target_disk_bus": "sata", "target_nic_model": "e1000"}  # fmt: skip
    inp = step_input("test:///default", tmp_path, facts, vm=vm)
    from adapters.libvirt.domain import domain_xml, plan_nics

    xml = domain_xml(
        name="web", vm=vm, disks=test_target._disk_images(inp, vm),
        nics=plan_nics(inp.context.resolved_site, vm), domain_type="kvm", application="web",
        workflow_id="wf-1", disk_bus="sata", nic_model="e1000",
    )  # fmt: skip
    root = ET.fromstring(xml)
    assert root.find("os").get("firmware") == "efi"  # type: ignore[union-attr]
    assert root.find("devices/disk/target").get("bus") == "sata"  # type: ignore[union-attr]
    assert root.find("devices/disk/target").get("dev") == "sda"  # type: ignore[union-attr]
    assert root.find("devices/interface/model").get("type") == "e1000"  # type: ignore[union-attr]


def test_validate_flags_unbootable_and_windows(tmp_path: Path, test_target: LibvirtTarget) -> None:
    make_raw(tmp_path / "noboot.raw", SIZE, boot=False)
    inp = step_input("test:///default", tmp_path, disk_facts(tmp_path / "noboot.raw", "raw"))
    with pytest.raises(ApplicationError) as err:
        test_target.validate_guest_tools_and_drivers(inp)
    assert err.value.type == "GuestNotBootable" and "0x55AA" in str(err.value)
    make_raw(tmp_path / "boot.raw", SIZE)
    win = step_input(
        "test:///default", tmp_path, disk_facts(tmp_path / "boot.raw", "raw"),
        vm=make_vm(guest="windows2019srv_64Guest"),
    )  # fmt: skip
    res = test_target.validate_guest_tools_and_drivers(win)
    assert res.facts == {"target_disk_bus": "sata", "target_nic_model": "e1000"}
    efi = step_input(
        "test:///default", tmp_path, disk_facts(tmp_path / "boot.raw", "raw"),
        vm=make_vm(firmware="efi"),
    )  # fmt: skip
    with pytest.raises(ApplicationError, match="UEFI"):
        test_target.validate_guest_tools_and_drivers(efi)


def test_storage_path_escape_rejected(tmp_path: Path, test_target: LibvirtTarget) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    inp = step_input("test:///default", staging, {"converted_path.web-1-2000": "../../etc/passwd"})
    with pytest.raises(ApplicationError) as err:
        test_target.attach_target_storage_profile(inp)
    assert err.value.type == "PathRejected"
    assert list(staging.iterdir()) == []


# --------------------------------------------------------- real libvirt and QEMU


def test_real_flow(tmp_path: Path, embed_uri: str, libvirtd_uri: str) -> None:
    """VMDK -> convert -> volume upload (libvirtd) -> validate -> a real QEMU domain
    (embedded driver) running -> compensations remove domain, volume and image."""
    staging = tmp_path / "staging"
    staging.mkdir()
    content = make_raw(tmp_path / "src.raw", SIZE)
    make_vmdk(tmp_path / "src.raw", staging / "web-2000.vmdk")
    facts = {"staging_path.web-1-2000": "web-2000.vmdk"}

    conv = ConvertActivities()
    facts |= conv.convert_image(step_input(libvirtd_uri, staging, facts)).facts

    storage = LibvirtTarget(pool_root=tmp_path / "pools")
    attached = storage.attach_target_storage_profile(step_input(libvirtd_uri, staging, facts))
    facts |= attached.facts
    vol = Path(facts["target_base.web-1-2000"])
    assert vol.parent == tmp_path / "pools" / "cutover-test"
    assert vol.read_bytes() == Path(facts["converted_path.web-1-2000"]).read_bytes()
    assert attached.details["sparse.web-1-2000"] is True
    # the domain boots an overlay on the frozen base
    top = Path(facts["target_volume.web-1-2000"])
    assert top.name == "web.web-1-2000.overlay.qcow2" and top.parent == vol.parent
    assert facts["target_format.web-1-2000"] == "qcow2"
    assert image_info(top, "qcow2")["full-backing-filename"] == str(vol)

    facts |= storage.validate_guest_tools_and_drivers(
        step_input(libvirtd_uri, staging, facts)
    ).facts

    domains = LibvirtTarget()
    inp = step_input(embed_uri, staging, facts)
    try:
        on = domains.power_on_target(inp)
        assert on.changed and on.details["type"] in ("kvm", "qemu")
        conn = open_connection(embed_uri)
        dom = conn.lookupByName("web")
        assert dom.isActive()
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        pid_file = Path(embed_uri.split("root=")[1]) / "run" / "qemu" / "web.pid"
        pid = int(pid_file.read_text())
        os.kill(pid, 0)  # a real QEMU process
        assert not domains.power_on_target(inp).changed  # running: left running
        # the guest writes: into the overlay, 4 KiB for 4 KiB; the base stays frozen
        base_before = vol.read_bytes()
        guest_write(dom, 4 << 20, 4096, 0x4A)
        guest_write(dom, 6 << 20, 8192, 0x4B)
        assert vol.read_bytes() == base_before
        # fenced for the source's restart: paused, the QEMU process and its disks kept
        fenced = domains.fence_target(inp)
        assert fenced.changed and fenced.details["paused"] == "web"
        assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
        # paused, QEMU has flushed: the overlay's metadata holds every write, exactly
        assert overlay_extents(top) == [(4 << 20, 4096), (6 << 20, 8192)]
        os.kill(pid, 0)
        assert not domains.fence_target(inp).changed  # a retry finds it paused
        assert not domains.power_on_target(inp).changed  # active: never a second boot
        # unfenced (the source did not start): the same process runs on
        assert domains.unfence_target(inp).changed
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert int(pid_file.read_text()) == pid
        assert not domains.unfence_target(inp).changed
        # finalize: the overlay merges into the base while the guest runs, then goes
        committed = domains.commit_target_overlay(inp)
        assert committed.details["targetWrittenBytes"] == 4096 + 8192
        assert committed.details["removed"] == str(top) and not top.exists()
        for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):  # live and persistent
            src = ET.fromstring(dom.XMLDesc(flags)).find("devices/disk/source")
            assert src is not None and src.get("file") == str(vol), flags
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        head = b"".join(d for _, d in read_guest(guest_extents(vol, "qcow2")))
        assert head[4 << 20 : (4 << 20) + 4096] == b"\x4a" * 4096
        assert head[6 << 20 : (6 << 20) + 8192] == b"\x4b" * 8192
        assert not domains.commit_target_overlay(inp).changed  # again: nothing to do
        assert domains.fence_target(inp).changed  # removed while fenced, as a rollback does
    finally:
        off = domains.remove_target_domain(inp)
    assert off.changed
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName("web")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

    detach = storage.detach_target_storage(step_input(libvirtd_uri, staging, facts))
    assert detach.changed and not vol.exists() and not top.exists()
    assert not storage.detach_target_storage(step_input(libvirtd_uri, staging, facts)).changed
    conv.remove_converted_image(step_input(libvirtd_uri, staging, facts))
    assert sorted(p.name for p in staging.rglob("*") if p.is_file()) == ["web-2000.vmdk"]
    assert content[510:512] == b"\x55\xaa"

    storage.close()
    domains.close()


def test_raw_target_takes_no_copy_in_the_downtime(tmp_path: Path, libvirtd_uri: str) -> None:
    """Staged raw -> raw target: convert and attach link the staged copy in (same file
    system), so the window's data work does not grow with the disk; undo removes each link."""
    staging = tmp_path / "staging"
    (staging / "apps" / "web").mkdir(parents=True)
    staged = staging / "apps" / "web" / "web-1-2000.raw"
    content = make_raw(staged, SIZE)
    facts = {"staging_path.web-1-2000": str(staged)}
    conv = ConvertActivities()
    converted = conv.convert_image(step_input(libvirtd_uri, staging, facts, fmt="raw"))
    assert converted.details["method.web-1-2000"] == "link"
    facts |= converted.facts
    storage = LibvirtTarget(pool_root=tmp_path / "pools")
    try:
        attached = storage.attach_target_storage_profile(
            step_input(libvirtd_uri, staging, facts, fmt="raw")
        )
        vol = Path(attached.facts["target_base.web-1-2000"])
        top = Path(attached.facts["target_volume.web-1-2000"])
        assert attached.details["method.web-1-2000"] == "link"
        assert attached.details["bytes.web-1-2000"] == 0
        assert vol.stat().st_ino == staged.stat().st_ino
        assert vol.read_bytes() == content
        facts |= attached.facts
        assert storage.detach_target_storage(step_input(libvirtd_uri, staging, facts)).changed
        assert not vol.exists() and not top.exists() and staged.read_bytes() == content
        conv.remove_converted_image(step_input(libvirtd_uri, staging, facts, fmt="raw"))
        assert not Path(converted.facts["converted_path.web-1-2000"]).exists()
    finally:
        storage.close()


def test_one_applications_undo_never_reaches_anothers_volume(
    tmp_path: Path, libvirtd_uri: str
) -> None:
    """`web` (VM db-1) and `web-db` (VM 1) had the same volume name, web-db-1-2000-target.raw:
    attaching the second deleted the first's volume, and detaching either deleted the
    other's. Volume names now put a '.' (never in an application name) after the app."""
    staging = tmp_path / "staging"
    storage = LibvirtTarget(pool_root=tmp_path / "pools")
    conv = ConvertActivities()
    inputs: dict[str, tuple[VM, dict[str, str], bytes]] = {}
    try:
        for app, vm_name in (("web", "db-1"), ("web-db", "1")):
            vm = make_vm().model_copy(update={"name": vm_name})
            staged = staging / "apps" / app / f"{vm_name}-2000.raw"
            staged.parent.mkdir(parents=True)
            content = make_raw(staged, SIZE)
            facts = {f"staging_path.{vm_name}-2000": str(staged)}
            one = step_input(libvirtd_uri, staging, facts, vm=vm, fmt="raw", application=app)
            facts |= conv.convert_image(one).facts
            one = step_input(libvirtd_uri, staging, facts, vm=vm, fmt="raw", application=app)
            facts |= storage.attach_target_storage_profile(one).facts
            inputs[app] = (vm, facts, content)
        vols = {app: Path(f[f"target_base.{vm.name}-2000"]) for app, (vm, f, _) in inputs.items()}
        assert vols["web"] != vols["web-db"]
        assert all(vols[app].read_bytes() == inputs[app][2] for app in vols)
        vm, facts, _ = inputs["web"]
        undo = step_input(libvirtd_uri, staging, facts, vm=vm, application="web")
        assert storage.detach_target_storage(undo).changed
        assert not vols["web"].exists()
        assert vols["web-db"].read_bytes() == inputs["web-db"][2]  # the other one serves on
    finally:
        storage.close()


def test_concurrent_cutovers_share_a_new_pool(tmp_path: Path, libvirtd_uri: str) -> None:
    """Cutovers of one wave attach storage at the same moment into a pool that does not
    exist yet: threads of one worker and a second worker (another LibvirtTarget) race to
    define and start it; every one gets the same running pool, none fails."""
    targets = [LibvirtTarget(pool_root=tmp_path / "pools") for _ in range(2)]
    site = step_input(libvirtd_uri, tmp_path, {}).context.resolved_site
    conn = open_connection(libvirtd_uri)

    def attach(
        target: LibvirtTarget, name: str, gate: threading.Barrier, got: list[object]
    ) -> None:
        gate.wait()
        try:
            got.append(target._pool(target._conn(site), site, name).UUIDString())
        except BaseException as exc:
            got.append(exc)

    try:
        for round_ in range(8):
            name = f"cutover-race-{round_}"
            gate = threading.Barrier(6)
            got: list[object] = []
            threads = [
                threading.Thread(target=attach, args=(targets[i % 2], name, gate, got))
                for i in range(6)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert [g for g in got if isinstance(g, BaseException)] == [], f"round {round_}"
            assert len(got) == 6 and len(set(got)) == 1
            assert conn.storagePoolLookupByName(name).isActive()
    finally:
        for pool in conn.listAllStoragePools(0):
            if pool.name().startswith("cutover-race-"):
                if pool.isActive():
                    pool.destroy()
                pool.undefine()
        conn.close()
        for target in targets:
            target.close()


def test_a_waves_cutovers_attach_overlays_into_one_pool_at_the_same_instant(
    tmp_path: Path, libvirtd_uri: str
) -> None:
    """Seen in the lab: three cutovers attach at once; one's overlay was being built when
    another refreshed the pool, and libvirt refused ("pool has asynchronous jobs running"):
    that cutover rolled back. Threads of two workers (two LibvirtTargets) now all attach."""
    staging = tmp_path / "staging"
    conv = ConvertActivities()
    targets = [LibvirtTarget(pool_root=tmp_path / "pools") for _ in range(2)]
    inputs = []
    for i in range(12):
        app, vm = f"app{i}", make_vm().model_copy(update={"name": f"vm{i}"})
        staged = staging / "apps" / app / f"vm{i}-2000.raw"
        staged.parent.mkdir(parents=True)
        make_raw(staged, SIZE)
        facts = {f"staging_path.vm{i}-2000": str(staged)}
        one = step_input(libvirtd_uri, staging, facts, vm=vm, fmt="raw", application=app)
        facts |= conv.convert_image(one).facts
        inputs.append(step_input(libvirtd_uri, staging, facts, vm=vm, fmt="raw", application=app))
    got: list[object] = []
    gate = threading.Barrier(len(inputs))

    def attach(i: int) -> None:
        gate.wait()
        try:
            got.append(targets[i % 2].attach_target_storage_profile(inputs[i]))
        except BaseException as exc:
            got.append(exc)

    threads = [threading.Thread(target=attach, args=(i,)) for i in range(len(inputs))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [g for g in got if isinstance(g, BaseException)] == []
        assert len(got) == len(inputs)
    finally:
        for inp, res in zip(inputs, got, strict=False):
            if not isinstance(res, BaseException):
                targets[0].detach_target_storage(inp)
        for target in targets:
            target.close()
