"""The vSphere source: inventory, snapshots, quiesce, power, NICs, audit marks, disk bytes.

The only module that imports pyvmomi. Connections are reused per vCenter, re-established
when the session expires, and verify TLS unless the site config says `insecure` (labs).
Every activity is idempotent, heartbeats while a vSphere task runs, and raises typed
errors: `VSphereUnavailable` (retryable) or non-retryable `NotFound`, `InvalidState`,
`AuthenticationFailed`, `PermissionDenied`.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import attempt as _attempt
from activities.common import error as _error
from cutover.catalog import Compensation, FinalizeStep, Step, WarmStep
from cutover.concerns import evaluate
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
from cutover.models import CheckInput, CheckResult, StepInput, StepResult
from cutover.runbook import Runbook
from cutover.site import VCenter, VSphereConcernsProbe

T = TypeVar("T")

#: Custom attributes written on a migrated source VM (vSphere-side audit trail).
MIGRATED_FIELDS = ("cutover.migratedTo", "cutover.migratedAt", "cutover.workflowId")
#: Custom attribute on a source VM: its power state before a cutover quiesced it, and which
#: workflow run recorded it ("poweredOn by cutover-shop/<run ID>"). Written before quiesce
#: changes anything, so a retry on another worker (the VM already off) still knows it;
#: restart_source powers on only what was on, then clears it.
PRIOR_POWER_FIELD = "cutover.priorPowerState"


# ---------------------------------------------------------------------------- errors


def translate(exc: BaseException, what: str) -> ApplicationError:
    """Map a pyvmomi fault or a network error to a typed error a person can act on."""
    if isinstance(exc, ApplicationError):
        return exc
    if isinstance(exc, vim.fault.InvalidLogin):
        return _error(
            "AuthenticationFailed",
            f"{what}: vCenter refused the login: check the "
            "user and the password reference in the site config",
        )
    if isinstance(exc, vim.fault.NoPermission):
        priv = getattr(exc, "privilegeId", "") or ""
        return _error(
            "PermissionDenied", f"{what}: the vCenter user lacks privilege {priv}".strip()
        )
    if isinstance(exc, vim.fault.InvalidPowerState | vim.fault.InvalidState):
        return _error("InvalidState", f"{what}: {getattr(exc, 'msg', '') or type(exc).__name__}")
    if isinstance(exc, vmodl.fault.ManagedObjectNotFound):
        return _error("NotFound", f"{what}: the object no longer exists in vCenter")
    if isinstance(exc, vim.fault.TaskInProgress | vim.fault.NotAuthenticated):
        return _error("VSphereUnavailable", f"{what}: {type(exc).__name__} (will retry)", True)
    if isinstance(exc, OSError | http.client.HTTPException | ConnectionError):
        return _error("VSphereUnavailable", f"{what}: vCenter unreachable: {exc}", True)
    if isinstance(exc, vmodl.MethodFault):
        return _error("VSphereFault", f"{what}: {getattr(exc, 'msg', '') or type(exc).__name__}")
    return _error("VSphereFault", f"{what}: {type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------ connection


class VSphereClient:
    """One reusable, self-healing connection to one vCenter."""

    def __init__(self, settings: VCenter, password: Callable[[], str]) -> None:
        self.settings = settings
        self._password = password
        self._si: Any = None
        self._lock = threading.Lock()
        #: PropertyCollector round trips made (RetrievePropertiesEx + continuations)
        self.round_trips = 0

    def _ssl(self) -> ssl.SSLContext:
        if self.settings.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=self.settings.caFile)

    def connect(self) -> Any:
        with self._lock:
            if self._si is not None and self._alive(self._si):
                return self._si
            try:
                self._si = SmartConnect(
                    host=self.settings.host,
                    port=self.settings.port,
                    user=self.settings.user,
                    pwd=self._password(),
                    sslContext=self._ssl(),
                    connectionPoolTimeout=-1,
                )
            except Exception as exc:
                raise translate(exc, f"connecting to vCenter {self.settings.host}") from None
            return self._si

    @staticmethod
    def _alive(si: Any) -> bool:
        try:
            return si.content.sessionManager.currentSession is not None
        except Exception:
            return False

    def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run fn(service_instance); on an expired session reconnect once and retry."""
        for attempt in (1, 2):
            si = self.connect()
            try:
                return fn(si)
            except vim.fault.NotAuthenticated:
                if attempt == 2:
                    raise translate(vim.fault.NotAuthenticated(), what) from None
                with self._lock:
                    self._si = None
            except ApplicationError:
                raise
            except Exception as exc:
                if isinstance(exc, OSError | http.client.HTTPException):
                    with self._lock:
                        self._si = None
                raise translate(exc, what) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._si is not None:
                # closing is best effort: the session may be gone already
                with contextlib.suppress(Exception):
                    Disconnect(self._si)
                self._si = None

    def session_cookie(self) -> str:
        si = self.connect()
        cookie: str = si._stub.cookie  # the vmware_soap_session cookie, as vCenter sets it
        return cookie


class ClientPool:
    """The worker's vCenter connections, one per (host, port, user); injected into activities."""

    def __init__(self, password: Callable[[VCenter], str] | None = None) -> None:
        self._clients: dict[tuple[str, int, str], VSphereClient] = {}
        self._password = password or (lambda s: s.passwordRef.read())
        self._lock = threading.Lock()

    def get(self, settings: VCenter) -> VSphereClient:
        key = (settings.host, settings.port, settings.user)
        with self._lock:
            client = self._clients.get(key)
            if client is None or client.settings != settings:
                client = VSphereClient(settings, lambda: self._password(settings))
                self._clients[key] = client
            return client

    def close(self) -> None:
        for c in self._clients.values():
            c.close()


# ------------------------------------------------------------------------- inventory


def _collect(client: VSphereClient, si: Any, root: Any, kind: type, paths: list[str]) -> list[Any]:
    """All objects of one type under root with the given properties: one round trip (plus
    continuations for very large sets), not one per object or property."""
    content = si.content
    view = content.viewManager.CreateContainerView(root, [kind], True)
    try:
        traversal = vmodl.query.PropertyCollector.TraversalSpec(
            name="view", path="view", skip=False, type=vim.view.ContainerView
        )
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[
                vmodl.query.PropertyCollector.ObjectSpec(obj=view, skip=True, selectSet=[traversal])
            ],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=kind, pathSet=paths)],
        )
        pc = content.propertyCollector
        options = vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=1000)
        result = pc.RetrievePropertiesEx([spec], options)
        client.round_trips += 1
        objects: list[Any] = []
        while result is not None:
            objects.extend(result.objects)
            if not result.token:
                break
            result = pc.ContinueRetrievePropertiesEx(result.token)
            client.round_trips += 1
        return objects
    finally:
        view.Destroy()


def _props(obj: Any) -> dict[str, Any]:
    return {p.name: p.val for p in (obj.propSet or [])}


def _moref(obj: Any) -> str:
    return str(obj._moId)


_VM_PATHS = [
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
        for dc_obj in _collect(client, si, content.rootFolder, vim.Datacenter, ["name"]):
            dc = Datacenter(moref=_moref(dc_obj.obj), name=_props(dc_obj)["name"])
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
    for obj in _collect(
        client, si, root, vim.ClusterComputeResource, ["name", "host", "configurationEx"]
    ):
        p = _props(obj)
        cfg = p.get("configurationEx")
        drs = getattr(cfg, "drsConfig", None)
        dpm = getattr(cfg, "dpmConfigInfo", None)
        das = getattr(cfg, "dasConfig", None)
        groups = {
            str(g.name): [_moref(v) for v in (g.vm or [])]
            for g in (getattr(cfg, "group", None) or [])
            if isinstance(g, vim.cluster.VmGroup)
        }
        rules: dict[str, list[str]] = {}  # rule name -> morefs of the VMs it pins to hosts
        for rule in getattr(cfg, "rule", None) or []:
            if isinstance(rule, vim.cluster.VmHostRuleInfo) and rule.enabled is not False:
                rules[str(rule.name)] = groups.get(str(rule.vmGroupName), [])
        cluster = Cluster(
            moref=_moref(obj.obj),
            name=p["name"],
            datacenter=dc.name,
            drsEnabled=bool(getattr(drs, "enabled", False)),
            drsBehavior=str(getattr(drs, "defaultVmBehavior", "") or "") or None,
            dpmEnabled=bool(getattr(dpm, "enabled", False)),
            haEnabled=bool(getattr(das, "enabled", False)),
            vmHostRules=rules,
        )
        for h in p.get("host") or []:
            host_cluster[_moref(h)] = cluster.name
        inv.clusters.append(cluster)
    for obj in _collect(
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
        p = _props(obj)
        hw = p.get("summary.hardware")
        numa = p.get("hardware.numaInfo")
        host = Host(
            moref=_moref(obj.obj),
            name=p["name"],
            datacenter=dc.name,
            cluster=host_cluster.get(_moref(obj.obj)),
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
    for obj in _collect(client, si, root, vim.Datastore, ["name", "summary"]):
        p = _props(obj)
        s = p.get("summary")
        inv.datastores.append(
            Datastore(
                moref=_moref(obj.obj),
                name=p["name"],
                type=getattr(s, "type", None),
                url=getattr(s, "url", None),
                capacityBytes=getattr(s, "capacity", None),
                freeBytes=getattr(s, "freeSpace", None),
            )
        )
    for obj in _collect(client, si, root, vim.Network, ["name"]):
        kind = "standard"
        if isinstance(obj.obj, vim.dvs.DistributedVirtualPortgroup):
            kind = "distributed"
        elif isinstance(obj.obj, vim.OpaqueNetwork):
            kind = "opaque"
        inv.networks.append(Network(moref=_moref(obj.obj), name=_props(obj)["name"], kind=kind))
    networks = {n.moref: n.name for n in inv.networks}
    for obj in _collect(client, si, root, vim.VirtualMachine, _VM_PATHS):
        runtime_host = _props(obj).get("runtime.host")
        host_ref = _moref(runtime_host) if runtime_host is not None else None
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
    p = _props(obj)
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
                    networks.get(_moref(backing.network)) if backing.network else None
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
        moref=_moref(obj.obj),
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
        snapshots=list(_snapshots(p.get("snapshot"))),
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


def _snapshots(info: Any) -> Iterator[Snapshot]:
    stack = list(getattr(info, "rootSnapshotList", None) or [])
    while stack:
        node = stack.pop(0)
        yield Snapshot(
            name=node.name,
            moref=_moref(node.snapshot),
            createTime=node.createTime,
            description=node.description or "",
        )
        stack.extend(node.childSnapshotList or [])


# ----------------------------------------------------------------------- VM lookups


def find_vms(client: VSphereClient, names: list[str]) -> list[Any]:
    """VM managed objects by name, moref or BIOS UUID; NotFound names every missing one."""

    def find(si: Any) -> list[Any]:
        objs = _collect(
            client, si, si.content.rootFolder, vim.VirtualMachine, ["name", "config.uuid"]
        )
        index: dict[str, Any] = {}
        for o in objs:
            p = _props(o)
            for key in (p.get("name"), _moref(o.obj), p.get("config.uuid")):
                if key:
                    index.setdefault(str(key), o.obj)
        missing = [n for n in names if n not in index]
        if missing:
            raise _error(
                "NotFound",
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
        objs = _collect(
            client, si, si.content.rootFolder, vim.VirtualMachine, ["name", "customValue"]
        )
        return sorted(
            _props(o)["name"]
            for o in objs
            if any(
                v.key == key and str(v.value) == value for v in (_props(o).get("customValue") or [])
            )
        )

    return client.call("finding VMs by custom attribute", find)


# ---------------------------------------------------------------------- tagging REST


class Tagging:
    """vCenter's REST tagging API (`/rest/com/vmware/cis/...`), with a session token."""

    def __init__(self, client: VSphereClient) -> None:
        self.client = client
        self._token: str | None = None

    def _conn(self) -> http.client.HTTPSConnection:
        s = self.client.settings
        return http.client.HTTPSConnection(s.host, s.port, context=self.client._ssl(), timeout=30)

    def _request(self, method: str, path: str, body: Any = None, retry: bool = True) -> Any:
        conn = self._conn()
        try:
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            if path == "/rest/com/vmware/cis/session":
                auth = f"{self.client.settings.user}:{self.client._password()}"
                headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
            else:
                headers["vmware-api-session-id"] = self._session()
            conn.request(
                method,
                path,
                body=json.dumps(body if body is not None else {}) if method == "POST" else None,
                headers=headers,
            )
            resp = conn.getresponse()
            data = resp.read()
        except OSError as exc:
            raise _error(
                "VSphereUnavailable", f"vCenter tagging API unreachable: {exc}", True
            ) from None
        finally:
            conn.close()
        if resp.status == 401 and retry and path != "/rest/com/vmware/cis/session":
            self._token = None
            return self._request(method, path, body, retry=False)
        if resp.status == 401:
            raise _error("AuthenticationFailed", "vCenter refused the tagging API login")
        if resp.status >= 400:
            raise _error("VSphereFault", f"tagging API {method} {path}: HTTP {resp.status}")
        return json.loads(data)["value"] if data else None

    def _session(self) -> str:
        if self._token is None:
            self._token = str(self._request("POST", "/rest/com/vmware/cis/session"))
        return self._token

    def categories(self) -> dict[str, str]:
        ids = self._request("GET", "/rest/com/vmware/cis/tagging/category") or []
        return {
            i: self._request("GET", f"/rest/com/vmware/cis/tagging/category/id:{i}")["name"]
            for i in ids
        }

    def tags(self) -> list[dict[str, Any]]:
        ids = self._request("GET", "/rest/com/vmware/cis/tagging/tag") or []
        return [self._request("GET", f"/rest/com/vmware/cis/tagging/tag/id:{i}") for i in ids]

    def attached_objects(self, tag_id: str) -> list[str]:
        objs = (
            self._request(
                "POST",
                f"/rest/com/vmware/cis/tagging/tag-association/id:{tag_id}?~action=list-attached-objects",
            )
            or []
        )
        return [o["id"] for o in objs if o.get("type") == "VirtualMachine"]

    def vms_with_tag(self, name: str, category: str | None = None) -> list[str]:
        cats = self.categories() if category else {}
        return sorted(
            moref
            for t in self.tags()
            if t["name"] == name and (category is None or cats.get(t["category_id"]) == category)
            for moref in self.attached_objects(t["id"])
        )

    def ensure_tag(self, category: str, name: str) -> str:
        """The ID of tag `name` in `category`, creating either when missing (idempotent)."""
        cats = {n: i for i, n in self.categories().items()}
        cat_id = cats.get(category)
        if cat_id is None:
            cat_id = str(
                self._request(
                    "POST",
                    "/rest/com/vmware/cis/tagging/category",
                    {
                        "create_spec": {
                            "name": category,
                            "description": "",
                            "cardinality": "MULTIPLE",
                            "associable_types": ["VirtualMachine"],
                        },
                    },
                )
            )
        for t in self.tags():
            if t["name"] == name and t["category_id"] == cat_id:
                return str(t["id"])
        return str(
            self._request(
                "POST",
                "/rest/com/vmware/cis/tagging/tag",
                {
                    "create_spec": {"name": name, "description": "", "category_id": cat_id},
                },
            )
        )

    def attach(self, tag_id: str, vm_moref: str) -> None:
        obj = {"object_id": {"type": "VirtualMachine", "id": vm_moref}}
        self._request(
            "POST", f"/rest/com/vmware/cis/tagging/tag-association/id:{tag_id}?~action=attach", obj
        )

    def tags_by_vm(self) -> dict[str, list[Tag]]:
        cats = self.categories()
        out: dict[str, list[Tag]] = {}
        for t in self.tags():
            for moref in self.attached_objects(t["id"]):
                out.setdefault(moref, []).append(
                    Tag(category=cats.get(t["category_id"], ""), name=t["name"])
                )
        return out


def resolve_vms(client: VSphereClient, runbook: Runbook) -> list[str]:
    """The runbook's VMs: its explicit list, else those carrying its tag or custom attribute."""
    if runbook.vms is not None:
        return list(runbook.vms)
    sel = runbook.selector
    if sel.tag is not None:
        morefs = Tagging(client).vms_with_tag(sel.tag, sel.tagCategory)
        found = [
            _props(o)["name"]
            for o in client.call(
                "resolving tagged VMs",
                lambda si: _collect(
                    client, si, si.content.rootFolder, vim.VirtualMachine, ["name"]
                ),
            )
            if _moref(o.obj) in set(morefs)
        ]
        how = f"tag '{sel.tag}'"
    else:
        assert sel.customAttribute is not None
        found = vms_by_custom_attribute(client, sel.customAttribute, runbook.application)
        how = f"custom attribute '{sel.customAttribute}' = '{runbook.application}'"
    if not found:
        raise _error(
            "NotFound",
            f"no VM in vCenter {client.settings.host} carries {how}: tag the "
            f"application's VMs or list them under `vms` in the runbook",
        )
    return sorted(found)


# ----------------------------------------------------------------------------- tasks


def wait_task(si: Any, task: Any, what: str, timeout: float = 3600) -> Any:
    """Poll a vSphere task, heartbeating while it runs; raise its fault as a typed error.

    Reads `info.state` etc. one by one through the PropertyCollector: pyvmomi 9 cannot
    deserialize a whole `info` whose entity is a snapshot (remove-snapshot tasks)."""
    deadline = time.monotonic() + timeout
    while True:
        state = str(_property(si, task, "info.state"))
        if state == "success":
            return _property(si, task, "info.result")
        if state == "error":
            raise translate(_property(si, task, "info.error"), what)
        if time.monotonic() > deadline:
            raise _error(
                "VSphereUnavailable", f"{what}: task still {state} after {timeout:g}s", True
            )
        if activity.in_activity():
            activity.heartbeat({"task": what, "progress": _property(si, task, "info.progress")})
        time.sleep(0.2)


def snapshot_name(workflow_id: str) -> str:
    return f"cutover-{workflow_id}"


def _property(si: Any, obj: Any, path: str) -> Any:
    """One property of one object through the PropertyCollector: an unset property is None
    (reading an unset one such as `vm.snapshot` directly can break the connection)."""
    pc = vmodl.query.PropertyCollector
    spec = pc.FilterSpec(
        objectSet=[pc.ObjectSpec(obj=obj, skip=False)],
        propSet=[pc.PropertySpec(type=type(obj), pathSet=[path])],
    )
    for result in si.content.propertyCollector.RetrieveContents([spec]) or []:
        for prop in result.propSet or []:
            if prop.name == path:
                return prop.val
    return None


def _find_snapshot(si: Any, vm: Any, name: str) -> Any | None:
    for snap in _snapshots(_property(si, vm, "snapshot")):
        if snap.name == name:
            return vim.vm.Snapshot(snap.moref, vm._stub)
    return None


def _custom_values(si: Any, vm: Any) -> dict[str, str]:
    """The VM's custom attributes by name; an attribute set to "" counts as unset."""
    names = {f.key: f.name for f in (si.content.customFieldsManager.field or [])}
    values = _property(si, vm, "customValue") or []
    return {names.get(v.key, str(v.key)): str(v.value) for v in values if str(v.value)}


def _set_custom_value(si: Any, vm: Any, name: str, value: str) -> None:
    """Set one custom attribute on a VM, defining it (for VMs) when vCenter lacks it."""
    cfm = si.content.customFieldsManager
    keys = {f.name: f.key for f in (cfm.field or [])}
    key = keys.get(name)
    if key is None:
        key = cfm.AddFieldDefinition(name=name, moType=vim.VirtualMachine).key
    cfm.SetField(entity=vm, key=key, value=value)


def _run_scope(inp: StepInput) -> str:
    """Which run a prior-power-state mark belongs to: a retry of the same run keeps its mark,
    a later cutover of the same application (a new run) records afresh."""
    if activity.in_activity():
        info = activity.info()
        return f"{info.workflow_id}/{info.workflow_run_id}"
    return inp.context.workflowId


@dataclass(frozen=True)
class MigratedMark:
    """What a source VM's migrated marks (MIGRATED_FIELDS) say; None: that field is unset."""

    vm: str
    migratedTo: str | None
    migratedAt: str | None
    workflowId: str | None

    def describe(self) -> str:
        return (
            f"source VM {self.vm} is marked migrated to {self.migratedTo or '(target unset)'} "
            f"at {self.migratedAt or '(time unset)'} "
            f"by workflow {self.workflowId or '(workflow unset)'}"
        )


def migrated_marks(client: VSphereClient, names: list[str]) -> list[MigratedMark]:
    """The named VMs that carry any migrated mark (a cutover finalized them). Read only."""
    vms = find_vms(client, names)

    def read(si: Any) -> list[MigratedMark]:
        found = []
        for vm in vms:
            values = _custom_values(si, vm)
            if any(values.get(f) for f in MIGRATED_FIELDS):
                to, at, wf = (values.get(f) for f in MIGRATED_FIELDS)
                found.append(MigratedMark(str(vm.name), to, at, wf))
        return found

    return client.call("reading the migrated marks", read)


def migration_evidence(names: list[str], marks: list[MigratedMark]) -> str:
    """One sentence: each marked VM with its marks, or that none of `names` is marked."""
    if not marks:
        return f"no source VM carries a migrated mark (checked {', '.join(names)})"
    return "; ".join(m.describe() for m in marks)


def _post_event(si: Any, vm: Any, message: str) -> None:
    """Record the action in vCenter's event log, where vSphere-side audit tools look."""
    arg = vim.event.VmEventArgument(vm=vm, name=vm.name)
    event = vim.event.GeneralUserEvent(
        message=f"cutover: {message}",
        createdTime=datetime.now(UTC),
        userName="cutover",
        chainId=0,
        key=0,
        vm=arg,
    )
    si.content.eventManager.PostEvent(eventToPost=event)


# ------------------------------------------------------------------------- activities


@dataclass
class VSphereActivities:
    """Source-side activities; they hold the worker's vCenter connections (injected)."""

    pool: ClientPool = field(default_factory=ClientPool)

    def _client(self, inp: StepInput) -> VSphereClient:
        vc = inp.context.site.vcenter
        if vc is None:
            raise _error("ConfigError", "the site config has no `vcenter` section")
        return self.pool.get(vc)

    def _vm_names(self, inp: StepInput) -> tuple[VSphereClient, list[str]]:
        client = self._client(inp)
        names = inp.context.facts.get("source_vms")
        return client, names.split(",") if names else resolve_vms(client, inp.context.runbook)

    def _vms(self, inp: StepInput) -> tuple[VSphereClient, list[Any]]:
        client, vm_names = self._vm_names(inp)
        return client, find_vms(client, vm_names)

    def _each(
        self, inp: StepInput, what: str, act: Callable[[Any, Any], bool], describe: bool = False
    ) -> StepResult:
        """Apply act(vm, service_instance) to each of the application's VMs; it returns
        whether it changed anything (False: already as wanted). With `describe`, also
        publish each VM's inventory model as fact `source_vm.<name>` (what the target's
        domain is built from)."""
        client, vms = self._vms(inp)
        changed: list[str] = []
        for vm in vms:
            name: str = vm.name
            if client.call(f"{what} {name}", partial(act, vm)):
                changed.append(name)
                note = f"{what} {name} (workflow {inp.context.workflowId})"
                client.call("posting an event", partial(_post_event, vm=vm, message=note))
        facts = {"source_vms": ",".join(v.name for v in vms)}
        if describe:
            inv = read_inventory(client)
            facts.update({f"source_vm.{v.name}": inv.vm(v.name).model_dump_json() for v in vms})
        return StepResult(
            step=inp.step,
            changed=bool(changed),
            facts=facts,
            details={"vms": ",".join(v.name for v in vms), "changed": ",".join(changed)},
            attempt=_attempt(),
        )

    @activity.defn(name=WarmStep.SNAPSHOT_SOURCE)
    def snapshot_source(self, inp: StepInput) -> StepResult:
        name = snapshot_name(inp.context.workflowId)
        quiesce = inp.context.runbook.dataSync.quiesceSnapshot

        def act(vm: Any, si: Any) -> bool:
            if _find_snapshot(si, vm, name) is not None:
                return False  # this workflow's snapshot exists: reuse it
            wait_task(
                si,
                vm.CreateSnapshot_Task(
                    name=name, description="pre-cutover snapshot", memory=False, quiesce=quiesce
                ),
                f"snapshot of {vm.name}",
            )
            return True

        return self._each(inp, "snapshot", act, describe=True)

    @activity.defn(name=FinalizeStep.REMOVE_SOURCE_SNAPSHOT)
    def remove_source_snapshot(self, inp: StepInput) -> StepResult:
        name = snapshot_name(inp.context.workflowId)

        def act(vm: Any, si: Any) -> bool:
            snap = _find_snapshot(si, vm, name)
            if snap is None:
                return False
            wait_task(
                si,
                snap.RemoveSnapshot_Task(removeChildren=False),
                f"removing snapshot of {vm.name}",
            )
            return True

        return self._each(inp, "remove snapshot of", act)

    @activity.defn(name="revert_source_snapshot")
    def revert_source_snapshot(self, inp: StepInput) -> StepResult:
        """Operator rollback that also discards the source's writes since the snapshot."""
        name = snapshot_name(inp.context.workflowId)

        def act(vm: Any, si: Any) -> bool:
            snap = _find_snapshot(si, vm, name)
            if snap is None:
                raise _error("NotFound", f"{vm.name} has no snapshot {name} to revert to")
            wait_task(si, snap.RevertToSnapshot_Task(), f"reverting {vm.name}")
            return True

        return self._each(inp, "revert to snapshot", act)

    @activity.defn(name=Step.QUIESCE_APPLICATION)
    def quiesce_application(self, inp: StepInput) -> StepResult:
        policy = inp.context.runbook.quiesce
        scope = _run_scope(inp)
        prior: dict[str, str] = {}

        def act(vm: Any, si: Any) -> bool:
            # The prior state goes on the VM before anything changes; a retry of this run
            # (the VM already off) keeps the first record instead of writing "poweredOff".
            state = str(_property(si, vm, "runtime.powerState"))
            mark = _custom_values(si, vm).get(PRIOR_POWER_FIELD, "")
            recorded, _, by = mark.partition(" by ")
            if not recorded or by != scope:
                recorded = state
                _set_custom_value(si, vm, PRIOR_POWER_FIELD, f"{state} by {scope}")
            prior[vm.name] = recorded
            if state == "poweredOff":
                return False
            if str(vm.guest.toolsRunningStatus) == "guestToolsRunning":
                with contextlib.suppress(vim.fault.ToolsUnavailable):
                    vm.ShutdownGuest()
                deadline = time.monotonic() + policy.guestShutdownTimeoutSeconds
                while time.monotonic() < deadline:
                    if str(vm.runtime.powerState) == "poweredOff":
                        return True
                    if activity.in_activity():
                        activity.heartbeat({"waiting": "guest shutdown", "vm": vm.name})
                    time.sleep(0.5)
            if not policy.powerOffFallback:
                raise _error(
                    "InvalidState",
                    f"{vm.name} did not shut down within "
                    f"{policy.guestShutdownTimeoutSeconds:g}s and the runbook's "
                    "quiesce.powerOffFallback is false",
                )
            if str(vm.runtime.powerState) != "poweredOff":
                wait_task(si, vm.PowerOffVM_Task(), f"powering off {vm.name}")
            return True

        result = self._each(inp, "quiesce", act, describe=True)
        result.details["priorPowerState"] = ",".join(f"{n}={s}" for n, s in prior.items())
        return result

    @activity.defn(name=Compensation.RESTART_SOURCE)
    def restart_source(self, inp: StepInput) -> StepResult:
        """Back to the power state quiesce recorded: on only what was on before the cutover.
        A VM without a record was never changed by quiesce (it records first): left as is."""
        found: dict[str, str] = {}

        def act(vm: Any, si: Any) -> bool:
            mark = _custom_values(si, vm).get(PRIOR_POWER_FIELD)
            found[vm.name] = mark.partition(" by ")[0] if mark else "unrecorded"
            if mark is None:
                return False
            changed = False
            if found[vm.name] == "poweredOn" and (
                str(_property(si, vm, "runtime.powerState")) != "poweredOn"
            ):
                wait_task(si, vm.PowerOnVM_Task(), f"powering on {vm.name}")
                changed = True
            # cleared only once restored: a retry after a crash here still knows
            _set_custom_value(si, vm, PRIOR_POWER_FIELD, "")
            return changed

        result = self._each(inp, "restore power state of", act)
        result.details["priorPowerState"] = ",".join(f"{n}={s}" for n, s in found.items())
        return result

    def _set_nics(self, inp: StepInput, connected: bool) -> StepResult:
        def act(vm: Any, si: Any) -> bool:
            changes = []
            for dev in vm.config.hardware.device:
                if isinstance(dev, vim.vm.device.VirtualEthernetCard):
                    conn: Any = dev.connectable
                    if conn.connected == connected and conn.startConnected == connected:
                        continue
                    conn.connected = connected
                    conn.startConnected = connected
                    changes.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=dev))
            if not changes:
                return False
            wait_task(
                si,
                vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=changes)),
                f"{'connecting' if connected else 'disconnecting'} NICs of {vm.name}",
            )
            return True

        return self._each(inp, "connect NICs of" if connected else "disconnect NICs of", act)

    @activity.defn(name=FinalizeStep.DISCONNECT_SOURCE_NICS)
    def disconnect_source_nics(self, inp: StepInput) -> StepResult:
        return self._set_nics(inp, False)

    @activity.defn(name="reconnect_source_nics")
    def reconnect_source_nics(self, inp: StepInput) -> StepResult:
        return self._set_nics(inp, True)

    @activity.defn(name=FinalizeStep.MARK_SOURCE_MIGRATED)
    def mark_source_migrated(self, inp: StepInput) -> StepResult:
        ctx = inp.context
        target = ctx.facts.get("target_address") or ctx.runbook.targetPlatform
        values = {
            "cutover.migratedTo": f"{ctx.runbook.targetPlatform}:{ctx.application} ({target})",
            "cutover.workflowId": ctx.workflowId,
        }

        def act(vm: Any, si: Any) -> bool:
            cfm = si.content.customFieldsManager
            keys = {f.name: f.key for f in (cfm.field or [])}
            current = {v.key: str(v.value) for v in (vm.customValue or [])}
            if all(n in keys and current.get(keys[n]) == v for n, v in values.items()):
                return False  # already marked by this workflow
            for name in MIGRATED_FIELDS:
                if name not in keys:
                    keys[name] = cfm.AddFieldDefinition(name=name, moType=vim.VirtualMachine).key
            stamped = {
                **values,
                "cutover.migratedAt": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            for name, value in stamped.items():
                cfm.SetField(entity=vm, key=keys[name], value=value)
            return True

        return self._each(inp, "mark migrated", act)

    @activity.defn(name="verify_not_migrated")
    def verify_not_migrated(self, inp: StepInput) -> StepResult:
        """Whether the application's source VMs carry migrated marks, with the evidence.
        Only reads: the workflow decides (a deliberate re-migration names its reason)."""
        client, names = self._vm_names(inp)
        marks = migrated_marks(client, names)
        return StepResult(
            step=inp.step,
            changed=False,
            details={
                "migrated": bool(marks),
                "evidence": migration_evidence(names, marks),
                "vms": ",".join(names),
                "marked": ",".join(m.vm for m in marks),
            },
            attempt=_attempt(),
        )

    def concerns_check(self, inp: CheckInput, probe: VSphereConcernsProbe) -> CheckResult:
        """The application's VMs' pre-migration concerns as a check result."""
        if inp.runbook is None or inp.vcenter is None:
            raise _error("ConfigError", "a vsphere-concerns check needs the runbook and vCenter")
        client = self.pool.get(inp.vcenter)
        names = resolve_vms(client, inp.runbook)
        inv = read_inventory(client)
        levels = ("critical",) if probe.failOn == "critical" else ("critical", "warning")
        found = [c for n in names for c in evaluate(inv, inv.vm(n))]
        failing = [c for c in found if c.severity in levels and c.id not in probe.ignore]
        counts = {
            lvl: sum(1 for c in found if c.severity == lvl)
            for lvl in ("critical", "warning", "info")
        }
        return CheckResult(
            name=inp.name,
            phase=inp.phase,
            passed=not failing,
            measured=", ".join(f"{n} {lvl}" for lvl, n in counts.items())
            + f" on {', '.join(names)}",
            threshold=f"no {' or '.join(levels)} concern"
            + (f" (accepted: {', '.join(probe.ignore)})" if probe.ignore else ""),
            detail="; ".join(f"[{c.severity}] {c.vm}: {c.id}: {c.message}" for c in failing)[:4000],
        )

    def activities(self) -> list[Callable[..., Any]]:
        return [
            self.verify_not_migrated,
            self.snapshot_source,
            self.remove_source_snapshot,
            self.revert_source_snapshot,
            self.quiesce_application,
            self.restart_source,
            self.disconnect_source_nics,
            self.reconnect_source_nics,
            self.mark_source_migrated,
        ]


# ------------------------------------------------------------------------ disk bytes


class DatastoreFile(io.RawIOBase):
    """A seekable read-only stream of a datastore file over vCenter's `/folder` endpoint,
    with Range requests and the SOAP session cookie (as vCenter requires)."""

    def __init__(
        self, client: VSphereClient, datastore_path: str, datacenter: str, chunk: int = 8 << 20
    ) -> None:
        if not (datastore_path.startswith("[") and "] " in datastore_path):
            raise ValueError(f"not a datastore path: {datastore_path!r} (expected '[ds] dir/file')")
        ds, rel = datastore_path[1:].split("] ", 1)
        query = urllib.parse.urlencode({"dcPath": datacenter, "dsName": ds})
        self._path = f"/folder/{urllib.parse.quote(rel)}?{query}"
        self._client = client
        self._pos = 0
        self._chunk = chunk
        self.name = datastore_path
        self.size = self._size()

    def _get(
        self, headers: dict[str, str], method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        s = self._client.settings
        conn = http.client.HTTPSConnection(s.host, s.port, context=self._client._ssl(), timeout=60)
        try:
            conn.request(
                method, self._path, headers={"Cookie": self._client.session_cookie(), **headers}
            )
            resp = conn.getresponse()
            body = resp.read() if method == "GET" else b""
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        except OSError as exc:
            raise _error("VSphereUnavailable", f"reading {self.name}: {exc}", True) from None
        finally:
            conn.close()

    def _size(self) -> int:
        status, headers, _ = self._get({}, method="HEAD")
        if status == 404:
            raise _error("NotFound", f"{self.name} does not exist on the datastore")
        if status >= 400:
            raise _error("VSphereFault", f"{self.name}: HTTP {status}")
        return int(headers.get("content-length", "0"))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        want = min(len(view), self.size - self._pos)
        if want <= 0:
            return 0
        status, _, body = self._get({"Range": f"bytes={self._pos}-{self._pos + want - 1}"})
        if status not in (200, 206):
            raise _error("VSphereFault", f"reading {self.name} at {self._pos}: HTTP {status}")
        if status == 200:  # server ignored the range: take our slice of the whole file
            body = body[self._pos : self._pos + want]
        n = len(body)
        view[:n] = body
        self._pos += n
        return n

    def readall(self) -> bytes:
        """The rest of the file in `chunk`-sized ranged requests (not 8 KiB ones)."""
        out = bytearray()
        while self._pos < self.size:
            buf = bytearray(min(self._chunk, self.size - self._pos))
            n = self.readinto(buf)
            if n == 0:
                break
            out += buf[:n]
        return bytes(out)


# ------------------------------------------------------------- changed-block tracking
# Used by activities/disks.py (the warm data path); pyvmomi stays in this module.


def _disk_device(si: Any, vm: Any, disk_key: int) -> Any:
    for dev in _property(si, vm, "config.hardware.device") or []:
        if isinstance(dev, vim.vm.device.VirtualDisk) and dev.key == disk_key:
            return dev
    raise _error("NotFound", f"{vm.name} has no disk with device key {disk_key}")


def enable_cbt(client: VSphereClient, vm_name: str) -> bool:
    """Turn on changed-block tracking for a VM; False when it already was (idempotent)."""
    vm = find_vms(client, [vm_name])[0]

    def act(si: Any) -> bool:
        if _property(si, vm, "config.changeTrackingEnabled"):
            return False
        spec = vim.vm.ConfigSpec(changeTrackingEnabled=True)
        wait_task(si, vm.ReconfigVM_Task(spec=spec), f"enabling CBT on {vm_name}")
        return True

    return client.call(f"enabling CBT on {vm_name}", act)


def disk_change_id(client: VSphereClient, vm_name: str, disk_key: int) -> str | None:
    """The disk's current CBT change ID (None while CBT is off or nothing is tracked yet)."""
    vm = find_vms(client, [vm_name])[0]

    def read(si: Any) -> str | None:
        cid = getattr(_disk_device(si, vm, disk_key).backing, "changeId", None)
        return str(cid) if cid else None

    return client.call(f"reading the change ID of {vm_name} disk {disk_key}", read)


def changed_areas(
    client: VSphereClient, vm_name: str, disk_key: int, change_id: str, end: int | None = None
) -> list[tuple[int, int]]:
    """`(start, length)` extents changed since `change_id` ("*": every allocated extent),
    via QueryChangedDiskAreas; asks again from where an answer stopped, up to `end`."""
    vm = find_vms(client, [vm_name])[0]

    def query(si: Any) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        start = 0
        while True:
            info = vm.QueryChangedDiskAreas(
                snapshot=None, deviceKey=disk_key, startOffset=start, changeId=change_id
            )
            out.extend((int(a.start), int(a.length)) for a in (info.changedArea or []))
            reached = int(info.startOffset) + int(info.length)
            if end is None or info.length <= 0 or reached >= end:
                return out
            start = reached

    return client.call(f"querying changed areas of {vm_name} disk {disk_key}", query)
