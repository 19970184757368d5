"""Fixtures: a real HAProxy 2.6 (master-worker) in front of two real HTTP backends.

``haproxy_lab`` gives each test its own HAProxy (`haproxy -W -db -f cfg`, config in the
test's tmp dir) with a frontend on a free loopback port and one backend, named like the
test application (`APP`), holding two servers: `source` (serving) and `target` (`disabled`,
i.e. in maintenance, at a placeholder address nothing listens on), both health-checked
every 200 ms (`GET /health`). The admin socket is `<tmp>/admin.sock` (mode 600, level
admin); the config `<tmp>/haproxy.cfg` is the site's `loadBalancer.configFile` (finalize
writes the switch into it; `reload()` re-reads it). The two backends are Python
`http.server`s in threads that answer `GET /` with their own name; `lab.target.failing =
True` makes the target fail its health checks. Everything is stopped by PID (the HAProxy
master, then its process group) at teardown.

A missing `haproxy` binary FAILS the tests: they are never skipped.

`start_lab` and `LoadGen` are plain code, also used by `bench.switch`.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adapters.haproxy.runtime import HAProxyRuntime
from cutover.models import StepContext, StepInput
from cutover.runbook import Runbook
from cutover.site import HAProxy, SiteConfig
from cutover.traffic import ServerState
from tests.factories import SEED

#: The application, and so the HAProxy backend (the runbook's default `lb_backend`).
APP = "shop-api"


def haproxy_binary() -> str:
    """The haproxy executable; raises FileNotFoundError when it is not installed."""
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None
    )
    if found is None:
        raise FileNotFoundError(
            "haproxy is not installed (apt-get install haproxy): the load balancer tests "
            "need a real HAProxy 2.6"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -------------------------------------------------------------------------- backends


class Backend(http.server.ThreadingHTTPServer):
    """An HTTP server that answers `GET /` with its own name, and `GET /health` with 200
    (or 503 while `failing`)."""

    daemon_threads = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.failing = False
        self.served = 0
        super().__init__(("127.0.0.1", 0), _Handler)
        self.port = int(self.server_address[1])
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Health checks hang up without reading the body: not worth a traceback."""

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 30
    server: Backend

    def do_GET(self) -> None:
        if self.path == "/health":
            status, body = (503, b"failing\n") if self.server.failing else (200, b"ok\n")
        else:
            self.server.served += 1
            status, body = 200, self.server.name.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


# --------------------------------------------------------------------------- haproxy


CONFIG = """\
global
    stats socket {socket} mode 600 level admin
    stats timeout 10s
    # a reload's old worker leaves within this, even with client connections open
    hard-stop-after 5s

defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend fe
    bind 127.0.0.1:{frontend_port}
    default_backend {backend}

backend {backend}
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    default-server inter 200ms rise 2 fall 2
    server source {source} check
    server target {placeholder} check disabled
"""


@dataclass
class HAProxyLab:
    """One HAProxy master-worker process and its two backends, owned by one test."""

    directory: Path
    source: Backend
    target: Backend
    backend: str = APP
    frontend_port: int = field(default_factory=free_port)
    placeholder: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> str:
        return str(self.directory / "admin.sock")

    @property
    def log_path(self) -> Path:
        return self.directory / "haproxy.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def runtime(self) -> HAProxyRuntime:
        return HAProxyRuntime(self.socket_path)

    def start(self) -> None:
        cfg = self.config_path
        cfg.write_text(
            CONFIG.format(
                socket=self.socket_path,
                frontend_port=self.frontend_port,
                backend=self.backend,
                source=self.source.address,
                placeholder=self.placeholder,
            )
        )
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [haproxy_binary(), "-W", "-db", "-f", str(cfg)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready(worker_not=None)

    def worker_pid(self) -> int | None:
        try:
            info = self.runtime()._once("show info")
        except OSError:
            return None
        for line in info.splitlines():
            if line.startswith("Pid:"):
                return int(line.split(":", 1)[1])
        return None

    def wait_ready(self, worker_not: int | None, timeout: float = 10.0, up: str = "source") -> None:
        """Until a worker (other than `worker_not`) answers on the socket, several times in
        a row, and server `up` passed a health check."""
        deadline = time.monotonic() + timeout
        streak = 0
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited ({self.proc.returncode}):\n{self.log()}")
            pid = self.worker_pid()
            streak = streak + 1 if pid is not None and pid != worker_not else 0
            if streak >= 3 and self.servers()[up].status == "UP":
                return
            time.sleep(0.05)
        raise RuntimeError(f"haproxy did not become ready in {timeout}s:\n{self.log()}")

    def reload(self, up: str = "source") -> None:
        """What an operator's `systemctl reload` does: SIGUSR2 to the master. The new
        worker starts from the config: every runtime change is gone. Returns once server
        `up` (the one the config says serves) passed a health check."""
        old = self.worker_pid()
        os.kill(self.pid, signal.SIGUSR2)
        self.wait_ready(worker_not=old, up=up)

    def servers(self) -> dict[str, ServerState]:
        return self.runtime().state(self.backend)

    def get(self) -> str:
        """One request through the frontend: which backend answered."""
        conn = http.client.HTTPConnection("127.0.0.1", self.frontend_port, timeout=5)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read().decode()
            return body if resp.status == 200 else f"HTTP {resp.status}"
        finally:
            conn.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # the master stops its workers
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # a worker left behind, if any
        self.proc = None

    # -- activity inputs

    @property
    def config_path(self) -> Path:
        return self.directory / "haproxy.cfg"

    def site(
        self, health_s: float = 10, drain_s: float = 10, config_file: bool = True
    ) -> SiteConfig:
        """The site's `loadBalancer`: this HAProxy's socket and (unless `config_file` is
        False) its config file, which finalize writes the switch into."""
        return SiteConfig(
            name="lab",
            loadBalancer=HAProxy(
                socket=self.socket_path,
                healthTimeoutSeconds=health_s,
                drainTimeoutSeconds=drain_s,
                configFile=str(self.config_path) if config_file else None,
            ),
        )

    def step_input(
        self,
        step: str,
        target_address: str | None = None,
        facts: dict[str, str] | None = None,
        health_s: float = 10,
        drain_s: float = 10,
        endpoint: dict[str, Any] | None = None,
        config_file: bool = True,
    ) -> StepInput:
        ep: dict[str, Any] = dict(endpoint or {})
        if target_address is not None:
            ep["targetAddress"] = target_address
        rb = Runbook.model_validate({**SEED, "application": self.backend, "endpoint": ep})
        ctx = StepContext(
            workflowId=f"cutover-{self.backend}",
            application=self.backend,
            wave=rb.wave_name,
            runbook=rb,
            site=self.site(health_s, drain_s, config_file),
            facts=facts or {},
        )
        return StepInput(step=step, context=ctx)


@contextlib.contextmanager
def start_lab(directory: Path) -> Iterator[HAProxyLab]:
    """Backends + HAProxy, all stopped on exit."""
    source, target = Backend("source"), Backend("target")
    lab = HAProxyLab(directory, source, target)
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()
        source.stop()
        target.stop()


# ---------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Sample:
    sent: float  # time.monotonic() when the request was sent
    done: float
    served_by: str | None  # the backend's name, or None on a failure
    error: str | None = None


class LoadGen:
    """Steady load through the frontend: `threads` keep-alive clients, each sending its
    next request as soon as the last one is answered. Bounded in count and in time."""

    def __init__(
        self, port: int, threads: int = 2, max_requests: int = 20_000, max_seconds: float = 60
    ) -> None:
        self.port, self.max_requests, self.max_seconds = port, max_requests, max_seconds
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self._started = 0.0

    def __enter__(self) -> LoadGen:
        self._started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Sample]:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        return self.samples

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.samples)

    def wait_for(self, more: int, timeout: float = 20) -> None:
        """Until `more` further responses (or failures) came back."""
        want = self.count + more
        deadline = time.monotonic() + timeout
        while self.count < want:
            if time.monotonic() > deadline or not self._alive():
                raise TimeoutError(f"load: {self.count}/{want} requests after {timeout}s")
            time.sleep(0.01)

    def _alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while not self._stop.is_set():
            if time.monotonic() - self._started > self.max_seconds:
                break
            with self._lock:
                if len(self.samples) >= self.max_requests:
                    break
            sent = time.monotonic()
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                body = resp.read().decode()
                sample = (
                    Sample(sent, time.monotonic(), body)
                    if resp.status == 200
                    else Sample(sent, time.monotonic(), None, f"HTTP {resp.status}: {body[:80]}")
                )
                if resp.will_close:
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                sample = Sample(sent, time.monotonic(), None, f"{type(exc).__name__}: {exc}")
                conn.close()
            with self._lock:
                self.samples.append(sample)
        conn.close()


# -------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def haproxy_path() -> str:
    try:
        return haproxy_binary()
    except FileNotFoundError as e:
        error = str(e)
    pytest.fail(error, pytrace=False)


@pytest.fixture
def haproxy_lab(haproxy_path: str, tmp_path: Path) -> Iterator[HAProxyLab]:
    """A fresh HAProxy and backends for one test: no state leaks between tests."""
    # A UNIX socket path must stay under ~107 bytes: pytest's tmp_path can be longer.
    with _short_dir(tmp_path) as directory, start_lab(directory) as lab:
        yield lab


@contextlib.contextmanager
def _short_dir(tmp_path: Path) -> Iterator[Path]:
    if len(str(tmp_path / "admin.sock")) < 100:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="hap-") as d:
        yield Path(d)
