"""Ports: the small interfaces the activities drive and the adapters implement.

Only what the code uses: a new load balancer implements `LoadBalancer` (HAProxy:
`adapters.haproxy.runtime.HAProxyRuntime`); a new way to read source disks implements
`DiskSource` (vSphere: `adapters.vsphere.disk_source`, local files:
`adapters.localdisk`); a new target platform implements `TargetPlatform` (libvirt:
`activities.libvirt_target.LibvirtTarget`); a new DNS server implements `DnsUpdater`
(RFC 2136: `adapters.dns.updater.Rfc2136Updater`). The worker (`workers.registry`) registers each
implementation under the `type` the site's bindings name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from cutover.inventory import Inventory
from cutover.models import StepContext, StepInput, StepResult
from cutover.runbook import Quiesce, Runbook
from cutover.site import Dns, VCenter
from cutover.traffic import Address, BackendPrior, ServerState, Switch, Timeouts


class LoadBalancer(Protocol):
    """A load balancer that can move one backend's traffic between two servers.

    Every method is idempotent and safe to re-run after a crash or a load balancer reload,
    and raises typed `ApplicationError`s (see the module documentation).
    """

    def switch_to_target(
        self, backend: str, source: str, target: str, target_addr: Address, timeouts: Timeouts
    ) -> Switch:
        """Point `target` at target_addr, send it traffic once a real health check passed,
        then drain `source` and put it in maintenance."""
        ...

    def switch_to_source(
        self,
        backend: str,
        source: str,
        target: str,
        timeouts: Timeouts,
        prior: BackendPrior | None = None,
    ) -> Switch:
        """The mirror image: `source` serves again once healthy; `target` drains. With
        `prior`, the target's address, weight and health check and the source's weight go
        back to what they were before the switch."""
        ...

    def retire(
        self,
        backend: str,
        source: str,
        target: str,
        target_addr: Address,
        timeouts: Timeouts,
        why: str = "",
    ) -> Switch:
        """The cutover is final: the target serves, the source stays out for good, and the
        load balancer keeps it so over a reload (persisted; `why` says who retired it)."""
        ...

    def state(self, backend: str) -> dict[str, ServerState]:
        """Every server of the backend, by name."""
        ...


Extent = tuple[int, int]  # (offset, length)


class DiskSource(Protocol):
    """Bytes of one source disk, plus what is known about its allocation and changes."""

    name: str
    size: int

    def read(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes (fewer only at the end of the disk)."""
        ...

    def allocated(self) -> list[Extent] | None:
        """Extents that may hold data (the rest reads as zeros); None when unknown."""
        ...

    def change_id(self) -> str | None:
        """The current changed-block-tracking ID; None without CBT."""
        ...

    def changed_since(self, change_id: str) -> list[Extent] | None:
        """Extents written since `change_id`; None when CBT cannot answer (fall back)."""
        ...

    def close(self) -> None: ...


#: Which disks a step works on: `(disk name, source)` pairs. The bool says the caller is
#: the pre-copy (a vSphere factory may enable CBT then).
SourceFactory = Callable[[StepContext, bool], list[DiskSource]]


class DiskSink(Protocol):
    """A source disk written in ranges (reverse sync: what the target wrote goes back)."""

    name: str
    size: int

    def write(self, offset: int, data: bytes) -> None: ...

    def flush(self) -> None:
        """Make every write durable before the source may start from the disk."""
        ...

    def close(self) -> None: ...


#: The runbook's VMs' disks, opened for writing, by disk name (`cutover.disknames.disk_id`).
SinkFactory = Callable[[StepContext], list[DiskSink]]


class TargetPlatform(Protocol):
    """A target platform's side of a cutover: the eight target steps, each idempotent (a
    re-run finds the world as wanted and says `changed=False`) and raising typed errors.
    Which platform a step runs on is the site's binding of the runbook's `targetPlatform`."""

    def attach_target_storage_profile(self, inp: StepInput) -> StepResult:
        """Put the converted images into the target's storage (facts `target_volume.*`)."""
        ...

    def detach_target_storage(self, inp: StepInput) -> StepResult:
        """Undo: delete this application's volumes; a no-op when none exist."""
        ...

    def validate_guest_tools_and_drivers(self, inp: StepInput) -> StepResult:
        """Check the images can boot there (facts `target_disk_bus`, `target_nic_model`)."""
        ...

    def power_on_target(self, inp: StepInput) -> StepResult:
        """Define and start the target machines (facts `target_domain`, `target_address`)."""
        ...

    def remove_target_domain(self, inp: StepInput) -> StepResult:
        """Undo: stop and remove the machines power_on_target made, never anyone else's."""
        ...

    def fence_target(self, inp: StepInput) -> StepResult:
        """Undo: pause this application's machines (no writes, nothing on the network;
        memory and disks kept) so the source can start; a no-op when none runs."""
        ...

    def unfence_target(self, inp: StepInput) -> StepResult:
        """Resume the machines fence_target paused (the source did not start)."""
        ...

    def commit_target_overlay(self, inp: StepInput) -> StepResult:
        """Finalize: merge the running target's overlays into their bases (detail
        `targetWrittenBytes`) and remove them once nothing references them."""
        ...


class RecordChange(Protocol):
    """What a DNS switch or restore did (``changed`` False: already as wanted)."""

    @property
    def name(self) -> str: ...
    @property
    def changed(self) -> bool: ...
    @property
    def value(self) -> str: ...
    @property
    def ttl(self) -> int: ...
    @property
    def previous_value(self) -> str | None: ...
    @property
    def previous_ttl(self) -> int | None: ...
    @property
    def note(self) -> str: ...
    @property
    def original_ttl(self) -> int | None:
        """The TTL in place before the cutover, when known."""
        ...


class TtlChange(Protocol):
    """What a TTL restore did."""

    @property
    def name(self) -> str: ...
    @property
    def changed(self) -> bool: ...
    @property
    def ttl(self) -> int: ...
    @property
    def previous_ttl(self) -> int: ...
    @property
    def note(self) -> str: ...


class LoweringMarker(Protocol):
    """Published with a lowered TTL: `old` seconds may still be cached from before `at`."""

    @property
    def old(self) -> int: ...
    @property
    def at(self) -> int: ...
    @property
    def fresh_from(self) -> int: ...


class TtlLowering(TtlChange, Protocol):
    """What a TTL lowering did, with the marker it published (None: nothing lowered)."""

    @property
    def marker(self) -> LoweringMarker | None: ...


class DnsUpdater(Protocol):
    """An authoritative DNS server the cutover points a record at the target through.

    Every change is a compare-and-swap, idempotent and safe to re-run, raising typed
    `ApplicationError`s; `settings` is the site's `dns` binding."""

    def switch(self, settings: Dns, name: str, target: str, ttl: int) -> RecordChange:
        """Point `name` at `target` with `ttl`, recording what it replaced in the zone."""
        ...

    def restore(
        self,
        settings: Dns,
        name: str,
        target: str | None,
        previous: str | None,
        previous_ttl: int | None,
        original_ttl: int | None,
        fallback: str | None,
    ) -> RecordChange:
        """Point `name` back at what the switch replaced, only if it still holds `target`."""
        ...

    def restore_ttl(self, settings: Dns, name: str, original_ttl: int | None) -> TtlChange:
        """Put back the TTL in place before the cutover, keeping what the record holds."""
        ...

    def lower_ttl(self, settings: Dns, name: str, ttl: int) -> TtlLowering:
        """Lower the record's TTL to `ttl` ahead of a wave, publishing the marker."""
        ...


#: A source operation's answer: the VMs' names (as the platform calls them) and those it
#: changed (the rest were already as wanted).
Done = tuple[list[str], list[str]]


class SourcePlatform(Protocol):
    """Where the application runs before the cutover (vSphere: `adapters.vsphere.source`).

    VMs are named as the runbook names them (or as `resolve` found them); `vcenter` is the
    site's source binding. Every change is idempotent and leaves a note (`note`) on the VM;
    errors are typed `ApplicationError`s."""

    def resolve(self, vcenter: VCenter, runbook: Runbook) -> list[str]:
        """The application's VM names (the runbook's `vms`, or found by its selector)."""
        ...

    def inventory(self, vcenter: VCenter) -> Inventory:
        """The source's inventory model (VMs, disks, NICs: what the target is built from)."""
        ...

    def migrated(self, vcenter: VCenter, names: list[str]) -> tuple[list[str], str]:
        """The VMs carrying migrated marks and one sentence of evidence. Read only."""
        ...

    def snapshot(
        self, vcenter: VCenter, names: list[str], snapshot: str, quiesce: bool, note: str
    ) -> Done: ...

    def remove_snapshot(
        self, vcenter: VCenter, names: list[str], snapshot: str, note: str
    ) -> Done: ...

    def revert_snapshot(
        self, vcenter: VCenter, names: list[str], snapshot: str, note: str
    ) -> Done: ...

    def shut_down(
        self,
        vcenter: VCenter,
        names: list[str],
        policy: Quiesce,
        scope: str,
        prior: dict[str, str],
        note: str,
    ) -> Done:
        """Quiesce; records each VM's power state before (in `prior`, and on the VM for
        `scope`, the run) so `restore_power` turns on only what was on."""
        ...

    def restore_power(
        self, vcenter: VCenter, names: list[str], found: dict[str, str], note: str
    ) -> Done: ...

    def set_nics(self, vcenter: VCenter, names: list[str], connected: bool, note: str) -> Done: ...

    def mark_migrated(
        self, vcenter: VCenter, names: list[str], values: dict[str, str], note: str
    ) -> Done: ...
