"""Fixtures: a tiny real HTTP application the test controls, and a real Prometheus scraping it.

`App` serves GETs on 127.0.0.1 from its own thread (http.server, Nagle off); the test sets
each request's latency and status (`app.plan = lambda i: (delay_s, status)`, by request
number from 0) and the gauges it exposes at `/metrics` in the Prometheus text format, next to
`app_requests_total{code=...}` (requests served, by status).

`prometheus` is the Debian `prometheus` binary (2.42 here) on a free loopback port with a
temporary TSDB, scraping the session's `scraped_app` every second; it is stopped by its PID.
A missing binary FAILS the tests that need it: never a skip.

Until `tests.prometheus_fixtures` is listed in conftest's `pytest_plugins`, test modules
import the fixtures they use (then the import is harmless).
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import procs

#: (seconds to wait before answering, status) for request number i (from 0).
Plan = Callable[[int], tuple[float, int]]


def _healthy(i: int) -> tuple[float, int]:
    return 0.0, 200


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a test's slow request must not hold up the teardown
    request_queue_size = 256  # a burst of `concurrency` connects must not be dropped
    app: App

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout) is expected here


class _Handler(http.server.BaseHTTPRequestHandler):
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        app = self.server.app
        if self.path == "/metrics":
            self._send(200, app.exposition().encode(), "text/plain; version=0.0.4")
            return
        delay, status = app.next_response(self.path)
        if delay:
            time.sleep(delay)
        self._send(status, b"ok\n" if status < 400 else b"error\n", "text/plain")
        app.served_one(status)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class App:
    """A real HTTP server whose latency, status and metrics the test sets."""

    def __init__(self) -> None:
        self.plan: Plan = _healthy
        self.gauges: dict[str, float] = {}
        self.requests = 0
        self.served: Counter[int] = Counter()
        self.paths: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.app = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        """`host:port`, as a runbook's target address is written."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def next_response(self, path: str) -> tuple[float, int]:
        with self._lock:
            i = self.requests
            self.requests += 1
            self.paths[path] += 1
            plan = self.plan
        return plan(i)

    def served_one(self, status: int) -> None:
        with self._lock:
            self.served[status] += 1

    def reset(self, plan: Plan = _healthy) -> None:
        with self._lock:
            self.plan, self.requests = plan, 0
            self.served.clear()
            self.paths.clear()

    def exposition(self) -> str:
        with self._lock:
            served = sorted(self.served.items())
            gauges = dict(self.gauges)
        lines = [
            "# HELP app_requests_total Requests served, by status code.",
            "# TYPE app_requests_total counter",
            *(f'app_requests_total{{code="{code}"}} {n}' for code, n in served),
        ]
        typed: set[str] = set()
        for key, value in sorted(gauges.items()):
            name = key.split("{", 1)[0]
            if name not in typed:
                lines.append(f"# TYPE {name} gauge")
                typed.add(name)
            lines.append(f"{key} {value!r}")
        return "\n".join(lines) + "\n"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def app() -> Iterator[App]:
    """A fresh application for one test (healthy until the test sets `plan`)."""
    a = App()
    yield a
    a.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """A prometheus server process this test session owns."""

    def __init__(self, binary: str, workdir: Path, targets: list[str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        config = workdir / "prometheus.yml"
        config.write_text(
            json.dumps(  # YAML is a superset of JSON
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {"job_name": "app", "static_configs": [{"targets": targets}]}
                    ],
                }
            )
        )
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def query(self, promql: str) -> Any:
        """The `data` of an instant query (raises on an error answer)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as resp:
            doc = json.load(resp)
        assert doc["status"] == "success", doc
        return doc["data"]

    def wait_for(self, promql: str, value: float, timeout: float = 10) -> None:
        """Until the query's single value is `value` (a scrape or two after a change)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = self.query(promql)["result"]
            if len(last) == 1 and float(last[0]["value"][1]) == value:
                return
            time.sleep(0.1)
        raise AssertionError(f"{promql} never became {value} within {timeout}s: {last}")

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        pytest.fail(f"prometheus did not become ready on {self.url}:\n{tail}", pytrace=False)

    def stop(self) -> None:
        procs.stop(self.proc)


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found is None:
        pytest.fail(
            "the prometheus binary is missing: `apt-get install prometheus` (Debian 12 ships "
            "2.42); the Prometheus probe tests need a real server and are never skipped",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="session")
def scraped_app() -> Iterator[App]:
    """The application the session's Prometheus scrapes (tests use distinct gauge names)."""
    a = App()
    yield a
    a.stop()


@pytest.fixture(scope="session")
def prometheus(scraped_app: App, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    prom = Prometheus(
        prometheus_binary(), tmp_path_factory.mktemp("prometheus"), [scraped_app.address]
    )
    try:
        prom.wait_ready()
        prom.wait_for('up{job="app"}', 1)  # the first scrape is in
        yield prom
    finally:
        prom.stop()
