"""The `live-resize` probe: change a running domain's memory (balloon) and/or vCPUs through
libvirt, check the guest took the change and still answers, then put the original values
back and check they are back.

What "took" means: memory, the balloon's `actual` size (memoryStats) reaching the new
size, which only a guest with a balloon driver does; vCPUs, libvirt's live vCPU count
(a hot-unplug completes only when the guest ejects the vCPU). The original values are
restored whatever happened, also when the guest stopped answering; restoring is itself
verified the same way.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import libvirt

from adapters.libvirt.connection import lookup, open_connection
from adapters.probes.result import check_result
from cutover.models import CheckInput, CheckResult
from cutover.site import LiveResizeProbe

POLL = 0.25
LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


@dataclass
class _Resource:
    """One live value the probe changes: how to read it, set it, and say it."""

    what: str
    unit: str
    read: Callable[[], int]
    write: Callable[[int], None]
    original: int
    changed: int
    seen: list[int] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.what} " + " -> ".join(str(v) for v in self.seen) + f" {self.unit}".rstrip()


def _wait_for(res: _Resource, want: int, settle: float) -> int:
    """Until `res` reads `want` or `settle` seconds passed; the last value read."""
    deadline = time.monotonic() + settle
    while True:
        got = res.read()
        if got == want or time.monotonic() >= deadline:
            return got
        time.sleep(POLL)


def _state(dom: Any) -> str:
    try:
        state = dom.state()[0]
    except libvirt.libvirtError as exc:
        return f"unknown ({exc.get_error_message()})"
    return _STATES.get(state, f"state {state}")


def _qemu_status(dom: Any) -> str:
    """QEMU's own answer (QMP query-status), e.g. `running`, `paused`."""
    import libvirt_qemu

    try:
        out = libvirt_qemu.qemuMonitorCommand(dom, '{"execute": "query-status"}', 0)
        return str(json.loads(out)["return"]["status"])
    except (libvirt.libvirtError, ValueError, KeyError) as exc:
        return f"no answer ({exc})"


def _guest_answer(probe: LiveResizeProbe) -> tuple[bool, str]:
    """The guest's own answer: the HTTP or TCP sub-check, if the probe has one."""
    timeout = min(probe.timeoutSeconds, 10)
    start = time.perf_counter()
    if probe.url is not None:
        try:
            with urllib.request.urlopen(probe.url, timeout=timeout) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError) as exc:
            return False, f"{probe.url}: no answer ({getattr(exc, 'reason', exc)})"
        ms = (time.perf_counter() - start) * 1000
        return status == probe.expectStatus, f"{probe.url}: status {status} in {ms:.0f} ms"
    if probe.host is not None and probe.port is not None:
        try:
            socket.create_connection((probe.host, probe.port), timeout=timeout).close()
        except OSError as exc:
            return False, f"{probe.host}:{probe.port}: no connection ({exc})"
        ms = (time.perf_counter() - start) * 1000
        return True, f"{probe.host}:{probe.port}: connected in {ms:.0f} ms"
    return True, ""


def _alive(dom: Any, probe: LiveResizeProbe) -> tuple[bool, str]:
    """The domain running, QEMU saying so, and the guest answering (when asked)."""
    state, qemu = _state(dom), _qemu_status(dom)
    if state != "running" or qemu != "running":
        return False, f"domain {state}, QEMU {qemu}"
    ok, said = _guest_answer(probe)
    return ok, ", ".join(x for x in ("domain running", said) if x)


def _resources(dom: Any, probe: LiveResizeProbe) -> tuple[list[_Resource], list[str]]:
    """What the probe will change, or why it cannot (out of the domain's bounds)."""
    out: list[_Resource] = []
    bad: list[str] = []
    if probe.memoryDeltaMiB:
        max_kib = int(dom.maxMemory())

        def balloon() -> int:
            stats = dom.memoryStats()
            return int(stats.get("actual", dom.info()[2])) // 1024

        now = balloon()
        new = now + probe.memoryDeltaMiB
        if not 0 < new <= max_kib // 1024:
            bad.append(
                f"memory {now} MiB {probe.memoryDeltaMiB:+d} MiB = {new} MiB is outside "
                f"1..{max_kib // 1024} MiB (the domain's maximum memory)"
            )
        else:

            def set_mib(mib: int) -> None:
                dom.setMemoryFlags(mib * 1024, LIVE)

            out.append(_Resource("memory", "MiB", balloon, set_mib, now, new))
    if probe.vcpusDelta:
        most = int(dom.vcpusFlags(LIVE | libvirt.VIR_DOMAIN_VCPU_MAXIMUM))

        def vcpus() -> int:
            return int(dom.vcpusFlags(LIVE))

        now = vcpus()
        new = now + probe.vcpusDelta
        if not 0 < new <= most:
            bad.append(
                f"vCPUs {now} {probe.vcpusDelta:+d} = {new} is outside 1..{most} (the "
                "domain's maximum vCPUs)"
            )
        else:
            out.append(_Resource("vCPUs", "", vcpus,
                                 lambda n: dom.setVcpusFlags(n, LIVE), now, new))  # fmt: skip
    return out, bad


def _set(res: _Resource, value: int, settle: float, why: str) -> str | None:
    """Set `res` to `value` and wait until it reads so; None, or what went wrong."""
    late = ""
    try:
        res.write(value)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_TIMEOUT or not _readable(res):
            res.seen.append(res.read() if _readable(res) else value)
            return f"{why}: {res.what} {value}: {exc.get_error_message()}"
        # libvirt stopped waiting for the guest (a vCPU unplug: 5 s); the guest may still
        late = f" ({exc.get_error_message()})"
    got = _wait_for(res, value, settle)
    res.seen.append(got)
    if got != value:
        unit = f" {res.unit}" if res.unit else ""
        return f"{why}: {res.what} at {got}{unit} after {settle:g}s, asked {value}{unit}{late}"
    return None


def _readable(res: _Resource) -> bool:
    try:
        res.read()
        return True
    except libvirt.libvirtError:
        return False


def _threshold(probe: LiveResizeProbe) -> str:
    changes = []
    if probe.memoryDeltaMiB:
        changes.append(f"memory {probe.memoryDeltaMiB:+d} MiB")
    if probe.vcpusDelta:
        changes.append(f"vCPUs {probe.vcpusDelta:+d}")
    answer = probe.url or (f"{probe.host}:{probe.port}" if probe.host else None)
    return (
        f"domain {probe.domain}: {' and '.join(changes)} taken live within "
        f"{probe.settleSeconds:g}s, running" + (f" and {answer} answering" if answer else "")
        + f" after {probe.holdSeconds:g}s, then restored"
    )  # fmt: skip


def live_resize_probe(inp: CheckInput, probe: LiveResizeProbe) -> CheckResult:
    threshold = _threshold(probe)
    try:
        conn = open_connection(probe.uri)
    except libvirt.libvirtError as exc:
        return check_result(inp, False, "no libvirt", threshold,
                            f"{probe.uri}: {exc.get_error_message()}")  # fmt: skip
    try:
        return _probe(inp, probe, conn, threshold)
    finally:
        conn.close()


def _probe(inp: CheckInput, probe: LiveResizeProbe, conn: Any, threshold: str) -> CheckResult:
    dom = lookup(conn.lookupByName, probe.domain)
    if dom is None:
        detail = f"no domain {probe.domain} at {probe.uri}"
        return check_result(inp, False, "no domain", threshold, detail)
    ok, said = _alive(dom, probe)
    if not ok:
        return check_result(inp, False, "not answering before the resize", threshold,
                            f"before any change: {said}")  # fmt: skip
    resources, bad = _resources(dom, probe)
    if bad:
        return check_result(inp, False, "not resized", threshold, "; ".join(bad))
    for r in resources:
        r.seen.append(r.original)
    problems: list[str] = []
    answer = ""
    try:
        for r in resources:
            try:
                failed = _set(
                    r, r.changed, probe.settleSeconds, "the guest did not take the change"
                )
            except libvirt.libvirtError as exc:
                failed = f"the guest did not take the change: {r.what}: {exc.get_error_message()}"
            if failed:
                problems.append(failed)
        if not problems:
            time.sleep(probe.holdSeconds)
            ok, answer = _alive(dom, probe)
            if not ok:
                problems.append(f"the guest did not survive the resize: {answer}")
    finally:
        # back to the original values, whatever happened above (last changed, first back)
        for r in reversed(resources):
            try:
                failed = _set(r, r.original, probe.settleSeconds, "not restored")
            except libvirt.libvirtError as exc:
                failed = f"not restored: {r.what}: {exc.get_error_message()}"
            if failed:
                problems.append(failed)
    measured = "; ".join(r.describe() for r in resources)
    if answer and not problems:
        measured += f"; after the resize: {answer}"
    return check_result(inp, not problems, measured, threshold, "; ".join(problems))
