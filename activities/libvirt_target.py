"""The KVM target through libvirt: storage pools and volumes, guest image checks, domains.

The only module that imports libvirt. `LibvirtTarget` holds an injectable connection factory
(the URI is the site's `libvirt.uri`) and reuses one connection per URI. Every activity is
idempotent and raises typed errors: `LibvirtUnavailable` (retryable) or non-retryable
`ConfigError`, `PathRejected`, `NotFound`, `GuestNotBootable`, `ForeignDomain`, `LibvirtFault`.

Facts read: `converted_path.<diskKey>` / `converted_format.<diskKey>` (convert_image),
`target_volume.<diskKey>` / `target_format.<diskKey>` (attach_target_storage_profile),
`target_disk_bus` / `target_nic_model` (validate_guest_tools_and_drivers), the source VMs
(`source_vm.<name>` by default, see `activities.convert.vms_from_facts`).
Facts written: `target_volume.*`, `target_format.*`, `target_disk_bus`, `target_nic_model`,
`target_domain`, `target_address` (from the runbook's `endpoint.targetAddress`, else the
domain's DHCP lease when libvirt knows one).

The images are inspected on the worker's file system: the worker runs on the KVM host (or
shares its pool directories).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import libvirt
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import attempt as _attempt
from activities.common import error as _error
from activities.common import heartbeat as _heartbeat
from activities.convert import VmSource, vms_from_facts
from adapters.qemu.img import image_info
from adapters.qemu.img import tool as _tool
from adapters.staging import layout as staging
from adapters.staging.layout import confined, staging_dir
from cutover import facts as F
from cutover.catalog import Compensation, Step
from cutover.disknames import disk_id, mapping_for, output_name, safe_name, volume_name
from cutover.errors import ErrorKind
from cutover.facts import disk_keys
from cutover.inventory import VM
from cutover.models import StepInput, StepResult
from cutover.site import SiteConfig

# libvirt prints every error to stderr by default; ours arrive as exceptions, typed below.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

METADATA_NS = "urn:cutover:target:1"
ConnectionFactory = Callable[[str], Any]

_RETRYABLE = {
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_OPERATION_TIMEOUT,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
}


def translate(exc: BaseException, what: str) -> ApplicationError:
    if isinstance(exc, ApplicationError):
        return exc
    if isinstance(exc, libvirt.libvirtError):
        code = exc.get_error_code()
        if code in _RETRYABLE:
            return _error(ErrorKind.LIBVIRT_UNAVAILABLE, f"{what}: {exc} (will retry)", True)
        return _error(ErrorKind.LIBVIRT_FAULT, f"{what}: {exc}")
    if isinstance(exc, OSError):
        return _error(ErrorKind.LIBVIRT_UNAVAILABLE, f"{what}: {exc}", True)
    return _error(ErrorKind.LIBVIRT_FAULT, f"{what}: {type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------ connection

_loop_lock = threading.Lock()
_loop_started = False


def ensure_event_loop() -> None:
    """Embedded drivers (`qemu:///embed`) need a libvirt event loop running in-process."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


def open_connection(uri: str) -> Any:
    if "/embed" in uri:
        ensure_event_loop()
    return libvirt.open(uri)


def _not_found(exc: libvirt.libvirtError) -> bool:
    return exc.get_error_code() in (
        libvirt.VIR_ERR_NO_DOMAIN,
        libvirt.VIR_ERR_NO_STORAGE_POOL,
        libvirt.VIR_ERR_NO_STORAGE_VOL,
        libvirt.VIR_ERR_NO_NETWORK,
    )


def network_exists(conn: Any, name: str) -> bool:
    """Whether the host defines the network. An embedded driver has no network driver of
    its own (it would ask a virtnetworkd that is not there): nothing exists."""
    try:
        conn.networkLookupByName(name)
        return True
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_NETWORK, libvirt.VIR_ERR_NO_SUPPORT):
            return False
        if "/embed" in conn.getURI():
            return False
        raise


def _lookup(fn: Callable[[str], Any], name: str) -> Any | None:
    try:
        return fn(name)
    except libvirt.libvirtError as exc:
        if _not_found(exc):
            return None
        raise


# ------------------------------------------------------------------------ domain XML


@dataclass(frozen=True)
class DiskPlan:
    key: str
    path: str
    format: str


@dataclass(frozen=True)
class NicPlan:
    mac: str | None
    network: str | None  # a libvirt network; None: user-mode networking


def domain_name(application: str, vms: list[VM], vm: VM) -> str:
    name = application if len(vms) == 1 else f"{application}-{vm.name}"
    return safe_name(name, "domain name")


def plan_nics(
    site: SiteConfig, vm: VM, exists: Callable[[str], bool] = lambda _: True
) -> list[NicPlan]:
    """A NIC per source NIC: on the mapped libvirt network when it exists on the host,
    else user-mode networking; the source MAC kept unless the mapping says otherwise."""
    plans = []
    for nic in sorted(vm.nics, key=lambda n: n.key):
        mapping = next((m for m in site.networkMappings if m.sourceNetwork == nic.network), None)
        keep = mapping.keepMac if mapping is not None else True
        network = mapping.targetNetwork if mapping is not None else None
        plans.append(
            NicPlan(
                mac=nic.macAddress if keep else None,
                network=network if network is not None and exists(network) else None,
            )
        )
    return plans


def domain_xml(
    *,
    name: str,
    vm: VM,
    disks: list[DiskPlan],
    nics: list[NicPlan],
    domain_type: str,
    application: str,
    workflow_id: str,
    disk_bus: str = "virtio",
    nic_model: str = "virtio",
) -> str:
    """The target domain for one source VM. No <graphics>: the lab has no display."""
    if vm.memoryMB <= 0:
        raise _error(ErrorKind.CONFIG_ERROR, f"VM {vm.name}: memoryMB is {vm.memoryMB}")
    dom = ET.Element("domain", type=domain_type)
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "description").text = f"cutover of {vm.name} ({vm.moref})"
    meta = ET.SubElement(dom, "metadata")
    ET.SubElement(
        meta,
        f"{{{METADATA_NS}}}target",
        application=application,
        workflow=workflow_id,
        source=vm.moref,
    )
    ET.SubElement(dom, "memory", unit="MiB").text = str(vm.memoryMB)
    ET.SubElement(dom, "vcpu").text = str(max(1, vm.numCpu))
    cores = vm.coresPerSocket or 0
    if cores > 0 and vm.numCpu % cores == 0:
        cpu = ET.SubElement(dom, "cpu")
        ET.SubElement(
            cpu, "topology", sockets=str(vm.numCpu // cores), cores=str(cores), threads="1"
        )
    os_el = ET.SubElement(dom, "os", firmware="efi") if vm.firmware == "efi" else None
    if os_el is None:
        os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="q35" if vm.firmware == "efi" else "pc")
    os_el[-1].text = "hvm"
    if vm.firmware == "efi" and vm.secureBoot:
        ET.SubElement(os_el, "loader", secure="yes")
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    if vm.firmware == "efi" and vm.secureBoot:
        ET.SubElement(features, "smm", state="on")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"
    devices = ET.SubElement(dom, "devices")
    prefix = "vd" if disk_bus == "virtio" else "sd"
    for i, d in enumerate(disks):
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type=d.format, cache="none", io="native")
        ET.SubElement(disk, "source", file=d.path)
        ET.SubElement(disk, "target", dev=prefix + chr(ord("a") + i), bus=disk_bus)
        if i == 0:
            ET.SubElement(disk, "boot", order="1")
    for n in nics:
        iface = ET.SubElement(devices, "interface", type="network" if n.network else "user")
        if n.mac:
            ET.SubElement(iface, "mac", address=n.mac.lower())
        if n.network:
            ET.SubElement(iface, "source", network=n.network)
        ET.SubElement(iface, "model", type=nic_model)
    ET.SubElement(devices, "console", type="pty")
    ET.register_namespace("cutover", METADATA_NS)
    return ET.tostring(dom, encoding="unicode")


def domain_type(conn: Any) -> str:
    """kvm when the host offers it, else qemu (TCG); `test` on the test driver."""
    caps = ET.fromstring(conn.getCapabilities())
    offered = {
        d.get("type")
        for arch in caps.findall("guest/arch")
        if arch.get("name") in ("x86_64", "i686")  # the test driver offers i686 only
        for d in arch.findall("domain")
    }
    for kind in ("kvm", "qemu", "test"):
        if kind in offered:
            return kind
    raise _error(
        ErrorKind.CONFIG_ERROR, f"the libvirt host offers no x86_64 domain type ({offered})"
    )


def _ours(dom: Any) -> ET.Element | None:
    root = ET.fromstring(dom.XMLDesc(0))
    return root.find(f"metadata/{{{METADATA_NS}}}target")


# -------------------------------------------------------------------- image checks

WINDOWS_NOTE = (
    "qemu-img does not inject virtio drivers: a Windows guest gets SATA disks and e1000 "
    "NICs (convert with virt-v2v to get virtio)"
)


def boot_sectors(path: Path, fmt: str, sectors: int = 34) -> bytes:
    """The first `sectors` 512-byte sectors of the guest's disk (any image format)."""
    with tempfile.TemporaryDirectory(prefix="cutover-boot-") as tmp:
        out = Path(tmp) / "head.raw"
        done = subprocess.run(
            [_tool("qemu-img"), "dd", "-f", fmt, "-O", "raw", "bs=512",
             f"count={sectors}", f"if={path}", f"of={out}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise _error(ErrorKind.GUEST_NOT_BOOTABLE, f"cannot read {path}: {done.stderr.strip()}")
        with out.open("rb") as f:
            return f.read(sectors * 512)


def boot_problems(head: bytes, firmware: str) -> list[str]:
    mbr = len(head) >= 512 and head[510:512] == b"\x55\xaa"
    gpt = len(head) >= 520 and head[512:520] == b"EFI PART"
    esp_mbr = mbr and any(head[446 + 16 * i + 4] == 0xEF for i in range(4))
    if firmware == "efi" and not (gpt or esp_mbr):
        return ["UEFI firmware needs a GPT or an MBR with an EFI system partition"]
    if firmware == "bios" and not mbr:
        return ["no boot sector (0x55AA) for BIOS firmware" + (" (GPT only)" if gpt else "")]
    return []


def guest_family(vm: VM) -> str:
    text = f"{vm.guestFamily or ''} {vm.guestId or ''}".lower()
    if "win" in text:
        return "windows"
    if any(k in text for k in ("linux", "rhel", "centos", "ubuntu", "debian", "sles", "other")):
        return "linux"
    return "unknown"


# ------------------------------------------------------------------------ activities


@dataclass
class LibvirtTarget:
    """Target-side activities; they hold the worker's libvirt connections (injected)."""

    connect: ConnectionFactory = open_connection
    vm_source: VmSource = vms_from_facts
    #: Where dir pools that do not exist yet are created (default: `<stagingDir>/pools`,
    #: see `activities.staging`).
    pool_root: Path | None = None
    _conns: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pool_lock: threading.Lock = field(default_factory=threading.Lock)

    def _conn(self, site: SiteConfig) -> Any:
        if site.libvirt is None:
            raise _error(ErrorKind.CONFIG_ERROR, "the site config has no `libvirt` section")
        uri = site.libvirt.uri
        with self._lock:
            conn = self._conns.get(uri)
            if conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    if conn.isAlive():
                        return conn
            try:
                conn = self.connect(uri)
            except Exception as exc:
                raise _error(
                    ErrorKind.LIBVIRT_UNAVAILABLE, f"connecting to {uri}: {exc}", True
                ) from None
            self._conns[uri] = conn
            return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._conns.values():
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()
            self._conns.clear()

    def _vms(self, inp: StepInput) -> list[VM]:
        vms = self.vm_source(inp)
        if not vms:
            raise _error(
                ErrorKind.CONFIG_ERROR, "no source VM model (facts `source_vm.<name>` are absent)"
            )
        return vms

    # --------------------------------------------------------------------- storage

    def _pool(self, conn: Any, site: SiteConfig, name: str) -> Any:
        # Cutovers running at once share a pool: one thread defines and starts it, and a
        # second worker process doing the same is tolerated (define/create race on libvirt).
        with self._pool_lock:
            pool = _lookup(conn.storagePoolLookupByName, name)
            if pool is None:
                root = self.pool_root or staging.pools_root(site)
                path = confined(root, safe_name(name, "target pool"), "pool directory")
                xml = ET.Element("pool", type="dir")
                ET.SubElement(xml, "name").text = name
                target = ET.SubElement(xml, "target")
                ET.SubElement(target, "path").text = str(path)
                # QEMU runs as its own user (libvirt-qemu) and must reach the volumes
                ET.SubElement(ET.SubElement(target, "permissions"), "mode").text = "0755"
                try:
                    pool = conn.storagePoolDefineXML(ET.tostring(xml, encoding="unicode"), 0)
                except libvirt.libvirtError:
                    pool = _lookup(conn.storagePoolLookupByName, name)
                    if pool is None:
                        raise
                with contextlib.suppress(libvirt.libvirtError):
                    pool.build(0)
                with contextlib.suppress(libvirt.libvirtError):
                    pool.setAutostart(1)
            if not pool.isActive():
                with contextlib.suppress(libvirt.libvirtError):
                    pool.build(0)  # its directory may be gone (a defined pool outlives it)
                try:
                    pool.create(0)
                except libvirt.libvirtError:
                    if not pool.isActive():  # not started by someone else meanwhile
                        raise
            return pool

    @staticmethod
    def _link_volume(pool: Any, source: Path, name: str) -> Any | None:
        """A dir pool on the image's file system: hard-link the image in as the volume (no
        byte copied, so the downtime does not grow with the disk). None: upload instead."""
        desc = ET.fromstring(pool.XMLDesc(0))
        target = desc.findtext("target/path")
        if desc.get("type") != "dir" or not target:
            return None
        path = Path(target) / safe_name(name, "volume")
        try:
            os.link(source, path)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                return None
            raise _error(
                ErrorKind.LIBVIRT_FAULT, f"linking {source} into {target}: {exc}"
            ) from None
        pool.refresh(0)
        return pool.storageVolLookupByName(name)

    @staticmethod
    def _upload(conn: Any, vol: Any, source: Path) -> tuple[int, bool]:
        """Stream the file into the volume, skipping holes where libvirt can. Returns
        (bytes sent, sparse)."""
        fd = os.open(source, os.O_RDONLY)
        size = os.fstat(fd).st_size
        sent = 0

        def data(_stream: Any, nbytes: int, _opaque: Any) -> bytes:
            nonlocal sent
            chunk = os.read(fd, nbytes)
            sent += len(chunk)
            if sent % (256 << 20) < len(chunk):
                _heartbeat({"volume": vol.name(), "bytes": sent, "of": size})
            return chunk

        def hole(_stream: Any, _opaque: Any) -> list[Any]:
            pos = os.lseek(fd, 0, os.SEEK_CUR)
            if pos >= size:
                return [True, 0]
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # no data after pos: the rest is a hole
                os.lseek(fd, pos, os.SEEK_SET)
                return [False, size - pos]
            if start > pos:
                os.lseek(fd, pos, os.SEEK_SET)
                return [False, start - pos]
            end = os.lseek(fd, pos, os.SEEK_HOLE)
            os.lseek(fd, pos, os.SEEK_SET)
            return [True, end - pos]

        def skip(_stream: Any, length: int, _opaque: Any) -> int:
            os.lseek(fd, length, os.SEEK_CUR)
            return 0

        try:
            stream = conn.newStream(0)
            try:
                vol.upload(stream, 0, 0, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
                stream.sparseSendAll(data, hole, skip, None)
                sparse = True
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (
                    libvirt.VIR_ERR_NO_SUPPORT,
                    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
                ):
                    with contextlib.suppress(libvirt.libvirtError):
                        stream.abort()
                    raise
                os.lseek(fd, 0, os.SEEK_SET)
                stream = conn.newStream(0)
                vol.upload(stream, 0, 0, 0)
                stream.sendAll(data, None)
                sparse = False
            stream.finish()
            return sent, sparse
        finally:
            os.close(fd)

    @activity.defn(name=Step.ATTACH_TARGET_STORAGE_PROFILE)
    def attach_target_storage_profile(self, inp: StepInput) -> StepResult:
        ctx = inp.context
        root = staging_dir(ctx.site)
        keys = disk_keys(ctx.facts, F.CONVERTED_PATH)
        if not keys:
            raise _error(
                ErrorKind.NOT_FOUND, "no converted images: facts `converted_path.*` are absent"
            )
        vms = self.vm_source(inp)
        plan = []
        for key in keys:  # every path and name checked before anything is touched
            src = confined(
                root, ctx.facts[F.per_disk(F.CONVERTED_PATH, key)], f"converted image {key}"
            )
            fmt = (
                ctx.facts.get(F.per_disk(F.CONVERTED_FORMAT, key))
                or mapping_for(ctx.site, vms, key).format
            )
            if fmt not in ("qcow2", "raw"):
                raise _error(ErrorKind.CONFIG_ERROR, f"disk {key}: unknown image format {fmt!r}")
            pool_name = safe_name(mapping_for(ctx.site, vms, key).targetPool, "target pool")
            plan.append((key, src, fmt, pool_name, volume_name(ctx.application, key, fmt)))
        conn = self._conn(ctx.site)
        facts: dict[str, str] = {}
        details: dict[str, str | int | float | bool] = {}
        try:
            for key, src, fmt, pool_name, vol_name in plan:
                if not src.is_file():
                    raise _error(ErrorKind.NOT_FOUND, f"converted image {key} is missing: {src}")
                pool = self._pool(conn, ctx.site, pool_name)
                old = _lookup(pool.storageVolLookupByName, vol_name)
                if old is not None:  # a retry: upload again from scratch
                    old.delete(0)
                xml = ET.Element("volume")
                ET.SubElement(xml, "name").text = vol_name
                ET.SubElement(xml, "capacity", unit="bytes").text = str(src.stat().st_size)
                ET.SubElement(xml, "allocation", unit="bytes").text = "0"
                # raw container: libvirt must not format it; the bytes are the image
                ET.SubElement(ET.SubElement(xml, "target"), "format", type="raw")
                vol = self._link_volume(pool, src, vol_name)
                if vol is not None:  # same file system: the image becomes the volume
                    sent, sparse = 0, True
                    details[f"method.{key}"] = "link"
                else:
                    vol = pool.createXML(ET.tostring(xml, encoding="unicode"), 0)
                    sent, sparse = self._upload(conn, vol, src)
                    details[f"method.{key}"] = "upload"
                with contextlib.suppress(libvirt.libvirtError):
                    pool.refresh(0)
                facts[F.per_disk(F.TARGET_VOLUME, key)] = vol.path()
                facts[F.per_disk(F.TARGET_FORMAT, key)] = fmt
                details[f"bytes.{key}"] = sent
                details[f"sparse.{key}"] = sparse
                details[f"pool.{key}"] = pool_name
        except libvirt.libvirtError as exc:
            raise translate(exc, "attaching target storage") from None
        return StepResult(step=inp.step, facts=facts, details=details, attempt=_attempt())

    @activity.defn(name=Compensation.DETACH_TARGET_STORAGE)
    def detach_target_storage(self, inp: StepInput) -> StepResult:
        """Delete this application's volumes; a no-op when none exist. Pools stay."""
        ctx = inp.context
        keys = sorted(
            {*disk_keys(ctx.facts, F.CONVERTED_PATH), *disk_keys(ctx.facts, F.TARGET_VOLUME),
             *disk_keys(ctx.facts, F.STAGING_PATH)}
        )  # fmt: skip
        names = {volume_name(ctx.application, k, f) for k in keys for f in ("qcow2", "raw")}
        # A volume attached under the legacy name (before an upgrade) is removed only when
        # it is the very file this cutover attached: that name may be another application's.
        recorded = {
            ctx.facts[F.per_disk(F.TARGET_VOLUME, k)]
            for k in keys
            if F.per_disk(F.TARGET_VOLUME, k) in ctx.facts
        }
        legacy = {output_name(ctx.application, k, f) for k in keys for f in ("qcow2", "raw")}
        pools = {m.targetPool for m in ctx.site.storageMappings} or {"default"}
        removed: list[str] = []
        conn = self._conn(ctx.site)
        try:
            for pool_name in sorted(pools):
                pool = _lookup(conn.storagePoolLookupByName, pool_name)
                if pool is None or not pool.isActive():
                    continue
                for name in sorted(names | legacy):
                    vol = _lookup(pool.storageVolLookupByName, name)
                    if vol is None or (name in legacy and vol.path() not in recorded):
                        continue
                    vol.delete(0)
                    removed.append(f"{pool_name}/{name}")
        except libvirt.libvirtError as exc:
            raise translate(exc, "detaching target storage") from None
        return StepResult(
            step=inp.step,
            changed=bool(removed),
            details={"removed": ",".join(removed)},
            attempt=_attempt(),
        )

    # --------------------------------------------------------------------- validate

    def _disk_images(self, inp: StepInput, vm: VM) -> list[DiskPlan]:
        """The VM's disks as the target will see them (volumes, else converted images)."""
        facts = inp.context.facts
        out = []
        for disk in sorted(vm.disks, key=lambda d: d.key):
            key = disk_id(vm.name, disk.key)
            if F.per_disk(F.TARGET_VOLUME, key) in facts:
                path, fmt = (
                    facts[F.per_disk(F.TARGET_VOLUME, key)],
                    facts.get(F.per_disk(F.TARGET_FORMAT, key), "raw"),
                )
            elif F.per_disk(F.CONVERTED_PATH, key) in facts:
                path = facts[F.per_disk(F.CONVERTED_PATH, key)]
                fmt = facts.get(F.per_disk(F.CONVERTED_FORMAT, key), "qcow2")
            else:
                continue
            if not Path(path).is_absolute():
                raise _error(
                    ErrorKind.PATH_REJECTED, f"disk {key}: image path {path!r} is not absolute"
                )
            if fmt not in ("qcow2", "raw"):
                raise _error(ErrorKind.CONFIG_ERROR, f"disk {key}: unknown image format {fmt!r}")
            out.append(DiskPlan(key=key, path=path, format=fmt))
        return out

    @activity.defn(name=Step.VALIDATE_GUEST_TOOLS_AND_DRIVERS)
    def validate_guest_tools_and_drivers(self, inp: StepInput) -> StepResult:
        facts: dict[str, str] = {}
        details: dict[str, str | int | float | bool] = {}
        problems: list[str] = []
        for vm in self._vms(inp):
            disks = self._disk_images(inp, vm)
            if not disks:
                problems.append(f"{vm.name}: no converted disk to boot from")
                continue
            capacity = {disk_id(vm.name, d.key): d.capacityBytes for d in vm.disks}
            for d in disks:
                info = image_info(Path(d.path), d.format)
                size = int(info.get("virtual-size", 0))
                details[f"format.{d.key}"] = str(info.get("format"))
                details[f"bytes.{d.key}"] = size
                if info.get("format") != d.format:
                    problems.append(f"{vm.name} disk {d.key}: image is {info.get('format')}")
                if size == 0 or size < capacity.get(d.key, 0):
                    problems.append(
                        f"{vm.name} disk {d.key}: image is {size} bytes, source disk "
                        f"{capacity.get(d.key, 0)}"
                    )
            head = boot_sectors(Path(disks[0].path), disks[0].format)
            problems += [f"{vm.name}: {p}" for p in boot_problems(head, vm.firmware)]
            family = guest_family(vm)
            details[f"guest.{vm.name}"] = family
            if family == "windows":
                facts[F.TARGET_DISK_BUS], facts[F.TARGET_NIC_MODEL] = "sata", "e1000"
                details[f"note.{vm.name}"] = WINDOWS_NOTE
            else:
                facts.setdefault(F.TARGET_DISK_BUS, "virtio")
                facts.setdefault(F.TARGET_NIC_MODEL, "virtio")
                if family == "unknown":
                    details[f"note.{vm.name}"] = "unknown guest OS: assumes virtio drivers"
        if problems:
            raise _error(
                ErrorKind.GUEST_NOT_BOOTABLE, "the target cannot boot: " + "; ".join(problems)
            )
        return StepResult(
            step=inp.step, changed=False, facts=facts, details=details, attempt=_attempt()
        )

    # --------------------------------------------------------------------- domains

    @activity.defn(name=Step.POWER_ON_TARGET)
    def power_on_target(self, inp: StepInput) -> StepResult:
        ctx = inp.context
        vms = self._vms(inp)
        conn = self._conn(ctx.site)
        changed, names = False, []
        try:
            kind = domain_type(conn)
            for vm in vms:
                name = domain_name(ctx.application, vms, vm)
                names.append(name)
                dom = _lookup(conn.lookupByName, name)
                if dom is not None and _ours(dom) is None:
                    raise _error(
                        ErrorKind.FOREIGN_DOMAIN,
                        f"a domain named {name} exists and was not made by cutover",
                    )
                if dom is None:
                    disks = self._disk_images(inp, vm)
                    if not disks:
                        raise _error(
                            ErrorKind.NOT_FOUND, f"{vm.name}: no target volume to boot from"
                        )
                    xml = domain_xml(
                        name=name,
                        vm=vm,
                        disks=disks,
                        nics=plan_nics(
                            ctx.site,
                            vm,
                            partial(network_exists, conn),
                        ),
                        domain_type=kind,
                        application=ctx.application,
                        workflow_id=ctx.workflowId,
                        disk_bus=ctx.facts.get(F.TARGET_DISK_BUS, "virtio"),
                        nic_model=ctx.facts.get(F.TARGET_NIC_MODEL, "virtio"),
                    )
                    dom = conn.defineXML(xml)
                    changed = True
                if not dom.isActive():
                    dom.create()
                    changed = True
            facts = {"target_domain": ",".join(names)}
            address = ctx.runbook.endpoint.targetAddress or self._lease_address(conn, inp, names)
            if address:
                facts[F.TARGET_ADDRESS] = address
        except libvirt.libvirtError as exc:
            raise translate(exc, "powering on the target") from None
        return StepResult(
            step=inp.step,
            changed=changed,
            facts=facts,
            details={"domains": ",".join(names), "type": kind},
            attempt=_attempt(),
        )

    @staticmethod
    def _lease_address(conn: Any, inp: StepInput, names: list[str]) -> str | None:
        """The first domain's DHCP lease with the source's service port, when known."""
        source = inp.context.runbook.endpoint.sourceAddress
        if not source or ":" not in source:
            return None
        try:
            addrs = conn.lookupByName(names[0]).interfaceAddresses(
                libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0
            )
        except libvirt.libvirtError:
            return None
        for iface in (addrs or {}).values():
            for a in iface.get("addrs") or []:
                if a.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4:
                    return f"{a['addr']}:{source.rsplit(':', 1)[1]}"
        return None

    @activity.defn(name=Compensation.REMOVE_TARGET_DOMAIN)
    def remove_target_domain(self, inp: StepInput) -> StepResult:
        """Destroy and undefine the domains power_on_target made; a no-op when absent.
        Refuses (non-retryable) to touch a same-named domain cutover did not create."""
        ctx = inp.context
        vms = self._vms(inp)
        conn = self._conn(ctx.site)
        removed = []
        try:
            for vm in vms:
                name = domain_name(ctx.application, vms, vm)
                dom = _lookup(conn.lookupByName, name)
                if dom is None:
                    continue
                mark = _ours(dom)
                if mark is None or mark.get("application") != ctx.application:
                    raise _error(ErrorKind.FOREIGN_DOMAIN, f"domain {name} was not made by cutover")
                if dom.isActive():
                    dom.destroy()
                flags = (
                    libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                    | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                )
                try:
                    dom.undefineFlags(flags)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() not in (
                        libvirt.VIR_ERR_NO_SUPPORT,
                        libvirt.VIR_ERR_INVALID_ARG,
                    ):
                        raise
                    dom.undefine()
                removed.append(name)
        except libvirt.libvirtError as exc:
            raise translate(exc, "removing the target domain") from None
        return StepResult(
            step=inp.step,
            changed=bool(removed),
            details={"removed": ",".join(removed)},
            attempt=_attempt(),
        )

    def activities(self) -> list[Callable[..., Any]]:
        return [
            self.attach_target_storage_profile,
            self.detach_target_storage,
            self.validate_guest_tools_and_drivers,
            self.power_on_target,
            self.remove_target_domain,
        ]


def remove_cutover_domains(uri: str, application: str | None = None) -> list[str]:
    """Destroy and undefine the domains cutover made (all, or one application's); their
    names. For teardown (the demo, the lab): never touches a domain without our mark."""
    conn = open_connection(uri)
    removed = []
    try:
        for dom in conn.listAllDomains(0):
            mark = _ours(dom)
            if mark is None or (application and mark.get("application") != application):
                continue
            if dom.isActive():
                dom.destroy()
            dom.undefine()
            removed.append(dom.name())
    finally:
        conn.close()
    return removed
