"""Small pure helpers the rules share."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from fnmatch import fnmatchcase

from cutover.concerns.model import MiB, TargetLimits
from cutover.inventory import VM, Cluster, Disk, GuestDisk, Inventory


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
