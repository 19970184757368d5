"""`VSphereSource`: the vSphere operations the source activities call, as a
`cutover.ports.SourcePlatform` (VMs by name; pyvmomi stays in this package)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from adapters.vsphere import vm as vm_ops
from adapters.vsphere.client import ClientPool
from adapters.vsphere.inventory import find_vms, read_inventory, resolve_vms
from adapters.vsphere.vm import migrated_marks, migration_evidence, post_event
from cutover.inventory import Inventory
from cutover.runbook import Quiesce, Runbook
from cutover.site import VCenter

#: act(vm, service_instance) -> whether it changed anything (False: already as wanted).
_Act = Callable[[Any, Any], bool]


@dataclass
class VSphereSource:
    """The application's source VMs in one vCenter (connections from `pool`)."""

    pool: ClientPool = field(default_factory=ClientPool)

    def resolve(self, vcenter: VCenter, runbook: Runbook) -> list[str]:
        return resolve_vms(self.pool.get(vcenter), runbook)

    def inventory(self, vcenter: VCenter) -> Inventory:
        return read_inventory(self.pool.get(vcenter))

    def migrated(self, vcenter: VCenter, names: list[str]) -> tuple[list[str], str]:
        """The marked VMs' names and one sentence of evidence (read only)."""
        marks = migrated_marks(self.pool.get(vcenter), names)
        return [m.vm for m in marks], migration_evidence(names, marks)

    def _each(
        self, vcenter: VCenter, names: list[str], what: str, act: _Act, note: str
    ) -> tuple[list[str], list[str]]:
        """act on each VM; posts an event on each it changed. (found names, changed names)"""
        client = self.pool.get(vcenter)
        vms = find_vms(client, names)
        changed: list[str] = []
        for vm in vms:
            name: str = vm.name
            if client.call(f"{what} {name}", partial(act, vm)):
                changed.append(name)
                message = f"{what} {name} ({note})"
                client.call("posting an event", partial(post_event, vm=vm, message=message))
        return [str(v.name) for v in vms], changed

    def snapshot(
        self, vcenter: VCenter, names: list[str], snapshot: str, quiesce: bool, note: str
    ) -> tuple[list[str], list[str]]:
        act = partial(vm_ops.create_snapshot, name=snapshot, quiesce=quiesce)
        return self._each(vcenter, names, "snapshot", act, note)

    def remove_snapshot(
        self, vcenter: VCenter, names: list[str], snapshot: str, note: str
    ) -> tuple[list[str], list[str]]:
        act = partial(vm_ops.remove_snapshot, name=snapshot)
        return self._each(vcenter, names, "remove snapshot of", act, note)

    def revert_snapshot(
        self, vcenter: VCenter, names: list[str], snapshot: str, note: str
    ) -> tuple[list[str], list[str]]:
        act = partial(vm_ops.revert_to_snapshot, name=snapshot)
        return self._each(vcenter, names, "revert to snapshot", act, note)

    def shut_down(
        self,
        vcenter: VCenter,
        names: list[str],
        policy: Quiesce,
        scope: str,
        prior: dict[str, str],
        note: str,
    ) -> tuple[list[str], list[str]]:
        act = partial(vm_ops.shut_down, policy=policy, scope=scope, prior=prior)
        return self._each(vcenter, names, "quiesce", act, note)

    def restore_power(
        self, vcenter: VCenter, names: list[str], found: dict[str, str], note: str
    ) -> tuple[list[str], list[str]]:
        act = partial(vm_ops.restore_power, found=found)
        return self._each(vcenter, names, "restore power state of", act, note)

    def set_nics(
        self, vcenter: VCenter, names: list[str], connected: bool, note: str
    ) -> tuple[list[str], list[str]]:
        what = "connect NICs of" if connected else "disconnect NICs of"
        act = partial(vm_ops.set_nics, connected=connected)
        return self._each(vcenter, names, what, act, note)

    def mark_migrated(
        self, vcenter: VCenter, names: list[str], values: dict[str, str], note: str
    ) -> tuple[list[str], list[str]]:
        act = partial(vm_ops.mark_migrated, values=values)
        return self._each(vcenter, names, "mark migrated", act, note)
