"""Pre-migration concerns: what in a vSphere VM stands in the way of (or changes) its cutover.

Plain, deterministic functions of the inventory model (`cutover.inventory`): no I/O, so they
give the same answer for an inventory read live from vCenter and for one imported from a
file, and they can run inside the workflow's pre-checks.

Each rule has a stable id, a fixed severity and a "what we do" text, registered in `RULES`.
Severities mean, for an *automated* cutover:

- ``critical``: the cutover would fail, corrupt data or silently lose something the
  application needs. A critical concern fails the cutover's pre-checks with its message
  (`blocking`); a person has to change the source (or the target limits) first.
- ``warning``: the cutover works, but something is lost, slower or different on the target,
  and a person should decide whether that is acceptable before the downtime window.
- ``info``: worth knowing; nothing to do for most VMs.

The rules cover what Forklift/MTV's VMware validation flags (its
``validation/policies/io/konveyor/forklift/vmware/*.rego``), with severities chosen for an
unattended cutover to libvirt/KVM rather than copied, plus a few of our own (templates,
suspended VMs, latency sensitivity, secure boot, VMware Tools, vGPU, generic guest OS ids).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from cutover.inventory import VM, Cluster, Disk, GuestDisk, Inventory

Severity = Literal["critical", "warning", "info"]

#: Every severity, most severe first (also the order `evaluate` sorts by).
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "info")

MiB = 1024 * 1024

_ID = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"


class Concern(BaseModel):
    """One thing about one VM (and maybe one of its disks) a person should know before cutover."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Stable rule id, e.g. ``cbt.disabled`` (tooling and suppressions key on it).
    id: Annotated[str, Field(pattern=_ID)]
    severity: Severity
    #: The VM's name (its MoRef when the name is empty).
    vm: Annotated[str, Field(min_length=1)]
    #: The VM disk's label (else its file name), or for guest-filesystem concerns the
    #: guest's path (``/``, ``C:\\``); None when the concern is about the whole VM.
    disk: str | None = None
    #: What is wrong and what a person should do about it.
    message: Annotated[str, Field(min_length=1)]
    #: What the cutover itself does about it.
    action: Annotated[str, Field(min_length=1)]


class TargetLimits(BaseModel):
    """What the target platform accepts; the defaults describe libvirt/KVM fed by virt-v2v.

    - ``maxDisks`` = 256: the target attaches disks on virtio-scsi. One virtio-scsi
      controller addresses targets 0-255 with up to 16384 LUNs each (QEMU
      ``VIRTIO_SCSI_MAX_TARGET`` 255, ``VIRTIO_SCSI_MAX_LUN`` 16383), so 256 disks fit one
      controller at one LUN per target, with no extra PCI slots. (libvirt's automatic
      addressing puts 7 units on each SCSI controller and adds controllers as needed, so
      this is not a libvirt ceiling.) It also equals vSphere's own PVSCSI maximum
      (4 controllers x 64 disks): every all-SCSI layout vSphere accepts fits. virtio-blk,
      at one PCI slot per disk, would be far lower (about 28 on a pc/i440fx root bus).
      Targets with a stricter limit set their own (Forklift uses 165 for KubeVirt).
    - ``guestFamilies``: vSphere guest families virt-v2v converts (its supported guests are
      RHEL/CentOS/Scientific Linux 4+, Oracle Linux, Fedora, SLES/openSUSE 10+, ALT 9+,
      Debian 6+, Ubuntu 10.04+, Windows XP to 11 / Server 2025; virt-v2v-support(1)).
    - ``unsupportedGuestIds``: guest ids (``fnmatch`` patterns, matched lower-cased) virt-v2v
      cannot convert even in a convertible family: pre-XP Windows, RHEL 2.1/3, and the
      non-Linux/Windows systems, listed so a powered-off VM (no guest family reported)
      is judged too.
    - ``unknownGuestIds``: ids that say nothing about the OS (vSphere's "Other"); acceptable
      only when VMware Tools reports a convertible family.
    - ``genericGuestIds``: "Other Linux" ids: virt-v2v identifies the distribution by
      inspecting the disk and converts it only if it knows it.
    - ``maxVmNameBytes`` = 251: the libvirt domain keeps the VM's name, and libvirt stores it
      as ``<name>.xml``, which must fit a 255-byte file name.
    - ``minFree*Bytes``: free space virt-v2v requires in each guest filesystem to convert
      (driver injection, a new initramfs), from virt-v2v(1) "Free space for conversion":
      Linux ``/`` 100 MB, ``/boot`` 50 MB, Windows ``C:`` 100 MB, any other 10 MB (MiB in
      its code). Its code is at most as strict as its documentation, so these are safe.
    - ``freeSpaceIgnoredPaths``: guest mounts that are read-only by nature and not in the
      guest's fstab (snap squashfs images always report 0 bytes free); virt-v2v does not
      check them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "libvirt-kvm"
    maxDisks: Annotated[int, Field(ge=1)] = 256
    guestFamilies: frozenset[str] = frozenset({"linuxGuest", "windowsGuest"})
    unsupportedGuestIds: tuple[str, ...] = (
        "dosguest",
        "win31guest",
        "win95guest",
        "win98guest",
        "winmeguest",
        "winntguest",
        "win2000*",
        "os2guest",
        "ecomstation*",
        "netware*",
        "solaris*",
        "darwin*",
        "freebsd*",
        "unixware*",
        "openserver*",
        "vmkernel*",
        "crxpod*",
        "crxsys*",
        "rhel2guest",
        "rhel3*",
    )
    unknownGuestIds: tuple[str, ...] = ("otherguest", "otherguest64")
    genericGuestIds: tuple[str, ...] = ("other*linux*", "genericlinux*")
    maxVmNameBytes: Annotated[int, Field(ge=1)] = 251
    minFreeRootBytes: Annotated[int, Field(ge=0)] = 100 * MiB
    minFreeBootBytes: Annotated[int, Field(ge=0)] = 50 * MiB
    minFreeWindowsSystemBytes: Annotated[int, Field(ge=0)] = 100 * MiB
    minFreeOtherBytes: Annotated[int, Field(ge=0)] = 10 * MiB
    freeSpaceIgnoredPaths: tuple[str, ...] = ("/snap/*",)


class Hit(NamedTuple):
    """What a rule found: a message, and the disk (or guest path) it is about, if any."""

    message: str
    disk: str | None = None


Check = Callable[[Inventory, VM, TargetLimits], Iterable[Hit]]


class Rule(NamedTuple):
    severity: Severity
    #: What the cutover does about it (the concern's ``action``).
    action: str
    check: Check


_RULES: dict[str, Rule] = {}

#: Every rule, by id, in evaluation order (read-only).
RULES: Mapping[str, Rule] = MappingProxyType(_RULES)


def _rule(rule_id: str, severity: Severity, action: str) -> Callable[[Check], Check]:
    if not re.match(_ID, rule_id):
        raise ValueError(f"bad rule id {rule_id!r}")

    def register(check: Check) -> Check:
        if rule_id in _RULES:
            raise ValueError(f"duplicate rule id {rule_id!r}")
        _RULES[rule_id] = Rule(severity, " ".join(action.split()), check)
        return check

    return register


# ------------------------------------------------------------------ public API


def evaluate(inventory: Inventory, vm: VM, target: TargetLimits | None = None) -> list[Concern]:
    """Every concern about `vm`: most severe first, then in `RULES` order, then by disk."""
    limits = target if target is not None else TargetLimits()
    concerns = [
        Concern(
            id=rule_id,
            severity=rule.severity,
            vm=vm.name or vm.moref,
            disk=hit.disk,
            message=hit.message,
            action=rule.action,
        )
        for rule_id, rule in _RULES.items()
        for hit in rule.check(inventory, vm, limits)
    ]
    return sorted(concerns, key=lambda c: SEVERITIES.index(c.severity))


def evaluate_all(
    inventory: Inventory, target: TargetLimits | None = None
) -> dict[str, list[Concern]]:
    """Concerns for every VM in the inventory, keyed by VM MoRef (unique; names may repeat
    across datacenters). Every VM has a key, with an empty list when nothing is wrong."""
    return {vm.moref: evaluate(inventory, vm, target) for vm in inventory.vms}


def blocking(concerns: Iterable[Concern]) -> list[Concern]:
    """The critical concerns, in order: any of them fails the cutover's pre-checks."""
    return [c for c in concerns if c.severity == "critical"]


def dns_label(name: str) -> str:
    """`name` as a DNS-1123 label: lower-cased, each run of other characters replaced by '-',
    trimmed of '-' and cut to 63 characters. Empty when nothing usable is left."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return label[:63].rstrip("-")


# ------------------------------------------------------------------ helpers


def _disk_name(disk: Disk) -> str:
    return disk.label or disk.fileName or f"disk key {disk.key}"


#: vSphere's first device key of each controller type (controller N has key base + N).
_CONTROLLER_KEY_BASE = {"scsi": 1000, "sata": 15000, "nvme": 31000, "ide": 200}


def _vmx_device(disk: Disk) -> str:
    """The disk's name in the VM's advanced settings, e.g. ``scsi0:1``; ``scsiX:Y`` if unknown."""
    bus = disk.controllerType
    base = _CONTROLLER_KEY_BASE.get(bus or "")
    if bus is None or base is None or disk.controllerKey is None or disk.unitNumber is None:
        return "scsiX:Y"
    return f"{bus}{disk.controllerKey - base}:{disk.unitNumber}"


def _powered_on(vm: VM) -> bool:
    return vm.powerState == "poweredOn"


def _is_windows(vm: VM) -> bool:
    return vm.guestFamily == "windowsGuest" or (vm.guestId or "").lower().startswith("win")


def _matches(value: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(value.lower(), p.lower()) for p in patterns)


def _cluster(inventory: Inventory, vm: VM) -> Cluster | None:
    """The VM's cluster, by `VM.cluster` (MoRef or name), else through its host."""
    key = vm.cluster
    if key is None and vm.host is not None:
        host = next((h for h in inventory.hosts if vm.host in (h.moref, h.name)), None)
        key = host.cluster if host is not None else None
    if key is None:
        return None
    return next((c for c in inventory.clusters if key in (c.moref, c.name)), None)


def _usable_ips(vm: VM) -> list[str]:
    """Addresses other hosts could reach: no loopback, link-local or unspecified ones."""
    usable: list[str] = []
    for text in vm.ipAddresses:
        try:
            ip = ipaddress.ip_interface(text.strip()).ip
        except ValueError:
            continue
        if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
            usable.append(text)
    return usable


def _disk_cbt_active(vm: VM, disk: Disk) -> bool:
    """Whether CBT tracks this disk.

    The inventory has no per-disk ``ctkEnabled`` yet, so this infers it: vSphere gives a
    disk backing a ``changeId`` only while CBT tracks the disk.
    """
    return vm.changeTrackingEnabled and disk.changeId is not None


def _independent(disk: Disk) -> bool:
    return (disk.diskMode or "").startswith("independent")


def _windows_system_drive(path: str) -> bool:
    return re.fullmatch(r"[cC]:[\\/]?", path) is not None


def _min_free(gd: GuestDisk, t: TargetLimits) -> tuple[int, str]:
    if gd.path == "/":
        return t.minFreeRootBytes, "the root filesystem"
    if gd.path == "/boot":
        return t.minFreeBootBytes, "/boot"
    if _windows_system_drive(gd.path):
        return t.minFreeWindowsSystemBytes, "the Windows system drive"
    return t.minFreeOtherBytes, "any filesystem"


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


# ------------------------------------------------------------------ rules: data path


@_rule(
    "cbt.disabled",
    "warning",
    """The warm phase still runs: without CBT, each incremental pass reads every disk in full
    and copies only blocks whose digest changed, which is much slower on large disks and
    lengthens the final sync inside the downtime window. Cold cutovers are unaffected.""",
)
def _cbt_disabled(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning, not critical: we can fall back to digest comparison, only slower."""
    if not vm.changeTrackingEnabled:
        yield Hit(
            "Changed Block Tracking (CBT) is disabled on the VM. Enable it "
            "(ctkEnabled = TRUE in the VM's advanced settings) and let it take effect with a "
            "power cycle or a snapshot create/delete before the warm phase starts."
        )


@_rule(
    "cbt.disk_disabled",
    "warning",
    """Incremental passes for this disk read it in full and copy blocks whose digest changed;
    the other disks still use CBT.""",
)
def _cbt_disk_disabled(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning, like `cbt.disabled`, for a disk CBT does not track while the VM has CBT on.

    Reported only when VM-level CBT is on (else `cbt.disabled` says it once), and not for
    independent or RDM disks, which have their own critical concerns.
    """
    if not vm.changeTrackingEnabled:
        return
    for disk in vm.disks:
        if disk.rdm or _independent(disk) or _disk_cbt_active(vm, disk):
            continue
        yield Hit(
            f"CBT does not track disk '{_disk_name(disk)}' although it is enabled on the VM. "
            f"Set {_vmx_device(disk)}.ctkEnabled = TRUE (or re-enable CBT on the VM) and "
            "take and delete a snapshot so it starts tracking.",
            _disk_name(disk),
        )


@_rule(
    "snapshot.consolidation_needed",
    "warning",
    """We read disks through the current snapshot chain, as it is; leftover delta disks slow
    every read, and the warm phase's own snapshot and its removal at finalize are more
    likely to fail on such a chain.""",
)
def _consolidation_needed(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning: data is still read correctly, but reads are slower and snapshot operations
    fragile until the chain is consolidated, which is a routine, online fix."""
    if vm.consolidationNeeded:
        yield Hit(
            "vSphere reports that the VM's disks need consolidation (delta disks left "
            "behind by a failed snapshot removal). Run Snapshots > Consolidate before the "
            "cutover."
        )


@_rule(
    "snapshot.present",
    "warning",
    """We copy the VM's current state only. Earlier snapshots do not exist on the target, and
    the warm phase adds its own snapshot on top of the chain, making reads slower.""",
)
def _snapshots(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning: nothing breaks, but the snapshots' restore points are lost and long chains
    slow the copy; someone may still rely on them as a rollback point."""
    if vm.snapshots:
        names = ", ".join(f"'{s.name}'" for s in vm.snapshots)
        yield Hit(
            f"The VM has {len(vm.snapshots)} snapshot(s): {names}. Delete them (after "
            "confirming nobody needs them as a restore point) so the chain is short; they "
            "are not carried to the target."
        )


@_rule(
    "disk.not_on_datastore",
    "critical",
    """We refuse: disks are read from their datastore (VDDK/NBD); a disk without one cannot
    be copied.""",
)
def _no_datastore(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: there is nothing we can read the disk's data from."""
    for disk in vm.disks:
        if not disk.fileName or not disk.datastore:
            yield Hit(
                f"Disk '{_disk_name(disk)}' is not on a datastore (no backing file or "
                "datastore). Move it to a datastore (storage vMotion) or remove it from the "
                "VM before the cutover.",
                _disk_name(disk),
            )


@_rule(
    "disk.invalid_capacity",
    "critical",
    """We refuse: the target volume is created with the source disk's capacity, which must be
    a positive whole number of 512-byte sectors.""",
)
def _invalid_capacity(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: the target volume cannot be sized, or would not match the source."""
    for disk in vm.disks:
        size = disk.capacityBytes
        if size <= 0 or size % 512:
            yield Hit(
                f"Disk '{_disk_name(disk)}' reports a capacity of {size} bytes, which is not "
                "a positive multiple of 512. Check the disk in vSphere (re-read the "
                "inventory; extend or repair the disk) before the cutover.",
                _disk_name(disk),
            )


@_rule(
    "disk.too_many",
    "critical",
    """We refuse: the target domain could not attach every disk.""",
)
def _too_many_disks(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: a VM missing disks on the target is not the same application."""
    if len(vm.disks) > t.maxDisks:
        yield Hit(
            f"The VM has {len(vm.disks)} disks; the target ({t.name}) takes at most "
            f"{t.maxDisks} per VM. Consolidate data onto fewer disks, or choose a target "
            "that takes more."
        )


@_rule(
    "disk.independent",
    "critical",
    """We refuse: we read disks through a vSphere snapshot, and snapshots skip independent
    disks, so this disk could be neither copied consistently nor synced.""",
)
def _independent_disk(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: the disk cannot be captured at a consistent point (no snapshot, no CBT)."""
    for disk in vm.disks:
        if _independent(disk):
            yield Hit(
                f"Disk '{_disk_name(disk)}' is in {disk.diskMode} mode. Change it to "
                "dependent (persistent) mode in the VM's settings before the cutover, or "
                "detach it if the application does not need it.",
                _disk_name(disk),
            )


@_rule(
    "disk.rdm",
    "critical",
    """We refuse: a raw device mapping points at a LUN, not a VMDK; we neither copy it
    through the snapshot path nor present SAN LUNs to the target.""",
)
def _rdm(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: an automated cutover cannot move or re-present a SAN LUN."""
    for disk in vm.disks:
        if disk.rdm:
            mode = f" ({disk.rdmCompatibilityMode})" if disk.rdmCompatibilityMode else ""
            yield Hit(
                f"Disk '{_disk_name(disk)}' is a raw device mapping{mode}. Convert it to a "
                "VMDK (storage vMotion of a virtual-mode RDM), or detach it and present the "
                "LUN to the KVM host yourself after the cutover.",
                _disk_name(disk),
            )


@_rule(
    "disk.shared",
    "critical",
    """We refuse: copying a disk that other VMs keep writing yields a corrupt copy, and the
    target would no longer share it with them.""",
)
def _shared(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: multi-writer disks belong to a cluster (Oracle RAC, WSFC, GFS2) that has to
    be moved as a whole, by hand."""
    for disk in vm.disks:
        if (disk.sharing or "").lower() == "sharingmultiwriter":
            yield Hit(
                f"Disk '{_disk_name(disk)}' is shared with other VMs (multi-writer). Migrate "
                "the clustered VMs together outside the automated cutover, or unshare the "
                "disk first.",
                _disk_name(disk),
            )


@_rule(
    "disk.serial_truncated",
    "warning",
    """The target attaches disks on virtio-scsi with each source disk's serial where the bus
    allows it (QEMU scsi-hd keeps up to 36 characters, virtio-blk 20); the SCSI WWN (NAA
    6000c29...) is not carried, so /dev/disk/by-id names change.""",
)
def _serial(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning (Forklift says info): a guest that mounts by serial or WWN (fstab by-id, udev
    rules, Oracle ASM) may not find its disks and fail to boot on the target."""
    scsi = [d for d in vm.disks if d.controllerType == "scsi"]
    if vm.diskEnableUuid and scsi:
        yield Hit(
            "disk.EnableUUID is TRUE and the VM has SCSI disks, so the guest may identify "
            "disks by serial number or WWN. Make sure fstab, udev rules and applications use "
            "filesystem UUIDs or labels, not /dev/disk/by-id names."
        )


# ------------------------------------------------------------------ rules: devices


@_rule(
    "device.passthrough",
    "critical",
    """We refuse: the device is a physical card in the ESXi host; the target gets nothing in
    its place.""",
)
def _passthrough(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: the application presumably needs the device, and vSphere cannot snapshot a
    VM with a DirectPath device, so the data path does not work either."""
    for dev in vm.pciDevices:
        if dev.kind in ("passthrough", "dynamic-passthrough"):
            what = f" ({dev.detail})" if dev.detail else ""
            yield Hit(
                f"PCI device '{dev.label or dev.key}'{what} is passed through "
                f"({dev.kind}). Remove it from the VM, and plan an equivalent device on the "
                "KVM host (VFIO) after the cutover."
            )


@_rule(
    "device.vgpu",
    "critical",
    """We refuse: a vGPU profile is specific to the ESXi host's GPU and driver; the target gets
    no GPU.""",
)
def _vgpu(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: the workload that needs a GPU fails without one."""
    for dev in vm.pciDevices:
        if dev.kind == "vgpu":
            what = f" ({dev.detail})" if dev.detail else ""
            yield Hit(
                f"The VM has a vGPU '{dev.label or dev.key}'{what}. Remove it, and provide a "
                "mediated device (mdev) or GPU passthrough on the KVM host after the cutover."
            )


@_rule(
    "nic.sriov",
    "warning",
    """The NIC becomes a virtio-net NIC on the mapped network, with the same MAC address.""",
)
def _sriov(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning (Forklift agrees): the VM keeps its network, but throughput and latency change
    and the guest sees a new adapter; the smoke test guards against a dead network."""
    for nic in vm.nics:
        if nic.sriov:
            yield Hit(
                f"NIC '{nic.label or nic.key}' is an SR-IOV adapter. Check that the "
                "application tolerates virtio-net performance, and that the guest's network "
                "configuration follows the MAC address rather than the driver or device name."
            )


@_rule(
    "device.usb_controller",
    "info",
    """The target gets libvirt's default USB controller; USB devices passed through from the
    ESXi host (license dongles, tokens) are not carried.""",
)
def _usb(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Info (Forklift says warning): most USB controllers are template defaults with nothing
    attached; the inventory cannot see attached devices, so we only mention it."""
    if vm.usbControllers:
        yield Hit(
            f"The VM has {vm.usbControllers} USB controller(s). If a USB device is attached "
            "(e.g. a license dongle), arrange a replacement on the KVM host."
        )


@_rule(
    "device.tpm",
    "warning",
    """The target domain gets a new, empty emulated TPM 2.0 (swtpm); the vTPM's contents (keys,
    sealed secrets) are not carried.""",
)
def _tpm(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning: secrets sealed to the vTPM (BitLocker, LUKS with TPM unlock, certificates) are
    gone on the target; a BitLocker guest stops at its recovery screen."""
    if vm.tpm:
        yield Hit(
            "The VM has a virtual TPM. Suspend BitLocker (or TPM-bound LUKS unlock) for one "
            "reboot and keep the recovery keys at hand; re-enroll TPM-bound secrets on the "
            "target."
        )


# ------------------------------------------------------------------ rules: VM configuration


@_rule(
    "vm.template",
    "critical",
    """We refuse: a template runs no application to cut over.""",
)
def _template(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: a template in a cutover is a selection mistake."""
    if vm.template:
        yield Hit(
            "This is a template, not a running VM. Remove it from the application's VM "
            "selection (its tag or list), or convert it to a VM if it really serves."
        )


@_rule(
    "vm.fault_tolerance",
    "critical",
    """We refuse: vSphere keeps a secondary VM in lockstep with this one; our snapshots and
    power operations on the primary interact with that pair, and KVM has no equivalent.""",
)
def _fault_tolerance(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: turning FT off is a deliberate availability decision a person must make."""
    if vm.faultTolerance:
        yield Hit(
            "vSphere Fault Tolerance is on for this VM. Turn Fault Tolerance off before the "
            "cutover, and plan availability on the target (e.g. HA restart policy)."
        )


@_rule(
    "vm.suspended",
    "warning",
    """We copy the disks only: the suspended memory state is discarded, so the target boots as
    after a power loss.""",
)
def _suspended(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning: work in the suspended memory is lost and the filesystems were not cleanly
    unmounted."""
    if vm.powerState == "suspended":
        yield Hit(
            "The VM is suspended. Resume it and shut it down cleanly (or leave it running for "
            "a warm cutover) so nothing in memory is lost."
        )


@_rule(
    "vm.name_invalid",
    "critical",
    """We refuse: the target domain takes the VM's name, and libvirt rejects this one.""",
)
def _name_invalid(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: the target domain could not be defined.

    libvirt domain names may be almost anything, but not empty, not with '/' (the QEMU
    driver rejects it; vSphere's API spells '/' in a name as ``%2f``), not with a newline or
    other control character, and short enough for ``<name>.xml`` to be a file name.
    """
    problems = _name_problems(vm.name, t)
    if problems:
        yield Hit(
            f"The VM name {vm.name!r} cannot be a domain name on the target: "
            f"{'; '.join(problems)}. Rename the VM in vSphere."
        )


def _name_problems(name: str, t: TargetLimits) -> list[str]:
    problems: list[str] = []
    if not name.strip():
        problems.append("it is empty")
    if "/" in name or "%2f" in name.lower():
        problems.append("it contains '/'")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        problems.append("it contains a control character")
    if len(name.encode()) > t.maxVmNameBytes:
        problems.append(f"it is longer than {t.maxVmNameBytes} bytes")
    return problems


@_rule(
    "vm.name_not_dns_label",
    "info",
    """The target domain keeps the VM's exact name; names we derive that must be DNS-1123
    labels (per-VM DNS records, target volume names) use the sanitized form in the message.""",
)
def _name_not_dns(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Info: nothing breaks, derived names just differ from the VM's; a VM whose name is not
    a valid domain name at all gets `vm.name_invalid` instead."""
    name = vm.name
    if _name_problems(name, t) or dns_label(name) == name.lower():
        return
    label = dns_label(name) or f"vm-{dns_label(vm.moref) or 'unnamed'}"
    yield Hit(
        f"The VM name {name!r} is not a DNS-1123 label (at most 63 characters: letters, "
        f"digits, '-'; starting and ending with a letter or digit). Derived names will use "
        f"'{label}'; rename the VM if they should match."
    )


@_rule(
    "vm.latency_sensitivity_high",
    "warning",
    """The target domain gets no equivalent tuning: no vCPU or emulator pinning, no reserved
    memory, no realtime scheduling.""",
)
def _latency(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning: the application asked for exclusive, low-latency CPUs; without them its
    latency can regress, which the rollback criteria may only catch after the switch."""
    if (vm.latencySensitivity or "").lower() == "high":
        yield Hit(
            "The VM's latency sensitivity is 'high'. Plan CPU pinning (cputune), hugepages "
            "and host isolation on the KVM host, and watch the latency rollback criteria."
        )


@_rule(
    "affinity.cpu",
    "warning",
    """The target domain gets no vCPU pinning.""",
)
def _cpu_affinity(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning (Forklift agrees): pinning is usually there for licensing or performance."""
    if vm.cpuAffinity:
        cpus = ",".join(str(c) for c in vm.cpuAffinity)
        yield Hit(
            f"The VM is pinned to host CPUs {cpus}. If that is for licensing or performance, "
            "set the equivalent <cputune> pinning on the target after the cutover."
        )


@_rule(
    "affinity.numa",
    "warning",
    """The target domain gets no NUMA node pinning.""",
)
def _numa_affinity(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning (Forklift agrees): memory locality, and so performance, can change."""
    if vm.numaNodeAffinity:
        nodes = ",".join(str(n) for n in vm.numaNodeAffinity)
        yield Hit(
            f"The VM is pinned to NUMA node(s) {nodes}. Set <numatune> on the target after "
            "the cutover if the application depends on it."
        )


@_rule(
    "affinity.host",
    "warning",
    """The target domain is placed on the libvirt host the site config names; vSphere VM-host
    rules are not carried.""",
)
def _host_affinity(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning (Forklift agrees): such rules often encode licensing or failure-domain
    separation that the target placement must honour by other means.

    Looks in the VM's cluster (by `VM.cluster`, else its host's cluster); when that is
    unknown, in every cluster. Rules are matched on VM name or MoRef.
    """
    cluster = _cluster(inv, vm)
    clusters = [cluster] if cluster is not None else inv.clusters
    rules = sorted(
        rule
        for c in clusters
        for rule, members in c.vmHostRules.items()
        if vm.name in members or vm.moref in members
    )
    if rules:
        names = ", ".join(f"'{r}'" for r in rules)
        yield Hit(
            f"VM-host affinity rule(s) {names} pin the VM to certain ESXi hosts. Choose the "
            "target host with the same intent (licensing, failure domain) in the site config."
        )


@_rule(
    "hotplug.enabled",
    "info",
    """The target domain gets fixed vCPU and memory sizes; they can be changed later with a
    reboot.""",
)
def _hotplug(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Info (Forklift says warning): nothing about the guest changes; only the ability to
    grow it without a reboot is not configured on the target."""
    hot = (
        ("CPU hot-add", vm.cpuHotAdd),
        ("CPU hot-remove", vm.cpuHotRemove),
        ("memory", vm.memoryHotAdd),
    )
    what = [n for n, on in hot if on]
    if what:
        yield Hit(
            f"{' and '.join(what)} hot-add is enabled. If resizing without a reboot is needed "
            "on the target, configure maximum vCPUs / memory hotplug there."
        )


@_rule(
    "firmware.secure_boot",
    "info",
    """The target domain boots UEFI with Secure Boot (OVMF secure-boot firmware, SMM, Microsoft
    keys enrolled); the source's NVRAM (boot entries, db/dbx updates, shim MOK keys) is not
    carried.""",
)
def _secure_boot(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Info: standard guests boot; guests with their own enrolled keys (custom MOK for
    signed kernel modules) need them re-enrolled."""
    if vm.firmware == "efi" and vm.secureBoot:
        yield Hit(
            "The VM boots UEFI with Secure Boot. The target host needs OVMF secure-boot "
            "firmware; if the guest enrolled its own keys (MOK), re-enroll them on the target."
        )


@_rule(
    "cluster.drs",
    "info",
    """All vSphere operations address the VM by MoRef, so they follow it if DRS moves it
    during the warm phase; the target has no DRS.""",
)
def _drs(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Info: harmless for the cutover; load balancing is simply gone on the target."""
    cluster = _cluster(inv, vm)
    if cluster is not None and cluster.drsEnabled:
        behavior = f" ({cluster.drsBehavior})" if cluster.drsBehavior else ""
        yield Hit(
            f"The VM runs in DRS-enabled cluster '{cluster.name}'{behavior}. Nothing to do; "
            "plan capacity on the KVM host, which does not rebalance on its own."
        )


@_rule(
    "cluster.dpm",
    "info",
    """Nothing: DPM powers hosts, not this VM; the target has no equivalent.""",
)
def _dpm(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Info: no effect on the cutover."""
    cluster = _cluster(inv, vm)
    if cluster is not None and cluster.dpmEnabled:
        yield Hit(
            f"The VM runs in cluster '{cluster.name}', which has Distributed Power "
            "Management on. Nothing to do for the cutover."
        )


# ------------------------------------------------------------------ rules: guest


@_rule(
    "guest.tools_not_running",
    "info",
    """Without VMware Tools the warm snapshot is crash-consistent (no filesystem quiescing) and
    guest facts other checks use (hostname, IPs, filesystems) are missing. Conversion
    removes VMware Tools from the guest either way.""",
)
def _tools(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Info: the cutover works; the gaps it leaves show up as their own concerns."""
    if _powered_on(vm) and vm.toolsRunningStatus != "guestToolsRunning":
        status = vm.toolsRunningStatus or "unknown"
        yield Hit(
            f"VMware Tools is not running in the powered-on VM (status {status}). Start or "
            "install it so the guest's facts are current and snapshots are quiesced."
        )


@_rule(
    "guest.hostname_empty",
    "warning",
    """Nothing: the guest's configuration travels unchanged. Without a hostname, monitoring
    and DHCP-registered DNS cannot find the guest by name on the target, and its identity
    after the cutover cannot be cross-checked against the source.""",
)
def _hostname_empty(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning (Forklift agrees): a powered-on guest without a hostname is unconfigured or not
    reporting, so its identity after the cutover cannot be checked."""
    if _powered_on(vm) and not (vm.guestHostname or "").strip():
        yield Hit(
            "The powered-on guest reports no hostname. Set one in the guest (and make sure "
            "VMware Tools runs) before the cutover."
        )


_DEFAULT_HOSTNAMES = frozenset(
    {"localhost", "localhost.localdomain", "localhost6", "localhost6.localdomain6"}
)


@_rule(
    "guest.hostname_default",
    "warning",
    """Nothing: the guest's configuration travels unchanged. A default hostname cannot tell
    this guest apart from others on the target (monitoring, logs, DHCP-registered DNS).""",
)
def _hostname_default(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning (Forklift agrees): a default name means monitoring, logs and DNS registration
    cannot tell this guest from others on the target."""
    hostname = (vm.guestHostname or "").strip()
    if hostname.lower() in _DEFAULT_HOSTNAMES:
        yield Hit(
            f"The guest's hostname is the default {hostname!r}. Give it its real name before "
            "the cutover."
        )


@_rule(
    "guest.no_ip",
    "warning",
    """Static addresses are re-applied on the target's new NICs from the addresses VMware Tools
    reports (matched by MAC); with none reported, a Windows guest with static addresses
    comes up without them, the smoke test fails and the cutover rolls back.""",
)
def _no_ip(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning (Forklift agrees): a running guest that reports no routable address is either
    not on the network or not reporting; either way static-IP preservation has no input."""
    if _powered_on(vm) and not _usable_ips(vm):
        yield Hit(
            "The powered-on guest reports no usable IP address (none, or only loopback or "
            "link-local). Check its network and that VMware Tools runs, so its addresses "
            "can be preserved."
        )


@_rule(
    "guest.ip_unverifiable",
    "info",
    """Static addresses are preserved only from what VMware Tools reports while the guest
    runs; for a guest that is not running we preserve none and rely on its own
    configuration.""",
)
def _ip_unverifiable(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Info: a powered-off VM is normal (cold migration); it only means the guest's
    addresses and hostname cannot be checked beforehand."""
    if not _powered_on(vm):
        yield Hit(
            f"The VM is {vm.powerState or 'in an unknown power state'}, so its IP addresses "
            "(and static-IP preservation) cannot be checked. Power it on once with VMware "
            "Tools running before the cutover if its addresses must be preserved."
        )


@_rule(
    "guest.low_free_space",
    "critical",
    """We refuse: virt-v2v stops the conversion when a guest filesystem lacks the space to
    inject drivers or rebuild the initramfs, which would happen inside the downtime window
    and roll the cutover back.""",
)
def _free_space(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: the conversion would certainly fail, after the source was quiesced.

    Thresholds per `TargetLimits` (virt-v2v's documented minimums). Checked on the
    filesystems VMware Tools reports; ignored when it reports none.
    """
    for gd in vm.guestDisks:
        if gd.capacityBytes <= 0 or _matches(gd.path, t.freeSpaceIgnoredPaths):
            continue
        need, what = _min_free(gd, t)
        if gd.freeBytes < need:
            yield Hit(
                f"Guest filesystem '{gd.path}' has {_mib(gd.freeBytes)} free; conversion needs "
                f"at least {_mib(need)} on {what}. Free up space (or grow the disk) before "
                "the cutover.",
                gd.path,
            )


@_rule(
    "guest.disk_key_missing",
    "info",
    """Windows volumes we cannot map to a VM disk are converted all the same; only per-disk
    placement that follows drive letters, and naming target volumes after them, fall back
    to the disk order.""",
)
def _disk_key(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Info (Forklift agrees): only drive-letter based mapping is affected."""
    if not _is_windows(vm):
        return
    for gd in vm.guestDisks:
        if gd.diskKey is None:
            yield Hit(
                f"VMware Tools does not say which VM disk holds Windows volume '{gd.path}'. "
                "Update VMware Tools if target storage should follow drive letters.",
                gd.path,
            )


def _os_name(vm: VM) -> str:
    return vm.guestFullName or vm.guestId or "unknown"


@_rule(
    "guest_os.unsupported",
    "critical",
    """We refuse: virt-v2v converts only Linux and Windows guests it recognizes; anything else
    would fail in the convert step, inside the downtime window.""",
)
def _os_unsupported(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: the conversion cannot succeed, or nothing says it can.

    Unsupported when VMware Tools reports a guest family the target does not convert, when
    the configured guest id is one virt-v2v cannot convert, or when the guest id says
    nothing ("Other", none) and no convertible family is reported either.
    """
    family = vm.guestFamily
    gid = (vm.guestId or "").lower()
    known_family = family is not None and family in t.guestFamilies
    if family is not None and not known_family:
        reason = f"its guest family is {family}"
    elif gid and _matches(gid, t.unsupportedGuestIds):
        reason = f"guest id {vm.guestId} is not one virt-v2v converts"
    elif (not gid or _matches(gid, t.unknownGuestIds)) and not known_family:
        reason = f"its guest OS is {vm.guestId or 'not recorded'} and VMware Tools reports none"
    else:
        return
    yield Hit(
        f"The guest OS ({_os_name(vm)}) cannot be converted for {t.name}: {reason}. If the "
        "guest really runs a supported Linux or Windows, set the right guest OS in the VM's "
        "settings; otherwise migrate it by other means."
    )


@_rule(
    "guest_os.generic",
    "warning",
    """virt-v2v identifies the distribution by inspecting the disk and converts it only if it
    recognizes it; if not, the convert step fails inside the downtime window and the
    cutover rolls back.""",
)
def _os_generic(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning: probably fine (most "Other Linux" VMs run a common distribution), but
    unproven until a trial conversion of a clone succeeds."""
    family = vm.guestFamily
    gid = (vm.guestId or "").lower()
    if family is not None and family not in t.guestFamilies:
        return  # guest_os.unsupported
    if gid and _matches(gid, t.unsupportedGuestIds):
        return  # guest_os.unsupported
    unknown = not gid or _matches(gid, t.unknownGuestIds)
    if (unknown and family is not None) or (gid and _matches(gid, t.genericGuestIds)):
        yield Hit(
            f"The VM's guest OS is set to a generic type ({vm.guestId or 'none'}; "
            f"reported: {vm.guestFullName or family or 'nothing'}). Set the exact OS in the "
            "VM's settings, and trial-convert a clone if it is not a distribution virt-v2v "
            "supports."
        )
