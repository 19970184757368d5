"""Pre-migration concerns: pure unit tests on hand-built inventories (no vCenter, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from cutover.concerns import (
    RULES,
    SEVERITIES,
    Concern,
    MiB,
    TargetLimits,
    blocking,
    dns_label,
    evaluate,
    evaluate_all,
)
from cutover.inventory import (
    VM,
    Cluster,
    Disk,
    GuestDisk,
    Host,
    Inventory,
    Nic,
    PciDevice,
    Snapshot,
)

GiB = 1024 * MiB

#: Every rule id and its severity. A rename or a severity change must fail here: ids are
#: what tooling, suppressions and operators' runbooks key on.
EXPECTED_RULES: dict[str, str] = {
    "cbt.disabled": "warning",
    "cbt.disk_disabled": "warning",
    "snapshot.consolidation_needed": "warning",
    "snapshot.present": "warning",
    "disk.not_on_datastore": "critical",
    "disk.invalid_capacity": "critical",
    "disk.too_many": "critical",
    "disk.independent": "critical",
    "disk.rdm": "critical",
    "disk.shared": "critical",
    "disk.serial_truncated": "warning",
    "device.passthrough": "critical",
    "device.vgpu": "critical",
    "nic.sriov": "warning",
    "device.usb_controller": "info",
    "device.tpm": "warning",
    "vm.template": "critical",
    "vm.fault_tolerance": "critical",
    "vm.suspended": "warning",
    "vm.name_invalid": "critical",
    "vm.name_not_dns_label": "info",
    "vm.latency_sensitivity_high": "warning",
    "affinity.cpu": "warning",
    "affinity.numa": "warning",
    "affinity.host": "warning",
    "hotplug.enabled": "info",
    "firmware.secure_boot": "info",
    "cluster.drs": "info",
    "cluster.dpm": "info",
    "guest.tools_not_running": "info",
    "guest.hostname_empty": "warning",
    "guest.hostname_default": "warning",
    "guest.no_ip": "warning",
    "guest.ip_unverifiable": "info",
    "guest.low_free_space": "critical",
    "guest.disk_key_missing": "info",
    "guest_os.unsupported": "critical",
    "guest_os.generic": "warning",
}


# ------------------------------------------------------------------ builders


def disk(key: int = 2000, **changes: Any) -> Disk:
    """A thin SCSI disk on a datastore, tracked by CBT."""
    n = key - 1999
    data: dict[str, Any] = {
        "key": key,
        "label": f"Hard disk {n}",
        "capacityBytes": 40 * GiB,
        "fileName": f"[ds1] web-01/web-01_{n}.vmdk",
        "datastore": "datastore-11",
        "controllerKey": 1000,
        "controllerType": "scsi",
        "unitNumber": n - 1,
        "thin": True,
        "diskMode": "persistent",
        "sharing": "sharingNone",
        "changeId": f"52 1f 0c 4e/{n}",
    }
    data.update(changes)
    return Disk.model_validate(data)


def clean_vm(**changes: Any) -> VM:
    """A VM nothing is wrong with: RHEL 9, powered on, tools running, CBT on, one disk on a
    datastore, one vmxnet3 NIC, a hostname and an IP, room in every filesystem."""
    data: dict[str, Any] = {
        "moref": "vm-101",
        "name": "web-01",
        "datacenter": "datacenter-1",
        "cluster": "domain-c1",
        "host": "host-10",
        "uuid": "4210a2c4-0000-0000-0000-000000000101",
        "powerState": "poweredOn",
        "guestId": "rhel9_64Guest",
        "guestFullName": "Red Hat Enterprise Linux 9 (64-bit)",
        "guestFamily": "linuxGuest",
        "guestHostname": "web-01.example.com",
        "ipAddresses": ["10.0.0.5"],
        "toolsStatus": "toolsOk",
        "toolsRunningStatus": "guestToolsRunning",
        "numCpu": 2,
        "memoryMB": 4096,
        "changeTrackingEnabled": True,
        "disks": [disk()],
        "nics": [
            Nic(
                key=4000,
                label="Network adapter 1",
                macAddress="00:50:56:aa:bb:01",
                network="network-20",
                adapterType="vmxnet3",
                connected=True,
                startConnected=True,
            )
        ],
        "guestDisks": [
            GuestDisk(path="/", capacityBytes=30 * GiB, freeBytes=12 * GiB),
            GuestDisk(path="/boot", capacityBytes=1 * GiB, freeBytes=700 * MiB),
        ],
    }
    data.update(changes)
    return VM.model_validate(data)


def windows_vm(**changes: Any) -> VM:
    return clean_vm(
        **{
            "name": "app-01",
            "guestId": "windows2019srv_64Guest",
            "guestFullName": "Microsoft Windows Server 2019 (64-bit)",
            "guestFamily": "windowsGuest",
            "guestHostname": "APP-01",
            "guestDisks": [
                GuestDisk(path="C:\\", capacityBytes=60 * GiB, freeBytes=20 * GiB, diskKey=2000)
            ],
            **changes,
        }
    )


def cluster(**changes: Any) -> Cluster:
    data: dict[str, Any] = {
        "moref": "domain-c1",
        "name": "prod-cluster-03",
        "datacenter": "datacenter-1",
        "hosts": ["host-10"],
    }
    data.update(changes)
    return Cluster.model_validate(data)


def host(**changes: Any) -> Host:
    data: dict[str, Any] = {
        "moref": "host-10",
        "name": "esx10.example.com",
        "datacenter": "datacenter-1",
        "cluster": "domain-c1",
    }
    data.update(changes)
    return Host.model_validate(data)


def inventory(*vms: VM, clusters: list[Cluster] | None = None) -> Inventory:
    return Inventory(
        source="vcenter.example.com",
        collectedAt=datetime(2025, 1, 1, tzinfo=UTC),
        clusters=[cluster()] if clusters is None else clusters,
        hosts=[host()],
        vms=list(vms),
    )


# ------------------------------------------------------------------ one case per rule


@dataclass(frozen=True)
class Case:
    rule: str
    severity: str
    vm: VM
    disk: str | None = None
    #: Other concerns the same change necessarily raises.
    also: frozenset[str] = frozenset()
    clusters: list[Cluster] | None = None
    target: TargetLimits | None = None
    name: str = ""


def _cases() -> list[Case]:
    two_disks = [disk(2000), disk(2001)]
    return [
        Case("cbt.disabled", "warning", clean_vm(changeTrackingEnabled=False)),
        Case(
            "cbt.disk_disabled",
            "warning",
            clean_vm(disks=[disk(2000), disk(2001, changeId=None)]),
            disk="Hard disk 2",
        ),
        Case("snapshot.consolidation_needed", "warning", clean_vm(consolidationNeeded=True)),
        Case(
            "snapshot.present",
            "warning",
            clean_vm(snapshots=[Snapshot(name="before-patch", moref="snapshot-1")]),
        ),
        Case(
            "disk.not_on_datastore",
            "critical",
            clean_vm(disks=[disk(2000), disk(2001, fileName="", datastore=None)]),
            disk="Hard disk 2",
        ),
        Case(
            "disk.not_on_datastore",
            "critical",
            clean_vm(disks=[disk(datastore=None)]),
            disk="Hard disk 1",
            name="no-datastore-only",
        ),
        Case(
            "disk.invalid_capacity",
            "critical",
            clean_vm(disks=[disk(capacityBytes=0)]),
            disk="Hard disk 1",
        ),
        Case(
            "disk.invalid_capacity",
            "critical",
            clean_vm(disks=[disk(2000), disk(2001, capacityBytes=10 * GiB + 100)]),
            disk="Hard disk 2",
            name="not-sector-multiple",
        ),
        Case(
            "disk.too_many",
            "critical",
            clean_vm(disks=two_disks),
            target=TargetLimits(maxDisks=1),
        ),
        Case(
            "disk.too_many",
            "critical",
            clean_vm(disks=[disk(2000 + i) for i in range(257)]),
            name="default-limit-257",
        ),
        Case(
            "disk.independent",
            "critical",
            clean_vm(disks=[disk(diskMode="independent_persistent")]),
            disk="Hard disk 1",
        ),
        Case(
            "disk.independent",
            "critical",
            clean_vm(disks=[disk(2000), disk(2001, diskMode="independent_nonpersistent")]),
            disk="Hard disk 2",
            name="nonpersistent",
        ),
        Case(
            "disk.rdm",
            "critical",
            clean_vm(disks=[disk(rdm=True, rdmCompatibilityMode="virtualMode")]),
            disk="Hard disk 1",
        ),
        Case(
            "disk.shared",
            "critical",
            clean_vm(disks=[disk(sharing="sharingMultiWriter")]),
            disk="Hard disk 1",
        ),
        Case("disk.serial_truncated", "warning", clean_vm(diskEnableUuid=True)),
        Case(
            "device.passthrough",
            "critical",
            clean_vm(pciDevices=[PciDevice(key=13000, label="PCI device 0", kind="passthrough")]),
        ),
        Case(
            "device.passthrough",
            "critical",
            clean_vm(pciDevices=[PciDevice(key=13000, label="PCI 0", kind="dynamic-passthrough")]),
            name="dynamic",
        ),
        Case(
            "device.vgpu",
            "critical",
            clean_vm(
                pciDevices=[PciDevice(key=13000, label="PCI 0", kind="vgpu", detail="grid_t4-4q")]
            ),
        ),
        Case(
            "nic.sriov",
            "warning",
            clean_vm(
                nics=[Nic(key=4000, label="Network adapter 1", adapterType="sriov", sriov=True)]
            ),
        ),
        Case("device.usb_controller", "info", clean_vm(usbControllers=1)),
        Case("device.tpm", "warning", clean_vm(tpm=True)),
        Case("vm.template", "critical", clean_vm(template=True)),
        Case("vm.fault_tolerance", "critical", clean_vm(faultTolerance=True)),
        Case(
            "vm.suspended",
            "warning",
            clean_vm(powerState="suspended"),
            also=frozenset({"guest.ip_unverifiable"}),
        ),
        Case("vm.name_invalid", "critical", clean_vm(name="web/01"), name="slash"),
        Case("vm.name_invalid", "critical", clean_vm(name="web%2f01"), name="escaped-slash"),
        Case("vm.name_invalid", "critical", clean_vm(name="web\n01"), name="newline"),
        Case("vm.name_invalid", "critical", clean_vm(name="w" * 252), name="too-long"),
        Case("vm.name_invalid", "critical", clean_vm(name=" "), name="blank"),
        Case("vm.name_not_dns_label", "info", clean_vm(name="Web_Server 01")),
        Case("vm.name_not_dns_label", "info", clean_vm(name="w" * 64), name="64-chars"),
        Case("vm.latency_sensitivity_high", "warning", clean_vm(latencySensitivity="high")),
        Case("affinity.cpu", "warning", clean_vm(cpuAffinity=[0, 1])),
        Case("affinity.numa", "warning", clean_vm(numaNodeAffinity=[1])),
        Case(
            "affinity.host",
            "warning",
            clean_vm(),
            clusters=[cluster(vmHostRules={"pin-rack-a": ["web-01", "web-02"]})],
        ),
        Case(
            "affinity.host",
            "warning",
            clean_vm(cluster=None),
            clusters=[cluster(vmHostRules={"pin-rack-a": ["vm-101"]})],
            name="via-host-by-moref",
        ),
        Case("hotplug.enabled", "info", clean_vm(cpuHotAdd=True)),
        Case("hotplug.enabled", "info", clean_vm(memoryHotAdd=True), name="memory"),
        Case("firmware.secure_boot", "info", clean_vm(firmware="efi", secureBoot=True)),
        Case(
            "cluster.drs",
            "info",
            clean_vm(),
            clusters=[cluster(drsEnabled=True, drsBehavior="fullyAutomated")],
        ),
        Case("cluster.dpm", "info", clean_vm(), clusters=[cluster(dpmEnabled=True)]),
        Case(
            "guest.tools_not_running",
            "info",
            clean_vm(toolsRunningStatus="guestToolsNotRunning"),
        ),
        Case("guest.hostname_empty", "warning", clean_vm(guestHostname="")),
        Case("guest.hostname_empty", "warning", clean_vm(guestHostname=None), name="none"),
        Case("guest.hostname_default", "warning", clean_vm(guestHostname="localhost")),
        Case(
            "guest.hostname_default",
            "warning",
            clean_vm(guestHostname="localhost.localdomain"),
            name="localdomain",
        ),
        Case("guest.no_ip", "warning", clean_vm(ipAddresses=[])),
        Case(
            "guest.no_ip",
            "warning",
            clean_vm(ipAddresses=["127.0.0.1", "fe80::250:56ff:feaa:bb01", "169.254.3.4"]),
            name="link-local-only",
        ),
        Case("guest.ip_unverifiable", "info", clean_vm(powerState="poweredOff")),
        Case(
            "guest.low_free_space",
            "critical",
            clean_vm(guestDisks=[GuestDisk(path="/", capacityBytes=GiB, freeBytes=99 * MiB)]),
            disk="/",
        ),
        Case(
            "guest.low_free_space",
            "critical",
            clean_vm(guestDisks=[GuestDisk(path="/boot", capacityBytes=GiB, freeBytes=49 * MiB)]),
            disk="/boot",
            name="boot",
        ),
        Case(
            "guest.low_free_space",
            "critical",
            windows_vm(
                guestDisks=[
                    GuestDisk(path="C:\\", capacityBytes=GiB, freeBytes=99 * MiB, diskKey=2000)
                ]
            ),
            disk="C:\\",
            name="windows-c",
        ),
        Case(
            "guest.low_free_space",
            "critical",
            clean_vm(
                guestDisks=[
                    GuestDisk(path="/", capacityBytes=GiB, freeBytes=GiB // 2),
                    GuestDisk(path="/data", capacityBytes=GiB, freeBytes=9 * MiB),
                ]
            ),
            disk="/data",
            name="other",
        ),
        Case(
            "guest.disk_key_missing",
            "info",
            windows_vm(
                guestDisks=[
                    GuestDisk(path="C:\\", capacityBytes=60 * GiB, freeBytes=GiB, diskKey=2000),
                    GuestDisk(path="D:\\", capacityBytes=60 * GiB, freeBytes=GiB),
                ]
            ),
            disk="D:\\",
        ),
        Case(
            "guest_os.unsupported",
            "critical",
            clean_vm(guestId="otherGuest64", guestFamily=None, guestFullName="Other (64-bit)"),
            name="other-id",
        ),
        Case(
            "guest_os.unsupported",
            "critical",
            clean_vm(guestId="solaris11_64Guest", guestFamily="solarisGuest"),
            name="solaris-family",
        ),
        Case(
            "guest_os.unsupported",
            "critical",
            clean_vm(guestId="freebsd13_64Guest", guestFamily=None),
            name="freebsd-powered-off-style",
        ),
        Case(
            "guest_os.unsupported",
            "critical",
            windows_vm(guestId="win2000ServGuest", guestFullName="Microsoft Windows 2000"),
            name="windows-2000",
        ),
        Case(
            "guest_os.unsupported",
            "critical",
            clean_vm(guestId=None, guestFamily=None, guestFullName=None),
            name="nothing-known",
        ),
        Case(
            "guest_os.unsupported",
            "critical",
            clean_vm(guestId="rhel9_64Guest", guestFamily="otherGuestFamily"),
            name="family-from-tools",
        ),
        Case("guest_os.generic", "warning", clean_vm(guestId="otherLinux64Guest")),
        Case(
            "guest_os.generic",
            "warning",
            clean_vm(guestId="otherGuest", guestFamily="linuxGuest"),
            name="other-id-linux-family",
        ),
    ]


CASES = _cases()


def _run(case: Case) -> list[Concern]:
    return evaluate(inventory(case.vm, clusters=case.clusters), case.vm, case.target)


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=f"{c.rule}-{c.name}" if c.name else c.rule) for c in CASES]
)
def test_rule_fires_alone(case: Case) -> None:
    concerns = _run(case)
    assert {c.id for c in concerns} == {case.rule} | case.also, concerns
    mine = [c for c in concerns if c.id == case.rule]
    assert len(mine) == 1, mine
    concern = mine[0]
    assert concern.severity == case.severity
    assert concern.vm == case.vm.name
    assert concern.disk == case.disk
    assert concern.message.strip() and concern.action.strip()
    assert concern.action == RULES[case.rule].action


def test_every_rule_has_a_case() -> None:
    assert {c.rule for c in CASES} == set(RULES)


# ------------------------------------------------------------------ the registry


def test_clean_vm_raises_nothing() -> None:
    for vm in (clean_vm(), windows_vm()):
        concerns = evaluate(inventory(vm), vm)
        assert not [c for c in concerns if c.severity in ("critical", "warning")], concerns
        assert concerns == []


def test_rule_ids_and_severities_are_stable() -> None:
    assert {rid: rule.severity for rid, rule in RULES.items()} == EXPECTED_RULES
    assert list(RULES) == list(EXPECTED_RULES)  # evaluation order is part of the contract


def test_severities_are_from_the_allowed_set() -> None:
    assert SEVERITIES == ("critical", "warning", "info")
    assert {rule.severity for rule in RULES.values()} <= set(SEVERITIES)
    for case in CASES:
        assert {c.severity for c in _run(case)} <= set(SEVERITIES)


def test_every_rule_documents_its_action_and_severity_choice() -> None:
    for rid, rule in RULES.items():
        assert rule.action.strip(), rid
        assert (rule.check.__doc__ or "").strip(), f"{rid}: say why this severity"


def test_every_concern_has_a_message_and_action() -> None:
    for case in CASES:
        for concern in _run(case):
            assert concern.message.strip(), concern
            assert concern.action.strip(), concern


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        RULES["x.y"] = RULES["cbt.disabled"]  # type: ignore[index]


# ------------------------------------------------------------------ evaluate, blocking


def _troubled() -> VM:
    return clean_vm(
        changeTrackingEnabled=False,
        snapshots=[Snapshot(name="s1", moref="snapshot-1")],
        disks=[disk(2000, rdm=True), disk(2001, diskMode="independent_persistent")],
        usbControllers=2,
        cpuHotAdd=True,
        tpm=True,
    )


def test_blocking_returns_only_the_critical_ones() -> None:
    vm = _troubled()
    concerns = evaluate(inventory(vm), vm)
    assert {c.severity for c in concerns} == set(SEVERITIES)
    critical = blocking(concerns)
    assert critical == [c for c in concerns if c.severity == "critical"]
    assert [(c.id, c.disk) for c in critical] == [
        ("disk.independent", "Hard disk 2"),
        ("disk.rdm", "Hard disk 1"),
    ]
    assert blocking([c for c in concerns if c.severity != "critical"]) == []
    assert blocking([]) == []


def test_evaluate_orders_most_severe_first_then_by_rule() -> None:
    vm = _troubled()
    concerns = evaluate(inventory(vm), vm)
    ranks = [SEVERITIES.index(c.severity) for c in concerns]
    assert ranks == sorted(ranks)
    order = list(RULES)
    for sev in SEVERITIES:
        ids = [order.index(c.id) for c in concerns if c.severity == sev]
        assert ids == sorted(ids)


def test_evaluate_is_deterministic_and_pure() -> None:
    vm = _troubled()
    inv = inventory(vm)
    before = inv.model_dump()
    assert evaluate(inv, vm) == evaluate(inv, vm)
    assert inv.model_dump() == before


def test_evaluate_all_covers_every_vm() -> None:
    vms = [
        clean_vm(),
        clean_vm(moref="vm-102", name="db-01", tpm=True),
        clean_vm(moref="vm-103", name="web-01", template=True),  # same name, other folder
    ]
    inv = inventory(*vms)
    result = evaluate_all(inv)
    assert list(result) == ["vm-101", "vm-102", "vm-103"]
    assert result["vm-101"] == []
    assert [c.id for c in result["vm-102"]] == ["device.tpm"]
    assert [c.id for c in result["vm-103"]] == ["vm.template"]
    assert all(c.vm == inv.vm(moref).name for moref, cs in result.items() for c in cs)
    assert evaluate_all(inventory()) == {}


def test_evaluate_all_passes_the_target_on() -> None:
    vm = clean_vm(disks=[disk(2000), disk(2001)])
    result = evaluate_all(inventory(vm), TargetLimits(maxDisks=1))
    assert [c.id for c in result["vm-101"]] == ["disk.too_many"]


# ------------------------------------------------------------------ the Concern model


def test_concern_is_frozen_and_strict() -> None:
    c = Concern(id="cbt.disabled", severity="warning", vm="web-01", message="m", action="a")
    with pytest.raises(ValidationError):
        c.message = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Concern.model_validate({**c.model_dump(), "extra": 1})
    with pytest.raises(ValidationError):
        Concern.model_validate({**c.model_dump(), "severity": "error"})
    for empty in ("message", "action", "vm"):
        with pytest.raises(ValidationError):
            Concern.model_validate({**c.model_dump(), empty: ""})
    with pytest.raises(ValidationError):
        Concern.model_validate({**c.model_dump(), "id": "Not An Id"})


# ------------------------------------------------------------------ rule details


@pytest.mark.parametrize(
    ("path", "free", "flagged"),
    [
        ("/", 100 * MiB, False),
        ("/", 100 * MiB - 1, True),
        ("/boot", 50 * MiB, False),
        ("/boot", 50 * MiB - 1, True),
        ("/var", 10 * MiB, False),
        ("/var", 10 * MiB - 1, True),
        ("/snap/core22/1380", 0, False),
    ],
)
def test_free_space_thresholds(path: str, free: int, flagged: bool) -> None:
    vm = clean_vm(guestDisks=[GuestDisk(path=path, capacityBytes=GiB, freeBytes=free)])
    ids = [c.id for c in evaluate(inventory(vm), vm)]
    assert ids == (["guest.low_free_space"] if flagged else [])


@pytest.mark.parametrize(("path", "flagged"), [("C:\\", True), ("c:", True), ("E:\\", False)])
def test_free_space_windows_system_drive(path: str, flagged: bool) -> None:
    gd = GuestDisk(path=path, capacityBytes=GiB, freeBytes=50 * MiB, diskKey=2000)
    vm = windows_vm(guestDisks=[gd])
    ids = [c.id for c in evaluate(inventory(vm), vm)]
    assert ids == (["guest.low_free_space"] if flagged else [])


def test_free_space_threshold_comes_from_the_target() -> None:
    vm = clean_vm()
    strict = TargetLimits(minFreeRootBytes=13 * GiB)
    assert [(c.id, c.disk) for c in evaluate(inventory(vm), vm, strict)] == [
        ("guest.low_free_space", "/")
    ]


def test_default_disk_limit_is_256() -> None:
    assert TargetLimits().maxDisks == 256
    vm = clean_vm(disks=[disk(2000 + i) for i in range(256)])
    assert evaluate(inventory(vm), vm) == []


def test_serial_concern_needs_a_scsi_disk() -> None:
    vm = clean_vm(diskEnableUuid=True, disks=[disk(controllerType="sata")])
    assert evaluate(inventory(vm), vm) == []


def test_disk_cbt_concern_only_when_vm_cbt_is_on_and_not_for_rdm() -> None:
    off = clean_vm(changeTrackingEnabled=False, disks=[disk(changeId=None)])
    assert [c.id for c in evaluate(inventory(off), off)] == ["cbt.disabled"]
    rdm = clean_vm(disks=[disk(changeId=None, rdm=True)])
    assert [c.id for c in evaluate(inventory(rdm), rdm)] == ["disk.rdm"]


def test_disk_cbt_message_names_the_vmx_setting() -> None:
    vm = clean_vm(disks=[disk(2000), disk(2001, controllerKey=1001, unitNumber=3, changeId=None)])
    (concern,) = evaluate(inventory(vm), vm)
    assert "scsi1:3.ctkEnabled = TRUE" in concern.message


def test_one_concern_per_bad_disk() -> None:
    vm = clean_vm(disks=[disk(2000 + i, sharing="sharingMultiWriter") for i in range(3)])
    concerns = evaluate(inventory(vm), vm)
    assert [(c.id, c.disk) for c in concerns] == [
        ("disk.shared", "Hard disk 1"),
        ("disk.shared", "Hard disk 2"),
        ("disk.shared", "Hard disk 3"),
    ]


def test_host_rules_of_another_cluster_do_not_apply() -> None:
    vm = clean_vm()
    other = cluster(moref="domain-c2", name="other", vmHostRules={"r": ["web-01"]})
    assert evaluate(inventory(vm, clusters=[cluster(), other]), vm) == []


def test_host_rules_searched_everywhere_when_the_cluster_is_unknown() -> None:
    vm = clean_vm(cluster=None, host=None)
    rules = cluster(moref="domain-c2", name="other", vmHostRules={"r": ["web-01"]})
    assert [c.id for c in evaluate(inventory(vm, clusters=[rules]), vm)] == ["affinity.host"]


def test_empty_name_reports_the_moref() -> None:
    vm = clean_vm(name="")
    concerns = evaluate(inventory(vm), vm)
    assert [(c.id, c.vm) for c in concerns] == [("vm.name_invalid", "vm-101")]


def test_default_hostname_flagged_even_when_powered_off() -> None:
    vm = clean_vm(powerState="poweredOff", guestHostname="localhost")
    ids = {c.id for c in evaluate(inventory(vm), vm)}
    assert ids == {"guest.hostname_default", "guest.ip_unverifiable"}


def test_guest_facts_not_required_when_powered_off() -> None:
    vm = clean_vm(
        powerState="poweredOff", guestHostname=None, ipAddresses=[], toolsRunningStatus=None
    )
    assert [c.id for c in evaluate(inventory(vm), vm)] == ["guest.ip_unverifiable"]


@pytest.mark.parametrize(
    ("guest_id", "family"),
    [
        ("rhel9_64Guest", None),
        ("ubuntu64Guest", "linuxGuest"),
        ("debian12_64Guest", None),
        ("windows9Server64Guest", "windowsGuest"),
        ("windows11_64Guest", None),
        ("winXPProGuest", "windowsGuest"),
    ],
)
def test_supported_guests_raise_nothing(guest_id: str, family: str | None) -> None:
    vm = clean_vm(guestId=guest_id, guestFamily=family)
    assert [c.id for c in evaluate(inventory(vm), vm) if c.id.startswith("guest_os.")] == []


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("web-01", "web-01"),
        ("Web_Server 01", "web-server-01"),
        ("--db--", "db"),
        ("a" * 70, "a" * 63),
        ("x" * 62 + "_y", "x" * 62),
        ("日本", ""),
    ],
)
def test_dns_label(name: str, label: str) -> None:
    assert dns_label(name) == label


def test_dns_label_message_names_the_derived_label() -> None:
    vm = clean_vm(name="Web_Server 01")
    (concern,) = evaluate(inventory(vm), vm)
    assert "'web-server-01'" in concern.message
    odd = clean_vm(name="日本")
    (concern,) = evaluate(inventory(odd), odd)
    assert "'vm-vm-101'" in concern.message
