"""Ports: the small interfaces the activities drive and the adapters implement.

Only what the code uses: a new load balancer implements `LoadBalancer` (HAProxy:
`adapters.haproxy.runtime.HAProxyRuntime`); a new way to read source disks implements
`DiskSource` (vSphere: `adapters.vsphere.disk_source`, local files:
`adapters.localdisk`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from cutover.models import StepContext
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
