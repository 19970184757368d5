"""Rules: the VM's configuration (state, name, affinities, hot-plug, boot, DRS/DPM)."""

from __future__ import annotations

from collections.abc import Iterator

from cutover.concerns.engine import dns_label
from cutover.concerns.helpers import _cluster
from cutover.concerns.model import Hit, TargetLimits, _rule
from cutover.inventory import VM, Inventory


@_rule(
    "vm.template",
    "critical",
    """We refuse: a template runs no application to cut over.""",
)
def _template(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: a template in a cutover is a selection mistake."""
    if vm.template:
        yield Hit(
            "This is a template, not a running VM. Remove it from the application's VM "
            "selection (its tag or list), or convert it to a VM if it really serves."
        )


@_rule(
    "vm.fault_tolerance",
    "critical",
    """We refuse: vSphere keeps a secondary VM in lockstep with this one; our snapshots and
    power operations on the primary interact with that pair, and KVM has no equivalent.""",
)
def _fault_tolerance(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: turning FT off is a deliberate availability decision a person must make."""
    if vm.faultTolerance:
        yield Hit(
            "vSphere Fault Tolerance is on for this VM. Turn Fault Tolerance off before the "
            "cutover, and plan availability on the target (e.g. HA restart policy)."
        )


@_rule(
    "vm.suspended",
    "warning",
    """We copy the disks only: the suspended memory state is discarded, so the target boots as
    after a power loss.""",
)
def _suspended(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning: work in the suspended memory is lost and the filesystems were not cleanly
    unmounted."""
    if vm.powerState == "suspended":
        yield Hit(
            "The VM is suspended. Resume it and shut it down cleanly (or leave it running for "
            "a warm cutover) so nothing in memory is lost."
        )


@_rule(
    "vm.name_invalid",
    "critical",
    """We refuse: the target domain takes the VM's name, and libvirt rejects this one.""",
)
def _name_invalid(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: the target domain could not be defined.

    libvirt domain names may be almost anything, but not empty, not with '/' (the QEMU
    driver rejects it; vSphere's API spells '/' in a name as ``%2f``), not with a newline or
    other control character, and short enough for ``<name>.xml`` to be a file name.
    """
    problems = _name_problems(vm.name, t)
    if problems:
        yield Hit(
            f"The VM name {vm.name!r} cannot be a domain name on the target: "
            f"{'; '.join(problems)}. Rename the VM in vSphere."
        )


def _name_problems(name: str, t: TargetLimits) -> list[str]:
    problems: list[str] = []
    if not name.strip():
        problems.append("it is empty")
    if "/" in name or "%2f" in name.lower():
        problems.append("it contains '/'")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        problems.append("it contains a control character")
    if len(name.encode()) > t.maxVmNameBytes:
        problems.append(f"it is longer than {t.maxVmNameBytes} bytes")
    return problems


@_rule(
    "vm.name_not_dns_label",
    "info",
    """The target domain keeps the VM's exact name; names we derive that must be DNS-1123
    labels (per-VM DNS records, target volume names) use the sanitized form in the message.""",
)
def _name_not_dns(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Info: nothing breaks, derived names just differ from the VM's; a VM whose name is not
    a valid domain name at all gets `vm.name_invalid` instead."""
    name = vm.name
    if _name_problems(name, t) or dns_label(name) == name.lower():
        return
    label = dns_label(name) or f"vm-{dns_label(vm.moref) or 'unnamed'}"
    yield Hit(
        f"The VM name {name!r} is not a DNS-1123 label (at most 63 characters: letters, "
        f"digits, '-'; starting and ending with a letter or digit). Derived names will use "
        f"'{label}'; rename the VM if they should match."
    )


@_rule(
    "vm.latency_sensitivity_high",
    "warning",
    """The target domain gets no equivalent tuning: no vCPU or emulator pinning, no reserved
    memory, no realtime scheduling.""",
)
def _latency(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning: the application asked for exclusive, low-latency CPUs; without them its
    latency can regress, which the rollback criteria may only catch after the switch."""
    if (vm.latencySensitivity or "").lower() == "high":
        yield Hit(
            "The VM's latency sensitivity is 'high'. Plan CPU pinning (cputune), hugepages "
            "and host isolation on the KVM host, and watch the latency rollback criteria."
        )


@_rule(
    "affinity.cpu",
    "warning",
    """The target domain gets no vCPU pinning.""",
)
def _cpu_affinity(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning (Forklift agrees): pinning is usually there for licensing or performance."""
    if vm.cpuAffinity:
        cpus = ",".join(str(c) for c in vm.cpuAffinity)
        yield Hit(
            f"The VM is pinned to host CPUs {cpus}. If that is for licensing or performance, "
            "set the equivalent <cputune> pinning on the target after the cutover."
        )


@_rule(
    "affinity.numa",
    "warning",
    """The target domain gets no NUMA node pinning.""",
)
def _numa_affinity(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning (Forklift agrees): memory locality, and so performance, can change."""
    if vm.numaNodeAffinity:
        nodes = ",".join(str(n) for n in vm.numaNodeAffinity)
        yield Hit(
            f"The VM is pinned to NUMA node(s) {nodes}. Set <numatune> on the target after "
            "the cutover if the application depends on it."
        )


@_rule(
    "affinity.host",
    "warning",
    """The target domain is placed on the libvirt host the site config names; vSphere VM-host
    rules are not carried.""",
)
def _host_affinity(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning (Forklift agrees): such rules often encode licensing or failure-domain
    separation that the target placement must honour by other means.

    Looks in the VM's cluster (by `VM.cluster`, else its host's cluster); when that is
    unknown, in every cluster. Rules are matched on VM name or MoRef.
    """
    cluster = _cluster(inv, vm)
    clusters = [cluster] if cluster is not None else inv.clusters
    rules = sorted(
        rule
        for c in clusters
        for rule, members in c.vmHostRules.items()
        if vm.name in members or vm.moref in members
    )
    if rules:
        names = ", ".join(f"'{r}'" for r in rules)
        yield Hit(
            f"VM-host affinity rule(s) {names} pin the VM to certain ESXi hosts. Choose the "
            "target host with the same intent (licensing, failure domain) in the site config."
        )


@_rule(
    "hotplug.enabled",
    "info",
    """The target domain gets fixed vCPU and memory sizes; they can be changed later with a
    reboot.""",
)
def _hotplug(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Info (Forklift says warning): nothing about the guest changes; only the ability to
    grow it without a reboot is not configured on the target."""
    hot = (
        ("CPU hot-add", vm.cpuHotAdd),
        ("CPU hot-remove", vm.cpuHotRemove),
        ("memory", vm.memoryHotAdd),
    )
    what = [n for n, on in hot if on]
    if what:
        yield Hit(
            f"{' and '.join(what)} hot-add is enabled. If resizing without a reboot is needed "
            "on the target, configure maximum vCPUs / memory hotplug there."
        )


@_rule(
    "firmware.secure_boot",
    "info",
    """The target domain boots UEFI with Secure Boot (OVMF secure-boot firmware, SMM, Microsoft
    keys enrolled); the source's NVRAM (boot entries, db/dbx updates, shim MOK keys) is not
    carried.""",
)
def _secure_boot(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Info: standard guests boot; guests with their own enrolled keys (custom MOK for
    signed kernel modules) need them re-enrolled."""
    if vm.firmware == "efi" and vm.secureBoot:
        yield Hit(
            "The VM boots UEFI with Secure Boot. The target host needs OVMF secure-boot "
            "firmware; if the guest enrolled its own keys (MOK), re-enroll them on the target."
        )


@_rule(
    "cluster.drs",
    "info",
    """All vSphere operations address the VM by MoRef, so they follow it if DRS moves it
    during the warm phase; the target has no DRS.""",
)
def _drs(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Info: harmless for the cutover; load balancing is simply gone on the target."""
    cluster = _cluster(inv, vm)
    if cluster is not None and cluster.drsEnabled:
        behavior = f" ({cluster.drsBehavior})" if cluster.drsBehavior else ""
        yield Hit(
            f"The VM runs in DRS-enabled cluster '{cluster.name}'{behavior}. Nothing to do; "
            "plan capacity on the KVM host, which does not rebalance on its own."
        )


@_rule(
    "cluster.dpm",
    "info",
    """Nothing: DPM powers hosts, not this VM; the target has no equivalent.""",
)
def _dpm(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Info: no effect on the cutover."""
    cluster = _cluster(inv, vm)
    if cluster is not None and cluster.dpmEnabled:
        yield Hit(
            f"The VM runs in cluster '{cluster.name}', which has Distributed Power "
            "Management on. Nothing to do for the cutover."
        )
