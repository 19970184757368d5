"""Rules: the guest (VMware Tools, hostname, addresses, free space, OS)."""

from __future__ import annotations

from collections.abc import Iterator

from cutover.concerns.helpers import (
    _is_windows,
    _matches,
    _mib,
    _min_free,
    _powered_on,
    _usable_ips,
)
from cutover.concerns.model import Hit, TargetLimits, _rule
from cutover.inventory import VM, Inventory


@_rule(
    "guest.tools_not_running",
    "info",
    """Without VMware Tools the warm snapshot is crash-consistent (no filesystem quiescing) and
    guest facts other checks use (hostname, IPs, filesystems) are missing. Conversion
    removes VMware Tools from the guest either way.""",
)
def _tools(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Info: the cutover works; the gaps it leaves show up as their own concerns."""
    if _powered_on(vm) and vm.toolsRunningStatus != "guestToolsRunning":
        status = vm.toolsRunningStatus or "unknown"
        yield Hit(
            f"VMware Tools is not running in the powered-on VM (status {status}). Start or "
            "install it so the guest's facts are current and snapshots are quiesced."
        )


@_rule(
    "guest.hostname_empty",
    "warning",
    """Nothing: the guest's configuration travels unchanged. Without a hostname, monitoring
    and DHCP-registered DNS cannot find the guest by name on the target, and its identity
    after the cutover cannot be cross-checked against the source.""",
)
def _hostname_empty(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning (Forklift agrees): a powered-on guest without a hostname is unconfigured or not
    reporting, so its identity after the cutover cannot be checked."""
    if _powered_on(vm) and not (vm.guestHostname or "").strip():
        yield Hit(
            "The powered-on guest reports no hostname. Set one in the guest (and make sure "
            "VMware Tools runs) before the cutover."
        )


_DEFAULT_HOSTNAMES = frozenset(
    {"localhost", "localhost.localdomain", "localhost6", "localhost6.localdomain6"}
)


@_rule(
    "guest.hostname_default",
    "warning",
    """Nothing: the guest's configuration travels unchanged. A default hostname cannot tell
    this guest apart from others on the target (monitoring, logs, DHCP-registered DNS).""",
)
def _hostname_default(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning (Forklift agrees): a default name means monitoring, logs and DNS registration
    cannot tell this guest from others on the target."""
    hostname = (vm.guestHostname or "").strip()
    if hostname.lower() in _DEFAULT_HOSTNAMES:
        yield Hit(
            f"The guest's hostname is the default {hostname!r}. Give it its real name before "
            "the cutover."
        )


@_rule(
    "guest.no_ip",
    "warning",
    """Static addresses are re-applied on the target's new NICs from the addresses VMware Tools
    reports (matched by MAC); with none reported, a Windows guest with static addresses
    comes up without them, the smoke test fails and the cutover rolls back.""",
)
def _no_ip(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning (Forklift agrees): a running guest that reports no routable address is either
    not on the network or not reporting; either way static-IP preservation has no input."""
    if _powered_on(vm) and not _usable_ips(vm):
        yield Hit(
            "The powered-on guest reports no usable IP address (none, or only loopback or "
            "link-local). Check its network and that VMware Tools runs, so its addresses "
            "can be preserved."
        )


@_rule(
    "guest.ip_unverifiable",
    "info",
    """Static addresses are preserved only from what VMware Tools reports while the guest
    runs; for a guest that is not running we preserve none and rely on its own
    configuration.""",
)
def _ip_unverifiable(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Info: a powered-off VM is normal (cold migration); it only means the guest's
    addresses and hostname cannot be checked beforehand."""
    if not _powered_on(vm):
        yield Hit(
            f"The VM is {vm.powerState or 'in an unknown power state'}, so its IP addresses "
            "(and static-IP preservation) cannot be checked. Power it on once with VMware "
            "Tools running before the cutover if its addresses must be preserved."
        )


@_rule(
    "guest.low_free_space",
    "critical",
    """We refuse: virt-v2v stops the conversion when a guest filesystem lacks the space to
    inject drivers or rebuild the initramfs, which would happen inside the downtime window
    and roll the cutover back.""",
)
def _free_space(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: the conversion would certainly fail, after the source was quiesced.

    Thresholds per `TargetLimits` (virt-v2v's documented minimums). Checked on the
    filesystems VMware Tools reports; ignored when it reports none.
    """
    for gd in vm.guestDisks:
        if gd.capacityBytes <= 0 or _matches(gd.path, t.freeSpaceIgnoredPaths):
            continue
        need, what = _min_free(gd, t)
        if gd.freeBytes < need:
            yield Hit(
                f"Guest filesystem '{gd.path}' has {_mib(gd.freeBytes)} free; conversion needs "
                f"at least {_mib(need)} on {what}. Free up space (or grow the disk) before "
                "the cutover.",
                gd.path,
            )


@_rule(
    "guest.disk_key_missing",
    "info",
    """Windows volumes we cannot map to a VM disk are converted all the same; only per-disk
    placement that follows drive letters, and naming target volumes after them, fall back
    to the disk order.""",
)
def _disk_key(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Info (Forklift agrees): only drive-letter based mapping is affected."""
    if not _is_windows(vm):
        return
    for gd in vm.guestDisks:
        if gd.diskKey is None:
            yield Hit(
                f"VMware Tools does not say which VM disk holds Windows volume '{gd.path}'. "
                "Update VMware Tools if target storage should follow drive letters.",
                gd.path,
            )


def _os_name(vm: VM) -> str:
    return vm.guestFullName or vm.guestId or "unknown"


@_rule(
    "guest_os.unsupported",
    "critical",
    """We refuse: virt-v2v converts only Linux and Windows guests it recognizes; anything else
    would fail in the convert step, inside the downtime window.""",
)
def _os_unsupported(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: the conversion cannot succeed, or nothing says it can.

    Unsupported when VMware Tools reports a guest family the target does not convert, when
    the configured guest id is one virt-v2v cannot convert, or when the guest id says
    nothing ("Other", none) and no convertible family is reported either.
    """
    family = vm.guestFamily
    gid = (vm.guestId or "").lower()
    known_family = family is not None and family in t.guestFamilies
    if family is not None and not known_family:
        reason = f"its guest family is {family}"
    elif gid and _matches(gid, t.unsupportedGuestIds):
        reason = f"guest id {vm.guestId} is not one virt-v2v converts"
    elif (not gid or _matches(gid, t.unknownGuestIds)) and not known_family:
        reason = f"its guest OS is {vm.guestId or 'not recorded'} and VMware Tools reports none"
    else:
        return
    yield Hit(
        f"The guest OS ({_os_name(vm)}) cannot be converted for {t.name}: {reason}. If the "
        "guest really runs a supported Linux or Windows, set the right guest OS in the VM's "
        "settings; otherwise migrate it by other means."
    )


@_rule(
    "guest_os.generic",
    "warning",
    """virt-v2v identifies the distribution by inspecting the disk and converts it only if it
    recognizes it; if not, the convert step fails inside the downtime window and the
    cutover rolls back.""",
)
def _os_generic(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning: probably fine (most "Other Linux" VMs run a common distribution), but
    unproven until a trial conversion of a clone succeeds."""
    family = vm.guestFamily
    gid = (vm.guestId or "").lower()
    if family is not None and family not in t.guestFamilies:
        return  # guest_os.unsupported
    if gid and _matches(gid, t.unsupportedGuestIds):
        return  # guest_os.unsupported
    unknown = not gid or _matches(gid, t.unknownGuestIds)
    if (unknown and family is not None) or (gid and _matches(gid, t.genericGuestIds)):
        yield Hit(
            f"The VM's guest OS is set to a generic type ({vm.guestId or 'none'}; "
            f"reported: {vm.guestFullName or family or 'nothing'}). Set the exact OS in the "
            "VM's settings, and trial-convert a clone if it is not a distribution virt-v2v "
            "supports."
        )
