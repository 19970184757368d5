"""An RVTools export (xlsx) as the inventory model (`cutover.inventory.Inventory`).

The same model the live reader (adapters/vsphere/inventory.py) produces, so the concern
rules and the planner see one shape whichever source fed them. Read with python-calamine:
on a generated 5,000-VM export it reads every sheet in 0.3 s against openpyxl's 2.3-2.8 s
(read-only, values only; bench/README.md "bench.plan").

Sheets: vInfo is required; vDisk, vPartition, vNetwork, vUSB, vSnapshot, vTools, vCluster,
vHost and vDatastore are read when present, and the missing ones are named
(`RvToolsImport.missingSheets`). Both header variants are accepted: RVTools 4.x's ``MiB``
columns and the older ``MB`` ones (``Provisioned MB``, ``In Use MB``, ``Capacity MB``),
``EnableUUID`` or ``disk.EnableUUID``. vInfo columns that are not RVTools' own are the VMs'
custom attributes (where RVTools puts them, and where it puts tags when asked to).

What an export cannot say: PCI passthrough and vGPU devices, CPU/NUMA affinity, TPM and
hot-plug settings are not in any RVTools sheet, so the concerns about them only come from
the live vCenter (`--site`). The guest family is derived from the OS name.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cutover.inventory import (
    VM,
    Cluster,
    Datacenter,
    Datastore,
    Disk,
    GuestDisk,
    Host,
    Inventory,
    Network,
    Nic,
    Snapshot,
)

MiB = 1 << 20

REQUIRED_SHEET = "vInfo"
#: Optional sheets, in RVTools' order.
OPTIONAL_SHEETS = (
    "vDisk",
    "vPartition",
    "vNetwork",
    "vUSB",
    "vSnapshot",
    "vTools",
    "vCluster",
    "vHost",
    "vDatastore",
)

#: A logical column -> the header names it goes by (current first, then legacy).
ALIASES: dict[str, tuple[str, ...]] = {
    "Provisioned MiB": ("Provisioned MiB", "Provisioned MB"),
    "In Use MiB": ("In Use MiB", "In Use MB"),
    "Capacity MiB": ("Capacity MiB", "Capacity MB"),
    "Free MiB": ("Free MiB", "Free MB"),
    "Consumed MiB": ("Consumed MiB", "Consumed MB"),
    "Total disk capacity MiB": ("Total disk capacity MiB", "Total disk capacity MB"),
    "EnableUUID": ("EnableUUID", "disk.EnableUUID"),
    "Memory": ("Memory", "Memory MiB", "Memory MB"),
}

#: Columns each sheet must have (a missing one is an error naming sheet and column).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "vInfo": ("VM", "Powerstate", "Template", "CPUs", "Memory", "Provisioned MiB"),
    "vDisk": ("VM", "Disk", "Capacity MiB"),
    "vPartition": ("VM", "Disk", "Capacity MiB", "Free MiB"),
    "vNetwork": ("VM", "Network"),
    "vUSB": ("VM",),
    "vSnapshot": ("VM", "Name"),
    "vTools": ("VM",),
    "vCluster": ("Name",),
    "vHost": ("Host",),
    "vDatastore": ("Name",),
}

#: vInfo's own columns (RVTools 3.x and 4.x): any other column is a custom attribute.
_VINFO_OWN = frozenset(
    """VM|Powerstate|Template|SRM Placeholder|Config status|DNS Name|Connection state|
    Guest state|Heartbeat|Consolidation Needed|PowerOn|Suspended To Memory|Suspend time|
    Suspend Interval|Creation date|Change Version|CPUs|Overall Cpu Readiness|Memory|
    Active Memory|NICs|Disks|Total disk capacity MiB|Total disk capacity MB|
    Fixed Passthru HotPlug|min Required EVC Mode Key|Latency Sensitivity|
    Op Notification Timeout|EnableUUID|disk.EnableUUID|CBT|Primary IP Address|Network #1|
    Network #2|Network #3|Network #4|Network #5|Network #6|Network #7|Network #8|
    Num Monitors|Video Ram KiB|Resource pool|Folder ID|Folder|vApp|DAS protection|FT State|
    FT Role|FT Latency|FT Bandwidth|FT Sec. Latency|Vm Failover In Progress|Provisioned MiB|
    Provisioned MB|In Use MiB|In Use MB|Unshared MiB|Unshared MB|HA Restart Priority|
    HA Isolation Response|HA VM Monitoring|Cluster rule(s)|Cluster rule name(s)|
    Boot Required|Boot delay|Boot retry delay|Boot retry enabled|Boot BIOS setup|
    Reboot PowerOff|EFI Secure boot|Firmware|HW version|HW upgrade status|HW upgrade policy|
    HW target|Path|Log directory|Snapshot directory|Suspend directory|Annotation|
    Backup status|Last backup|ClusterInvariantVMMId|Datacenter|Cluster|Host|
    OS according to the configuration file|OS according to the VMware Tools|
    Customization Info|Guest Detailed Data|VM ID|SMBIOS UUID|VM UUID|VI SDK Server type|
    VI SDK API Version|VI SDK Server|VI SDK UUID""".replace("\n", "")
    .replace("    ", "")
    .split("|")
)


class RvToolsError(ValueError):
    """The file is not a usable RVTools export: the message names file, sheet and column."""


class RvToolsImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inventory: Inventory
    #: Optional sheets the export lacks (what they would have said is unknown).
    missingSheets: list[str] = Field(default_factory=list)
    #: Which header variant the vInfo sheet uses: "current" (MiB) or "legacy" (MB).
    headerVariant: str = "current"


Row = dict[str, Any]


class _Sheet:
    """One sheet's rows as dicts keyed by logical column name (aliases resolved)."""

    def __init__(self, file: str, name: str, rows: list[list[Any]]) -> None:
        self.file, self.name = file, name
        header = [str(h).strip() if h is not None else "" for h in (rows[0] if rows else [])]
        self.header = header
        index = {h: i for i, h in enumerate(header) if h}
        for logical, names in ALIASES.items():
            for n in names:
                if n in index:
                    index.setdefault(logical, index[n])
                    break
        self.index = index
        self.rows = rows[1:]
        missing = [c for c in REQUIRED_COLUMNS.get(name, ()) if c not in index]
        if missing:
            alt = ALIASES.get(missing[0], (missing[0],))
            also = f" (or {', '.join(repr(a) for a in alt[1:])})" if len(alt) > 1 else ""
            raise RvToolsError(
                f"{file}: sheet {name}: missing column {missing[0]!r}{also}; is this an RVTools "
                "export?"
            )

    def records(self) -> list[Row]:
        idx = self.index
        width = len(self.header)
        out: list[Row] = []
        for raw in self.rows:
            row = list(raw) + [None] * (width - len(raw))
            rec = {k: row[i] for k, i in idx.items()}
            if _text(rec.get("VM")) or _text(rec.get("Name")) or _text(rec.get("Host")):
                out.append(rec)
        return out


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _int(v: Any, default: int = 0) -> int:
    if v is None or v == "":
        return default
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return default


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    return _text(v).lower() in ("true", "yes", "1", "enabled", "on")


#: Keyword in the OS name -> a guest id of that system (the export has no guest id; the
#: version in these ids is approximate, which no concern rule depends on).
_LINUX_IDS = (
    ("other", "otherLinux64Guest"),
    ("red hat", "rhel9_64Guest"),
    ("rhel", "rhel9_64Guest"),
    ("centos", "centos8_64Guest"),
    ("ubuntu", "ubuntu64Guest"),
    ("debian", "debian12_64Guest"),
    ("suse", "sles15_64Guest"),
    ("sles", "sles15_64Guest"),
    ("oracle", "oracleLinux8_64Guest"),
    ("rocky", "rockylinux_64Guest"),
    ("alma", "almalinux_64Guest"),
    ("photon", "vmwarePhoton64Guest"),
    ("fedora", "fedora64Guest"),
    ("amazon", "amazonlinux2_64Guest"),
    ("linux", "otherLinux64Guest"),
)


def guest_family(os_name: str) -> tuple[str | None, str | None]:
    """(guestFamily, guestId) for an OS name as RVTools shows it: a generic Linux name gets
    a generic guest id (so guest_os.generic applies), other systems their own family."""
    name = os_name.lower()
    if not name:
        return None, None
    if "windows" in name:
        return "windowsGuest", "windows2019srv_64Guest"
    for word, gid in _LINUX_IDS:
        if word in name and ("linux" in name or word != "other"):
            return "linuxGuest", gid
    if "solaris" in name:
        return "solarisGuest", "solaris11_64Guest"
    if "freebsd" in name:
        return "otherGuest", "freebsd13_64Guest"
    if "netware" in name:
        return "netwareGuest", "netware6Guest"
    if name.startswith("other"):
        return None, "otherGuest64"
    return "otherGuest", None


_DS = re.compile(r"^\[([^\]]+)\]")


def _tools_running(guest_state: str) -> str | None:
    """vInfo's "Guest state" (VMware Tools' view of the guest) as the running status."""
    if not guest_state:
        return None
    return "guestToolsRunning" if guest_state == "running" else "guestToolsNotRunning"


def _power(v: Any) -> Any:
    p = _text(v)
    return p if p in ("poweredOn", "poweredOff", "suspended") else None


def _read_workbook(path: Path) -> dict[str, list[list[Any]]]:
    from python_calamine import CalamineWorkbook  # a Rust extension: only when needed

    file = str(path)
    try:
        wb = CalamineWorkbook.from_path(file)
    except FileNotFoundError:
        raise RvToolsError(f"{file}: no such file") from None
    except Exception as exc:  # calamine raises its own types for every broken archive
        raise RvToolsError(f"{file}: not a readable xlsx workbook ({exc})") from None
    wanted = {REQUIRED_SHEET, *OPTIONAL_SHEETS}
    sheets: dict[str, list[list[Any]]] = {}
    for name in wb.sheet_names:
        if name in wanted:
            try:
                sheets[name] = wb.get_sheet_by_name(name).to_python()
            except Exception as exc:
                raise RvToolsError(f"{file}: sheet {name}: unreadable ({exc})") from None
    if REQUIRED_SHEET not in sheets:
        found = ", ".join(wb.sheet_names) or "none"
        raise RvToolsError(
            f"{file}: no sheet {REQUIRED_SHEET!r} (sheets: {found}); an RVTools export "
            "(xlsx, all tabs) was expected"
        )
    return sheets


def read_rvtools(path: str | Path) -> RvToolsImport:
    """Read an RVTools export into the inventory model."""
    path = Path(path)
    file = str(path)
    raw = _read_workbook(path)
    sheets = {name: _Sheet(file, name, rows) for name, rows in raw.items()}
    vinfo = sheets[REQUIRED_SHEET]
    variant = "legacy" if "Provisioned MB" in vinfo.header else "current"
    attr_cols = [h for h in vinfo.header if h and h not in _VINFO_OWN]

    def by_vm(sheet: str) -> dict[str, list[Row]]:
        out: dict[str, list[Row]] = {}
        if sheet in sheets:
            for rec in sheets[sheet].records():
                out.setdefault(_text(rec.get("VM")), []).append(rec)
        return out

    disks, parts, nets = by_vm("vDisk"), by_vm("vPartition"), by_vm("vNetwork")
    usbs, snaps, tools = by_vm("vUSB"), by_vm("vSnapshot"), by_vm("vTools")
    vms: list[VM] = []
    for rec in vinfo.records():
        name = _text(rec.get("VM"))
        moref = _text(rec.get("VM ID")) or name
        os_tools = _text(rec.get("OS according to the VMware Tools"))
        os_conf = _text(rec.get("OS according to the configuration file"))
        family, gid = guest_family(os_tools or os_conf)
        ips = [_text(rec.get("Primary IP Address"))] if _text(rec.get("Primary IP Address")) else []
        nics: list[Nic] = []
        for k, n in enumerate(nets.get(name, [])):
            for ip in re.split(r"[,\s]+", _text(n.get("IPv4 Address"))):
                if ip and ip not in ips:
                    ips.append(ip)
            adapter = _text(n.get("Adapter")) or "unknown"
            nics.append(
                Nic(
                    key=4000 + k,
                    label=_text(n.get("NIC label")),
                    macAddress=_text(n.get("Mac Address")) or None,
                    network=_text(n.get("Network")) or None,
                    adapterType=adapter,
                    connected=_bool(n.get("Connected")),
                    startConnected=_bool(n.get("Starts Connected")),
                    sriov="sriov" in adapter.lower().replace("-", ""),
                )
            )
        vm_disks: list[Disk] = []
        for k, d in enumerate(disks.get(name, [])):
            path_ = _text(d.get("Path")) or _text(d.get("Disk Path"))
            m = _DS.match(path_)
            sharing = _text(d.get("Sharing mode")) or None
            vm_disks.append(
                Disk(
                    key=_int(d.get("Disk Key"), 2000 + k),
                    label=_text(d.get("Label")) or _text(d.get("Disk")),
                    capacityBytes=_int(d.get("Capacity MiB")) * MiB,
                    fileName=path_,
                    datastore=m.group(1) if m else None,
                    thin=_bool(d.get("Thin")) if d.get("Thin") is not None else None,
                    diskMode=_text(d.get("Disk Mode")) or None,
                    sharing=sharing,
                    rdm=_bool(d.get("Raw")),
                    rdmCompatibilityMode=_text(d.get("Raw Comp. Mode")) or None,
                    uuid=_text(d.get("Disk UUID")) or None,
                    # No per-disk CBT state in an export: "" (a change id, value unknown)
                    # where the VM tracks changes, so cbt.disk_disabled, which infers a
                    # disk's tracking from its change id, does not claim what it cannot see.
                    changeId="" if _bool(rec.get("CBT")) else None,
                )
            )
        if not vm_disks and "vDisk" not in sheets:
            # no vDisk sheet: one disk of the VM's provisioned size, so its data is counted
            size = _int(rec.get("Total disk capacity MiB")) or _int(rec.get("Provisioned MiB"))
            if size:
                vm_disks.append(
                    Disk(
                        key=2000,
                        label="Hard disk 1",
                        capacityBytes=size * MiB,
                        fileName=_text(rec.get("Path")),
                    )
                )
        guest_disks = [
            GuestDisk(
                path=_text(p.get("Disk")),
                capacityBytes=_int(p.get("Capacity MiB")) * MiB,
                freeBytes=_int(p.get("Free MiB")) * MiB,
            )
            for p in parts.get(name, [])
            if _text(p.get("Disk"))
        ]
        tool = (tools.get(name) or [{}])[0]
        ft = _text(rec.get("FT State"))
        vms.append(
            VM(
                moref=moref,
                name=name,
                datacenter=_text(rec.get("Datacenter")) or None,
                cluster=_text(rec.get("Cluster")) or None,
                host=_text(rec.get("Host")) or None,
                template=_bool(rec.get("Template")),
                uuid=_text(rec.get("SMBIOS UUID")) or None,
                instanceUuid=_text(rec.get("VM UUID")) or None,
                powerState=_power(rec.get("Powerstate")),
                guestId=gid,
                guestFullName=os_tools or os_conf or None,
                guestFamily=family,
                guestHostname=_text(rec.get("DNS Name")) or None,
                ipAddresses=ips,
                toolsStatus=_text(tool.get("Tools")) or None,
                toolsRunningStatus=_tools_running(_text(rec.get("Guest state"))),
                numCpu=max(1, _int(rec.get("CPUs"), 1)),
                memoryMB=_int(rec.get("Memory")),
                latencySensitivity=_text(rec.get("Latency Sensitivity")) or None,
                firmware="efi" if _text(rec.get("Firmware")).lower() == "efi" else "bios",
                secureBoot=_bool(rec.get("EFI Secure boot")),
                usbControllers=len(usbs.get(name, [])),
                changeTrackingEnabled=_bool(rec.get("CBT")),
                consolidationNeeded=_bool(rec.get("Consolidation Needed")),
                faultTolerance=bool(ft) and ft.lower() not in ("notconfigured", "disabled"),
                diskEnableUuid=_bool(rec.get("EnableUUID")),
                disks=vm_disks,
                nics=nics,
                snapshots=[
                    Snapshot(
                        name=_text(s.get("Name")),
                        moref=f"{moref}-snapshot-{j}",
                        description=_text(s.get("Description")),
                    )
                    for j, s in enumerate(snaps.get(name, []))
                ],
                guestDisks=guest_disks,
                customAttributes={c: _text(rec.get(c)) for c in attr_cols if _text(rec.get(c))},
            )
        )
    return RvToolsImport(
        inventory=_inventory(file, sheets, vms),
        missingSheets=[s for s in OPTIONAL_SHEETS if s not in sheets],
        headerVariant=variant,
    )


def _inventory(file: str, sheets: dict[str, _Sheet], vms: list[VM]) -> Inventory:
    def rows(name: str) -> list[Row]:
        return sheets[name].records() if name in sheets else []

    dcs = sorted({vm.datacenter for vm in vms if vm.datacenter})
    host_rows = rows("vHost")
    hosts = [
        Host(
            moref=_text(h.get("Object ID")) or _text(h.get("Host")),
            name=_text(h.get("Host")),
            datacenter=_text(h.get("Datacenter")),
            cluster=_text(h.get("Cluster")) or None,
            cpuCores=_int(h.get("# Cores")) or None,
            cpuPackages=_int(h.get("# CPU")) or None,
            memoryBytes=_int(h.get("# Memory")) * MiB or None,
            version=_text(h.get("ESX Version")) or None,
        )
        for h in host_rows
    ]
    dc_of = {h.cluster: h.datacenter for h in hosts if h.cluster}
    dc_of.update({vm.cluster: vm.datacenter or "" for vm in vms if vm.cluster})
    hosts_of: dict[str, list[str]] = {}
    for h in hosts:
        if h.cluster:
            hosts_of.setdefault(h.cluster, []).append(h.moref)
    clusters = [
        Cluster(
            moref=_text(c.get("Object ID")) or _text(c.get("Name")),
            name=_text(c.get("Name")),
            datacenter=dc_of.get(_text(c.get("Name")), ""),
            hosts=hosts_of.get(_text(c.get("Name")), []),
            drsEnabled=_bool(c.get("DRS enabled")),
            drsBehavior=_text(c.get("DRS default VM behavior")) or None,
            dpmEnabled=_bool(c.get("DPM enabled")),
            haEnabled=_bool(c.get("HA enabled")),
        )
        for c in rows("vCluster")
    ]
    datastores = [
        Datastore(
            moref=_text(d.get("Object ID")) or _text(d.get("Name")),
            name=_text(d.get("Name")),
            type=_text(d.get("Type")) or None,
            url=_text(d.get("URL")) or None,
            capacityBytes=_int(d.get("Capacity MiB")) * MiB or None,
            freeBytes=_int(d.get("Free MiB")) * MiB or None,
        )
        for d in rows("vDatastore")
    ]
    net_names = sorted({n.network for vm in vms for n in vm.nics if n.network})
    return Inventory(
        source=file,
        # an export carries no reliable timestamp column; a fixed one keeps output stable
        collectedAt=datetime(1970, 1, 1, tzinfo=UTC),
        datacenters=[Datacenter(moref=dc, name=dc) for dc in dcs],
        clusters=clusters,
        hosts=hosts,
        datastores=datastores,
        networks=[Network(moref=n, name=n) for n in net_names],
        vms=vms,
    )
