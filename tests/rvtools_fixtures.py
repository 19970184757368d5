"""Generated RVTools exports and dependency CSVs, for the planner's tests and `bench.plan`.

`write_xlsx` is a minimal xlsx writer (zip + SpreadsheetML, shared strings as RVTools writes
them), so the tests need no spreadsheet library of their own. `world` builds a seeded estate
(applications with VMs, environments, owners, databases, special workloads, templates) and
`export` writes it in either RVTools header variant: ``current`` (``Provisioned MiB``,
``Capacity MiB``, ``EnableUUID``) or ``legacy`` (``Provisioned MB``, ``Capacity MB``,
``disk.EnableUUID``).
"""

from __future__ import annotations

import csv
import random
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

Cell = str | int | float | bool | None
Variant = Literal["current", "legacy"]

# ------------------------------------------------------------------- xlsx writer


def _col(i: int) -> str:
    name = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        name = chr(65 + r) + name
    return name


def write_xlsx(path: Path, sheets: Mapping[str, Sequence[Sequence[Cell]]]) -> Path:
    """Write `sheets` (name -> rows, the first row the header) as an xlsx workbook."""
    strings: dict[str, int] = {}

    def sheet_xml(rows: Sequence[Sequence[Cell]]) -> str:
        out = [
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<worksheet '
            'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
        ]
        for r, row in enumerate(rows, 1):
            out.append(f'<row r="{r}">')
            for c, value in enumerate(row):
                if value is None or value == "":
                    continue
                ref = f"{_col(c)}{r}"
                if isinstance(value, bool):
                    value = "True" if value else "False"  # RVTools writes booleans as text
                if isinstance(value, str):
                    idx = strings.setdefault(value, len(strings))
                    out.append(f'<c r="{ref}" t="s"><v>{idx}</v></c>')
                else:
                    out.append(f'<c r="{ref}"><v>{value}</v></c>')
            out.append("</row>")
        out.append("</sheetData></worksheet>")
        return "".join(out)

    bodies = [sheet_xml(rows) for rows in sheets.values()]
    ns = "http://schemas.openxmlformats.org"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(
            "[Content_Types].xml",
            f'<?xml version="1.0" encoding="UTF-8"?><Types xmlns="{ns}/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
            'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-'
            'officedocument.spreadsheetml.sheet.main+xml"/>'
            '<Override PartName="/xl/sharedStrings.xml" ContentType="application/vnd.'
            'openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>'
            + "".join(
                f'<Override PartName="/xl/worksheets/sheet{i}.xml" ContentType="application/'
                'vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
                for i in range(1, len(bodies) + 1)
            )
            + "</Types>",
        )
        z.writestr(
            "_rels/.rels",
            f'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="{ns}/package/2006/'
            f'relationships"><Relationship Id="rId1" Type="{ns}/officeDocument/2006/'
            'relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>',
        )
        z.writestr(
            "xl/workbook.xml",
            f'<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="{ns}/spreadsheetml/2006/'
            f'main" xmlns:r="{ns}/officeDocument/2006/relationships"><sheets>'
            + "".join(
                f'<sheet name="{escape(name)}" sheetId="{i}" r:id="rId{i}"/>'
                for i, name in enumerate(sheets, 1)
            )
            + "</sheets></workbook>",
        )
        n = len(bodies)
        z.writestr(
            "xl/_rels/workbook.xml.rels",
            f'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="{ns}/package/2006/'
            'relationships">'
            + "".join(
                f'<Relationship Id="rId{i}" Type="{ns}/officeDocument/2006/relationships/'
                f'worksheet" Target="worksheets/sheet{i}.xml"/>'
                for i in range(1, n + 1)
            )
            + f'<Relationship Id="rId{n + 1}" Type="{ns}/officeDocument/2006/relationships/'
            'sharedStrings" Target="sharedStrings.xml"/></Relationships>',
        )
        for i, body in enumerate(bodies, 1):
            z.writestr(f"xl/worksheets/sheet{i}.xml", body)
        z.writestr(
            "xl/sharedStrings.xml",
            f'<?xml version="1.0" encoding="UTF-8"?><sst xmlns="{ns}/spreadsheetml/2006/main" '
            f'count="{len(strings)}" uniqueCount="{len(strings)}">'
            + "".join(f"<si><t>{escape(s)}</t></si>" for s in strings)
            + "</sst>",
        )
    return path


# ------------------------------------------------------------------- the estate


@dataclass
class GenDisk:
    capacity_mib: int
    mode: str = "persistent"
    sharing: str = "sharingNone"
    raw: bool = False


@dataclass
class GenVM:
    name: str
    app: str | None
    env: str = "dev"
    criticality: str | None = None
    owner: str | None = "team-a"
    os: str = "Red Hat Enterprise Linux 8 (64-bit)"
    template: bool = False
    power: str = "poweredOn"
    cpus: int = 2
    memory_mib: int = 4096
    disks: list[GenDisk] = field(default_factory=lambda: [GenDisk(40 * 1024)])
    latency: str = "normal"
    ft: bool = False
    adapter: str = "Vmxnet3"
    ip: str = ""
    cluster: str = "cl-01"
    host: str = "esx-01.example.com"
    datacenter: str = "dc-01"
    moref: str = ""
    #: more custom attributes (written when `export` is asked for their columns)
    extra: dict[str, str] = field(default_factory=dict)


def _cols(text: str) -> list[str]:
    """A header from `|`-separated names (compact: RVTools sheets have many columns)."""
    return text.split("|")


_VINFO_HEAD = _cols(
    "VM|Powerstate|Template|SRM Placeholder|Config status|DNS Name|Connection state|Guest "
    "state|Heartbeat|Consolidation Needed|PowerOn|Suspend time|Creation date|Change "
    "Version|CPUs|Overall Cpu Readiness|Memory|Active Memory|NICs|Disks|Total disk capacity "
    "MiB|Fixed Passthru HotPlug|min Required EVC Mode Key|Latency Sensitivity|Op Notification"
    " Timeout|EnableUUID|CBT|Primary IP Address|Network #1|Network #2|Num Monitors|Video Ram "
    "KiB|Resource pool|Folder ID|Folder|vApp|DAS protection|FT State|FT Role|FT Latency|FT "
    "Bandwidth|Provisioned MiB|In Use MiB|Unshared MiB|HA Restart Priority|HA Isolation "
    "Response|Cluster rule(s)|Cluster rule name(s)|Boot Required|Boot delay|EFI Secure "
    "boot|Firmware|HW version|HW upgrade status|Path|Log directory|Snapshot "
    "directory|Annotation"
)
_VINFO_TAIL = _cols(
    "Datacenter|Cluster|Host|OS according to the configuration file|OS according to the "
    "VMware Tools|Customization Info|Guest Detailed Data|VM ID|SMBIOS UUID|VM UUID|VI SDK "
    "Server type|VI SDK API Version|VI SDK Server|VI SDK UUID"
)
_VDISK = _cols(
    "VM|Powerstate|Template|Disk|Disk Key|Disk UUID|Disk Path|Capacity MiB|Raw|Disk "
    "Mode|Sharing mode|Thin|Eagerly Scrub|Split|Write Through|Level|Controller|Label|SCSI "
    "Unit #|Unit #|Path|Raw LUN ID|Raw Comp. Mode|Datacenter|Cluster|Host|VM ID|VM UUID"
)
_VNETWORK = _cols(
    "VM|Powerstate|Template|NIC label|Adapter|Network|Switch|Connected|Starts Connected|Mac "
    "Address|Type|IPv4 Address|IPv6 Address|Direct Path IO|Datacenter|Cluster|Host|VM ID|VM "
    "UUID"
)
_VPARTITION = _cols(
    "VM|Powerstate|Template|Disk|Capacity MiB|Consumed MiB|Free MiB|Free "
    "%|Datacenter|Cluster|Host|VM ID|VM UUID"
)
_VTOOLS = _cols(
    "VM|Powerstate|Template|VM Version|Tools|Tools Version|Required "
    "Version|Upgradeable|Upgrade Policy|VM ID|VM UUID"
)
_VHOST = _cols(
    "Host|Datacenter|Cluster|Config status|CPU Model|Speed|# CPU|Cores per CPU|# Cores|# "
    "Memory|ESX Version|# VMs|Object ID"
)
_VCLUSTER = _cols(
    "Name|Config status|OverallStatus|NumHosts|HA enabled|DRS enabled|DRS default VM "
    "behavior|DPM enabled|Object ID"
)
_VDATASTORE = _cols("Name|Config status|Accessible|Type|# VMs|Capacity MiB|Free MiB|URL|Object ID")
_VSNAPSHOT = _cols(
    "VM|Powerstate|Name|Description|Date / time|Filename|Size MiB (vmsn)|Size MiB "
    "(total)|Quiesced|State|VM ID"
)
_VUSB = _cols("VM|Powerstate|Template|Device Type|Connected|Path|VM ID")

_DATASTORE_ROW: list[Cell] = ["ds-01", "green", True, "VMFS"]
_LEGACY = {
    "Total disk capacity MiB": "Total disk capacity MB",
    "Provisioned MiB": "Provisioned MB",
    "In Use MiB": "In Use MB",
    "Unshared MiB": "Unshared MB",
    "Capacity MiB": "Capacity MB",
    "Consumed MiB": "Consumed MB",
    "Free MiB": "Free MB",
    "EnableUUID": "disk.EnableUUID",
    "Size MiB (vmsn)": "Size MB (vmsn)",
    "Size MiB (total)": "Size MB (total)",
}

#: Every sheet `export` can write, in RVTools' order.
SHEETS = (
    "vInfo",
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


def export(
    vms: Iterable[GenVM],
    path: Path,
    *,
    variant: Variant = "current",
    attributes: Sequence[str] = ("app", "env", "criticality", "owner"),
    sheets: Sequence[str] = SHEETS,
    drop: dict[str, str] | None = None,
    rename: dict[str, str] | None = None,
) -> Path:
    """Write `vms` as an RVTools export. `drop` {sheet: column} removes one column; `rename`
    {old: new} renames sheets (to test a wrong sheet name)."""
    vms = list(vms)
    ren = _LEGACY if variant == "legacy" else {}

    def head(cols: list[str]) -> list[Cell]:
        return [ren.get(c, c) for c in cols]

    vinfo: list[list[Cell]] = [[*head(_VINFO_HEAD), *attributes, *head(_VINFO_TAIL)]]
    vdisk: list[list[Cell]] = [head(_VDISK)]
    vpart: list[list[Cell]] = [head(_VPARTITION)]
    vnet: list[list[Cell]] = [head(_VNETWORK)]
    vtools: list[list[Cell]] = [head(_VTOOLS)]
    clusters = sorted({(v.cluster, v.datacenter) for v in vms})
    hosts = sorted({(v.host, v.cluster, v.datacenter) for v in vms})
    for i, v in enumerate(vms):
        moref = v.moref or f"vm-{1000 + i}"
        uuid = f"4210{i:04x}-0000-0000-0000-{i:012x}"
        total = sum(d.capacity_mib for d in v.disks)
        base: dict[str, Cell] = {
            "VM": v.name,
            "Powerstate": v.power,
            "Template": v.template,
            "Config status": "green",
            "DNS Name": f"{v.name}.example.com",
            "Connection state": "connected",
            "Guest state": "running",
            "CPUs": v.cpus,
            "Memory": v.memory_mib,
            "NICs": 1,
            "Disks": len(v.disks),
            "Total disk capacity MiB": total,
            "Latency Sensitivity": v.latency,
            "EnableUUID": True,
            "CBT": True,
            "Primary IP Address": v.ip,
            "Network #1": "VM Network",
            "FT State": "running" if v.ft else "notConfigured",
            "Provisioned MiB": total,
            "In Use MiB": total // 2,
            "Unshared MiB": total // 2,
            "Firmware": "bios",
            "HW version": "vmx-19",
            "Path": f"[ds-01] {v.name}/{v.name}.vmx",
            "Annotation": "",
            "app": v.app or "",
            "env": v.env,
            "criticality": v.criticality or "",
            "owner": v.owner or "",
            "Datacenter": v.datacenter,
            "Cluster": v.cluster,
            "Host": v.host,
            "OS according to the configuration file": v.os,
            "OS according to the VMware Tools": v.os if v.power == "poweredOn" else "",
            "VM ID": moref,
            "SMBIOS UUID": uuid,
            "VM UUID": "5010" + uuid[4:],
            "VI SDK Server": "vcenter.example.com",
        }
        base.update(v.extra)
        vinfo.append([base.get(c) for c in _VINFO_HEAD + list(attributes) + _VINFO_TAIL])
        for k, d in enumerate(v.disks):
            row: dict[str, Cell] = {
                "VM": v.name,
                "Powerstate": v.power,
                "Template": v.template,
                "Disk": f"Hard disk {k + 1}",
                "Disk Key": 2000 + k,
                "Disk Path": f"[ds-01] {v.name}/{v.name}_{k}.vmdk",
                "Capacity MiB": d.capacity_mib,
                "Raw": d.raw,
                "Disk Mode": d.mode,
                "Sharing mode": d.sharing,
                "Thin": True,
                "Eagerly Scrub": False,
                "Controller": "SCSI controller 0",
                "Label": f"Hard disk {k + 1}",
                "SCSI Unit #": k,
                "Unit #": k,
                "Datacenter": v.datacenter,
                "Cluster": v.cluster,
                "Host": v.host,
                "VM ID": moref,
            }
            vdisk.append([row.get(c) for c in _VDISK])
        if v.power == "poweredOn" and not v.template:
            root = v.disks[0].capacity_mib if v.disks else 1024
            vpart.append(
                [
                    v.name,
                    v.power,
                    False,
                    "/",
                    root,
                    root // 4,
                    root - root // 4,
                    75,
                    v.datacenter,
                    v.cluster,
                    v.host,
                    moref,
                    None,
                ]
            )
        vnet.append(
            [
                v.name,
                v.power,
                v.template,
                "Network adapter 1",
                v.adapter,
                "VM Network",
                "vSwitch0",
                True,
                True,
                f"00:50:56:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                "Assigned",
                v.ip,
                "",
                False,
                v.datacenter,
                v.cluster,
                v.host,
                moref,
                None,
            ]
        )
        vtools.append(
            [v.name, v.power, v.template, 19, "toolsOk", 12352, 12352, False, "manual", moref, None]
        )
    all_sheets: dict[str, list[list[Cell]]] = {
        "vInfo": vinfo,
        "vDisk": vdisk,
        "vPartition": vpart,
        "vNetwork": vnet,
        "vUSB": [head(_VUSB)],
        "vSnapshot": [head(_VSNAPSHOT)],
        "vTools": vtools,
        "vCluster": [head(_VCLUSTER)]
        + [
            [c, "green", "green", 4, True, True, "fullyAutomated", False, f"domain-c{j}"]
            for j, (c, _) in enumerate(clusters)
        ],
        "vHost": [head(_VHOST)]
        + [
            [
                h,
                dc,
                c,
                "green",
                "Xeon",
                2600,
                2,
                16,
                32,
                524288,
                "VMware ESXi 8.0.2",
                0,
                f"host-{j}",
            ]
            for j, (h, c, dc) in enumerate(hosts)
        ],
        "vDatastore": [
            head(_VDATASTORE),
            [*_DATASTORE_ROW, len(vms), 10 << 20, 6 << 20, "ds:///vmfs/", "datastore-1"],
        ],
    }
    out: dict[str, list[list[Cell]]] = {}
    for name in sheets:
        rows = all_sheets[name]
        col = (drop or {}).get(name)
        if col is not None:
            idx = rows[0].index(ren.get(col, col))
            rows = [r[:idx] + r[idx + 1 :] for r in rows]
        out[(rename or {}).get(name, name)] = rows
    return write_xlsx(path, out)


_OSES = (
    "Red Hat Enterprise Linux 8 (64-bit)",
    "Ubuntu Linux (64-bit)",
    "Microsoft Windows Server 2019 (64-bit)",
    "Debian GNU/Linux 12 (64-bit)",
)


def world(n_vms: int, n_apps: int, seed: int = 7) -> list[GenVM]:
    """A seeded estate: `n_apps` applications over `n_vms` VMs (the rest unassigned), with
    1% templates, a few special workloads (RDM, multi-writer, FT, independent disks, high
    latency sensitivity, an unsupported OS), databases and Windows Datacenter guests."""
    rnd = random.Random(seed)
    apps = [f"app-{i:04d}" for i in range(n_apps)]
    vms: list[GenVM] = []
    for i in range(n_vms):
        app = apps[i] if i < n_apps else (rnd.choice(apps) if rnd.random() < 0.95 else None)
        env = ("prod", "dev", "test", "staging")[hash_of(app or f"x{i}") % 4]
        vm = GenVM(
            name=f"vm-{i:05d}",
            app=app,
            env=env,
            criticality=("low", "medium", "high", None)[hash_of(app or "") % 4 if app else 3],
            owner=None if hash_of(app or "") % 9 == 0 else f"team-{hash_of(app or '') % 13}",
            os=_OSES[i % len(_OSES)],
            ip=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
            cpus=rnd.choice((1, 2, 4, 8)),
            memory_mib=rnd.choice((2048, 4096, 8192, 16384)),
            disks=[GenDisk(rnd.choice((20, 40, 80)) * 1024)]
            + ([GenDisk(rnd.choice((100, 250, 500)) * 1024)] if rnd.random() < 0.3 else []),
            cluster=f"cl-{i % 8:02d}",
            host=f"esx-{i % 64:02d}.example.com",
        )
        if i % 100 == 99:
            vm.template, vm.power = True, "poweredOff"
        elif i % 211 == 17:
            vm.disks[0].raw = True
        elif i % 223 == 19:
            vm.disks.append(GenDisk(10240, sharing="sharingMultiWriter"))
        elif i % 227 == 23:
            vm.ft = True
        elif i % 229 == 29:
            vm.disks[0].mode = "independent_persistent"
        elif i % 233 == 31:
            vm.latency = "high"
        elif i % 239 == 37:
            vm.os = "FreeBSD 13 (64-bit)"
        vms.append(vm)
    return vms


def hash_of(text: str) -> int:
    """A stable small hash (Python's `hash` of a str changes per process)."""
    h = 0
    for ch in text:
        h = (h * 31 + ord(ch)) & 0xFFFFFFFF
    return h


def write_plain_dependencies(path: Path, rows: Iterable[tuple[str, str, int, str | None]]) -> Path:
    """A `source,destination,port[,kind]` CSV."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "destination", "port", "kind"])
        for s, d, p, k in rows:
            w.writerow([s, d, p, k or ""])
    return path


AZURE_HEADER = [
    "Time slot",
    "Source server name",
    "Source IP",
    "Source application",
    "Source process",
    "Destination server name",
    "Destination IP",
    "Destination application",
    "Destination process",
    "Destination port",
]


def write_azure_dependencies(
    path: Path, rows: Iterable[tuple[str, str, str, str, str, str, int]]
) -> Path:
    """An Azure Migrate dependency export: rows of (source name, source IP, source process,
    destination name, destination IP, destination process, port)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(AZURE_HEADER)
        for sn, sip, sp, dn, dip, dp, port in rows:
            w.writerow(["13-11-2026 10:00", sn, sip, "", sp, dn, dip, "", dp, port])
    return path


def random_dependencies(
    vms: Sequence[GenVM], n_rows: int, seed: int = 11
) -> list[tuple[str, str, int, str | None]]:
    """`n_rows` plain dependency rows between VMs of applications: each from an application
    to one listed before it (so the application graph is acyclic, as most estates nearly
    are); one in ten to a database port."""
    rnd = random.Random(seed)
    by_app: dict[str, list[str]] = {}
    for v in vms:
        if v.app and not v.template:
            by_app.setdefault(v.app, []).append(v.name)
    apps = sorted(by_app)
    rows: list[tuple[str, str, int, str | None]] = []
    for _ in range(n_rows):
        ia = rnd.randrange(1, len(apps))
        a = rnd.choice(by_app[apps[ia]])
        b = rnd.choice(by_app[apps[rnd.randrange(max(0, ia - 50), ia)]])
        port = 5432 if rnd.random() < 0.1 else rnd.choice((80, 443, 8080))
        rows.append((a, b, port, None))
    return rows
