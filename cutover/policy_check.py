"""The site's workload policies against one runbook: what `cutover validate`, `wave
validate` and the workflow check (labels, tags and pools from the site, devices and
datastores from the inventory). Apart from `cutover.policy`, which the site imports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cutover.inventory import VM, Inventory
from cutover.policy import (
    Violation,
    WorkloadPolicy,
    application_attributes,
    device_modes,
    find_violations,
    governing,
)
from cutover.runbook import Runbook
from cutover.site import SiteConfig


@dataclass(frozen=True)
class RunbookCheck:
    """What `check_runbook` found: violations, and what it could not check (and why)."""

    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def site_application(site: SiteConfig, application: str) -> tuple[dict[str, str], list[str]]:
    """The application's labels and tags from the site (`applications.<name>`)."""
    known = site.applications.get(application)
    labels: dict[str, str] = dict(getattr(known, "labels", None) or {})
    tags: list[str] = list(getattr(known, "tags", None) or [])
    return labels, tags


def runbook_vms(runbook: Runbook, inventory: Inventory) -> tuple[list[VM], list[str]]:
    """The runbook's VMs found in the inventory (its `vms`, else its selector, as the vSphere
    adapter resolves it), and the names listed but absent."""
    if runbook.vms is not None:
        by_name = {vm.name: vm for vm in inventory.vms}
        return [by_name[n] for n in runbook.vms if n in by_name], [
            n for n in runbook.vms if n not in by_name
        ]
    sel = runbook.selector
    if sel.tag is not None:
        found = [
            vm
            for vm in inventory.vms
            if any(t.name == sel.tag and sel.tagCategory in (None, t.category) for t in vm.tags)
        ]
    else:
        attr = sel.customAttribute
        found = [
            vm for vm in inventory.vms if vm.customAttributes.get(attr or "") == runbook.application
        ]
    return sorted(found, key=lambda v: v.name), []


def target_zones(site: SiteConfig, vms: Sequence[VM] | None) -> dict[str, str | None]:
    """The target pools a cutover may write to, with their zones: those the site maps the
    VMs' datastores to (as `cutover.disknames.mapping_for` chooses), or every mapped pool
    when the VMs are unknown. A site without mappings writes to pool `default`."""
    maps = site.storageMappings
    if not maps:
        return {"default": None}
    chosen = list(maps)
    if vms is not None:
        stores = {d.datastore for vm in vms for d in vm.disks}
        chosen = [m for m in maps if m.sourceDatastore in stores]
        if len(maps) == 1:
            chosen = list(maps)
    return {m.targetPool: m.zone for m in chosen}


def check_runbook(
    policies: Sequence[WorkloadPolicy],
    runbook: Runbook,
    site: SiteConfig,
    *,
    inventory: Inventory | None = None,
    wave_approval: bool = False,
) -> RunbookCheck:
    """The workload policies' verdict on one runbook at one site (the one check `cutover
    validate` and `wave validate` call). Labels and tags come from the site, devices and
    datastores from the inventory (without one: devices are not checked, every mapped pool
    is). `wave_approval`: the runbook runs in a wave that requires approval (that counts as
    its approval)."""
    labels, tags = site_application(site, runbook.application)
    app = application_attributes(runbook.application, labels, runbook.wave)
    governed = governing(policies, app, tags)
    notes: list[str] = []
    vms: list[VM] | None = None
    if inventory is not None:
        vms, absent = runbook_vms(runbook, inventory)
        notes += [
            f"{runbook.application}: VM '{n}' is not in the inventory {inventory.source}: its "
            "devices and disks are not checked"
            for n in absent
        ]
    elif any(p.spec.gpuScheduling is not None for p in governed):
        notes.append(
            f"{runbook.application}: spec.gpuScheduling of "
            f"{', '.join(p.name for p in governed if p.spec.gpuScheduling is not None)} "
            "not checked: no inventory to read the VMs' devices from"
        )
    violations = find_violations(
        governed,
        application=runbook.application,
        app=app,
        tags=tags,
        target_platform=runbook.targetPlatform,
        approval_required=runbook.approval.required or wave_approval,
        target_zones=target_zones(site, vms),
        vm_devices={vm.name: device_modes(vm) for vm in vms or ()},
    )
    return RunbookCheck(violations, notes)
