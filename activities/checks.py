"""Check probes: the `run_check` activity evaluates one named check from the site catalog.

A probe that runs and sees a problem returns `passed=False` with what it measured; only a
probe that cannot run at all raises. Probe types: command, http (one request, or SLO
sampling: percentiles and error rate over many), tcp, prometheus (an instant PromQL query),
and the day-two probes restic-backup (`backup`), alert-routing (`alerting`),
nftables-policy (`netpolicy`), live-resize (`resize`), all in `adapters.probes`;
vsphere-concerns through the vSphere activities; dns through `adapters.dns.probe`;
data-consistency through the disk activities.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.disks import DiskActivities
from activities.vsphere import VSphereActivities
from adapters.probes.alerting import alert_routing_probe
from adapters.probes.backup import restic_probe
from adapters.probes.command import command_probe
from adapters.probes.http import http_probe, http_slo_probe, is_slo_probe
from adapters.probes.netpolicy import nftables_probe
from adapters.probes.prometheus import prometheus_probe
from adapters.probes.tcp import tcp_probe
from cutover import facts as F
from cutover.catalog import RUN_CHECK
from cutover.errors import ErrorKind
from cutover.models import CheckInput, CheckResult
from cutover.site import (
    AlertRoutingProbe,
    CommandProbe,
    DataConsistencyProbe,
    DnsProbe,
    HttpProbe,
    LiveResizeProbe,
    NftablesPolicyProbe,
    PerformanceBaselineProbe,
    PrometheusProbe,
    ResticBackupProbe,
    TcpProbe,
    VSphereConcernsProbe,
)


class CheckActivities:
    """Dispatches each probe type; probes that need a system's client get its adapter."""

    def __init__(
        self, vsphere: VSphereActivities | None = None, disks: DiskActivities | None = None
    ) -> None:
        self.vsphere, self.disks = vsphere, disks

    def _consistency(self, inp: CheckInput) -> CheckResult:
        """Every block of the frozen source against the staged copy (see activities.disks)."""
        if self.disks is None or inp.context is None:
            raise ApplicationError(
                "this worker has no disk data path (or the check got no cutover context)",
                type=ErrorKind.CONFIG_ERROR.value,
                non_retryable=True,
            )
        reports = self.disks.consistency(inp.context)
        bad = [r for r in reports if not r.consistent]
        blocks = sum(r.blocks for r in reports)
        mismatched = sum(len(r.mismatched) for r in reports)
        detail = "; ".join(
            f"{r.disk}: {len(r.mismatched)} of {r.blocks} blocks differ "
            f"(first: {', '.join(map(str, r.mismatched[:5]))})"
            for r in bad
        )
        return CheckResult(
            name=inp.name,
            phase=inp.phase,
            passed=bool(reports) and not bad,
            measured=f"{mismatched} of {blocks} blocks differ"
            if reports
            else "no staged disk to compare",
            threshold="0 blocks differ",
            detail=detail or f"{len(reports)} disk(s) identical by block digest",
            facts={F.per_disk(F.DIGEST_ROOT, r.disk): r.sourceRoot for r in reports},
        )

    @activity.defn(name=RUN_CHECK)
    async def run_check(self, inp: CheckInput) -> CheckResult:
        probe = inp.probe
        if isinstance(probe, VSphereConcernsProbe):
            if self.vsphere is None:
                raise ApplicationError(
                    "this worker has no vSphere adapter",
                    type=ErrorKind.CONFIG_ERROR.value,
                    non_retryable=True,
                )
            return await asyncio.to_thread(self.vsphere.concerns_check, inp, probe)
        if isinstance(probe, DataConsistencyProbe):
            return await asyncio.to_thread(self._consistency, inp)
        if isinstance(probe, CommandProbe):
            return await command_probe(inp, probe)
        if isinstance(probe, HttpProbe):
            if is_slo_probe(probe):
                return await asyncio.to_thread(http_slo_probe, inp, probe)
            return await asyncio.to_thread(http_probe, inp, probe)
        if isinstance(probe, TcpProbe):
            return await tcp_probe(inp, probe)
        if isinstance(probe, PrometheusProbe):
            return await asyncio.to_thread(prometheus_probe, inp, probe)
        if isinstance(probe, DnsProbe):
            return await asyncio.to_thread(_dns_probe(), inp, probe)
        if isinstance(probe, PerformanceBaselineProbe):
            return await asyncio.to_thread(performance_check, inp, probe)
        if isinstance(probe, ResticBackupProbe):
            return await asyncio.to_thread(restic_probe, inp, probe)
        if isinstance(probe, AlertRoutingProbe):
            return await asyncio.to_thread(alert_routing_probe, inp, probe)
        if isinstance(probe, NftablesPolicyProbe):
            return await asyncio.to_thread(nftables_probe, inp, probe)
        if isinstance(probe, LiveResizeProbe):
            return await asyncio.to_thread(_resize_probe(), inp, probe)
        raise ApplicationError(
            f"check {inp.name}: probe type {probe.type!r} is not supported by this worker yet",
            type=ErrorKind.CONFIG_ERROR.value,
            non_retryable=True,
        )


def _config_error(message: str) -> ApplicationError:
    return ApplicationError(message, type=ErrorKind.CONFIG_ERROR.value, non_retryable=True)


def performance_check(inp: CheckInput, probe: PerformanceBaselineProbe) -> CheckResult:
    """The target domains against their source VMs' baselines (`cutover baseline`)."""
    from adapters.libvirt.connection import open_connection
    from adapters.libvirt.domain import domain_name
    from adapters.libvirt.stats import domain_stats
    from cutover.plan import baseline

    ctx = inp.context
    if ctx is None:
        raise _config_error(f"check {inp.name}: no cutover context (facts) to find the target")
    vms = F.source_vm_models(ctx.facts)
    if not vms:
        raise _config_error(f"check {inp.name}: no source VM facts (`source_vm.<name>`)")
    names = {domain_name(ctx.application, vms, vm): vm.name for vm in vms}
    try:
        stored = baseline.load(Path(probe.baselineFile), probe.baselineSite)
    except ValueError as exc:
        raise _config_error(f"check {inp.name}: {exc}") from None
    threshold = (
        f"each <= its baseline p95 x {probe.factor:g} (floors: CPU ready "
        f"{probe.floorCpuReadyPercent:g}%, disk latency {probe.floorDiskLatencyMs:g} ms, "
        f"network drops {probe.floorNetDropPercent:g}%)"
    )
    missing = sorted(vm for vm in names.values() if vm not in stored.vms)
    if missing:
        return CheckResult(
            name=inp.name, phase=inp.phase, passed=False, measured="no baseline",
            threshold=threshold,
            detail=f"{probe.baselineFile} has no baseline for {', '.join(missing)}: run "
            f"`cutover baseline --site SITE --vm {' --vm '.join(missing)}` before the cutover",
        )  # fmt: skip
    from activities.libvirt_target import endpoint

    conn = open_connection(endpoint(ctx.resolved_site, ctx.runbook.targetPlatform))
    try:
        before, t0 = domain_stats(conn, list(names)), time.monotonic()
        end = t0 + probe.sampleSeconds
        while (left := end - time.monotonic()) > 0:
            if activity.in_activity():
                activity.heartbeat({"sampling": inp.name})
            time.sleep(min(left, 1.0))
        after, seconds = domain_stats(conn, list(names)), time.monotonic() - t0
    finally:
        conn.close()
    down = sorted(d for d in names if d not in before or d not in after)
    if down:
        return CheckResult(
            name=inp.name, phase=inp.phase, passed=False, threshold=threshold,
            measured=f"target domain(s) not running: {', '.join(down)}",
        )  # fmt: skip
    floors = {
        "cpuReadyPercent": float(probe.floorCpuReadyPercent),
        "diskLatencyMs": float(probe.floorDiskLatencyMs),
        "netDropPercent": float(probe.floorNetDropPercent),
    }
    seen = [baseline.observe(vm, d, before[d], after[d], seconds) for d, vm in names.items()]
    problems = [
        p for o in seen for p in baseline.compare(stored.vms[o.vm], o, probe.factor, floors)
    ]
    measured = "; ".join(
        f"{o.vm}: CPU ready {o.cpuReadyPercent:g}%, disk latency {o.diskLatencyMs:g} ms, "
        f"network drops {o.netDropPercent:g}% over {o.seconds:g} s"
        for o in seen
    )
    return CheckResult(
        name=inp.name, phase=inp.phase, passed=not problems, measured=measured,
        threshold=threshold, detail="; ".join(problems) or "within the baselines",
    )  # fmt: skip


def _resize_probe() -> Callable[[CheckInput, LiveResizeProbe], CheckResult]:
    """`adapters.probes.resize.live_resize_probe`, imported when a live-resize check runs
    (it needs the libvirt bindings, as the performance check does)."""
    from adapters.probes.resize import live_resize_probe

    return live_resize_probe


def _dns_probe() -> Callable[[CheckInput, DnsProbe], CheckResult]:
    """`adapters.dns.probe.dns_probe`, imported only when a dns check runs: this module
    works on a worker without it."""
    try:
        from adapters.dns.probe import dns_probe
    except ModuleNotFoundError as exc:
        if exc.name not in ("adapters.dns", "adapters.dns.probe"):
            raise
        raise ApplicationError(
            "this worker has no DNS probe (adapters/dns is missing)",
            type=ErrorKind.CONFIG_ERROR.value,
            non_retryable=True,
        ) from None
    return dns_probe
