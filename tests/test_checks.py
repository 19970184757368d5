"""The check probes (command, http, tcp) against real local processes and sockets."""

from __future__ import annotations

import http.server
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from activities.checks import CheckActivities
from cutover.models import CheckInput, CheckResult
from cutover.site import CommandProbe, HttpProbe, TcpProbe


def run(probe: Any) -> CheckResult:
    import asyncio

    inp = CheckInput(name="c", phase="post", application="app", probe=probe)
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
