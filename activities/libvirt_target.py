"""The KVM target's activities: storage pools and volumes, guest image checks, domains.

Thin: the libvirt work is in `adapters.libvirt` (the only libvirt user). `LibvirtTarget`
holds an injectable connection factory and reuses one connection per URI: the URI the site
binds the runbook's `targetPlatform` to (`SiteConfig.target_binding`), else the site's
`libvirt.uri` (a run started before its platform was bound keeps working). Every activity
is idempotent and raises typed errors: `LibvirtUnavailable` (retryable) or non-retryable
`ConfigError`, `PathRejected`, `NotFound`, `GuestNotBootable`, `ForeignDomain`,
`LibvirtFault`.

Facts read: `converted_path.<diskKey>` / `converted_format.<diskKey>` (convert_image),
`target_volume.<diskKey>` / `target_format.<diskKey>` (attach_target_storage_profile),
`target_disk_bus` / `target_nic_model` (validate_guest_tools_and_drivers), the source VMs
(`source_vm.<name>` by default, see `activities.convert.vms_from_facts`).
Facts written: `target_volume.*`, `target_format.*`, `target_disk_bus`, `target_nic_model`,
`target_domain`, `target_address` (from the runbook's `endpoint.targetAddress`, else the
domain's DHCP lease when libvirt knows one).

The images are inspected on the worker's file system: the worker runs on the KVM host (or
shares its pool directories).
"""

from __future__ import annotations

import contextlib
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import libvirt
from temporalio import activity

from activities.common import attempt as _attempt
from activities.common import error as _error
from activities.convert import VmSource, vms_from_facts
from adapters.libvirt.connection import (
    ConnectionFactory,
    lookup,
    network_exists,
    open_connection,
    translate,
)
from adapters.libvirt.domain import (
    WINDOWS_NOTE,
    DiskPlan,
    boot_problems,
    boot_sectors,
    cutover_mark,
    destroy_and_undefine,
    domain_name,
    domain_type,
    domain_xml,
    guest_family,
    lease_address,
    plan_nics,
    wanted_domain_type,
)
from adapters.libvirt.storage import ensure_dir_pool, overlay_volume, volume_from_image
from adapters.qemu.img import image_info, overlay_extents
from adapters.staging import layout as staging
from adapters.staging.layout import confined, staging_dir
from cutover import facts as F
from cutover.catalog import Compensation, FinalizeStep, Step
from cutover.disknames import (
    disk_id,
    mapping_for,
    output_name,
    overlay_name,
    safe_name,
    volume_name,
)
from cutover.errors import ErrorKind
from cutover.facts import disk_keys
from cutover.inventory import VM
from cutover.models import StepInput, StepResult
from cutover.site import SiteConfig


def endpoint(site: SiteConfig, platform: str | None) -> str:
    """The libvirt URI a runbook for `platform` runs against: its binding's, else the
    site's `libvirt.uri`. Never refuses a bound platform's run here: validation does."""
    binding = site.target_binding(platform) if platform is not None else None
    if binding is not None and binding.uri is not None:
        return binding.uri
    if site.libvirt is None:
        raise _error(
            ErrorKind.CONFIG_ERROR,
            f"the site binds no libvirt URI for target platform {platform!r} and has no "
            "`libvirt` section",
        )
    return site.libvirt.uri


@dataclass
class LibvirtTarget:
    """Target-side activities; they hold the worker's libvirt connections (injected)."""

    connect: ConnectionFactory = open_connection
    vm_source: VmSource = vms_from_facts
    #: Where dir pools that do not exist yet are created (default: `<stagingDir>/pools`,
    #: see `adapters.staging.layout`).
    pool_root: Path | None = None
    _conns: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pool_lock: threading.Lock = field(default_factory=threading.Lock)
    #: a wave's cutovers attach at the same instant: one overlay build at a time in this
    #: worker (libvirt refuses a pool refresh while a volume is being built; other
    #: workers' builds are waited out by `adapters.libvirt.storage.refresh`)
    _volume_lock: threading.Lock = field(default_factory=threading.Lock)

    def _conn(self, site: SiteConfig, platform: str | None = None) -> Any:
        uri = endpoint(site, platform)
        with self._lock:
            conn = self._conns.get(uri)
            if conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    if conn.isAlive():
                        return conn
            try:
                conn = self.connect(uri)
            except Exception as exc:
                raise _error(
                    ErrorKind.LIBVIRT_UNAVAILABLE, f"connecting to {uri}: {exc}", True
                ) from None
            self._conns[uri] = conn
            return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._conns.values():
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()
            self._conns.clear()

    def _pool(self, conn: Any, site: SiteConfig, name: str) -> Any:
        return ensure_dir_pool(
            conn, name, lambda: self.pool_root or staging.pools_root(site), self._pool_lock
        )

    def _vms(self, inp: StepInput) -> list[VM]:
        vms = self.vm_source(inp)
        if not vms:
            raise _error(
                ErrorKind.CONFIG_ERROR, "no source VM model (facts `source_vm.<name>` are absent)"
            )
        return vms

    @activity.defn(name=Step.ATTACH_TARGET_STORAGE_PROFILE)
    def attach_target_storage_profile(self, inp: StepInput) -> StepResult:
        ctx = inp.context
        root = staging_dir(ctx.resolved_site)
        keys = disk_keys(ctx.facts, F.CONVERTED_PATH)
        if not keys:
            raise _error(
                ErrorKind.NOT_FOUND, "no converted images: facts `converted_path.*` are absent"
            )
        vms = self.vm_source(inp)
        plan = []
        for key in keys:  # every path and name checked before anything is touched
            src = confined(
                root, ctx.facts[F.per_disk(F.CONVERTED_PATH, key)], f"converted image {key}"
            )
            fmt = (
                ctx.facts.get(F.per_disk(F.CONVERTED_FORMAT, key))
                or mapping_for(ctx.resolved_site, vms, key).format
            )
            if fmt not in ("qcow2", "raw"):
                raise _error(ErrorKind.CONFIG_ERROR, f"disk {key}: unknown image format {fmt!r}")
            pool_name = safe_name(
                mapping_for(ctx.resolved_site, vms, key).targetPool, "target pool"
            )
            plan.append((key, src, fmt, pool_name, volume_name(ctx.application, key, fmt)))
        conn = self._conn(ctx.resolved_site, ctx.runbook.targetPlatform)
        facts: dict[str, str] = {}
        details: dict[str, str | int | float | bool] = {}
        try:
            for key, src, fmt, pool_name, vol_name in plan:
                if not src.is_file():
                    raise _error(ErrorKind.NOT_FOUND, f"converted image {key} is missing: {src}")
                pool = self._pool(conn, ctx.resolved_site, pool_name)
                # The target boots an overlay: the base stays the frozen point in time the
                # window's consistency check compares with the source, and the overlay
                # holds exactly what the target wrote (kept on rollback).
                vol, method, sent, sparse = volume_from_image(conn, pool, src, vol_name)
                size = int(image_info(Path(vol.path()), fmt).get("virtual-size", 0))
                with self._volume_lock:
                    top = overlay_volume(pool, vol, fmt, size, overlay_name(ctx.application, key))
                details[f"method.{key}"] = method
                facts[F.per_disk(F.TARGET_BASE, key)] = vol.path()
                facts[F.per_disk(F.TARGET_BASE_FORMAT, key)] = fmt
                facts[F.per_disk(F.TARGET_VOLUME, key)] = top.path()
                facts[F.per_disk(F.TARGET_FORMAT, key)] = "qcow2"
                details[f"bytes.{key}"] = sent
                details[f"sparse.{key}"] = sparse
                details[f"pool.{key}"] = pool_name
        except libvirt.libvirtError as exc:
            raise translate(exc, "attaching target storage") from None
        return StepResult(step=inp.step, facts=facts, details=details, attempt=_attempt())

    @activity.defn(name=Compensation.DETACH_TARGET_STORAGE)
    def detach_target_storage(self, inp: StepInput) -> StepResult:
        """Delete this application's volumes; a no-op when none exist. Pools stay."""
        ctx = inp.context
        keys = sorted(
            {*disk_keys(ctx.facts, F.CONVERTED_PATH), *disk_keys(ctx.facts, F.TARGET_VOLUME),
             *disk_keys(ctx.facts, F.STAGING_PATH)}
        )  # fmt: skip
        # the overlay first (sorted: ".overlay." < ".target."): it references its base
        names = {volume_name(ctx.application, k, f) for k in keys for f in ("qcow2", "raw")}
        names |= {overlay_name(ctx.application, k) for k in keys}
        # A volume attached under the legacy name (before an upgrade) is removed only when
        # it is the very file this cutover attached: that name may be another application's.
        recorded = {
            ctx.facts[F.per_disk(F.TARGET_VOLUME, k)]
            for k in keys
            if F.per_disk(F.TARGET_VOLUME, k) in ctx.facts
        }
        legacy = {output_name(ctx.application, k, f) for k in keys for f in ("qcow2", "raw")}
        pools = {m.targetPool for m in ctx.resolved_site.storageMappings} or {"default"}
        removed: list[str] = []
        conn = self._conn(ctx.resolved_site, ctx.runbook.targetPlatform)
        try:
            for pool_name in sorted(pools):
                pool = lookup(conn.storagePoolLookupByName, pool_name)
                if pool is None or not pool.isActive():
                    continue
                for name in sorted(names | legacy):
                    vol = lookup(pool.storageVolLookupByName, name)
                    if vol is None or (name in legacy and vol.path() not in recorded):
                        continue
                    vol.delete(0)
                    removed.append(f"{pool_name}/{name}")
        except libvirt.libvirtError as exc:
            raise translate(exc, "detaching target storage") from None
        return StepResult(
            step=inp.step,
            changed=bool(removed),
            details={"removed": ",".join(removed)},
            attempt=_attempt(),
        )

    # --------------------------------------------------------------------- validate

    def _disk_images(self, inp: StepInput, vm: VM) -> list[DiskPlan]:
        """The VM's disks as the target will see them (volumes, else converted images)."""
        facts = inp.context.facts
        out = []
        for disk in sorted(vm.disks, key=lambda d: d.key):
            key = disk_id(vm.name, disk.key)
            if F.per_disk(F.TARGET_VOLUME, key) in facts:
                path, fmt = (
                    facts[F.per_disk(F.TARGET_VOLUME, key)],
                    facts.get(F.per_disk(F.TARGET_FORMAT, key), "raw"),
                )
            elif F.per_disk(F.CONVERTED_PATH, key) in facts:
                path = facts[F.per_disk(F.CONVERTED_PATH, key)]
                fmt = facts.get(F.per_disk(F.CONVERTED_FORMAT, key), "qcow2")
            else:
                continue
            if not Path(path).is_absolute():
                raise _error(
                    ErrorKind.PATH_REJECTED, f"disk {key}: image path {path!r} is not absolute"
                )
            if fmt not in ("qcow2", "raw"):
                raise _error(ErrorKind.CONFIG_ERROR, f"disk {key}: unknown image format {fmt!r}")
            out.append(DiskPlan(key=key, path=path, format=fmt))
        return out

    @activity.defn(name=Step.VALIDATE_GUEST_TOOLS_AND_DRIVERS)
    def validate_guest_tools_and_drivers(self, inp: StepInput) -> StepResult:
        facts: dict[str, str] = {}
        details: dict[str, str | int | float | bool] = {}
        problems: list[str] = []
        for vm in self._vms(inp):
            disks = self._disk_images(inp, vm)
            if not disks:
                problems.append(f"{vm.name}: no converted disk to boot from")
                continue
            capacity = {disk_id(vm.name, d.key): d.capacityBytes for d in vm.disks}
            for d in disks:
                info = image_info(Path(d.path), d.format)
                size = int(info.get("virtual-size", 0))
                details[f"format.{d.key}"] = str(info.get("format"))
                details[f"bytes.{d.key}"] = size
                if info.get("format") != d.format:
                    problems.append(f"{vm.name} disk {d.key}: image is {info.get('format')}")
                if size == 0 or size < capacity.get(d.key, 0):
                    problems.append(
                        f"{vm.name} disk {d.key}: image is {size} bytes, source disk "
                        f"{capacity.get(d.key, 0)}"
                    )
            head = boot_sectors(Path(disks[0].path), disks[0].format)
            problems += [f"{vm.name}: {p}" for p in boot_problems(head, vm.firmware)]
            family = guest_family(vm)
            details[f"guest.{vm.name}"] = family
            if family == "windows":
                facts[F.TARGET_DISK_BUS], facts[F.TARGET_NIC_MODEL] = "sata", "e1000"
                details[f"note.{vm.name}"] = WINDOWS_NOTE
            else:
                facts.setdefault(F.TARGET_DISK_BUS, "virtio")
                facts.setdefault(F.TARGET_NIC_MODEL, "virtio")
                if family == "unknown":
                    details[f"note.{vm.name}"] = "unknown guest OS: assumes virtio drivers"
        if problems:
            raise _error(
                ErrorKind.GUEST_NOT_BOOTABLE, "the target cannot boot: " + "; ".join(problems)
            )
        return StepResult(
            step=inp.step, changed=False, facts=facts, details=details, attempt=_attempt()
        )

    # --------------------------------------------------------------------- domains

    @activity.defn(name=Step.POWER_ON_TARGET)
    def power_on_target(self, inp: StepInput) -> StepResult:
        ctx = inp.context
        vms = self._vms(inp)
        conn = self._conn(ctx.resolved_site, ctx.runbook.targetPlatform)
        changed, names = False, []
        try:
            kind = domain_type(
                conn, wanted_domain_type(ctx.resolved_site, ctx.runbook.targetPlatform)
            )
            for vm in vms:
                name = domain_name(ctx.application, vms, vm)
                names.append(name)
                dom = lookup(conn.lookupByName, name)
                if dom is not None and cutover_mark(dom) is None:
                    raise _error(
                        ErrorKind.FOREIGN_DOMAIN,
                        f"a domain named {name} exists and was not made by cutover",
                    )
                if dom is None:
                    disks = self._disk_images(inp, vm)
                    if not disks:
                        raise _error(
                            ErrorKind.NOT_FOUND, f"{vm.name}: no target volume to boot from"
                        )
                    xml = domain_xml(
                        name=name,
                        vm=vm,
                        disks=disks,
                        nics=plan_nics(
                            ctx.resolved_site,
                            vm,
                            partial(network_exists, conn),
                        ),
                        domain_type=kind,
                        application=ctx.application,
                        workflow_id=ctx.workflowId,
                        disk_bus=ctx.facts.get(F.TARGET_DISK_BUS, "virtio"),
                        nic_model=ctx.facts.get(F.TARGET_NIC_MODEL, "virtio"),
                    )
                    dom = conn.defineXML(xml)
                    changed = True
                if not dom.isActive():
                    dom.create()
                    changed = True
            facts = {F.TARGET_DOMAIN: ",".join(names)}
            address = ctx.runbook.endpoint.targetAddress or self._lease_address(conn, inp, names)
            if address:
                facts[F.TARGET_ADDRESS] = address
        except libvirt.libvirtError as exc:
            raise translate(exc, "powering on the target") from None
        return StepResult(
            step=inp.step,
            changed=changed,
            facts=facts,
            details={"domains": ",".join(names), "type": kind},
            attempt=_attempt(),
        )

    @staticmethod
    def _lease_address(conn: Any, inp: StepInput, names: list[str]) -> str | None:
        """The first domain's DHCP lease with the source's service port, when known."""
        source = inp.context.runbook.endpoint.sourceAddress
        if not source or ":" not in source:
            return None
        return lease_address(conn, names[0], source.rsplit(":", 1)[1])

    @activity.defn(name=Compensation.REMOVE_TARGET_DOMAIN)
    def remove_target_domain(self, inp: StepInput) -> StepResult:
        """Destroy and undefine the domains power_on_target made; a no-op when absent.
        Refuses (non-retryable) to touch a same-named domain cutover did not create."""
        doms = self._own_domains(inp, "removing the target domain")
        written = self._written(inp) if doms else None
        removed = []
        try:
            for dom in doms:
                name = dom.name()
                destroy_and_undefine(dom)
                removed.append(name)
        except libvirt.libvirtError as exc:
            raise translate(exc, "removing the target domain") from None
        details: dict[str, str | int | float | bool] = {"removed": ",".join(removed)}
        if written is not None:  # what goes with it (unless reverse sync kept it)
            details["targetWrittenBytes"] = written
        return StepResult(step=inp.step, changed=bool(removed), details=details, attempt=_attempt())

    @staticmethod
    def _written(inp: StepInput) -> int | None:
        """What the target wrote: its overlays' own ranges (None: it booted none)."""
        facts = inp.context.facts
        overlays = [
            Path(facts[F.per_disk(F.TARGET_VOLUME, k)]) for k in disk_keys(facts, F.TARGET_BASE)
        ]
        present = [p for p in overlays if p.is_file()]
        if not present:
            return None
        return sum(n for p in present for _, n in overlay_extents(p))

    def _own_domains(self, inp: StepInput, doing: str) -> list[Any]:
        """This application's domains that exist; refuses (non-retryable) when a same-named
        domain was not made by cutover for it, before touching any."""
        ctx = inp.context
        vms = self._vms(inp)
        conn = self._conn(ctx.resolved_site, ctx.runbook.targetPlatform)
        found = []
        try:
            for vm in vms:
                name = domain_name(ctx.application, vms, vm)
                dom = lookup(conn.lookupByName, name)
                if dom is None:
                    continue
                mark = cutover_mark(dom)
                if mark is None or mark.get("application") != ctx.application:
                    raise _error(ErrorKind.FOREIGN_DOMAIN, f"domain {name} was not made by cutover")
                found.append(dom)
        except libvirt.libvirtError as exc:
            raise translate(exc, doing) from None
        return found

    @activity.defn(name=Compensation.FENCE_TARGET)
    def fence_target(self, inp: StepInput) -> StepResult:
        """Pause the running domains: their vCPUs stop, so the guest neither writes nor
        answers while traffic moves back to the source; memory and disks stay as they were,
        so unfence_target resumes exactly where it stopped."""
        doms = self._own_domains(inp, "fencing the target")
        paused = []
        try:
            for dom in doms:
                if dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                    dom.suspend()
                    paused.append(dom.name())
        except libvirt.libvirtError as exc:
            raise translate(exc, "fencing the target") from None
        return StepResult(
            step=inp.step,
            changed=bool(paused),
            details={"paused": ",".join(paused), "domains": len(doms)},
            attempt=_attempt(),
        )

    @activity.defn(name=Compensation.UNFENCE_TARGET)
    def unfence_target(self, inp: StepInput) -> StepResult:
        """Resume the paused domains (the source did not start: the target serves again)."""
        doms = self._own_domains(inp, "unfencing the target")
        resumed = []
        try:
            for dom in doms:
                if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                    dom.resume()
                    resumed.append(dom.name())
        except libvirt.libvirtError as exc:
            raise translate(exc, "unfencing the target") from None
        return StepResult(
            step=inp.step,
            changed=bool(resumed),
            details={"resumed": ",".join(resumed), "domains": len(doms)},
            attempt=_attempt(),
        )

    @activity.defn(name=FinalizeStep.COMMIT_TARGET_OVERLAY)
    def commit_target_overlay(self, inp: StepInput) -> StepResult:
        """Merge each overlay into its base while the domain runs (libvirt active block
        commit, then pivot: the guest never stops), then delete the overlay volume once no
        domain definition, live or persistent, references it. Idempotent: a disk already
        on its base is left; an unreferenced overlay is removed."""
        facts = inp.context.facts
        overlays = {
            facts[F.per_disk(F.TARGET_VOLUME, k)]: facts[F.per_disk(F.TARGET_BASE, k)]
            for k in disk_keys(facts, F.TARGET_BASE)
        }
        if not overlays:
            return StepResult(step=inp.step, changed=False, attempt=_attempt())
        doms = self._own_domains(inp, "committing the target's overlay")
        written = self._written(inp) or 0
        committed: list[str] = []
        try:
            for dom in doms:
                for dev, path in _disk_sources(dom, 0):
                    if path not in overlays:
                        continue
                    if not dom.isActive():
                        raise _error(
                            ErrorKind.INVALID_STATE,
                            f"domain {dom.name()} does not run: its overlay {path} is kept "
                            "(start it, then resume the finalize)",
                        )
                    _active_commit(dom, dev)
                    committed.append(f"{dom.name()}/{dev}")
            used = {p for dom in doms for f in (0, libvirt.VIR_DOMAIN_XML_INACTIVE)
                    for _, p in _disk_sources(dom, f)}  # fmt: skip
            removed = []
            for path in overlays:
                if path in used or not Path(path).exists():
                    continue
                conn = self._conn(inp.context.resolved_site, inp.context.runbook.targetPlatform)
                try:
                    vol = lookup(conn.storageVolLookupByPath, path)
                except libvirt.libvirtError as exc:  # a driver without storage (embedded)
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                        raise
                    vol = None
                if vol is not None:
                    vol.delete(0)
                else:
                    Path(path).unlink()
                removed.append(path)
        except libvirt.libvirtError as exc:
            raise translate(exc, "committing the target's overlay") from None
        return StepResult(
            step=inp.step,
            changed=bool(committed or removed),
            details={
                "targetWrittenBytes": written,
                "committed": ",".join(committed),
                "removed": ",".join(removed),
            },
            attempt=_attempt(),
        )

    def activities(self) -> list[Callable[..., Any]]:
        return [
            self.attach_target_storage_profile,
            self.detach_target_storage,
            self.validate_guest_tools_and_drivers,
            self.power_on_target,
            self.remove_target_domain,
            self.fence_target,
            self.unfence_target,
            self.commit_target_overlay,
        ]


def _disk_sources(dom: Any, flags: int) -> list[tuple[str, str]]:
    """(target dev, source file) of a domain's file-backed disks."""
    root = ET.fromstring(dom.XMLDesc(flags))
    out = []
    for disk in root.findall("devices/disk"):
        src, tgt = disk.find("source"), disk.find("target")
        if src is not None and tgt is not None and src.get("file"):
            out.append((tgt.get("dev", ""), src.get("file", "")))
    return out


def _active_commit(dom: Any, dev: str, timeout: float = 600.0) -> None:
    """Commit the active layer of `dev` into its backing file and pivot onto it."""
    info = dom.blockJobInfo(dev, 0)
    if not info:
        dom.blockCommit(dev, None, None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
    deadline = time.monotonic() + timeout
    while True:
        info = dom.blockJobInfo(dev, 0)
        if info and info.get("end", 0) > 0 and info.get("cur") == info.get("end"):
            break  # ready: the base holds everything; new writes are mirrored to it
        if not info:
            raise _error(ErrorKind.LIBVIRT_FAULT, f"{dom.name()}/{dev}: the commit job vanished")
        if time.monotonic() > deadline:
            raise _error(
                ErrorKind.LIBVIRT_UNAVAILABLE, f"{dom.name()}/{dev}: commit not ready", True
            )
        if activity.in_activity():
            activity.heartbeat({"disk": dev, "cur": info.get("cur"), "end": info.get("end")})
        time.sleep(0.2)
    while True:  # "ready" is an event; cur == end can come first: retry the pivot
        try:
            dom.blockJobAbort(dev, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
            break
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_BLOCK_COPY_ACTIVE:
                raise
            if time.monotonic() > deadline:
                raise _error(
                    ErrorKind.LIBVIRT_UNAVAILABLE, f"{dom.name()}/{dev}: no pivot: {exc}", True
                ) from None
            time.sleep(0.1)
    for _ in range(100):  # the pivot completes asynchronously
        if not dom.blockJobInfo(dev, 0):
            return
        time.sleep(0.1)
