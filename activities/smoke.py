"""The `smoke_test` step: judge the target directly, before any traffic moves to it.

It samples `http://<target address><smokeTest.path>` (the address `power_on_target` reported
as the `target_address` fact, else the runbook's `endpoint.targetAddress`) with the runbook's
`smokeTest` (samples, concurrency, expected status) through `adapters.probes.http.sample_http`,
and fails the step, non-retryably, when:

- the error rate exceeds `maxErrorRate`;
- p95 exceeds `maxP95Ms` (when set);
- p95 exceeds `maxP95Ratio` x the source's baseline p95 (the `baseline_p95_ms` fact an SLO
  pre-check measured), when there is a baseline.

Before sampling it waits, boundedly, for the target to be ready: a guest that was just
powered on refuses connections or answers 503 for its first seconds (longer on a loaded
host), and sampling it then would roll back a cutover that a few seconds would have let
through. It polls the URL, one request at a time with a short pause, until one answers the
expected status or `ready_timeout` (30 s) passes; either way it then samples, so a target
that never became ready still fails on its measured error rate, and the failure says it
never answered. `ready_after_s`, `ready_within_bound`, `ready_polls` and `ready_last_error`
(what it answered before, if not at once) in the details say how the wait went.

A failure is an ApplicationError of type `SmokeTestFailed` naming what was measured and what
was expected; its details, and a passing step's `details`, carry the numbers.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

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
#: How long the smoke test waits for a just-booted target to answer the expected status
#: once, before it samples anyway. Fits the step's start-to-close (`stepTimeoutMinutes`).
READY_TIMEOUT_SECONDS = 30.0
#: The pause between two readiness requests.
READY_PAUSE_SECONDS = 0.5

T = TypeVar("T")


@dataclass(frozen=True)
class Readiness:
    """How the wait for the target went: whether one request answered the expected status
    within the bound, after how long, in how many requests, and the last problem seen (None
    when the first request answered)."""

    ready: bool
    after_s: float
    polls: int
    bound_s: float
    last_error: str | None

    def details(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "ready_within_bound": self.ready,
            "ready_after_s": round(self.after_s, 3),
            "ready_polls": self.polls,
            "ready_bound_s": self.bound_s,
        }
        if self.last_error is not None:
            d["ready_last_error"] = self.last_error
        return d


class SmokeActivities:
    """The smoke test step. Holds nothing: the target comes in the step's facts."""

    def __init__(
        self,
        request_timeout: float = REQUEST_TIMEOUT_SECONDS,
        ready_timeout: float = READY_TIMEOUT_SECONDS,
        ready_pause: float = READY_PAUSE_SECONDS,
    ) -> None:
        if ready_timeout < 0 or ready_pause < 0:
            raise ValueError("ready_timeout and ready_pause must not be negative")
        self.request_timeout = request_timeout
        self.ready_timeout = ready_timeout
        self.ready_pause = ready_pause

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
        try:
            readiness = await self._wait_ready(url, smoke.expectStatus, stop)
            sampling = await _beating(
                asyncio.to_thread(
                    sample_http,
                    url,
                    samples=smoke.samples,
                    concurrency=smoke.concurrency,
                    timeout=self.request_timeout,
                    expect_status=smoke.expectStatus,
                    stop=stop,
                ),
                {"smoke_test": url},
            )
        except BaseException:
            stop.set()  # cancelled: no new request starts; those in flight end by timeout
            raise
        baseline, baseline_note = _baseline(ctx.facts)
        failures, limits, details = judge(sampling, inp, baseline)
        details.update(readiness.details())
        details["baseline"] = baseline is not None
        if baseline_note:
            details["baseline_note"] = baseline_note
        measured = sampling.describe()
        expected = ", ".join(limits)
        if failures:
            where = "" if baseline is not None else " (no source baseline to compare with)"
            errors = f"; errors: {sampling.describe_errors()}" if sampling.errors else ""
            never = ""
            if not readiness.ready:
                never = (
                    f"; the target never answered {smoke.expectStatus} within "
                    f"{readiness.bound_s:g} s of power-on ({readiness.polls} requests, "
                    f"the last: {readiness.last_error})"
                )
            raise ApplicationError(
                f"smoke test of {url} failed: {'; '.join(failures)}; measured {measured}, "
                f"expected {expected}{where}{errors}{never}",
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

    async def _wait_ready(self, url: str, expect_status: int, stop: threading.Event) -> Readiness:
        """Poll `url`, one request at a time (each bounded by the request timeout, cut to
        what remains of the wait but at least 1 s), `ready_pause` apart, until one answers
        `expect_status` or `ready_timeout` has passed (so "never ready" means it was asked up
        to the bound; the wait overruns it by at most a pause and a second). Never fails:
        the sampling that follows judges the target."""
        start = time.monotonic()
        polls, last = 0, None
        while True:
            left = self.ready_timeout - (time.monotonic() - start)
            # one request of `sample_http`: a refusal, a timeout or another status is an error
            probe = await _beating(
                asyncio.to_thread(
                    sample_http,
                    url,
                    samples=1,
                    timeout=min(self.request_timeout, max(1.0, left)),
                    expect_status=expect_status,
                    stop=stop,
                ),
                {"smoke_test": url, "waiting": "target ready", "last": last},
            )
            polls += 1
            waited = time.monotonic() - start
            if probe.sent and not probe.errors:
                return Readiness(True, waited, polls, self.ready_timeout, last)
            last = next(iter(probe.error_kinds), "not sent")
            if activity.in_activity():
                activity.heartbeat({"smoke_test": url, "waiting": "target ready", "last": last})
            if waited >= self.ready_timeout:
                return Readiness(False, waited, polls, self.ready_timeout, last)
            await asyncio.sleep(self.ready_pause)


async def _beating(work: Awaitable[T], beat: dict[str, Any]) -> T:
    """Await `work` (blocking calls in a thread), heartbeating `beat` every
    HEARTBEAT_SECONDS so a cancellation reaches the activity meanwhile."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_SECONDS)
            if done:
                return task.result()
            if activity.in_activity():
                activity.heartbeat(beat)
    finally:
        task.cancel()  # no-op when done; a thread's call still ends by its own timeout


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
