"""What a cutover does to one source VM: snapshots, quiesce and restart (with its prior power
state recorded on the VM), NICs, migrated marks, events in vCenter's log.

Each operation is `op(vm, si, ...) -> bool` (whether it changed anything; False: already as
wanted), run through `VSphereClient.call` so an expired session is re-established.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pyVmomi import vim
from temporalio import activity

from adapters.vsphere.client import VSphereClient
from adapters.vsphere.inventory import find_vms, walk_snapshots
from adapters.vsphere.properties import read_property, wait_task
from cutover.errors import ErrorKind, error
from cutover.runbook import Quiesce

#: Custom attributes written on a migrated source VM (vSphere-side audit trail).
MIGRATED_FIELDS = ("cutover.migratedTo", "cutover.migratedAt", "cutover.workflowId")
#: Custom attribute on a source VM: its power state before a cutover quiesced it, and which
#: workflow run recorded it ("poweredOn by cutover-shop/<run ID>"). Written before quiesce
#: changes anything, so a retry on another worker (the VM already off) still knows it;
#: restart_source powers on only what was on, then clears it.
PRIOR_POWER_FIELD = "cutover.priorPowerState"


def snapshot_name(workflow_id: str) -> str:
    return f"cutover-{workflow_id}"


def pass_snapshot_name(workflow_id: str) -> str:
    """The snapshot a data pass reads while the VM runs (taken and removed by the pass)."""
    return f"{snapshot_name(workflow_id)}-pass"


def find_snapshot(si: Any, vm: Any, name: str) -> Any | None:
    for snap in walk_snapshots(read_property(si, vm, "snapshot")):
        if snap.name == name:
            return vim.vm.Snapshot(snap.moref, vm._stub)
    return None


def custom_values(si: Any, vm: Any) -> dict[str, str]:
    """The VM's custom attributes by name; an attribute set to "" counts as unset."""
    names = {f.key: f.name for f in (si.content.customFieldsManager.field or [])}
    values = read_property(si, vm, "customValue") or []
    return {names.get(v.key, str(v.key)): str(v.value) for v in values if str(v.value)}


def set_custom_value(si: Any, vm: Any, name: str, value: str) -> None:
    """Set one custom attribute on a VM, defining it (for VMs) when vCenter lacks it."""
    cfm = si.content.customFieldsManager
    keys = {f.name: f.key for f in (cfm.field or [])}
    key = keys.get(name)
    if key is None:
        try:
            key = cfm.AddFieldDefinition(name=name, moType=vim.VirtualMachine).key
        except vim.fault.DuplicateName:
            # another cutover of the wave defined it a moment ago: use that definition
            key = next(f.key for f in (cfm.field or []) if f.name == name)
    cfm.SetField(entity=vm, key=key, value=value)


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
            values = custom_values(si, vm)
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


def post_event(si: Any, vm: Any, message: str) -> None:
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


# ------------------------------------------------------------------- VM operations


def create_snapshot(vm: Any, si: Any, *, name: str, quiesce: bool) -> bool:
    if find_snapshot(si, vm, name) is not None:
        return False  # this workflow's snapshot exists: reuse it
    wait_task(
        si,
        vm.CreateSnapshot_Task(
            name=name, description="pre-cutover snapshot", memory=False, quiesce=quiesce
        ),
        f"snapshot of {vm.name}",
    )
    return True


def remove_snapshot(vm: Any, si: Any, *, name: str) -> bool:
    """Remove (consolidate) the snapshot, and first a data pass's snapshot left on top of
    it by a pass that died (no cutover snapshot is left behind on the source)."""
    removed = False
    for n in (f"{name}-pass", name):
        snap = find_snapshot(si, vm, n)
        if snap is None:
            continue
        wait_task(
            si,
            snap.RemoveSnapshot_Task(removeChildren=False),
            f"removing snapshot {n} of {vm.name}",
        )
        removed = True
    return removed


def revert_to_snapshot(vm: Any, si: Any, *, name: str) -> bool:
    snap = find_snapshot(si, vm, name)
    if snap is None:
        raise error(ErrorKind.NOT_FOUND, f"{vm.name} has no snapshot {name} to revert to")
    wait_task(si, snap.RevertToSnapshot_Task(), f"reverting {vm.name}")
    return True


def shut_down(vm: Any, si: Any, *, policy: Quiesce, scope: str, prior: dict[str, str]) -> bool:
    """Record the VM's power state (PRIOR_POWER_FIELD, for `scope`) into `prior` and on the
    VM, then shut the guest down (power off as the runbook's policy allows)."""
    # The prior state goes on the VM before anything changes; a retry of this run
    # (the VM already off) keeps the first record instead of writing "poweredOff".
    state = str(read_property(si, vm, "runtime.powerState"))
    mark = custom_values(si, vm).get(PRIOR_POWER_FIELD, "")
    recorded, _, by = mark.partition(" by ")
    if not recorded or by != scope:
        recorded = state
        set_custom_value(si, vm, PRIOR_POWER_FIELD, f"{state} by {scope}")
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
        raise error(
            ErrorKind.INVALID_STATE,
            f"{vm.name} did not shut down within "
            f"{policy.guestShutdownTimeoutSeconds:g}s and the runbook's "
            "quiesce.powerOffFallback is false",
        )
    if str(vm.runtime.powerState) != "poweredOff":
        wait_task(si, vm.PowerOffVM_Task(), f"powering off {vm.name}")
    return True


def restore_power(vm: Any, si: Any, *, found: dict[str, str]) -> bool:
    """Back to the power state `shut_down` recorded (noted in `found`), then clear the record.
    A VM without a record was never changed by shut_down (it records first): left as is."""
    mark = custom_values(si, vm).get(PRIOR_POWER_FIELD)
    found[vm.name] = mark.partition(" by ")[0] if mark else "unrecorded"
    if mark is None:
        return False
    changed = False
    if found[vm.name] == "poweredOn" and (
        str(read_property(si, vm, "runtime.powerState")) != "poweredOn"
    ):
        wait_task(si, vm.PowerOnVM_Task(), f"powering on {vm.name}")
        changed = True
    # cleared only once restored: a retry after a crash here still knows
    set_custom_value(si, vm, PRIOR_POWER_FIELD, "")
    return changed


def set_nics(vm: Any, si: Any, *, connected: bool) -> bool:
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


def mark_migrated(vm: Any, si: Any, *, values: dict[str, str]) -> bool:
    """Set MIGRATED_FIELDS: `values` (migratedTo, workflowId) and the time now."""
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
