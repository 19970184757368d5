"""The lab's applications: one HTTP service per application and side, in one process.

    python -m cutover.labapps LAB_STATE_JSON

Each application has a *source* service (on `127.0.1.N:8080`) and a *target* one (on
`127.0.2.N:8080`), standing for the application on its VM:

- the source serves while the source VM is powered on in the vSphere simulator (polled),
  from the VM's disk file in the simulator's datastore;
- the target serves only while the application's libvirt domain runs, from the disk that
  domain boots (its volume), so a lost or corrupted block shows in what it serves.

`GET /health` answers 200 when the side is up, else 503. Any other path (a leading
`/<application>` segment, as HAProxy forwards it, is ignored) answers JSON
`{"application", "side", "sha256", "bytes"}`: the served disk's digest, cached by the file's
identity and mtime. Knobs (`<lab>/knobs.json`, re-read when it changes), per application
and side: `latencyMs` (every answer waits), `failing` (500 on data requests) and
`unhealthy` (503 on /health), so rollback can be shown.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20


@dataclass
class Side:
    app: str
    side: str  # source | target
    address: str
    disk: Path | None = None
    up: bool = False


@dataclass
class Knobs:
    path: Path
    _mtime: float = -1.0
    _data: dict[str, Any] = field(default_factory=dict)

    def get(self, app: str, side: str) -> dict[str, Any]:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return {}
        if mtime != self._mtime:
            try:
                self._data, self._mtime = json.loads(self.path.read_text()), mtime
            except (OSError, ValueError):
                return {}
        knobs: dict[str, Any] = self._data.get(app, {}).get(side, {})
        return knobs


_digests: dict[tuple[int, int, int, int], str] = {}
_digest_lock = threading.Lock()


def disk_digest(path: Path) -> tuple[str, int]:
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    with _digest_lock:
        if key not in _digests:
            h = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(16 * MiB):
                    h.update(chunk)
            _digests[key] = h.hexdigest()
        return _digests[key], st.st_size


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        s, knobs = (
            self.server.side,
            self.server.knobs.get(self.server.side.app, self.server.side.side),
        )
        if knobs.get("latencyMs"):
            time.sleep(float(knobs["latencyMs"]) / 1000)
        if self.path.rstrip("/").endswith("/health"):
            ok = s.up and not knobs.get("unhealthy")
            self._send(200 if ok else 503, {"up": ok})
            return
        if not s.up or s.disk is None:
            self._send(503, {"application": s.app, "side": s.side, "error": "not running"})
            return
        if knobs.get("failing"):
            self._send(500, {"application": s.app, "side": s.side, "error": "failing (knob)"})
            return
        try:
            digest, size = disk_digest(s.disk)
        except OSError as exc:
            self._send(503, {"application": s.app, "side": s.side, "error": str(exc)})
            return
        self._send(200, {"application": s.app, "side": s.side, "sha256": digest, "bytes": size})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, side: Side, knobs: Knobs) -> None:
        self.side, self.knobs = side, knobs
        host, port = side.address.rsplit(":", 1)
        super().__init__((host, int(port)), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Health checks hang up early: not worth a traceback."""


def _watch(state: dict[str, Any], sides: list[Side], stop: threading.Event) -> None:
    """Every 0.5 s: which source VMs are on (vCenter) and which target domains run (libvirt)."""
    import libvirt

    from activities.vsphere import ClientPool, find_vms
    from cutover.site import load_site

    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    site = load_site(state["site"])
    assert site.vcenter is not None and site.libvirt is not None
    pool = ClientPool()
    conn: Any = None
    while not stop.is_set():
        try:
            client = pool.get(site.vcenter)
            power = {
                vm.name: str(vm.runtime.powerState)
                for vm in find_vms(client, [a["vm"] for a in state["apps"]])
            }
        except Exception:  # the simulator restarting: keep the last view
            power = None
        try:
            if conn is None or not conn.isAlive():
                conn = libvirt.open(site.libvirt.uri)
            running = {
                d.name(): d for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            }
        except libvirt.libvirtError:
            conn, running = None, None
        for s, app in ((s, next(a for a in state["apps"] if a["name"] == s.app)) for s in sides):
            if s.side == "source" and power is not None:
                s.up = power.get(app["vm"]) == "poweredOn"
            elif s.side == "target" and running is not None:
                dom = running.get(s.app)
                s.up = dom is not None
                if dom is not None:
                    src = ET.fromstring(dom.XMLDesc(0)).find("devices/disk/source")
                    s.disk = Path(src.get("file", "")) if src is not None else None
        stop.wait(0.5)


def main(argv: list[str]) -> int:
    state = json.loads(Path(argv[0]).read_text())
    knobs = Knobs(Path(state["dir"]) / "knobs.json")
    sides: list[Side] = []
    for app in state["apps"]:
        sides.append(Side(app["name"], "source", app["sourceAddress"], Path(app["disk"])))
        sides.append(Side(app["name"], "target", app["targetAddress"]))
    servers = [_Server(s, knobs) for s in sides]
    stop = threading.Event()
    threading.Thread(target=_watch, args=(state, sides, stop), daemon=True).start()
    for srv in servers:
        threading.Thread(
            target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        ).start()
    print("lab apps serving", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
