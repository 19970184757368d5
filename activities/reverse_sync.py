"""Reverse sync: on a rollback after the traffic switch, what the target wrote during its
window goes back into the source's disks before the source starts (`rollback.reverseSync`).

The target booted a qcow2 overlay on the frozen base (`activities.libvirt_target`), so the
overlay's own clusters are exactly the target's writes: only those ranges are read (from
the overlay file, at the offsets `qemu-img map` gives) and written into the source's disk
through a `cutover.ports.DiskSink` (`adapters.vsphere.disk_sink`). The workflow runs it only
with the target fenced (paused: QEMU flushed, nothing writes) and the source powered off
(the sink refuses otherwise): one writer per disk. Idempotent: the same ranges again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio import activity

from activities.common import attempt as _attempt
from activities.common import error as _error
from adapters.qemu.img import guest_extents, read_guest
from adapters.vsphere.client import ClientPool
from adapters.vsphere.disk_sink import vsphere_sinks
from cutover import facts as F
from cutover.catalog import Compensation
from cutover.errors import ErrorKind
from cutover.facts import disk_keys
from cutover.models import StepInput, StepResult
from cutover.ports import SinkFactory

MiB = 1 << 20


@dataclass
class ReverseSync:
    """The reverse sync activity; `sinks` opens the source's disks for writing (injected)."""

    sinks: SinkFactory

    @classmethod
    def for_vsphere(cls, pool: ClientPool) -> ReverseSync:
        return cls(vsphere_sinks(pool))

    def activities(self) -> list[Callable[..., Any]]:
        return [self.reverse_sync]

    @activity.defn(name=Compensation.REVERSE_SYNC)
    def reverse_sync(self, inp: StepInput) -> StepResult:
        ctx = inp.context
        keys = disk_keys(ctx.facts, F.TARGET_BASE)
        if not keys:
            return StepResult(
                step=inp.step,
                changed=False,
                details={"note": "the target booted no overlay: nothing to write back"},
                attempt=_attempt(),
            )
        plan = {}
        for key in keys:  # every overlay read before any source disk is opened
            overlay = Path(ctx.facts[F.per_disk(F.TARGET_VOLUME, key)])
            if not overlay.is_file():
                raise _error(
                    ErrorKind.NOT_FOUND,
                    f"disk {key}: the target's overlay {overlay} is gone, with what it wrote",
                )
            plan[key] = [e for e in guest_extents(overlay, "qcow2") if e.depth == 0]
        details: dict[str, str | int | float | bool] = {}
        total = 0
        sinks = self.sinks(ctx)
        try:
            by_name = {s.name: s for s in sinks}
            for key, extents in plan.items():
                sink = by_name.get(key)
                if sink is None:
                    raise _error(
                        ErrorKind.CONFIG_ERROR,
                        f"disk {key} of the target has no source disk to write back into "
                        f"(source disks: {', '.join(sorted(by_name)) or 'none'})",
                    )
                written = 0
                for offset, data in read_guest(extents, 4 * MiB):
                    sink.write(offset, data)
                    written += len(data)
                    if activity.in_activity():
                        activity.heartbeat({"disk": key, "bytes": written})
                sink.flush()
                details[f"targetWrittenBytes.{key}"] = written
                details[f"ranges.{key}"] = len(extents)
                total += written
        finally:
            for s in sinks:
                s.close()
        details["targetWrittenBytes"] = total
        details["bytesRead"] = total
        details["bytesWritten"] = total
        details["note"] = f"the target's writes ({total / MiB:.1f} MiB) are on the source"
        return StepResult(step=inp.step, changed=total > 0, details=details, attempt=_attempt())
