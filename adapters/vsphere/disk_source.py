"""A VM disk's bytes read from its datastore through vCenter (the `DiskSource` of a vSphere
source), with the VM's changed-block tracking, at a point in time: a running VM's disks are
read from a snapshot each pass takes (`<cutover snapshot>-pass`, removed when the pass
ends, so its delta is consolidated), whose layers are frozen; a stopped VM's as they are.
The snapshot chain (flat base, vmfsSparse deltas) is resolved by `adapters.vsphere.vmdk`."""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Callable
from functools import partial

from temporalio.exceptions import ApplicationError

from adapters.staging.copy import CHUNK
from adapters.staging.layout import check_name
from adapters.vsphere.cbt import (
    changed_areas,
    disk_change_id,
    drop_snapshot,
    enable_cbt,
    take_pass_snapshot,
)
from adapters.vsphere.client import ClientPool, VSphereClient
from adapters.vsphere.datastore import DatastoreFile
from adapters.vsphere.inventory import read_inventory, resolve_vms
from adapters.vsphere.vm import pass_snapshot_name
from adapters.vsphere.vmdk import Chain, VmdkError
from cutover import facts as F
from cutover.disknames import disk_id
from cutover.errors import ErrorKind, config_error
from cutover.models import StepContext
from cutover.ports import DiskSource, Extent, SourceFactory
from cutover.site import VCenter


class DatastoreSource:
    """A VM disk read through vCenter's `/folder` endpoint at one point in time: a
    snapshot's (while the VM runs: its base and deltas are frozen) or, for a powered-off
    VM, its current chain; with the VM's CBT up to that point in time."""

    def __init__(
        self,
        client: VSphereClient,
        *,
        name: str,
        vm_name: str,
        disk_key: int,
        file_name: str,
        datacenter: str,
        cbt: bool,
        snapshot: str | None = None,
        snapshot_change_id: str | None = None,
        on_close: Callable[[], object] | None = None,
    ) -> None:
        self.name = name
        self._client, self._vm, self._key, self._cbt = client, vm_name, disk_key, cbt
        self._snapshot, self._snapshot_cid, self._on_close = snapshot, snapshot_change_id, on_close
        ds, rel = file_name[1:].split("] ", 1)
        self._dir, top = posixpath.split(rel)
        self._ds, self._dc = ds, datacenter
        self._files: dict[str, DatastoreFile] = {}
        try:
            self._chain = Chain(self._fetch, top, 0)
            # the base's flat file decides the size (the lab's exceed what VMs declare)
            self.size = self._chain.size = self._file(self._chain.layers[-1].desc.extent).size
        except VmdkError as exc:
            self.close()
            raise config_error(f"{vm_name} disk {disk_key}: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _file(self, name: str) -> DatastoreFile:
        if name not in self._files:
            path = f"[{self._ds}] {posixpath.join(self._dir, name)}"
            self._files[name] = DatastoreFile(self._client, path, self._dc, chunk=CHUNK)
        return self._files[name]

    def _fetch(self, name: str, offset: int, length: int) -> bytes:
        f = self._file(name)
        f.seek(offset)
        buf = bytearray(min(length, max(0, f.size - offset)))
        view, got = memoryview(buf), 0
        while got < len(buf):
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
        return bytes(buf[:got])

    @property
    def layers(self) -> list[str]:
        """The chain read, top first (`disk1-000002.vmdk`, ..., `disk1.vmdk`)."""
        return self._chain.names

    def read(self, offset: int, length: int) -> bytes:
        return self._chain.read(offset, length)

    def _areas(self, change_id: str) -> list[Extent]:
        return changed_areas(
            self._client, self._vm, self._key, change_id, end=self.size, snapshot=self._snapshot
        )

    def allocated(self) -> list[Extent] | None:
        if not self._cbt:
            return None
        try:  # "*": the allocated extents, as backup tools ask for a first full copy
            return self._areas("*")
        except ApplicationError:
            return None

    def change_id(self) -> str | None:
        if not self._cbt:
            return None
        if self._snapshot is not None:  # the disk's change ID when the snapshot was taken
            return self._snapshot_cid
        return disk_change_id(self._client, self._vm, self._key)

    def changed_since(self, change_id: str) -> list[Extent] | None:
        if not self._cbt:
            return None
        try:
            return self._areas(change_id)
        except ApplicationError as exc:
            if exc.type == ErrorKind.VSPHERE_UNAVAILABLE:
                raise  # retry the activity; do not silently degrade to a full scan
            return None  # CBT reset / invalid ID: the digest comparison takes over

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        if self._on_close is not None:
            done, self._on_close = self._on_close, None
            done()


def source_vms(pool: ClientPool, ctx: StepContext) -> tuple[VCenter, VSphereClient, list[str]]:
    """The site's vCenter, its client, and the cutover's source VMs (the fact the guard
    step published, else the runbook's selection resolved now)."""
    vc = ctx.resolved_site.vcenter
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
        pass_name = pass_snapshot_name(ctx.workflowId)
        sources: list[DiskSource] = []
        try:
            for vm_name in names:
                vm = inv.vm(vm_name)
                for disk in vm.disks:
                    if disk.rdm or not disk.fileName.endswith(".vmdk"):
                        raise config_error(
                            f"{vm.name} disk {disk.key} ({disk.fileName or 'no file'}) is not a "
                            "VMDK on a datastore: it cannot be copied"
                        )
                # A running VM's disks change under the reader: read a snapshot's point in
                # time (its layers are frozen), taken now and consolidated when the pass
                # ends. A stopped VM's current chain is frozen already.
                snap = None
                if vm.powerState == "poweredOn":
                    snap = take_pass_snapshot(client, vm.name, pass_name)
                else:
                    drop_snapshot(client, vm.name, pass_name)  # one a dead pass left
                drop = partial(drop_snapshot, client, vm.name, pass_name)
                if snap and not vm.disks:
                    drop()
                cbt = vm.changeTrackingEnabled or precopy
                mine: list[DiskSource] = []
                try:
                    for i, disk in enumerate(vm.disks):
                        file_name, cid = (
                            snap.disks.get(disk.key, (disk.fileName, None)) if snap
                            else (disk.fileName, None)
                        )  # fmt: skip
                        mine.append(
                            DatastoreSource(
                                client,
                                name=check_name(disk_id(vm.name, disk.key), "disk"),
                                vm_name=vm.name,
                                disk_key=disk.key,
                                file_name=file_name,
                                datacenter=vm.datacenter or vc.datacenter or "",
                                cbt=cbt,
                                snapshot=snap.moref if snap else None,
                                snapshot_change_id=cid,
                                # the VM's last source ends the pass: its snapshot goes
                                on_close=drop if snap and i == len(vm.disks) - 1 else None,
                            )
                        )
                except BaseException:
                    for src in mine:
                        src.close()
                    if snap and len(mine) < len(vm.disks):  # the last one never came
                        with contextlib.suppress(Exception):
                            drop()
                    raise
                sources += mine
        except BaseException:
            for s in sources:
                s.close()
            raise
        return sources

    return make
