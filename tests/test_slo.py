"""SLO sampling, the sustained-latency rollback criterion through a real cutover workflow, and
the `smoke_test` step, against real local HTTP applications whose latency and status each
test sets (tests/prometheus_fixtures.App)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.checks import CheckActivities
from activities.smoke import SmokeActivities
from adapters.probes.http import is_slo_probe, sample_http
from cutover.models import (
    CheckInput,
    CheckPhase,
    CheckResult,
    CutoverInput,
    CutoverResult,
    Outcome,
    StepContext,
    StepInput,
)
from cutover.runbook import Runbook
from cutover.site import HttpProbe, SiteConfig
from tests.factories import SEED, cutover_input
from tests.prometheus_fixtures import App
from tests.world import World
from workers.worker import build_worker
from workflows.cutover import AppCutoverWorkflow, workflow_id_for

SLOW_P95, SLOW_P99 = 0.05, 0.25


def known_delays(i: int) -> tuple[float, int]:
    """20 requests: 16 fast ones (2 of them 503), 3 of 50 ms and 1 of 250 ms. Nearest rank:
    p50 is the 10th fastest (fast), p95 the 19th (50 ms), p99 the 20th (250 ms)."""
    n = i % 20
    if n in (3, 8, 13):
        return SLOW_P95, 200
    if n == 17:
        return SLOW_P99, 200
    return 0.0, 503 if n in (5, 11) else 200


async def check(probe: HttpProbe, phase: CheckPhase = "post") -> CheckResult:
    inp = CheckInput(name="slo", phase=phase, application="app", probe=probe)
    return await CheckActivities().run_check(inp)


def slo(app: App, **kw: Any) -> HttpProbe:
    return HttpProbe(type="http", url=f"{app.url}/api", **{"samples": 20, "concurrency": 4, **kw})


# ------------------------------------------------------------------- sampling


def test_sampling_computes_percentiles_and_error_rate(app: App) -> None:
    app.reset(known_delays)
    s = sample_http(f"{app.url}/api", samples=20, concurrency=4, timeout=5)
    assert s.sent == 20 and len(s.latencies_ms) == 20 and app.requests == 20
    assert s.errors == 2 and s.error_kinds == {"status 503": 2} and s.error_rate == 0.1
    p50, p95, p99 = s.p50, s.p95, s.p99
    assert p50 is not None and p95 is not None and p99 is not None
    assert p50 < 40
    assert SLOW_P95 * 1000 <= p95 < SLOW_P99 * 1000
    assert p99 >= SLOW_P99 * 1000 and p99 == s.max_ms
    assert re.fullmatch(
        r"p50 \d+\.\d ms, p95 \d+\.\d ms, p99 \d+\.\d ms, errors 2/20", s.describe()
    )
    assert s.describe_errors() == "status 503 x2"


def test_sampling_timeouts_refusals_and_stop(app: App) -> None:
    # every request takes 1 s; each is cut at 0.2 s: 4 requests, 2 at a time, ~0.4 s
    app.reset(lambda i: (1.0, 200))
    start = time.monotonic()
    s = sample_http(app.url, samples=4, concurrency=2, timeout=0.2)
    assert time.monotonic() - start < 1.5  # uncut, two rounds of 1 s would take 2 s
    assert s.errors == 4 and s.error_kinds == {"timeout": 4}
    assert all(200 <= ms < 1000 for ms in s.latencies_ms)  # a timeout counts at its elapsed

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    refused = sample_http(f"http://127.0.0.1:{closed}/", samples=3, timeout=1)
    assert refused.errors == 3 and refused.latencies_ms == () and refused.p95 is None
    assert refused.describe() == "no response, errors 3/3"
    assert refused.describe_errors() == "Connection refused x3"

    # a stop (the smoke test's cancellation) ends the sampling early
    app.reset(lambda i: (0.02, 200))
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    stopped = sample_http(app.url, samples=10_000, concurrency=2, timeout=1, stop=stop)
    assert 0 < stopped.sent < 10_000 and stopped.requested == 10_000 and stopped.errors == 0


BOUNDS: list[tuple[dict[str, Any], str | None]] = [
    ({"maxP50Ms": 40, "maxErrorRate": 0.1}, None),
    ({"maxP50Ms": 0.01, "maxErrorRate": 0.1}, "p50 "),
    ({"maxP95Ms": 240, "maxErrorRate": 0.1}, None),
    ({"maxP95Ms": 40, "maxErrorRate": 0.1}, "p95 "),
    ({"maxP99Ms": 5000, "maxErrorRate": 0.1}, None),
    ({"maxP99Ms": 240, "maxErrorRate": 0.1}, "p99 "),
    ({"maxLatencyMs": 5000, "maxErrorRate": 0.1}, None),
    ({"maxLatencyMs": 240, "maxErrorRate": 0.1}, "max latency "),
    ({"maxErrorRate": 0.1}, None),
    ({"maxErrorRate": 0.05}, "error rate 10% (2/20) > 5%"),
    ({}, "error rate 10% (2/20) > 0%"),  # unset: no error tolerated, as with one request
    ({"bodyContains": "ok", "maxErrorRate": 0.1}, None),
    ({"bodyContains": "nope", "maxErrorRate": 0.1}, "body without 'nope' x18"),
]


@pytest.mark.parametrize(("bounds", "broken"), BOUNDS)
async def test_slo_probe_passes_and_fails_on_each_bound(
    app: App, bounds: dict[str, Any], broken: str | None
) -> None:
    app.reset(known_delays)
    res = await check(slo(app, **bounds))
    assert res.passed == (broken is None), res.describe()
    errors = 20 if bounds.get("bodyContains") == "nope" else 2
    assert res.measured is not None
    assert re.search(rf"errors {errors}/20(, max \d+\.\d ms)?$", res.measured), res.measured
    if broken is not None:
        assert broken in res.detail
    assert app.requests == 20


async def test_slo_probe_threshold_lists_every_bound_and_pre_check_sets_the_baseline(
    app: App,
) -> None:
    app.reset(known_delays)
    probe = slo(
        app,
        bodyContains="ok",
        maxP50Ms=40,
        maxP95Ms=240,
        maxP99Ms=5000,
        maxLatencyMs=5000,
        maxErrorRate=0.1,
    )
    assert is_slo_probe(probe)
    pre = await check(probe, "pre")
    assert pre.passed, pre.describe()
    assert pre.threshold == (
        "status 200, body contains 'ok', p50 <= 40 ms, p95 <= 240 ms, p99 <= 5000 ms, "
        "max latency <= 5000 ms, error rate <= 10% (20 samples, 4 concurrent)"
    )
    assert pre.measured is not None and re.search(r"errors 2/20, max \d+\.\d ms$", pre.measured)
    assert set(pre.facts) == {
        "baseline_p50_ms",
        "baseline_p95_ms",
        "baseline_p99_ms",
        "baseline_error_rate",
    }
    assert float(pre.facts["baseline_p95_ms"]) >= SLOW_P95 * 1000
    assert float(pre.facts["baseline_error_rate"]) == 0.1
    # only a pre-check reports the baseline; a single-request probe is not one
    assert (await check(probe, "post")).facts == {}
    single = HttpProbe(type="http", url=f"{app.url}/healthz")
    assert not is_slo_probe(single)
    one = await check(single, "pre")
    assert one.measured is not None and one.measured.startswith("status ") and one.facts == {}


# --------------------------------------- sustained_latency_regression, in a workflow


def latency_cutover(queue: str, app: App, window_minutes: float) -> CutoverInput:
    inp = cutover_input(queue, rollbackWindowMinutes=window_minutes, checkIntervalSeconds=0.4)
    criterion = HttpProbe(
        type="http",
        url=f"{app.url}/api",
        samples=8,
        concurrency=4,
        maxP95Ms=100,
        failAfter=3,
        timeoutSeconds=2,
        description="p95 over 100 ms for 3 evaluations in a row",
    )
    checks = {**inp.resolved_site.checks, "sustained_latency_regression": criterion}
    return inp.model_copy(update={"site": inp.resolved_site.model_copy(update={"checks": checks})})


def activity_name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__temporal_activity_definition").name)


async def run_cutover(
    client: Client, inp: CutoverInput, world: World, real: list[Callable[..., Any]]
) -> tuple[CutoverResult, list[dict[str, Any]]]:
    """World activities, but the `real` ones instead of theirs; returns the result and the
    sustained_latency_regression evaluations as the history recorded them."""
    replaced = {activity_name(fn) for fn in real}
    fakes = [fn for fn in world.activities() if activity_name(fn) not in replaced]
    async with build_worker(client, inp.resolved_site.taskQueue, activities=[*fakes, *real]):
        handle = await client.start_workflow(
            AppCutoverWorkflow.run,
            inp,
            id=workflow_id_for(inp.runbook.application),
            task_queue=inp.resolved_site.taskQueue,
        )
        result = await handle.result()
    evaluations = []
    async for event in handle.fetch_history_events():
        if event.HasField("activity_task_completed_event_attributes"):
            payloads = event.activity_task_completed_event_attributes.result.payloads
            doc = json.loads(payloads[0].data)
            if doc.get("name") == "sustained_latency_regression":
                evaluations.append(doc)
    return result, evaluations


def queue() -> str:
    return f"tq-{uuid.uuid4().hex[:8]}"


async def test_a_single_slow_response_does_not_roll_back(client: Client, app: App) -> None:
    # One response (the 9th request) takes 150 ms: with 8 samples its evaluation's p95 is
    # that one, so that evaluation fails (streak 1); the next passes (streak 0): no rollback.
    # Which evaluation it lands in is not asserted (a loaded machine may shift it).
    app.reset(lambda i: (0.15 if i == 8 else 0.0, 200))
    inp = latency_cutover(queue(), app, window_minutes=0.15)
    result, evaluations = await run_cutover(client, inp, World(), [CheckActivities().run_check])
    assert result.outcome == Outcome.COMPLETED, result.reason
    assert result.reason == "rollback window closed healthy"
    verdicts = [e["passed"] for e in evaluations]
    slow = [e for e in evaluations if not e["passed"]]
    assert slow and len(verdicts) >= 5, verdicts  # it went on evaluating after the slow one
    assert "False, False, False" not in str(verdicts), verdicts  # never 3 in a row
    assert verdicts[-1], verdicts  # the streak was reset by passing evaluations
    p50, p95 = map(float, re.findall(r"p(?:50|95) (\d+\.\d) ms", slow[0]["measured"]))
    assert p50 < 100 and p95 >= 150, slow[0]["measured"]


async def test_sustained_slowness_rolls_back(client: Client, app: App) -> None:
    # slow from the 3rd request on (inside the first evaluation, wherever its requests
    # start): every evaluation fails, and the 3rd failure in a row rolls back
    app.reset(lambda i: (0.15 if i >= 2 else 0.0, 200))
    inp = latency_cutover(queue(), app, window_minutes=1)
    result, evaluations = await run_cutover(client, inp, World(), [CheckActivities().run_check])
    assert result.outcome == Outcome.ROLLED_BACK, result.reason
    assert [e["passed"] for e in evaluations] == [False, False, False]
    assert re.match(
        r"rollback criterion fired: sustained_latency_regression failed: measured "
        r"p50 \d+\.\d ms, p95 \d+\.\d ms, p99 \d+\.\d ms, errors 0/8, expected status 200, "
        r"p95 <= 100 ms, error rate <= 0% \(8 samples, 4 concurrent\), p95 \d+\.\d ms > 100 ms "
        r"\(3 consecutive\)$",
        result.reason,
    ), result.reason
    assert "restore_load_balancer" in [s.name for s in result.steps]


# ------------------------------------------------------------------ smoke_test


def smoke_input(
    facts: dict[str, str], endpoint: dict[str, Any] | None = None, **smoke: Any
) -> StepInput:
    rb = Runbook.model_validate(
        {**SEED, "application": "shop", "smokeTest": smoke, "endpoint": endpoint or {}}
    )
    ctx = StepContext(
        workflowId="cutover-shop",
        application="shop",
        wave="2",
        runbook=rb,
        site=SiteConfig(),
        facts=facts,
    )
    return StepInput(step="smoke_test", context=ctx)


async def smoke(inp: StepInput) -> Any:
    return await ActivityEnvironment().run(SmokeActivities().smoke_test, inp)


async def test_smoke_test_passes_on_a_healthy_target(app: App) -> None:
    res = await smoke(
        smoke_input(
            {"target_address": app.address},
            path="/healthz",
            samples=50,
            concurrency=4,
            maxP95Ms=500,
        )
    )
    assert res.step == "smoke_test" and res.changed is False
    assert app.paths == {"/healthz": 51}  # the readiness request, then 50 samples
    d = res.details
    assert d["samples"] == 50 and d["errors"] == 0 and d["baseline"] is False
    assert d["url"] == f"{app.url}/healthz" and 0 < d["p95_ms"] < 500
    assert d["ready_within_bound"] is True and d["ready_polls"] == 1
    assert "ready_last_error" not in d  # ready at the first request
    # no fact: the runbook's reserved address
    again = await smoke(smoke_input({}, endpoint={"targetAddress": app.address}, samples=5))
    assert again.details["samples"] == 5


async def test_smoke_test_fails_with_the_measurement_on_a_failing_target(app: App) -> None:
    app.reset(lambda i: (0.0, 503 if i % 5 == 0 else 200))
    with pytest.raises(ApplicationError) as failed:
        await smoke(smoke_input({"target_address": app.address}, samples=50, concurrency=4))
    err = failed.value
    assert err.type == "SmokeTestFailed" and err.non_retryable
    assert f"smoke test of {app.url}/ failed: error rate 20% (10/50) > 0%" in err.message
    assert re.search(
        r"measured p50 \d+\.\d ms, p95 \d+\.\d ms, p99 \d+\.\d ms, errors 10/50", err.message
    )
    assert "expected status 200, error rate <= 0%" in err.message
    assert "(no source baseline to compare with)" in err.message
    assert "errors: status 503 x10" in err.message
    details = err.details[0]
    assert details["errors"] == 10 and details["error_rate"] == 0.2 and details["baseline"] is False


async def test_smoke_test_compares_p95_with_the_source_baseline(app: App) -> None:
    # the baseline is what a real SLO pre-check measured on the source
    source = App()
    try:
        source.reset(lambda i: (0.0, 200))
        pre = await check(slo(source), "pre")
        fast_baseline = pre.facts
        source.reset(lambda i: (0.08, 200))
        slow_baseline = (await check(slo(source), "pre")).facts
    finally:
        source.stop()
    # Margins wide enough for a loaded machine's latency spikes, in both directions.
    app.reset(lambda i: (0.03, 200))  # the target answers in 30 ms

    # faster than the source was (80 ms): within 2x its baseline
    ok = await smoke(smoke_input({"target_address": app.address, **slow_baseline}, samples=20))
    assert ok.details["baseline"] is True and ok.details["p95_ratio"] <= 2

    # far slower (200 ms) than a fast source: fails on the ratio, naming both numbers
    app.reset(lambda i: (0.2, 200))
    with pytest.raises(ApplicationError) as failed:
        await smoke(smoke_input({"target_address": app.address, **fast_baseline}, samples=20))
    err = failed.value
    assert err.type == "SmokeTestFailed" and err.non_retryable
    base = float(fast_baseline["baseline_p95_ms"])
    assert f"x the source's baseline {base:.1f} ms (at most 2 x)" in err.message
    assert "no source baseline" not in err.message
    d = err.details[0]
    assert d["baseline"] is True and d["baseline_p95_ms"] == base and d["p95_ratio"] > 2


async def test_failing_smoke_test_rolls_the_cutover_back(client: Client, app: App) -> None:
    # the real smoke_test in a cutover: the target power_on_target reports answers half 503s
    app.reset(lambda i: (0.0, 503 if i % 2 else 200))
    world = World(target_address=app.address)
    inp = cutover_input(queue(), smokeTest={"path": "/ready", "samples": 20, "concurrency": 4})
    result, _ = await run_cutover(client, inp, world, [SmokeActivities().smoke_test])
    assert result.outcome == Outcome.ROLLED_BACK, result.reason
    assert result.reason.startswith(
        f"step smoke_test failed: SmokeTestFailed: smoke test of {app.url}/ready failed: "
        "error rate 50% (10/20) > 0%; measured p50 "
    ), result.reason
    # one attempt (the failure is not retried): a readiness request, then 20 samples
    assert app.paths == {"/ready": 21}
    assert "update_load_balancer" not in world.calls
    assert world.calls[-1] in ("restart_source", "remove_source_snapshot")


async def test_smoke_test_needs_a_target_address() -> None:
    with pytest.raises(ApplicationError) as failed:
        await smoke(smoke_input({}))
    assert failed.value.type == "ConfigError" and failed.value.non_retryable
    assert "target_address" in failed.value.message
