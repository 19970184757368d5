"""Changed-block tracking (CBT): enable it, read a disk's change ID, query changed areas.
Used by the warm data path (activities/disks.py through adapters.vsphere.disk_source).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

from adapters.vsphere.client import VSphereClient
from adapters.vsphere.inventory import find_vms
from adapters.vsphere.properties import read_property, wait_task
from adapters.vsphere.vm import find_snapshot
from cutover.errors import ErrorKind, error

# ------------------------------------------------------------- changed-block tracking
# Used by adapters.vsphere.disk_source (the warm data path); pyvmomi stays in this package.


def _disk_device(si: Any, vm: Any, disk_key: int) -> Any:
    for dev in read_property(si, vm, "config.hardware.device") or []:
        if isinstance(dev, vim.vm.device.VirtualDisk) and dev.key == disk_key:
            return dev
    raise error(ErrorKind.NOT_FOUND, f"{vm.name} has no disk with device key {disk_key}")


def enable_cbt(client: VSphereClient, vm_name: str) -> bool:
    """Turn on changed-block tracking for a VM; False when it already was (idempotent)."""
    vm = find_vms(client, [vm_name])[0]

    def act(si: Any) -> bool:
        if read_property(si, vm, "config.changeTrackingEnabled"):
            return False
        spec = vim.vm.ConfigSpec(changeTrackingEnabled=True)
        wait_task(si, vm.ReconfigVM_Task(spec=spec), f"enabling CBT on {vm_name}")
        return True

    return client.call(f"enabling CBT on {vm_name}", act)


def disk_change_id(client: VSphereClient, vm_name: str, disk_key: int) -> str | None:
    """The disk's current CBT change ID (None while CBT is off or nothing is tracked yet)."""
    vm = find_vms(client, [vm_name])[0]

    def read(si: Any) -> str | None:
        cid = getattr(_disk_device(si, vm, disk_key).backing, "changeId", None)
        return str(cid) if cid else None

    return client.call(f"reading the change ID of {vm_name} disk {disk_key}", read)


def changed_areas(
    client: VSphereClient,
    vm_name: str,
    disk_key: int,
    change_id: str,
    end: int | None = None,
    snapshot: str | None = None,
) -> list[tuple[int, int]]:
    """`(start, length)` extents changed since `change_id` ("*": every allocated extent)
    up to the point in time of `snapshot` (a moref; None: now, which a real vCenter answers
    only for a powered-off VM), via QueryChangedDiskAreas; asks again from where an answer
    stopped, up to `end`."""
    vm = find_vms(client, [vm_name])[0]
    snap = vim.vm.Snapshot(snapshot, vm._stub) if snapshot else None

    def query(si: Any) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        start = 0
        while True:
            info = vm.QueryChangedDiskAreas(
                snapshot=snap, deviceKey=disk_key, startOffset=start, changeId=change_id
            )
            out.extend((int(a.start), int(a.length)) for a in (info.changedArea or []))
            reached = int(info.startOffset) + int(info.length)
            if end is None or info.length <= 0 or reached >= end:
                return out
            start = reached

    return client.call(f"querying changed areas of {vm_name} disk {disk_key}", query)


@dataclass(frozen=True)
class PassSnapshot:
    """A snapshot a data pass reads: its moref and, per disk key, the disk as it was then
    (the file at the top of its point in time, and its change ID)."""

    moref: str
    disks: dict[int, tuple[str, str | None]]


def take_pass_snapshot(client: VSphereClient, vm_name: str, name: str) -> PassSnapshot:
    """A fresh snapshot `name` (one left by an attempt that died is removed first): the
    point in time a pass reads while the VM keeps writing into the new delta."""
    vm = find_vms(client, [vm_name])[0]

    def act(si: Any) -> PassSnapshot:
        old = find_snapshot(si, vm, name)
        if old is not None:
            wait_task(si, old.RemoveSnapshot_Task(removeChildren=False), f"removing {name}")
        task = vm.CreateSnapshot_Task(
            name=name, description="cutover data pass (removed after it)", memory=False,
            quiesce=False,
        )  # fmt: skip
        wait_task(si, task, f"snapshot {name} of {vm_name}")
        snap = find_snapshot(si, vm, name)
        if snap is None:
            raise error(ErrorKind.VSPHERE_FAULT, f"{vm_name}: snapshot {name} vanished")
        disks: dict[int, tuple[str, str | None]] = {}
        for dev in read_property(si, snap, "config.hardware.device") or []:
            if isinstance(dev, vim.vm.device.VirtualDisk):
                b: Any = dev.backing
                disks[int(dev.key)] = (str(b.fileName), getattr(b, "changeId", "") or None)
        return PassSnapshot(str(snap._moId), disks)

    return client.call(f"taking a data-pass snapshot of {vm_name}", act)


def drop_snapshot(client: VSphereClient, vm_name: str, name: str) -> bool:
    """Remove snapshot `name` (its delta is consolidated); False when there is none."""
    vm = find_vms(client, [vm_name])[0]

    def act(si: Any) -> bool:
        snap = find_snapshot(si, vm, name)
        if snap is None:
            return False
        wait_task(si, snap.RemoveSnapshot_Task(removeChildren=False), f"removing {name}")
        return True

    return client.call(f"removing snapshot {name} of {vm_name}", act)
