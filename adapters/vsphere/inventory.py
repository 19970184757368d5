"""Reading the vCenter inventory into `cutover.inventory` models, and finding VMs (by name,
moref or BIOS UUID, tag or custom attribute).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pyVmomi import vim

from adapters.vsphere.client import VSphereClient
from adapters.vsphere.properties import collect, moref, props
from adapters.vsphere.tagging import Tagging
from cutover.errors import ErrorKind, error
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
    PciDevice,
    Snapshot,
    Tag,
)
from cutover.runbook import Runbook

VM_PATHS = [
    "name",
    "config.uuid",
    "config.instanceUuid",
    "config.template",
    "config.guestId",
    "config.guestFullName",
    "config.hardware.numCPU",
    "config.hardware.numCoresPerSocket",
    "config.hardware.memoryMB",
    "config.hardware.device",
    "config.cpuHotAddEnabled",
    "config.memoryHotAddEnabled",
    "config.cpuHotRemoveEnabled",
    "config.cpuAffinity",
    "config.extraConfig",
    "config.latencySensitivity",
    "config.firmware",
    "config.bootOptions",
    "config.changeTrackingEnabled",
    "runtime.powerState",
    "runtime.host",
    "runtime.consolidationNeeded",
    "runtime.faultToleranceState",
    "guest.hostName",
    "guest.net",
    "guest.ipAddress",
    "guest.toolsStatus",
    "guest.toolsRunningStatus",
    "guest.guestFamily",
    "guest.disk",
    "snapshot",
    "customValue",
]


def read_inventory(client: VSphereClient, tags: dict[str, list[Tag]] | None = None) -> Inventory:
    """The whole inventory: a handful of PropertyCollector round trips per datacenter."""

    def read(si: Any) -> Inventory:
        start = client.round_trips
        content = si.content
        fields = (
            {f.key: f.name for f in (content.customFieldsManager.field or [])}
            if content.customFieldsManager
            else {}
        )
        inv = Inventory(
            source=f"vcenter:{client.settings.host}",
            collectedAt=datetime.now(UTC),
            vcenterVersion=content.about.version,
        )
        for dc_obj in collect(client, si, content.rootFolder, vim.Datacenter, ["name"]):
            dc = Datacenter(moref=moref(dc_obj.obj), name=props(dc_obj)["name"])
            inv.datacenters.append(dc)
            _read_datacenter(client, si, dc_obj.obj, dc, inv, fields, tags or {})
        inv.roundTrips = client.round_trips - start
        return inv

    return client.call("reading the vCenter inventory", read)


def _read_datacenter(
    client: VSphereClient,
    si: Any,
    root: Any,
    dc: Datacenter,
    inv: Inventory,
    fields: dict[int, str],
    tags: dict[str, list[Tag]],
) -> None:
    host_cluster: dict[str, str] = {}
    host_names: dict[str, str] = {}
    for obj in collect(
        client, si, root, vim.ClusterComputeResource, ["name", "host", "configurationEx"]
    ):
        p = props(obj)
        cfg = p.get("configurationEx")
        drs = getattr(cfg, "drsConfig", None)
        dpm = getattr(cfg, "dpmConfigInfo", None)
        das = getattr(cfg, "dasConfig", None)
        groups = {
            str(g.name): [moref(v) for v in (g.vm or [])]
            for g in (getattr(cfg, "group", None) or [])
            if isinstance(g, vim.cluster.VmGroup)
        }
        rules: dict[str, list[str]] = {}  # rule name -> morefs of the VMs it pins to hosts
        for rule in getattr(cfg, "rule", None) or []:
            if isinstance(rule, vim.cluster.VmHostRuleInfo) and rule.enabled is not False:
                rules[str(rule.name)] = groups.get(str(rule.vmGroupName), [])
        cluster = Cluster(
            moref=moref(obj.obj),
            name=p["name"],
            datacenter=dc.name,
            drsEnabled=bool(getattr(drs, "enabled", False)),
            drsBehavior=str(getattr(drs, "defaultVmBehavior", "") or "") or None,
            dpmEnabled=bool(getattr(dpm, "enabled", False)),
            haEnabled=bool(getattr(das, "enabled", False)),
            vmHostRules=rules,
        )
        for h in p.get("host") or []:
            host_cluster[moref(h)] = cluster.name
        inv.clusters.append(cluster)
    for obj in collect(
        client,
        si,
        root,
        vim.HostSystem,
        [
            "name",
            "summary.hardware",
            "hardware.numaInfo",
            "runtime.connectionState",
            "runtime.powerState",
            "config.product.version",
        ],
    ):
        p = props(obj)
        hw = p.get("summary.hardware")
        numa = p.get("hardware.numaInfo")
        host = Host(
            moref=moref(obj.obj),
            name=p["name"],
            datacenter=dc.name,
            cluster=host_cluster.get(moref(obj.obj)),
            cpuCores=getattr(hw, "numCpuCores", None),
            cpuThreads=getattr(hw, "numCpuThreads", None),
            cpuPackages=getattr(hw, "numCpuPkgs", None),
            memoryBytes=getattr(hw, "memorySize", None),
            numaNodes=getattr(numa, "numNodes", None),
            connectionState=str(p.get("runtime.connectionState") or "") or None,
            powerState=str(p.get("runtime.powerState") or "") or None,
            version=p.get("config.product.version"),
        )
        host_names[host.moref] = host.name
        inv.hosts.append(host)
    for obj in collect(client, si, root, vim.Datastore, ["name", "summary"]):
        p = props(obj)
        s = p.get("summary")
        inv.datastores.append(
            Datastore(
                moref=moref(obj.obj),
                name=p["name"],
                type=getattr(s, "type", None),
                url=getattr(s, "url", None),
                capacityBytes=getattr(s, "capacity", None),
                freeBytes=getattr(s, "freeSpace", None),
            )
        )
    for obj in collect(client, si, root, vim.Network, ["name"]):
        kind = "standard"
        if isinstance(obj.obj, vim.dvs.DistributedVirtualPortgroup):
            kind = "distributed"
        elif isinstance(obj.obj, vim.OpaqueNetwork):
            kind = "opaque"
        inv.networks.append(Network(moref=moref(obj.obj), name=props(obj)["name"], kind=kind))
    networks = {n.moref: n.name for n in inv.networks}
    for obj in collect(client, si, root, vim.VirtualMachine, VM_PATHS):
        runtime_host = props(obj).get("runtime.host")
        host_ref = moref(runtime_host) if runtime_host is not None else None
        vm = _vm(
            obj,
            dc.name,
            host_names.get(host_ref or ""),
            host_cluster.get(host_ref or ""),
            fields,
            networks,
        )
        vm.tags.extend(tags.get(vm.moref, []))
        inv.vms.append(vm)


def _vm(
    obj: Any,
    dc: str,
    host: str | None,
    cluster: str | None,
    fields: dict[int, str],
    networks: dict[str, str],
) -> VM:
    p = props(obj)
    extra = {o.key: str(o.value) for o in (p.get("config.extraConfig") or [])}
    affinity = p.get("config.cpuAffinity")
    boot = p.get("config.bootOptions")
    devices = p.get("config.hardware.device") or []
    controllers = {d.key: d for d in devices if isinstance(d, vim.vm.device.VirtualController)}
    disks, nics, pci = [], [], []
    usb, tpm = 0, False
    for d in devices:
        label = getattr(getattr(d, "deviceInfo", None), "label", "") or ""
        if isinstance(d, vim.vm.device.VirtualDisk):
            disks.append(_disk(d, label, controllers))
        elif isinstance(d, vim.vm.device.VirtualEthernetCard):
            backing = d.backing
            net = None
            if isinstance(backing, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
                net = backing.deviceName or (
                    networks.get(moref(backing.network)) if backing.network else None
                )
            elif isinstance(
                backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo
            ):
                # the portgroup key is its managed object ID; report its name
                net = networks.get(backing.port.portgroupKey, backing.port.portgroupKey)
            conn = d.connectable
            nics.append(
                Nic(
                    key=d.key,
                    label=label,
                    macAddress=d.macAddress,
                    network=net,
                    adapterType=type(d).__name__.rsplit(".", 1)[-1].removeprefix("Virtual").lower(),
                    connected=getattr(conn, "connected", None),
                    startConnected=getattr(conn, "startConnected", None),
                    sriov=isinstance(d, vim.vm.device.VirtualSriovEthernetCard),
                )
            )
        elif isinstance(d, vim.vm.device.VirtualPCIPassthrough):
            backing = d.backing
            kind = "passthrough"
            detail = ""
            if isinstance(backing, vim.vm.device.VirtualPCIPassthrough.VmiopBackingInfo):
                kind, detail = "vgpu", backing.vgpu or ""
            elif isinstance(backing, vim.vm.device.VirtualPCIPassthrough.DynamicBackingInfo):
                kind = "dynamic-passthrough"
            elif isinstance(backing, vim.vm.device.VirtualPCIPassthrough.DeviceBackingInfo):
                detail = (
                    f"{backing.vendorId:04x}:{backing.deviceId}"
                    if backing.vendorId
                    else backing.id or ""
                )
            pci.append(PciDevice(key=d.key, label=label, kind=kind, detail=detail))
        elif isinstance(
            d, vim.vm.device.VirtualUSBController | vim.vm.device.VirtualUSBXHCIController
        ):
            usb += 1
        elif isinstance(d, vim.vm.device.VirtualTPM):
            tpm = True
    guest_disks = [
        GuestDisk(
            path=g.diskPath or "",
            capacityBytes=g.capacity or 0,
            freeBytes=g.freeSpace or 0,
            diskKey=(g.mappings[0].key if getattr(g, "mappings", None) else None),
        )
        for g in (p.get("guest.disk") or [])
    ]
    ips = [ip for n in (p.get("guest.net") or []) for ip in (n.ipAddress or [])]
    if not ips and p.get("guest.ipAddress"):
        ips = [p["guest.ipAddress"]]
    latency = p.get("config.latencySensitivity")
    return VM(
        moref=moref(obj.obj),
        name=p.get("name", ""),
        datacenter=dc,
        cluster=cluster,
        host=host,
        template=bool(p.get("config.template")),
        uuid=p.get("config.uuid"),
        instanceUuid=p.get("config.instanceUuid"),
        powerState=str(p["runtime.powerState"]) if p.get("runtime.powerState") else None,
        guestId=p.get("config.guestId"),
        guestFullName=p.get("config.guestFullName"),
        guestFamily=p.get("guest.guestFamily"),
        guestHostname=p.get("guest.hostName"),
        ipAddresses=ips,
        toolsStatus=str(p.get("guest.toolsStatus") or "") or None,
        toolsRunningStatus=p.get("guest.toolsRunningStatus"),
        numCpu=p.get("config.hardware.numCPU") or 1,
        coresPerSocket=p.get("config.hardware.numCoresPerSocket"),
        memoryMB=p.get("config.hardware.memoryMB") or 0,
        cpuHotAdd=bool(p.get("config.cpuHotAddEnabled")),
        cpuHotRemove=bool(p.get("config.cpuHotRemoveEnabled")),
        memoryHotAdd=bool(p.get("config.memoryHotAddEnabled")),
        cpuAffinity=list(getattr(affinity, "affinitySet", None) or []),
        numaNodeAffinity=[
            int(x) for x in extra.get("numa.nodeAffinity", "").split(",") if x.strip().isdigit()
        ],
        latencySensitivity=str(getattr(latency, "level", "") or "") or None,
        firmware="efi" if p.get("config.firmware") == "efi" else "bios",
        secureBoot=bool(getattr(boot, "efiSecureBootEnabled", False)),
        tpm=tpm,
        usbControllers=usb,
        changeTrackingEnabled=bool(p.get("config.changeTrackingEnabled")),
        consolidationNeeded=bool(p.get("runtime.consolidationNeeded")),
        faultTolerance=str(p.get("runtime.faultToleranceState") or "notConfigured")
        != "notConfigured",
        diskEnableUuid=extra.get("disk.EnableUUID", "").lower() == "true",
        disks=disks,
        nics=nics,
        pciDevices=pci,
        snapshots=list(walk_snapshots(p.get("snapshot"))),
        guestDisks=guest_disks,
        customAttributes={
            fields.get(v.key, str(v.key)): str(v.value) for v in (p.get("customValue") or [])
        },
    )


def _disk(d: Any, label: str, controllers: dict[int, Any]) -> Disk:
    b = d.backing
    ctrl = controllers.get(d.controllerKey)
    ctype: Any = None
    if isinstance(ctrl, vim.vm.device.VirtualSCSIController):
        ctype = "scsi"
    elif isinstance(ctrl, vim.vm.device.VirtualSATAController):
        ctype = "sata"
    elif isinstance(ctrl, vim.vm.device.VirtualIDEController):
        ctype = "ide"
    elif isinstance(ctrl, vim.vm.device.VirtualNVMEController):
        ctype = "nvme"
    elif ctrl is not None:
        ctype = "other"
    file_name = getattr(b, "fileName", "") or ""
    ds = (
        file_name[1 : file_name.index("]")]
        if file_name.startswith("[") and "]" in file_name
        else None
    )
    rdm = isinstance(b, vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo)
    capacity = getattr(d, "capacityInBytes", None) or (d.capacityInKB or 0) * 1024
    return Disk(
        key=d.key,
        label=label,
        capacityBytes=int(capacity),
        fileName=file_name,
        datastore=ds,
        controllerKey=d.controllerKey,
        controllerType=ctype,
        unitNumber=d.unitNumber,
        thin=getattr(b, "thinProvisioned", None),
        eagerlyScrub=getattr(b, "eagerlyScrub", None),
        diskMode=getattr(b, "diskMode", None),
        sharing=getattr(b, "sharing", None),
        rdm=rdm,
        rdmCompatibilityMode=getattr(b, "compatibilityMode", None) if rdm else None,
        changeId=getattr(b, "changeId", None) or None,
        uuid=getattr(b, "uuid", None),
    )


def walk_snapshots(info: Any) -> Iterator[Snapshot]:
    stack = list(getattr(info, "rootSnapshotList", None) or [])
    while stack:
        node = stack.pop(0)
        yield Snapshot(
            name=node.name,
            moref=moref(node.snapshot),
            createTime=node.createTime,
            description=node.description or "",
        )
        stack.extend(node.childSnapshotList or [])


# ----------------------------------------------------------------------- VM lookups


def find_vms(client: VSphereClient, names: list[str]) -> list[Any]:
    """VM managed objects by name, moref or BIOS UUID; NotFound names every missing one."""

    def find(si: Any) -> list[Any]:
        objs = collect(
            client, si, si.content.rootFolder, vim.VirtualMachine, ["name", "config.uuid"]
        )
        index: dict[str, Any] = {}
        for o in objs:
            p = props(o)
            for key in (p.get("name"), moref(o.obj), p.get("config.uuid")):
                if key:
                    index.setdefault(str(key), o.obj)
        missing = [n for n in names if n not in index]
        if missing:
            raise error(
                ErrorKind.NOT_FOUND,
                f"VM(s) not found in vCenter {client.settings.host}: "
                f"{', '.join(missing)} (check the runbook's `vms`)",
            )
        return [index[n] for n in names]

    return client.call("looking up VMs", find)


def vms_by_custom_attribute(client: VSphereClient, attribute: str, value: str) -> list[str]:
    def find(si: Any) -> list[str]:
        fields = {f.name: f.key for f in (si.content.customFieldsManager.field or [])}
        if attribute not in fields:
            return []
        key = fields[attribute]
        objs = collect(
            client, si, si.content.rootFolder, vim.VirtualMachine, ["name", "customValue"]
        )
        return sorted(
            props(o)["name"]
            for o in objs
            if any(
                v.key == key and str(v.value) == value for v in (props(o).get("customValue") or [])
            )
        )

    return client.call("finding VMs by custom attribute", find)


def resolve_vms(client: VSphereClient, runbook: Runbook) -> list[str]:
    """The runbook's VMs: its explicit list, else those carrying its tag or custom attribute."""
    if runbook.vms is not None:
        return list(runbook.vms)
    sel = runbook.selector
    if sel.tag is not None:
        morefs = Tagging(client).vms_with_tag(sel.tag, sel.tagCategory)
        found = [
            props(o)["name"]
            for o in client.call(
                "resolving tagged VMs",
                lambda si: collect(client, si, si.content.rootFolder, vim.VirtualMachine, ["name"]),
            )
            if moref(o.obj) in set(morefs)
        ]
        how = f"tag '{sel.tag}'"
    else:
        assert sel.customAttribute is not None
        found = vms_by_custom_attribute(client, sel.customAttribute, runbook.application)
        how = f"custom attribute '{sel.customAttribute}' = '{runbook.application}'"
    if not found:
        raise error(
            ErrorKind.NOT_FOUND,
            f"no VM in vCenter {client.settings.host} carries {how}: tag the "
            f"application's VMs or list them under `vms` in the runbook",
        )
    return sorted(found)
