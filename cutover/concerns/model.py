"""The concern model, the target limits and the rule registry (`RULES`, `_rule`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from cutover.inventory import VM, Inventory

Severity = Literal["critical", "warning", "info"]

#: Every severity, most severe first (also the order `evaluate` sorts by).
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "info")

MiB = 1024 * 1024

_ID = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"


class Concern(BaseModel):
    """One thing about one VM (and maybe one of its disks) a person should know before cutover."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Stable rule id, e.g. ``cbt.disabled`` (tooling and suppressions key on it).
    id: Annotated[str, Field(pattern=_ID)]
    severity: Severity
    #: The VM's name (its MoRef when the name is empty).
    vm: Annotated[str, Field(min_length=1)]
    #: The VM disk's label (else its file name), or for guest-filesystem concerns the
    #: guest's path (``/``, ``C:\\``); None when the concern is about the whole VM.
    disk: str | None = None
    #: What is wrong and what a person should do about it.
    message: Annotated[str, Field(min_length=1)]
    #: What the cutover itself does about it.
    action: Annotated[str, Field(min_length=1)]


class TargetLimits(BaseModel):
    """What the target platform accepts; the defaults describe libvirt/KVM fed by virt-v2v.

    - ``maxDisks`` = 256: the target attaches disks on virtio-scsi. One virtio-scsi
      controller addresses targets 0-255 with up to 16384 LUNs each (QEMU
      ``VIRTIO_SCSI_MAX_TARGET`` 255, ``VIRTIO_SCSI_MAX_LUN`` 16383), so 256 disks fit one
      controller at one LUN per target, with no extra PCI slots. (libvirt's automatic
      addressing puts 7 units on each SCSI controller and adds controllers as needed, so
      this is not a libvirt ceiling.) It also equals vSphere's own PVSCSI maximum
      (4 controllers x 64 disks): every all-SCSI layout vSphere accepts fits. virtio-blk,
      at one PCI slot per disk, would be far lower (about 28 on a pc/i440fx root bus).
      Targets with a stricter limit set their own (Forklift uses 165 for KubeVirt).
    - ``guestFamilies``: vSphere guest families virt-v2v converts (its supported guests are
      RHEL/CentOS/Scientific Linux 4+, Oracle Linux, Fedora, SLES/openSUSE 10+, ALT 9+,
      Debian 6+, Ubuntu 10.04+, Windows XP to 11 / Server 2025; virt-v2v-support(1)).
    - ``unsupportedGuestIds``: guest ids (``fnmatch`` patterns, matched lower-cased) virt-v2v
      cannot convert even in a convertible family: pre-XP Windows, RHEL 2.1/3, and the
      non-Linux/Windows systems, listed so a powered-off VM (no guest family reported)
      is judged too.
    - ``unknownGuestIds``: ids that say nothing about the OS (vSphere's "Other"); acceptable
      only when VMware Tools reports a convertible family.
    - ``genericGuestIds``: "Other Linux" ids: virt-v2v identifies the distribution by
      inspecting the disk and converts it only if it knows it.
    - ``maxVmNameBytes`` = 251: the libvirt domain keeps the VM's name, and libvirt stores it
      as ``<name>.xml``, which must fit a 255-byte file name.
    - ``minFree*Bytes``: free space virt-v2v requires in each guest filesystem to convert
      (driver injection, a new initramfs), from virt-v2v(1) "Free space for conversion":
      Linux ``/`` 100 MB, ``/boot`` 50 MB, Windows ``C:`` 100 MB, any other 10 MB (MiB in
      its code). Its code is at most as strict as its documentation, so these are safe.
    - ``freeSpaceIgnoredPaths``: guest mounts that are read-only by nature and not in the
      guest's fstab (snap squashfs images always report 0 bytes free); virt-v2v does not
      check them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "libvirt-kvm"
    maxDisks: Annotated[int, Field(ge=1)] = 256
    guestFamilies: frozenset[str] = frozenset({"linuxGuest", "windowsGuest"})
    unsupportedGuestIds: tuple[str, ...] = (
        "dosguest",
        "win31guest",
        "win95guest",
        "win98guest",
        "winmeguest",
        "winntguest",
        "win2000*",
        "os2guest",
        "ecomstation*",
        "netware*",
        "solaris*",
        "darwin*",
        "freebsd*",
        "unixware*",
        "openserver*",
        "vmkernel*",
        "crxpod*",
        "crxsys*",
        "rhel2guest",
        "rhel3*",
    )
    unknownGuestIds: tuple[str, ...] = ("otherguest", "otherguest64")
    genericGuestIds: tuple[str, ...] = ("other*linux*", "genericlinux*")
    maxVmNameBytes: Annotated[int, Field(ge=1)] = 251
    minFreeRootBytes: Annotated[int, Field(ge=0)] = 100 * MiB
    minFreeBootBytes: Annotated[int, Field(ge=0)] = 50 * MiB
    minFreeWindowsSystemBytes: Annotated[int, Field(ge=0)] = 100 * MiB
    minFreeOtherBytes: Annotated[int, Field(ge=0)] = 10 * MiB
    freeSpaceIgnoredPaths: tuple[str, ...] = ("/snap/*",)


class Hit(NamedTuple):
    """What a rule found: a message, and the disk (or guest path) it is about, if any."""

    message: str
    disk: str | None = None


Check = Callable[[Inventory, VM, TargetLimits], Iterable[Hit]]


class Rule(NamedTuple):
    severity: Severity
    #: What the cutover does about it (the concern's ``action``).
    action: str
    check: Check


_RULES: dict[str, Rule] = {}

#: Every rule, by id, in evaluation order (read-only).
RULES: Mapping[str, Rule] = MappingProxyType(_RULES)


def _rule(rule_id: str, severity: Severity, action: str) -> Callable[[Check], Check]:
    if not re.match(_ID, rule_id):
        raise ValueError(f"bad rule id {rule_id!r}")

    def register(check: Check) -> Check:
        if rule_id in _RULES:
            raise ValueError(f"duplicate rule id {rule_id!r}")
        _RULES[rule_id] = Rule(severity, " ".join(action.split()), check)
        return check

    return register
