"""The `smoke_test` step waits, boundedly, for a just-booted target to answer before it samples
it: against real local HTTP servers on 127.0.0.1 that answer 503 for their first seconds,
never answer the expected status, or do not listen yet (tests/prometheus_fixtures.App and a
bare http.server). The rest of the step is tested in tests/test_slo.py."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.smoke import SmokeActivities
from tests.prometheus_fixtures import App
from tests.test_slo import smoke_input


def recording() -> tuple[ActivityEnvironment, list[dict[str, Any]]]:
    """An activity environment that keeps every heartbeat's details."""
    env = ActivityEnvironment()
    beats: list[dict[str, Any]] = []
    env.on_heartbeat = lambda *details: beats.append(details[0])
    return env, beats


def waiting(beats: list[dict[str, Any]]) -> list[str]:
    """The problems the readiness wait heartbeated, in order."""
    return [b["last"] for b in beats if b.get("waiting") == "target ready" and b["last"]]


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def late_listener() -> Iterator[tuple[str, threading.Event]]:
    """A port bound but not listening (connections to it are refused) until the test sets
    the event: then it listens and answers 200. Yields (host:port, the event)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok, bind_and_activate=False)
    server.daemon_threads = True
    server.server_bind()
    go, closing, serving = threading.Event(), threading.Event(), threading.Event()

    def serve() -> None:
        if go.wait(60) and not closing.is_set():
            server.server_activate()
            serving.set()
            server.serve_forever(0.05)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", go
    closing.set()
    go.set()  # a never-started server: its thread ends without listening
    if not serving.is_set():
        thread.join(0.5)  # ends, or was just starting to serve
    if serving.is_set():
        server.shutdown()
    thread.join(5)
    server.server_close()


async def test_smoke_test_waits_for_a_target_that_answers_503_while_it_boots(app: App) -> None:
    # the just-booted guest answers 503 for its first 2 s, then 200
    up_at = time.monotonic() + 2.0
    app.reset(lambda i: (0.0, 503 if time.monotonic() < up_at else 200))
    env, beats = recording()
    inp = smoke_input({"target_address": app.address}, path="/ready", samples=20, concurrency=4)
    res = await env.run(SmokeActivities().smoke_test, inp)  # the default 30 s bound
    d: dict[str, Any] = res.details
    assert d["errors"] == 0 and d["samples"] == 20
    assert d["ready_within_bound"] is True and d["ready_bound_s"] == 30
    assert 1.9 <= d["ready_after_s"] < 10, d
    assert d["ready_polls"] >= 3 and d["ready_last_error"] == "status 503"
    # the wait's requests (every 503 among them: no sample errs), then the 20 samples
    assert app.paths == {"/ready": d["ready_polls"] + 20}
    assert set(waiting(beats)) == {"status 503"}


async def test_smoke_test_of_a_target_never_ready_fails_on_its_error_rate_after_the_bound(
    app: App,
) -> None:
    app.reset(lambda i: (0.0, 503))
    env, beats = recording()
    inp = smoke_input({"target_address": app.address}, samples=10, concurrency=2)
    start = time.monotonic()
    with pytest.raises(ApplicationError) as failed:
        await env.run(SmokeActivities(ready_timeout=1.5).smoke_test, inp)
    assert time.monotonic() - start >= 1.5
    err = failed.value
    assert err.type == "SmokeTestFailed" and err.non_retryable
    # the measured error rate stays the failure; the wait is named after it
    assert f"smoke test of {app.url}/ failed: error rate 100% (10/10) > 0%" in err.message
    assert err.message.endswith(
        "; the target never answered 200 within 1.5 s of power-on "
        f"({err.details[0]['ready_polls']} requests, the last: status 503)"
    ), err.message
    d = err.details[0]
    assert d["ready_within_bound"] is False and d["ready_bound_s"] == 1.5
    assert 1.5 <= d["ready_after_s"] < 4, d
    assert d["ready_polls"] >= 3 and d["ready_last_error"] == "status 503"
    assert d["errors"] == 10 and app.requests == d["ready_polls"] + 10
    assert waiting(beats)[-1] == "status 503"

    # the expected status is the runbook's: a target answering 200 is not ready for 204
    app.reset(lambda i: (0.0, 200))
    expect_204 = smoke_input({"target_address": app.address}, samples=4, expectStatus=204)
    with pytest.raises(ApplicationError) as other:
        await env.run(SmokeActivities(ready_timeout=1).smoke_test, expect_204)
    assert "the target never answered 204 within 1 s" in other.value.message
    assert other.value.details[0]["ready_last_error"] == "status 200"


async def test_smoke_test_counts_a_refused_connection_as_not_ready(
    late_listener: tuple[str, threading.Event],
) -> None:
    address, go = late_listener
    # nothing listens yet: refused; it listens 1.5 s in, and the smoke test passes
    threading.Timer(1.5, go.set).start()
    env, beats = recording()
    inp = smoke_input({"target_address": address}, samples=10, concurrency=2)
    res = await env.run(SmokeActivities().smoke_test, inp)
    d: dict[str, Any] = res.details
    assert d["errors"] == 0 and d["ready_within_bound"] is True
    assert 1.4 <= d["ready_after_s"] < 10 and d["ready_polls"] >= 2, d
    assert d["ready_last_error"] == "Connection refused"
    assert set(waiting(beats)) == {"Connection refused"}


async def test_smoke_test_of_a_target_that_never_listens_names_the_refusal(
    late_listener: tuple[str, threading.Event],
) -> None:
    address, _ = late_listener  # never listens
    inp = smoke_input({"target_address": address}, samples=5)
    with pytest.raises(ApplicationError) as failed:
        await ActivityEnvironment().run(SmokeActivities(ready_timeout=1).smoke_test, inp)
    message = failed.value.message
    assert "failed: error rate 100% (5/5) > 0%; measured no response, errors 5/5" in message
    assert "never answered 200 within 1 s of power-on" in message
    assert message.endswith("the last: Connection refused)"), message
    assert failed.value.details[0]["ready_within_bound"] is False


async def test_a_cancellation_ends_the_readiness_wait_at_once(app: App) -> None:
    app.reset(lambda i: (0.0, 503))
    env = ActivityEnvironment()
    inp = smoke_input({"target_address": app.address}, samples=50)
    asyncio.get_running_loop().call_later(1.0, env.cancel)
    start = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await env.run(SmokeActivities().smoke_test, inp)  # would wait 30 s
    assert time.monotonic() - start < 5
    assert 1 <= app.requests < 10  # the wait's requests only: nothing was sampled
