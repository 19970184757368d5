"""A VM disk's bytes read from its datastore through vCenter (the `DiskSource` of a vSphere
source), with the VM's changed-block tracking."""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

from adapters.staging.copy import CHUNK
from adapters.staging.layout import check_name
from adapters.vsphere.cbt import changed_areas, disk_change_id, enable_cbt
from adapters.vsphere.client import ClientPool, VSphereClient
from adapters.vsphere.datastore import DatastoreFile
from adapters.vsphere.inventory import read_inventory, resolve_vms
from cutover import facts as F
from cutover.disknames import disk_id
from cutover.errors import ErrorKind, config_error
from cutover.models import StepContext
from cutover.ports import DiskSource, Extent, SourceFactory
from cutover.site import VCenter


class DatastoreSource:
    """A VM disk's flat file read through vCenter's `/folder` endpoint, with the VM's CBT."""

    def __init__(
        self,
        client: VSphereClient,
        *,
        name: str,
        vm_name: str,
        disk_key: int,
        flat_path: str,
        datacenter: str,
        cbt: bool,
    ) -> None:
        self.name = name
        self._client, self._vm, self._key, self._cbt = client, vm_name, disk_key, cbt
        self._stream = DatastoreFile(client, flat_path, datacenter, chunk=CHUNK)
        self.size = self._stream.size

    def read(self, offset: int, length: int) -> bytes:
        self._stream.seek(offset)
        buf = bytearray(min(length, max(0, self.size - offset)))
        got = 0
        view = memoryview(buf)
        while got < len(buf):
            n = self._stream.readinto(view[got:])
            if not n:
                break
            got += n
        return bytes(buf[:got])

    def allocated(self) -> list[Extent] | None:
        if not self._cbt:
            return None
        try:  # "*": the allocated extents, as backup tools ask for a first full copy
            return changed_areas(self._client, self._vm, self._key, "*", end=self.size)
        except ApplicationError:
            return None

    def change_id(self) -> str | None:
        return disk_change_id(self._client, self._vm, self._key) if self._cbt else None

    def changed_since(self, change_id: str) -> list[Extent] | None:
        if not self._cbt:
            return None
        try:
            return changed_areas(self._client, self._vm, self._key, change_id, end=self.size)
        except ApplicationError as exc:
            if exc.type == ErrorKind.VSPHERE_UNAVAILABLE:
                raise  # retry the activity; do not silently degrade to a full scan
            return None  # CBT reset / invalid ID: the digest comparison takes over

    def close(self) -> None:
        self._stream.close()


def source_vms(pool: ClientPool, ctx: StepContext) -> tuple[VCenter, VSphereClient, list[str]]:
    """The site's vCenter, its client, and the cutover's source VMs (the fact the guard
    step published, else the runbook's selection resolved now)."""
    vc = ctx.site.vcenter
    if vc is None:
        raise config_error("the site config has no `vcenter` section")
    client = pool.get(vc)
    names_fact = ctx.facts.get(F.SOURCE_VMS)
    names = names_fact.split(",") if names_fact else resolve_vms(client, ctx.runbook)
    return vc, client, names


def vsphere_sources(pool: ClientPool) -> SourceFactory:
    """The runbook's VMs' disks, read from their datastores through vCenter."""

    def make(ctx: StepContext, precopy: bool) -> list[DiskSource]:
        vc, client, names = source_vms(pool, ctx)
        if precopy:
            for vm_name in names:
                enable_cbt(client, vm_name)
        inv = read_inventory(client)
        sources: list[DiskSource] = []
        for vm_name in names:
            vm = inv.vm(vm_name)
            for disk in vm.disks:
                if disk.rdm or not disk.fileName.endswith(".vmdk"):
                    raise config_error(
                        f"{vm.name} disk {disk.key} ({disk.fileName or 'no file'}) is not a "
                        "VMDK on a datastore: it cannot be copied"
                    )
                base = disk.fileName.removesuffix(".vmdk")
                disk_name = check_name(disk_id(vm.name, disk.key), "disk")
                sources.append(
                    DatastoreSource(
                        client,
                        name=disk_name,
                        vm_name=vm.name,
                        disk_key=disk.key,
                        flat_path=f"{base}-flat.vmdk",
                        datacenter=vm.datacenter or vc.datacenter or "",
                        cbt=vm.changeTrackingEnabled or precopy,
                    )
                )
        return sources

    return make
