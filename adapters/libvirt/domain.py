"""Target domains: their XML (disks, NICs, firmware, our metadata mark), the guest image
checks before a first boot, the DHCP lease address, and removing what cutover made."""

from __future__ import annotations

import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from adapters.libvirt.connection import open_connection
from adapters.qemu.img import tool as qemu_tool
from cutover.disknames import safe_name
from cutover.errors import ErrorKind, error
from cutover.inventory import VM
from cutover.site import SiteConfig

METADATA_NS = "urn:cutover:target:1"

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
        raise error(ErrorKind.CONFIG_ERROR, f"VM {vm.name}: memoryMB is {vm.memoryMB}")
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
    if vm.firmware == "efi":
        # libvirt picks the firmware by these features; without them it prefers Secure Boot
        # with Microsoft's keys enrolled, which refuses an unsigned loader the source VM
        # (Secure Boot off) booted (measured: libvirt 9.0, Debian's ovmf)
        fw = ET.SubElement(os_el, "firmware")
        on = "yes" if vm.secureBoot else "no"
        ET.SubElement(fw, "feature", enabled=on, name="secure-boot")
        ET.SubElement(fw, "feature", enabled=on, name="enrolled-keys")
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


def domain_type(conn: Any, wanted: str = "auto") -> str:
    """The domain type to define: `wanted` (kvm or qemu, as the site says) when the host
    offers it; `auto`: kvm when the host offers it, else qemu (TCG); `test` on the test
    driver (whatever is wanted: it offers nothing else)."""
    caps = ET.fromstring(conn.getCapabilities())
    offered = {
        d.get("type")
        for arch in caps.findall("guest/arch")
        if arch.get("name") in ("x86_64", "i686")  # the test driver offers i686 only
        for d in arch.findall("domain")
    }
    if wanted not in ("auto", "kvm", "qemu"):
        raise error(ErrorKind.CONFIG_ERROR, f"unknown libvirt domain type {wanted!r}")
    if wanted != "auto" and "test" not in offered:
        if wanted in offered:
            return wanted
        raise error(
            ErrorKind.CONFIG_ERROR,
            f"the site wants domain type {wanted}; the host offers {sorted(map(str, offered))}",
        )
    for kind in ("kvm", "qemu", "test"):
        if kind in offered:
            return kind
    raise error(
        ErrorKind.CONFIG_ERROR, f"the libvirt host offers no x86_64 domain type ({offered})"
    )


def wanted_domain_type(site: SiteConfig, platform: str | None) -> str:
    """The domain type the site asks for `platform`: its binding's `domainType`, else the
    site's `libvirt.domainType`, else auto."""
    binding = site.target_binding(platform) if platform is not None else None
    if binding is not None and binding.domainType is not None:
        return binding.domainType
    return site.libvirt.domainType if site.libvirt is not None else "auto"


def cutover_mark(dom: Any) -> ET.Element | None:
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
            [qemu_tool("qemu-img"), "dd", "-f", fmt, "-O", "raw", "bs=512",
             f"count={sectors}", f"if={path}", f"of={out}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise error(ErrorKind.GUEST_NOT_BOOTABLE, f"cannot read {path}: {done.stderr.strip()}")
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


def remove_cutover_domains(uri: str, application: str | None = None) -> list[str]:
    """Destroy and undefine the domains cutover made (all, or one application's); their
    names. For teardown (the demo, the lab): never touches a domain without our mark."""
    conn = open_connection(uri)
    removed = []
    try:
        for dom in conn.listAllDomains(0):
            mark = cutover_mark(dom)
            if mark is None or (application and mark.get("application") != application):
                continue
            if dom.isActive():
                dom.destroy()
            dom.undefine()
            removed.append(dom.name())
    finally:
        conn.close()
    return removed


def lease_address(conn: Any, name: str, port: str) -> str | None:
    """`<IPv4>:<port>` from the domain's DHCP lease, when libvirt knows one."""
    try:
        addrs = conn.lookupByName(name).interfaceAddresses(
            libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0
        )
    except libvirt.libvirtError:
        return None
    for iface in (addrs or {}).values():
        for a in iface.get("addrs") or []:
            if a.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4:
                return f"{a['addr']}:{port}"
    return None


def destroy_and_undefine(dom: Any) -> None:
    """Stop the domain and remove its definition (with its NVRAM, managed save and
    snapshot metadata where the driver supports those flags)."""
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
