"""Rules: the data path (CBT, snapshots, datastores, disk modes and sharing)."""

from __future__ import annotations

from collections.abc import Iterator

from cutover.concerns.helpers import _disk_cbt_active, _disk_name, _independent, _vmx_device
from cutover.concerns.model import Hit, TargetLimits, _rule
from cutover.inventory import VM, Inventory


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
