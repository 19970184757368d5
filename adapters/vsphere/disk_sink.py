"""Writing ranges into a source VM's disk (reverse sync), the `DiskSink` of a vSphere source.

What a real vCenter offers for this: its HTTP datastore access (`/folder`) replaces whole
files only (a PUT of the entire VMDK), and `HttpNfcLease` imports whole disks; writing
ranges needs either the datastore itself (mounted on the worker, e.g. NFS) or VMware's VDDK
(NFC/NBD(SSL) to the host), which only the operator can supply. So:

- `MountedDisk`: the VM's current disk on a datastore the site mounts on the worker
  (`vcenter.datastoreMounts`): a flat VMDK (`<disk>-flat.vmdk`, positioned writes), or the
  vmfsSparse delta a snapshot put on it (`<disk>-000001.vmdk`: grains allocated as ESXi
  does, `adapters.vsphere.vmdk`), then an fsync. A seSparse delta (VMFS6) is refused: it
  needs VDDK. Our simulator's datastores are local directories: the lab and the tests use
  this path.
- `vddk_server`: nbdkit's vddk plugin (`nbdkit-plugin-vddk`) against the operator's VDDK
  (`vcenter.vddk`), spoken to by our NBD client (`adapters.qemu.nbd`). Not exercised here
  (VDDK is not redistributable): without nbdkit, its vddk plugin or the libdir, the step
  fails with an error naming what to install or configure.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from adapters.qemu.nbd import NbdError, NbdImage
from adapters.vsphere.client import ClientPool
from adapters.vsphere.disk_source import source_vms
from adapters.vsphere.inventory import read_inventory
from adapters.vsphere.vmdk import Chain, LocalDisk, VmdkError, local_fetch
from cutover.disknames import disk_id
from cutover.errors import ErrorKind, config_error, error
from cutover.models import StepContext
from cutover.ports import DiskSink, SinkFactory
from cutover.site import VCenter


class MountedDisk:
    """The VM's current disk written in place through a mounted datastore: the flat base,
    or the vmfsSparse delta a snapshot put on top of it (`adapters.vsphere.vmdk`)."""

    def __init__(self, name: str, descriptor: Path) -> None:
        self.name = name
        try:
            self._disk = LocalDisk(descriptor)
            base = Chain(local_fetch(descriptor.parent), descriptor.name, 0).layers[-1]
        except VmdkError as exc:
            raise config_error(f"disk {name}: {exc}") from None
        self.size = (descriptor.parent / base.desc.extent).stat().st_size

    def write(self, offset: int, data: bytes) -> None:
        self._disk.write(offset, data)

    def flush(self) -> None:
        self._disk.flush()

    def close(self) -> None:
        self._disk.close()


class NbdDisk:
    """A disk exported by an NBD server we start (nbdkit-vddk)."""

    def __init__(self, name: str, server: list[str]) -> None:
        self.name = name
        try:
            self._nbd = NbdImage(Path(name), "raw", server=server)
        except NbdError as exc:
            raise error(ErrorKind.VSPHERE_UNAVAILABLE, f"disk {name}: {exc}", True) from None
        self.size = self._nbd.size

    def write(self, offset: int, data: bytes) -> None:
        self._nbd.write(offset, data)

    def flush(self) -> None:
        self._nbd.flush()

    def close(self) -> None:
        self._nbd.close()


def vddk_server(vc: VCenter, moref: str, file_name: str) -> list[str]:
    """nbdkit's command line for one disk through the operator's VDDK (read-write)."""
    nbdkit = shutil.which("nbdkit")
    if vc.passwordRef.file is None:
        raise config_error("reverse sync through VDDK reads the password from a file: set "
                           "vcenter.passwordRef.file")  # fmt: skip
    plugins = Path("/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-vddk-plugin.so")
    if vc.vddk is None:
        raise config_error("no VDDK configured (vcenter.vddk)")
    if nbdkit is None or not plugins.exists():
        raise error(
            ErrorKind.TOOL_MISSING,
            "reverse sync through VDDK needs nbdkit and its vddk plugin (Debian packages "
            "nbdkit, nbdkit-plugin-vddk) on the worker",
        )
    if not (Path(vc.vddk.libdir) / "lib64").is_dir():
        raise config_error(
            f"vcenter.vddk.libdir {vc.vddk.libdir!r} holds no lib64/: unpack VMware's VDDK there"
        )
    return [
        nbdkit, "--foreground", "--exit-with-parent", "--unix", "{socket}", "vddk",
        f"libdir={vc.vddk.libdir}", f"server={vc.host}", f"user={vc.user}",
        f"password=+{vc.passwordRef.file}", f"thumbprint={vc.vddk.thumbprint}",
        f"vm=moref={moref}", f"file={file_name}",
    ]  # fmt: skip


def vsphere_sinks(pool: ClientPool) -> SinkFactory:
    """The runbook's VMs' current disks, opened for writing in place."""

    def make(ctx: StepContext) -> list[DiskSink]:
        vc, client, names = source_vms(pool, ctx)
        inv = read_inventory(client)
        sinks: list[DiskSink] = []
        try:
            for vm_name in names:
                vm = inv.vm(vm_name)
                if vm.powerState != "poweredOff":
                    # one writer per disk: never write under a running guest
                    raise error(
                        ErrorKind.INVALID_STATE,
                        f"{vm.name} is {vm.powerState}: its disks are written back only "
                        "while it is powered off",
                    )
                for disk in vm.disks:
                    sinks.append(_open(vc, disk_id(vm.name, disk.key), disk.fileName, vm.moref))
        except BaseException:
            for s in sinks:
                s.close()
            raise
        return sinks

    return make


def _open(vc: VCenter, name: str, file_name: str, moref: str) -> DiskSink:
    if not (file_name.startswith("[") and "] " in file_name and file_name.endswith(".vmdk")):
        raise config_error(f"disk {name}: {file_name!r} is not a VMDK on a datastore")
    ds, rel = file_name[1:].split("] ", 1)
    mount = vc.datastoreMounts.get(ds)
    if mount is not None:
        descriptor = Path(mount) / rel
        if not descriptor.is_file():
            raise error(
                ErrorKind.NOT_FOUND,
                f"disk {name}: {descriptor} not found (vcenter.datastoreMounts.{ds} = {mount!r})",
            )
        return MountedDisk(name, descriptor)
    if vc.vddk is not None:
        return NbdDisk(name, vddk_server(vc, moref, file_name))
    raise config_error(
        f"disk {name} is on datastore {ds!r}: reverse sync writes into it through that "
        f"datastore mounted on this worker (vcenter.datastoreMounts.{ds}: /local/path) or "
        "through VDDK (vcenter.vddk); or set the runbook's rollback.reverseSync: false to "
        "discard the target's writes on rollback"
    )
