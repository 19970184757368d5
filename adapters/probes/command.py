"""The `command` probe: run a program (no shell), pass on its expected exit code."""

from __future__ import annotations

import asyncio

from adapters.probes.result import check_result
from cutover.models import CheckInput, CheckResult
from cutover.site import CommandProbe


async def command_probe(inp: CheckInput, probe: CommandProbe) -> CheckResult:
    threshold = f"exit code {probe.expectExitCode} within {probe.timeoutSeconds:g}s"
    try:
        proc = await asyncio.create_subprocess_exec(
            *probe.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        return check_result(
            inp, False, "not started", threshold, f"{probe.argv[0]}: {exc.strerror}"
        )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), probe.timeoutSeconds)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return check_result(inp, False, "timed out", threshold)
    except asyncio.CancelledError:
        # The workflow stopped waiting (an operator's rollback interrupts the round): the
        # probe's program goes with the activity instead of running on to its own end.
        proc.kill()
        await proc.wait()
        raise
    tail = out.decode(errors="replace").strip()[-300:]
    code = proc.returncode
    return check_result(inp, code == probe.expectExitCode, f"exit code {code}", threshold, tail)
