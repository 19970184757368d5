"""Exit readiness (`cutover exit-report`): what still depends on vCenter, with a verdict.

A pure function of the inventory (live or an RVTools export) and a CSV of declared
VMware-bound systems. A VM counts as migrated when it carries the mark a cutover's finalize
writes (the custom attribute ``cutover.migratedTo``, see adapters/vsphere/vm.py).

Blocking the exit: VMs not migrated, migrated sources still powered on, templates (someone
must move or drop them), datastores holding anything but powered-off migrated sources, and
declared systems not marked retired. Datastores holding only migrated sources are listed as
reclaimable, not blocking: deleting those sources frees them.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cutover.inventory import VM, Inventory

MIGRATED_MARK = "cutover.migratedTo"
GiB = 1 << 30


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeclaredSystem(_M):
    """A row of the declared CSV: `name,kind[,status[,note]]` (status: active or retired)."""

    name: str
    kind: str
    status: Literal["active", "retired"] = "active"
    note: str = ""


class VmLine(_M):
    vm: str
    powerState: str | None
    cluster: str | None
    migratedTo: str | None = None


class DatastoreLine(_M):
    datastore: str
    vms: int
    migratedVms: int
    usedGiB: float
    blocking: bool


class ExitReport(_M):
    source: str
    verdict: Literal["READY", "NOT_READY"]
    blockers: list[str]
    notMigrated: list[VmLine] = Field(default_factory=list)
    migratedRunning: list[VmLine] = Field(default_factory=list)
    migrated: int = 0
    templates: list[VmLine] = Field(default_factory=list)
    datastores: list[DatastoreLine] = Field(default_factory=list)
    declared: list[DeclaredSystem] = Field(default_factory=list)


def read_declared(path: str) -> list[DeclaredSystem]:
    """The declared VMware-bound systems (backup, monitoring, service accounts, ...)."""
    out: list[DeclaredSystem] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for n, row in enumerate(csv.reader(f), 1):
                cells = [c.strip() for c in row]
                if not any(cells) or cells[0].startswith("#"):
                    continue
                if n == 1 and [c.lower() for c in cells[:2]] == ["name", "kind"]:
                    continue
                if len(cells) < 2 or not cells[0] or not cells[1]:
                    raise ValueError(f"{path}: line {n}: expected name,kind[,status[,note]]")
                status = (cells[2].lower() if len(cells) > 2 else "") or "active"
                if status not in ("active", "retired"):
                    raise ValueError(
                        f"{path}: line {n}: status {cells[2]!r} is not active or retired"
                    )
                out.append(
                    DeclaredSystem(
                        name=cells[0],
                        kind=cells[1],
                        status="retired" if status == "retired" else "active",
                        note=cells[3] if len(cells) > 3 else "",
                    )
                )
    except OSError as exc:
        raise ValueError(f"{path}: cannot read file: {exc.strerror}") from None
    return out


def _line(vm: VM) -> VmLine:
    return VmLine(
        vm=vm.name,
        powerState=vm.powerState,
        cluster=vm.cluster,
        migratedTo=vm.customAttributes.get(MIGRATED_MARK) or None,
    )


def exit_report(inventory: Inventory, declared: list[DeclaredSystem]) -> ExitReport:
    vms = sorted(inventory.vms, key=lambda v: (v.name, v.moref))
    templates = [_line(v) for v in vms if v.template]
    live = [v for v in vms if not v.template]
    migrated = [v for v in live if v.customAttributes.get(MIGRATED_MARK)]
    not_migrated = [_line(v) for v in live if not v.customAttributes.get(MIGRATED_MARK)]
    running = [_line(v) for v in migrated if v.powerState == "poweredOn"]
    on_ds: dict[str, list[VM]] = defaultdict(list)
    used: dict[str, int] = defaultdict(int)
    for v in vms:
        for ds in sorted({d.datastore for d in v.disks if d.datastore}):
            on_ds[ds].append(v)
        for d in v.disks:
            if d.datastore:
                used[d.datastore] += d.capacityBytes
    datastores = []
    for ds, holders in sorted(on_ds.items()):
        done = [
            v
            for v in holders
            if not v.template
            and v.customAttributes.get(MIGRATED_MARK)
            and v.powerState != "poweredOn"
        ]
        datastores.append(
            DatastoreLine(
                datastore=ds,
                vms=len(holders),
                migratedVms=len(done),
                usedGiB=round(used[ds] / GiB, 1),
                blocking=len(done) < len(holders),
            )
        )
    active = [d for d in declared if d.status == "active"]
    blockers = []
    if not_migrated:
        blockers.append(f"{len(not_migrated)} VM(s) not migrated")
    if running:
        blockers.append(f"{len(running)} migrated source VM(s) still powered on")
    if templates:
        blockers.append(f"{len(templates)} template(s) still on vSphere")
    busy = [d for d in datastores if d.blocking]
    if busy:
        blockers.append(f"{len(busy)} datastore(s) hold VMs that are not retired sources")
    if active:
        blockers.append(
            f"{len(active)} declared VMware-bound system(s) active: "
            + ", ".join(f"{d.name} ({d.kind})" for d in active)
        )
    return ExitReport(
        source=inventory.source,
        verdict="NOT_READY" if blockers else "READY",
        blockers=blockers,
        notMigrated=not_migrated,
        migratedRunning=running,
        migrated=len(migrated),
        templates=templates,
        datastores=datastores,
        declared=declared,
    )


def exit_text(r: ExitReport) -> str:
    lines = [f"{r.source}: {r.verdict}" + (": " + "; ".join(r.blockers) if r.blockers else "")]
    lines.append(f"migrated: {r.migrated}; not migrated: {len(r.notMigrated)}")
    for title, items in (
        ("not migrated", r.notMigrated),
        ("migrated sources still powered on", r.migratedRunning),
        ("templates", r.templates),
    ):
        if items:
            lines.append(f"{title}:")
            lines += [f"  {v.vm} ({v.powerState or '-'}, {v.cluster or '-'})" for v in items]
    if r.datastores:
        lines.append("datastores:")
        lines += [
            f"  {d.datastore}: {d.vms} VM(s), {d.usedGiB:g} GiB, "
            + ("in use" if d.blocking else "only retired sources: reclaimable")
            for d in r.datastores
        ]
    if r.declared:
        lines.append("declared VMware-bound systems:")
        lines += [
            f"  {d.name} ({d.kind}): {d.status}" + (f" - {d.note}" if d.note else "")
            for d in r.declared
        ]
    return "\n".join(lines)
