"""The `tcp` probe: a TCP connection within the timeout."""

from __future__ import annotations

import asyncio
import time

from adapters.probes.result import check_result
from cutover.models import CheckInput, CheckResult
from cutover.site import TcpProbe


async def tcp_probe(inp: CheckInput, probe: TcpProbe) -> CheckResult:
    threshold = f"connect to {probe.host}:{probe.port} within {probe.timeoutSeconds:g}s"
    start = time.perf_counter()
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(probe.host, probe.port), probe.timeoutSeconds
        )
    except (OSError, TimeoutError) as exc:
        return check_result(inp, False, "no connection", threshold, str(exc) or type(exc).__name__)
    writer.close()
    await writer.wait_closed()
    return check_result(
        inp, True, f"connected in {(time.perf_counter() - start) * 1000:.1f} ms", threshold
    )
