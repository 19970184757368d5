"""Fixtures: a real BIND 9 (`named`) authoritative for ``apps.test.``, taking RFC 2136
updates signed with TSIG.

``bind_server`` is one named per session on a free loopback port, run in the foreground
(``named -g -4``, as root without ``-u``) and stopped by its PID. ``bind`` hands a test
that server with the zone as the zone file below says: a zone changed by an earlier test
is reset (stop, remove the journal, restore the file, start). named or tsig-keygen missing
FAILS the tests: they are never skipped.

Keys (BIND key files written by ``tsig-keygen -a hmac-sha256``):
``key_file``           cutover-key, granted every name in the zone (``zonesub ANY``)
``unauthorised_key``   other-key, known to named, granted only ``other.apps.test. A``
``wrong_secret_key``   cutover-key again, with another secret (BADSIG)
``unknown_key``        stranger-key, which named does not know (BADKEY)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from cutover.site import Dns

ZONE = "apps.test."
ZONE_FILE = """\
$TTL 3600
@           IN SOA  ns1.apps.test. hostmaster.apps.test. 1 3600 600 86400 60
@           IN NS   ns1.apps.test.
ns1         IN A    127.0.0.1
; the application that moves: a high TTL, as records have before a migration
app    3600 IN A    10.0.0.1
; already prepared for a cutover
web      30 IN A    10.0.0.2
; round-robin over two source servers
multi   300 IN A    10.0.0.3
multi   300 IN A    10.0.0.4
alias       IN CNAME web
other   300 IN A    10.0.0.9
"""


def _named() -> str:
    for tool in ("named", "tsig-keygen"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(
                f"`{tool}` is not installed: apt-get install bind9 bind9-utils "
                "(the DNS tests need a real BIND; they are never skipped)",
                pytrace=False,
            )
    return shutil.which("named") or "/usr/sbin/named"


def _keygen(name: str, path: Path) -> Path:
    exe = shutil.which("tsig-keygen") or "/usr/sbin/tsig-keygen"
    out = subprocess.run(
        [exe, "-a", "hmac-sha256", name], check=True, capture_output=True, text=True
    ).stdout
    path.write_text(out, encoding="utf-8")
    path.chmod(0o600)
    return path


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (named listens on both)."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free loopback port for named")


class BindServer:
    """One named process the tests own: started, reset and stopped by its PID."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.named = _named()
        self.port = free_port()
        self.zone_path = root / "apps.test.db"
        self.journal = root / "apps.test.db.jnl"
        self.log_path = root / "named.log"
        keys = root / "keys"
        keys.mkdir()
        self.key_file = _keygen("cutover-key", keys / "cutover.key")
        self.unauthorised_key = _keygen("other-key", keys / "other.key")
        self.wrong_secret_key = _keygen("cutover-key", keys / "wrong-secret.key")
        self.unknown_key = _keygen("stranger-key", keys / "stranger.key")
        self.conf = root / "named.conf"
        self.conf.write_text(self._conf(), encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _conf(self) -> str:
        r = self.root
        return f"""\
options {{
    directory "{r}";
    listen-on port {self.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file "{r}/named.pid";
    session-keyfile "{r}/session.key";
    managed-keys-directory "{r}";
    recursion no;
    dnssec-validation no;
    notify no;
    allow-transfer {{ none; }};
}};
controls {{ }};
include "{self.key_file}";
include "{self.unauthorised_key}";
zone "apps.test" {{
    type primary;
    file "{self.zone_path}";
    update-policy {{
        grant cutover-key zonesub ANY;
        grant other-key name other.apps.test. A;
    }};
}};
"""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def settings(self, **over: Any) -> Dns:
        """The site's `dns` section for this server (the authorised key by default)."""
        data: dict[str, Any] = {
            "server": "127.0.0.1",
            "port": self.port,
            "zone": ZONE,
            "tsigKeyFile": str(self.key_file),
            "ttlThresholdSeconds": 60,
            "timeoutSeconds": 2,
            **over,
        }
        return Dns.model_validate(data)

    def secret(self, key_file: Path | None = None) -> str:
        """A key file's base64 secret (for asserting it never leaks)."""
        text = (key_file or self.key_file).read_text(encoding="utf-8")
        return text.split('secret "', 1)[1].split('"', 1)[0]

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def start(self) -> None:
        self.zone_path.write_text(ZONE_FILE, encoding="utf-8")
        self.journal.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [self.named, "-g", "-4", "-c", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.starts += 1
        try:
            self._wait_serving(self.proc, time.monotonic() + 15)
        except BaseException:
            self.stop()  # never leave a named behind
            raise

    def _wait_serving(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"named exited with {proc.returncode} at start:\n{self.log()[-3000:]}"
                )
            if self._serving():
                return
            time.sleep(0.02)
        raise RuntimeError(f"named did not answer within 15 s:\n{self.log()[-3000:]}")

    def _serving(self) -> bool:
        """The zone is loaded: named answers SERVFAIL for it until then."""
        try:
            reply = dns.query.tcp(
                dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=self.port, timeout=1
            )
        except (OSError, dns.exception.DNSException):
            return False
        return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            self.proc = None
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def dirty(self) -> bool:
        """Did anything change the zone since the last start? (named journals each update)"""
        return self.journal.exists() or self.zone_path.read_text(encoding="utf-8") != ZONE_FILE

    def reset(self) -> None:
        """The zone back to ZONE_FILE: stop, remove the journal, restore the file, start."""
        if self.proc is not None and self.proc.poll() is None and not self.dirty():
            return
        self.stop()
        self.start()

    def query(self, name: str, rdtype: str) -> dns.rrset.RRset | None:
        """What the server answers for a name (independently of the code under test)."""
        qname = dns.name.from_text(name, origin=dns.name.from_text(ZONE))
        reply = dns.query.tcp(
            dns.message.make_query(qname, rdtype), "127.0.0.1", port=self.port, timeout=2
        )
        if reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise RuntimeError(f"{name} {rdtype}: {dns.rcode.to_text(reply.rcode())}")
        for rrset in reply.answer:
            if rrset.name == qname and rrset.rdtype == dns.rdatatype.from_text(rdtype):
                return rrset
        return None

    def a(self, name: str) -> tuple[set[str], int] | None:
        """The A record's addresses and TTL as the server answers them."""
        rrset = self.query(name, "A")
        return None if rrset is None else ({rd.to_text() for rd in rrset}, int(rrset.ttl))


@pytest.fixture(scope="session")
def bind_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BindServer]:
    server = BindServer(tmp_path_factory.mktemp("bind"))
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def bind(bind_server: BindServer) -> BindServer:
    """The session's named, its zone as ZONE_FILE says (reset if a test changed it)."""
    bind_server.reset()
    return bind_server
