"""Disk names across steps: the disk ID facts and staged files are keyed by, the target
volume's name, and which storage mapping a disk follows. Pure rules on names."""

from __future__ import annotations

import re
from collections.abc import Sequence

from cutover.errors import ErrorKind, error
from cutover.inventory import VM
from cutover.site import SiteConfig, StorageMapping

#: A name that can become one path component: no separators, no `..`, no shell metacharacters.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def safe_name(name: str, what: str) -> str:
    """`name` if it can be one path component; else a non-retryable `PathRejected`."""
    if not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise error(
            ErrorKind.PATH_REJECTED,
            f"{what} {name!r} may hold only letters, digits, '.', '_' and '-' (starting with "
            "a letter or digit, no '..'): it names a file and must not leave its directory",
        )
    return name


def disk_id(vm_name: str, device_key: int | str) -> str:
    """A disk's name across steps (facts, staged and converted file names, volumes): the VM's
    name and the disk's device key, unique even when several VMs have a disk 2000."""
    return f"{vm_name}-{device_key}"


def mapping_for(site: SiteConfig, vms: Sequence[VM], disk_key: str) -> StorageMapping:
    """The storage mapping of the disk's datastore (the only mapping when one; else
    a `ConfigError`). A site without mappings converts to qcow2 in pool `default`."""
    datastore = next(
        (d.datastore for vm in vms for d in vm.disks if disk_id(vm.name, d.key) == disk_key), None
    )
    maps = site.storageMappings
    for m in maps:
        if datastore is not None and m.sourceDatastore == datastore:
            return m
    if len(maps) == 1:
        return maps[0]
    if not maps:
        return StorageMapping(sourceDatastore="*", targetPool="default")
    raise error(
        ErrorKind.CONFIG_ERROR,
        f"disk {disk_key}: no storage mapping for datastore {datastore!r} "
        f"(mapped: {', '.join(m.sourceDatastore for m in maps)})",
    )


def output_name(application: str, disk_key: str, fmt: str) -> str:
    """The name volumes and converted images had before `volume_name` (legacy): it can
    collide across applications (`web` + disk `db-1-2000`, `web-db` + disk `1-2000`)."""
    app, key = safe_name(application, "application"), safe_name(disk_key, "disk key")
    return f"{app}-{key}-target.{fmt}"


def volume_name(application: str, disk_key: str, fmt: str) -> str:
    """The target volume's name in its pool: `<app>.<disk>.target.<fmt>`. An application
    name holds no '.', so no two applications' volumes can share a name (detach and a
    re-attach delete by name: they must never reach another application's volume)."""
    app, key = safe_name(application, "application"), safe_name(disk_key, "disk key")
    return f"{app}.{key}.target.{fmt}"


def overlay_name(application: str, disk_key: str) -> str:
    """The target's overlay volume: `<app>.<disk>.overlay.qcow2`, on top of the frozen base
    (`volume_name`): the domain boots it, so it holds exactly what the target wrote."""
    app, key = safe_name(application, "application"), safe_name(disk_key, "disk key")
    return f"{app}.{key}.overlay.qcow2"
