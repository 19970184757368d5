"""Check probes: the `run_check` activity evaluates one named check from the site catalog.

A probe that runs and sees a problem returns `passed=False` with what it measured; only a
probe that cannot run at all raises. Probe types: command, http, tcp; vsphere-concerns
through the vSphere adapter.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.vsphere import VSphereActivities
from cutover.catalog import RUN_CHECK
from cutover.models import CheckInput, CheckResult
from cutover.site import CommandProbe, HttpProbe, TcpProbe, VSphereConcernsProbe


class CheckActivities:
    """Dispatches each probe type; probes that need a system's client get its adapter."""

    def __init__(self, vsphere: VSphereActivities | None = None) -> None:
        self.vsphere = vsphere

    @activity.defn(name=RUN_CHECK)
    async def run_check(self, inp: CheckInput) -> CheckResult:
        probe = inp.probe
        if isinstance(probe, VSphereConcernsProbe):
            if self.vsphere is None:
                raise ApplicationError(
                    "this worker has no vSphere adapter", type="ConfigError", non_retryable=True
                )
            return await asyncio.to_thread(self.vsphere.concerns_check, inp, probe)
        if isinstance(probe, CommandProbe):
            return await _command(inp, probe)
        if isinstance(probe, HttpProbe):
            return await asyncio.to_thread(_http, inp, probe)
        if isinstance(probe, TcpProbe):
            return await _tcp(inp, probe)
        raise ApplicationError(
            f"check {inp.name}: probe type {probe.type!r} is not supported by this worker yet",
            type="ConfigError",
            non_retryable=True,
        )


def _result(
    inp: CheckInput, passed: bool, measured: str, threshold: str, detail: str = ""
) -> CheckResult:
    return CheckResult(
        name=inp.name,
        phase=inp.phase,
        passed=passed,
        measured=measured,
        threshold=threshold,
        detail=detail,
    )


async def _command(inp: CheckInput, probe: CommandProbe) -> CheckResult:
    threshold = f"exit code {probe.expectExitCode} within {probe.timeoutSeconds:g}s"
    try:
        proc = await asyncio.create_subprocess_exec(
            *probe.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        return _result(inp, False, "not started", threshold, f"{probe.argv[0]}: {exc.strerror}")
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), probe.timeoutSeconds)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return _result(inp, False, "timed out", threshold)
    tail = out.decode(errors="replace").strip()[-300:]
    code = proc.returncode
    return _result(inp, code == probe.expectExitCode, f"exit code {code}", threshold, tail)


def _http(inp: CheckInput, probe: HttpProbe) -> CheckResult:
    want = [f"status {probe.expectStatus}"]
    if probe.bodyContains is not None:
        want.append(f"body contains {probe.bodyContains!r}")
    if probe.maxLatencyMs is not None:
        want.append(f"latency <= {probe.maxLatencyMs:g} ms")
    threshold = ", ".join(want)
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(probe.url, timeout=probe.timeoutSeconds) as resp:
            status, body = resp.status, resp.read(1 << 20).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        status, body = exc.code, ""
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return _result(inp, False, "no response", threshold, f"{probe.url}: {reason}")
    ms = (time.perf_counter() - start) * 1000
    passed = status == probe.expectStatus
    if probe.bodyContains is not None:
        passed = passed and probe.bodyContains in body
    if probe.maxLatencyMs is not None:
        passed = passed and ms <= probe.maxLatencyMs
    return _result(inp, passed, f"status {status}, {ms:.1f} ms", threshold)


async def _tcp(inp: CheckInput, probe: TcpProbe) -> CheckResult:
    threshold = f"connect to {probe.host}:{probe.port} within {probe.timeoutSeconds:g}s"
    start = time.perf_counter()
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(probe.host, probe.port), probe.timeoutSeconds
        )
    except (OSError, TimeoutError) as exc:
        return _result(inp, False, "no connection", threshold, str(exc) or type(exc).__name__)
    writer.close()
    await writer.wait_closed()
    return _result(
        inp, True, f"connected in {(time.perf_counter() - start) * 1000:.1f} ms", threshold
    )
