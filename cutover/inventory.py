"""The vSphere inventory as plain data: what discovery, concerns and the target need.

Read from vCenter by the vSphere adapter (activities/vsphere.py) or imported from a JSON
file; the pre-migration concern rules (cutover/concerns/) are functions of this model
alone, so they work the same for both.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Datacenter(_M):
    moref: str
    name: str


class Cluster(_M):
    moref: str
    name: str
    datacenter: str
    hosts: list[str] = Field(default_factory=list)
    drsEnabled: bool = False
    drsBehavior: str | None = None
    dpmEnabled: bool = False
    haEnabled: bool = False
    #: VM-host affinity rules: rule name -> morefs of the VMs it pins to hosts
    vmHostRules: dict[str, list[str]] = Field(default_factory=dict)


class Host(_M):
    moref: str
    name: str
    datacenter: str
    cluster: str | None = None
    cpuCores: int | None = None
    cpuThreads: int | None = None
    cpuPackages: int | None = None
    memoryBytes: int | None = None
    numaNodes: int | None = None
    connectionState: str | None = None
    powerState: str | None = None
    version: str | None = None


class Datastore(_M):
    moref: str
    name: str
    type: str | None = None
    url: str | None = None
    capacityBytes: int | None = None
    freeBytes: int | None = None


class Network(_M):
    moref: str
    name: str
    kind: Literal["standard", "distributed", "opaque"] = "standard"
    switch: str | None = None
    vlan: int | None = None


class Disk(_M):
    key: int
    label: str = ""
    capacityBytes: int
    #: `[datastore] dir/name.vmdk`; empty when the disk is not on a datastore
    fileName: str = ""
    datastore: str | None = None
    controllerKey: int | None = None
    controllerType: Literal["scsi", "sata", "ide", "nvme", "other"] | None = None
    unitNumber: int | None = None
    thin: bool | None = None
    eagerlyScrub: bool | None = None
    #: persistent, independent_persistent, independent_nonpersistent, ...
    diskMode: str | None = None
    #: sharingNone or sharingMultiWriter
    sharing: str | None = None
    rdm: bool = False
    rdmCompatibilityMode: str | None = None
    changeId: str | None = None
    uuid: str | None = None


class Nic(_M):
    key: int
    label: str = ""
    macAddress: str | None = None
    network: str | None = None
    adapterType: str = "unknown"
    connected: bool | None = None
    startConnected: bool | None = None
    sriov: bool = False


class PciDevice(_M):
    key: int
    label: str = ""
    kind: Literal["passthrough", "dynamic-passthrough", "vgpu"]
    detail: str = ""


class Snapshot(_M):
    name: str
    moref: str
    createTime: datetime | None = None
    description: str = ""


class GuestDisk(_M):
    path: str
    capacityBytes: int
    freeBytes: int
    #: Windows only: the VM disk key backing this volume, when the guest says
    diskKey: int | None = None


class Tag(_M):
    category: str
    name: str


class VM(_M):
    moref: str
    name: str
    datacenter: str | None = None
    cluster: str | None = None
    host: str | None = None
    template: bool = False
    uuid: str | None = None
    instanceUuid: str | None = None
    powerState: Literal["poweredOn", "poweredOff", "suspended"] | None = None
    guestId: str | None = None
    guestFullName: str | None = None
    guestFamily: str | None = None
    guestHostname: str | None = None
    ipAddresses: list[str] = Field(default_factory=list)
    toolsStatus: str | None = None
    toolsRunningStatus: str | None = None
    numCpu: int = 1
    coresPerSocket: int | None = None
    memoryMB: int = 0
    cpuHotAdd: bool = False
    cpuHotRemove: bool = False
    memoryHotAdd: bool = False
    cpuAffinity: list[int] = Field(default_factory=list)
    numaNodeAffinity: list[int] = Field(default_factory=list)
    latencySensitivity: str | None = None
    firmware: Literal["bios", "efi"] = "bios"
    secureBoot: bool = False
    tpm: bool = False
    usbControllers: int = 0
    changeTrackingEnabled: bool = False
    consolidationNeeded: bool = False
    faultTolerance: bool = False
    diskEnableUuid: bool = False
    disks: list[Disk] = Field(default_factory=list)
    nics: list[Nic] = Field(default_factory=list)
    pciDevices: list[PciDevice] = Field(default_factory=list)
    snapshots: list[Snapshot] = Field(default_factory=list)
    guestDisks: list[GuestDisk] = Field(default_factory=list)
    customAttributes: dict[str, str] = Field(default_factory=dict)
    tags: list[Tag] = Field(default_factory=list)


class Inventory(_M):
    source: str
    collectedAt: datetime
    vcenterVersion: str | None = None
    #: PropertyCollector round trips this read took (the cost that must stay flat)
    roundTrips: int = 0
    datacenters: list[Datacenter] = Field(default_factory=list)
    clusters: list[Cluster] = Field(default_factory=list)
    hosts: list[Host] = Field(default_factory=list)
    datastores: list[Datastore] = Field(default_factory=list)
    networks: list[Network] = Field(default_factory=list)
    vms: list[VM] = Field(default_factory=list)

    def vm(self, name: str) -> VM:
        for vm in self.vms:
            if vm.name == name or vm.moref == name or vm.uuid == name:
                return vm
        raise KeyError(name)
