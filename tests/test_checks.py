"""The check probes (command, http, tcp, prometheus) against real local processes, sockets and
a real Prometheus server; dns dispatch to `activities.dns`. SLO sampling: tests/test_slo.py."""

from __future__ import annotations

import http.server
import socket
import sys
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest

from activities.checks import CheckActivities
from cutover.models import CheckInput, CheckResult
from cutover.site import CommandProbe, DnsProbe, HttpProbe, PrometheusProbe, TcpProbe
from tests.prometheus_fixtures import App, Prometheus


def run(probe: Any, phase: Any = "post") -> CheckResult:
    import asyncio

    inp = CheckInput(name="c", phase=phase, application="app", probe=probe)
    return asyncio.run(CheckActivities().run_check(inp))


class _Handler(http.server.BaseHTTPRequestHandler):
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(0.3)
        code = 503 if self.path == "/down" else 200
        body = b'{"status": "ok"}' if code == 200 else b"down"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def http_port() -> Iterator[int]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_command_probe_passes_and_fails_on_exit_code() -> None:
    ok = run(CommandProbe(type="command", argv=[sys.executable, "-c", "print('fine')"]))
    assert ok.passed and ok.measured == "exit code 0" and "fine" in ok.detail
    bad = run(CommandProbe(type="command", argv=[sys.executable, "-c", "raise SystemExit(3)"]))
    assert not bad.passed and bad.measured == "exit code 3" and bad.threshold is not None
    assert "exit code 0" in bad.threshold
    want3 = run(
        CommandProbe(
            type="command", argv=[sys.executable, "-c", "raise SystemExit(3)"], expectExitCode=3
        )
    )
    assert want3.passed


def test_command_probe_no_shell_timeout_and_missing_program() -> None:
    # argv is not a shell line: the metacharacters reach the program verbatim
    echo = run(CommandProbe(type="command", argv=["echo", "$(id); rm -rf /tmp/x"]))
    assert echo.passed and "$(id); rm -rf /tmp/x" in echo.detail
    slow = run(CommandProbe(type="command", argv=["sleep", "5"], timeoutSeconds=0.3))
    assert not slow.passed and slow.measured == "timed out"
    missing = run(CommandProbe(type="command", argv=["/nonexistent/probe"]))
    assert not missing.passed and missing.measured == "not started"


def test_a_cancelled_command_probe_stops_its_program(tmp_path: Any) -> None:
    """A rollback cancels the window's round: the probe's program must not run on."""
    import asyncio
    import os

    pidfile = tmp_path / "pid"
    script = f"echo $$ > {pidfile}; exec sleep 60"
    probe = CommandProbe(type="command", argv=["sh", "-c", script], timeoutSeconds=120)
    inp = CheckInput(name="c", phase="post", application="app", probe=probe)

    async def cancel_it() -> None:
        task = asyncio.ensure_future(CheckActivities().run_check(inp))
        while not pidfile.exists() or not pidfile.read_text().strip():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_it())
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):  # gone (and reaped), not left sleeping
        os.kill(pid, 0)


def test_http_json_expectation(http_port: int) -> None:
    base = f"http://127.0.0.1:{http_port}"
    ok = run(HttpProbe(type="http", url=f"{base}/healthz", expectJson={"status": "ok"}))
    assert (
        ok.passed
        and ok.threshold is not None
        and 'JSON body holds {"status": "ok"}' in ok.threshold
    )
    wrong = run(HttpProbe(type="http", url=f"{base}/healthz", expectJson={"status": "degraded"}))
    assert not wrong.passed and '"status": "ok"' in wrong.detail
    missing = run(HttpProbe(type="http", url=f"{base}/healthz", expectJson={"db": {"ok": True}}))
    assert not missing.passed
    not_json = run(
        HttpProbe(type="http", url=f"{base}/down", expectStatus=503, expectJson={"a": 1})
    )
    assert not not_json.passed and not_json.detail == "the body is not JSON"
    with pytest.raises(ValueError, match="expectJson"):
        HttpProbe(type="http", url=base, expectJson={"a": 1}, samples=5)


def test_http_probe(http_port: int) -> None:
    base = f"http://127.0.0.1:{http_port}"
    ok = run(HttpProbe(type="http", url=f"{base}/healthz", bodyContains='"ok"', maxLatencyMs=1000))
    assert ok.passed and ok.measured is not None and ok.measured.startswith("status 200")
    down = run(HttpProbe(type="http", url=f"{base}/down"))
    assert not down.passed and down.measured is not None and down.measured.startswith("status 503")
    slow = run(HttpProbe(type="http", url=f"{base}/slow", maxLatencyMs=50))
    assert not slow.passed and slow.threshold is not None and "latency <= 50 ms" in slow.threshold
    body = run(HttpProbe(type="http", url=f"{base}/healthz", bodyContains="nope"))
    assert not body.passed
    refused = run(HttpProbe(type="http", url=f"http://127.0.0.1:{_free_port()}/", timeoutSeconds=1))
    assert not refused.passed and refused.measured == "no response"


def test_tcp_probe(http_port: int) -> None:
    ok = run(TcpProbe(type="tcp", host="127.0.0.1", port=http_port))
    assert ok.passed and ok.measured is not None and ok.measured.startswith("connected")
    closed = run(TcpProbe(type="tcp", host="127.0.0.1", port=_free_port(), timeoutSeconds=1))
    assert not closed.passed and closed.measured == "no connection"


# ------------------------------------------------------------------ error rate


def test_error_rate_below_threshold_fails_on_5xx(app: App) -> None:
    # error_rate_below_threshold as a site binds it: 40 samples, at most 5% errors.
    probe = HttpProbe(
        type="http", url=f"{app.url}/api", samples=40, concurrency=4, maxErrorRate=0.05
    )
    healthy = run(probe)
    assert healthy.passed, healthy.describe()
    assert healthy.measured is not None and healthy.measured.endswith("errors 0/40")
    assert healthy.threshold == "status 200, error rate <= 5% (40 samples, 4 concurrent)"

    app.reset(lambda i: (0.0, 503 if i % 4 == 0 else 200))  # a quarter fail
    broken = run(probe)
    assert not broken.passed
    assert broken.measured is not None and broken.measured.endswith("errors 10/40")
    assert "error rate 25% (10/40) > 5%" in broken.detail
    assert "errors: status 503 x10" in broken.detail
    assert app.served[503] == 10


# ------------------------------------------------------------------ prometheus


def prom(p: Prometheus, query: str, **kw: Any) -> PrometheusProbe:
    return PrometheusProbe(type="prometheus", url=p.url, query=query, timeoutSeconds=5, **kw)


def test_prometheus_probe_compares_the_value(prometheus: Prometheus, scraped_app: App) -> None:
    scraped_app.gauges["app_error_ratio"] = 0.01
    prometheus.wait_for("app_error_ratio", 0.01)
    ok = run(prom(prometheus, "app_error_ratio", op="<=", threshold=0.02))
    assert ok.passed, ok.describe()
    assert ok.measured == "0.01"
    assert ok.threshold == "value <= 0.02 (an empty result fails)"
    assert not run(prom(prometheus, "app_error_ratio", op=">", threshold=0.02)).passed
    assert run(prom(prometheus, "app_error_ratio", op="==", threshold=0.01)).passed

    # the application starts failing: the next scrape shows it, and the probe fails
    scraped_app.gauges["app_error_ratio"] = 0.5
    prometheus.wait_for("app_error_ratio", 0.5)
    bad = run(prom(prometheus, "app_error_ratio", op="<=", threshold=0.02))
    assert not bad.passed and bad.measured == "0.5"
    assert "app_error_ratio" in bad.describe()

    # a scalar result is one value too
    scalar = run(prom(prometheus, "scalar(app_error_ratio) * 2", op="<", threshold=2))
    assert scalar.passed and scalar.measured == "1"


def test_prometheus_probe_empty_several_series_and_errors(
    prometheus: Prometheus, scraped_app: App
) -> None:
    scraped_app.gauges['app_queue_depth{queue="a"}'] = 1
    scraped_app.gauges['app_queue_depth{queue="b"}'] = 2
    prometheus.wait_for("sum(app_queue_depth)", 3)

    missing = "app_signal_that_does_not_exist"
    empty = run(prom(prometheus, missing, threshold=1))
    assert not empty.passed and empty.measured == "empty result"
    assert "returned no series" in empty.detail
    empty_ok = run(prom(prometheus, missing, threshold=1, emptyPasses=True))
    assert empty_ok.passed and empty_ok.threshold is not None
    assert "(an empty result passes)" in empty_ok.threshold

    several = run(prom(prometheus, "app_queue_depth", threshold=10))
    assert not several.passed and several.measured == "2 series"
    assert 'queue="a"}' in several.detail and "aggregate" in several.detail
    assert run(prom(prometheus, "sum(app_queue_depth)", op="<=", threshold=3)).passed

    bad_query = run(prom(prometheus, "sum(app_queue_depth", threshold=1))
    assert not bad_query.passed and bad_query.measured == "query error"
    assert "bad_data" in bad_query.detail and "parse error" in bad_query.detail

    matrix = run(prom(prometheus, "app_queue_depth[1m]", threshold=1))
    assert not matrix.passed and "returned a matrix" in matrix.detail

    nowhere = PrometheusProbe(
        type="prometheus",
        url=f"http://127.0.0.1:{_free_port()}",
        query="up",
        threshold=1,
        timeoutSeconds=1,
    )
    down = run(nowhere)
    assert not down.passed and down.measured == "no response"


# ------------------------------------------------------------------------ dns


def test_dns_probe_is_dispatched_to_activities_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[CheckInput, DnsProbe]] = []

    def dns_probe(inp: CheckInput, probe: DnsProbe) -> CheckResult:
        seen.append((inp, probe))
        return CheckResult(name=inp.name, phase=inp.phase, passed=True, measured="ttl 30")

    fake = types.ModuleType("adapters.dns.probe")
    fake.dns_probe = dns_probe  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "adapters.dns.probe", fake)
    probe = DnsProbe(type="dns", name="app.example.test")
    res = run(probe)
    assert res.passed and res.measured == "ttl 30"
    assert len(seen) == 1 and seen[0][1] == probe and seen[0][0].name == "c"
