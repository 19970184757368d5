"""The `smoke_test` step: judge the target directly, before any traffic moves to it.

It samples `http://<target address><smokeTest.path>` (the address `power_on_target` reported
as the `target_address` fact, else the runbook's `endpoint.targetAddress`) with the runbook's
`smokeTest` (samples, concurrency, expected status) through `adapters.probes.http.sample_http`,
and fails the step, non-retryably, when:

- the error rate exceeds `maxErrorRate`;
- p95 exceeds `maxP95Ms` (when set);
- p95 exceeds `maxP95Ratio` x the source's baseline p95 (the `baseline_p95_ms` fact an SLO
  pre-check measured), when there is a baseline.

A failure is an ApplicationError of type `SmokeTestFailed` naming what was measured and what
was expected; its details, and a passing step's `details`, carry the numbers.
"""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import attempt as _attempt
from adapters.probes.http import HttpSampling, percent, sample_http
from cutover import facts as F
from cutover.catalog import Step
from cutover.errors import ErrorKind
from cutover.models import StepInput, StepResult

#: Each smoke request's time bound (the runbook's `smokeTest` has no timeout of its own).
REQUEST_TIMEOUT_SECONDS = 10.0
#: How often a running smoke test heartbeats (so a cancellation reaches it).
HEARTBEAT_SECONDS = 5.0


class SmokeActivities:
    """The smoke test step. Holds nothing: the target comes in the step's facts."""

    def __init__(self, request_timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self.request_timeout = request_timeout

    @activity.defn(name=Step.SMOKE_TEST)
    async def smoke_test(self, inp: StepInput) -> StepResult:
        ctx = inp.context
        smoke = ctx.runbook.smokeTest
        address = ctx.facts.get(F.TARGET_ADDRESS) or ctx.runbook.endpoint.targetAddress
        if not address:
            raise ApplicationError(
                "smoke_test needs the target's address: power_on_target reports it as the "
                "`target_address` fact, or set the runbook's `endpoint.targetAddress`",
                type=ErrorKind.CONFIG_ERROR.value,
                non_retryable=True,
            )
        path = smoke.path if smoke.path.startswith("/") else f"/{smoke.path}"
        url = f"http://{address}{path}"
        stop = threading.Event()
        task = asyncio.ensure_future(
            asyncio.to_thread(
                sample_http,
                url,
                samples=smoke.samples,
                concurrency=smoke.concurrency,
                timeout=self.request_timeout,
                expect_status=smoke.expectStatus,
                stop=stop,
            )
        )
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_SECONDS)
                if done:
                    break
                if activity.in_activity():
                    activity.heartbeat({"smoke_test": url})
            sampling = task.result()
        except BaseException:
            stop.set()  # cancelled: no new request starts; those in flight end by timeout
            raise
        baseline, baseline_note = _baseline(ctx.facts)
        failures, limits, details = judge(sampling, inp, baseline)
        details["baseline"] = baseline is not None
        if baseline_note:
            details["baseline_note"] = baseline_note
        measured = sampling.describe()
        expected = ", ".join(limits)
        if failures:
            where = "" if baseline is not None else " (no source baseline to compare with)"
            errors = f"; errors: {sampling.describe_errors()}" if sampling.errors else ""
            raise ApplicationError(
                f"smoke test of {url} failed: {'; '.join(failures)}; measured {measured}, "
                f"expected {expected}{where}{errors}",
                details,
                type=ErrorKind.SMOKE_TEST_FAILED.value,
                non_retryable=True,
            )
        return StepResult(
            step=inp.step,
            changed=False,
            details=details,
            attempt=_attempt(),
        )


def _baseline(facts: dict[str, str]) -> tuple[float | None, str]:
    """The source's p95 from the pre-checks, with a note when it is there but unusable."""
    raw = facts.get(F.baseline_ms(95))
    if raw is None:
        return None, ""
    try:
        value = float(raw)
    except ValueError:
        return None, f"baseline_p95_ms {raw!r} is not a number: ignored"
    if not math.isfinite(value) or value <= 0:
        return None, f"baseline_p95_ms {raw!r} is not a positive latency: ignored"
    return value, ""


def judge(
    s: HttpSampling, inp: StepInput, baseline_p95: float | None
) -> tuple[list[str], list[str], dict[str, Any]]:
    """(what failed, the limits applied, the numbers) for one smoke sampling."""
    smoke = inp.context.runbook.smokeTest
    failures: list[str] = []
    limits = [f"status {smoke.expectStatus}", f"error rate <= {percent(smoke.maxErrorRate)}"]
    details: dict[str, Any] = {
        "url": s.url,
        "samples": s.sent,
        "concurrency": smoke.concurrency,
        "errors": s.errors,
        "error_rate": round(s.error_rate, 6),
        "max_error_rate": smoke.maxErrorRate,
        "elapsed_s": round(s.elapsed_s, 3),
    }
    for p in (50, 95, 99):
        value = s.percentile(p)
        if value is not None:
            details[f"p{p}_ms"] = round(value, 3)
    if s.error_rate > smoke.maxErrorRate:
        failures.append(
            f"error rate {percent(s.error_rate)} ({s.errors}/{s.sent}) > "
            f"{percent(smoke.maxErrorRate)}"
        )
    p95 = s.p95
    if smoke.maxP95Ms is not None:
        limits.append(f"p95 <= {smoke.maxP95Ms:g} ms")
        details["max_p95_ms"] = smoke.maxP95Ms
        if p95 is None:
            failures.append("p95 not measured (no response)")
        elif p95 > smoke.maxP95Ms:
            failures.append(f"p95 {p95:.1f} ms > {smoke.maxP95Ms:g} ms")
    if baseline_p95 is not None:
        limit = smoke.maxP95Ratio * baseline_p95
        limits.append(
            f"p95 <= {smoke.maxP95Ratio:g} x the source's baseline p95 "
            f"{baseline_p95:.1f} ms = {limit:.1f} ms"
        )
        details["baseline_p95_ms"] = baseline_p95
        details["max_p95_ratio"] = smoke.maxP95Ratio
        if p95 is not None:
            details["p95_ratio"] = round(p95 / baseline_p95, 3)
            if p95 > limit:
                failures.append(
                    f"p95 {p95:.1f} ms is {p95 / baseline_p95:.2f} x the source's baseline "
                    f"{baseline_p95:.1f} ms (at most {smoke.maxP95Ratio:g} x)"
                )
    return failures, limits, details
