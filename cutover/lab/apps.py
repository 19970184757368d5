"""The lab's applications: one HTTP service per application and side, in one process.

    python -m cutover.lab.apps LAB_STATE_JSON

Each application has a *source* service (on `127.0.1.N:8080`) and a *target* one (on
`127.0.2.N:8080`), standing for the application on its VM:

- the source serves while the source VM is powered on in the vSphere simulator (polled),
  from the VM's disk file in the simulator's datastore;
- the target serves only while the application's libvirt domain runs (not paused: a fenced
  target answers nothing), from the disk that domain boots (its volume), so a lost or
  corrupted block shows in what it serves.

`GET /health` answers 200 when the side is up, else 503. Any other path (a leading
`/<application>` segment, as HAProxy forwards it, is ignored) answers JSON
`{"application", "side", "sha256", "bytes", "journal", "dataSha256"}`: the served disk
file's digest and size; the disk as the guest sees it (through a qcow2 overlay's backing
chain; `cutover.lab.guest`): what the guest wrote, `journal: {"records", "boots", "last"}`,
and `dataSha256`, the digest of everything but the journal region (a target that only
journaled serves the source's); cached per file, recomputed at most every 3 s. Knobs
(`<lab>/knobs.json`, re-read when it changes), per application and side: `latencyMs` (every
answer waits), `failing` (500 on data requests) and `unhealthy` (503 on /health), so
rollback can be shown.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from adapters.qemu.img import guest_extents, read_guest
from adapters.vsphere.client import ClientPool
from adapters.vsphere.inventory import find_vms
from adapters.vsphere.vmdk import current_top
from cutover.lab import disk as lab_disk
from cutover.lab.guest import GuestError, data_digest, journal_summary, read_journal
from cutover.site import load_site

MiB = 1 << 20


@dataclass
class Side:
    app: str
    side: str  # source | target
    address: str
    disk: Path | None = None
    #: the disk's image format (raw, or the qcow2 overlay a target domain boots)
    fmt: str = "raw"
    up: bool = False
    #: asks the world on demand (targets); sources are polled by a watcher thread
    refresh: Any = None
    _asked: float = -1.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def current(self) -> bool:
        if self.refresh is not None:
            with self._lock:  # concurrent requests wait for one fresh answer, not a stale one
                if time.monotonic() - self._asked > 0.2:
                    self.refresh(self)
                    self._asked = time.monotonic()
        return self.up


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


#: A running guest changes its disk's mtime every 2 s (its journal): a view computed less
#: than this long ago is served as is, so requests do not re-read the disk at each write
#: (and the health checks through the load balancer stay fast).
REUSE_SECONDS = 3.0


class _Cache:
    """Per file (device, inode, format): the last value and when it was computed; one lock
    per file, so one side's digest never holds another side's requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[tuple[int, int, str], threading.Lock] = {}
        self._values: dict[tuple[int, int, str], tuple[int, int, float, Any]] = {}

    def get(self, path: Path, fmt: str, compute: Any) -> Any:
        st = path.stat()
        key = (st.st_dev, st.st_ino, fmt)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            hit = self._values.get(key)
            now = time.monotonic()
            if (
                hit is not None
                and hit[1] == st.st_size
                and (hit[0] == st.st_mtime_ns or now - hit[2] < REUSE_SECONDS)
            ):
                return hit[3]
            value = compute()
            self._values[key] = (st.st_mtime_ns, st.st_size, now, value)
            return value


_digests = _Cache()
_views = _Cache()


def disk_digest(path: Path) -> tuple[str, int]:
    """The SHA-256 of the disk as its guest sees it (a qcow2 overlay through its chain),
    and its size."""

    def compute() -> tuple[str, int]:
        h = hashlib.sha256()
        with path.open("rb") as f:
            qcow2 = f.read(4) == b"QFI\xfb"
            f.seek(0)
            while not qcow2 and (chunk := f.read(16 * MiB)):
                h.update(chunk)
        if not qcow2:
            return h.hexdigest(), path.stat().st_size
        extents = guest_extents(path, "qcow2")
        for _, data in read_guest(extents, 16 * MiB):
            h.update(data)
        return h.hexdigest(), sum(e.length for e in extents)

    value: tuple[str, int] = _digests.get(path, "", compute)
    return value


def guest_view(path: Path, fmt: str) -> dict[str, Any]:
    """What the guest sees on the disk (through a qcow2 overlay's backing chain): its
    journal and the digest of everything else."""

    def compute() -> dict[str, Any]:
        return {
            "journal": journal_summary(read_journal(path, fmt)),
            "dataSha256": data_digest(path, fmt),
        }

    value: dict[str, Any] = _views.get(path, fmt, compute)
    return value


_source_views: dict[Path, tuple[tuple[str, int, int], Path]] = {}
_source_lock = threading.Lock()


def source_disk(flat: Path) -> Path:
    """The source VM's disk as its guest sees it: the flat file, or while a snapshot puts a
    delta on it, a raw view of the chain (rebuilt when the delta changes)."""
    ds, vm = flat.parent.parent, flat.parent.name
    if not lab_disk.has_delta(ds, vm):
        return flat
    top = current_top(lab_disk.descriptor(ds, vm))
    st = top.with_name(top.name.removesuffix(".vmdk") + "-delta.vmdk").stat()
    stamp = (top.name, st.st_mtime_ns, st.st_size)
    with _source_lock:
        hit = _source_views.get(flat)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        dest = Path(tempfile.gettempdir()) / f"cutover-source-view-{os.getpid()}-{vm}.raw"
        _source_views[flat] = (stamp, lab_disk.view(ds, vm, dest))
        return _source_views[flat][1]


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
        if self.path.rstrip("/").endswith("/metrics"):  # what the lab's Prometheus scrapes
            up = 1 if s.current() else 0
            text = f'cutover_lab_up{{application="{s.app}",side="{s.side}"}} {up}\n'.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
            return
        if self.path.rstrip("/").endswith("/health"):
            ok = s.current() and not knobs.get("unhealthy")
            self._send(200 if ok else 503, {"up": ok})
            return
        if not s.current() or s.disk is None:
            self._send(503, {"application": s.app, "side": s.side, "error": "not running"})
            return
        if knobs.get("failing"):
            self._send(500, {"application": s.app, "side": s.side, "error": "failing (knob)"})
            return
        try:
            disk = source_disk(s.disk) if s.side == "source" else s.disk
            digest, size = disk_digest(disk)
            view = guest_view(disk, s.fmt)
        except (OSError, GuestError) as exc:
            self._send(503, {"application": s.app, "side": s.side, "error": str(exc)})
            return
        self._send(200, {"application": s.app, "side": s.side, "sha256": digest, "bytes": size,
                         **view})  # fmt: skip

    def _send(self, status: int, body: dict[str, Any]) -> None:
        if status >= 500 and not self.path.endswith("/health"):
            print(f"{time.strftime('%H:%M:%S')} {self.server.side.app} {self.server.side.side} "
                  f"{self.path}: {status} {body.get('error')}", flush=True)  # fmt: skip
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


def _watch_sources(state: dict[str, Any], sides: list[Side], stop: threading.Event) -> None:
    """Every 0.3 s: which source VMs are powered on, as vCenter says."""
    site = load_site(state["site"])
    assert site.vcenter is not None
    every = [*state["apps"], *([state["dayTwo"]] if state.get("dayTwo") else [])]
    vms = {a["name"]: a["vm"] for a in every}
    pool = ClientPool()
    while not stop.is_set():
        try:
            found = find_vms(pool.get(site.vcenter), [*vms.values()])
            power = {vm.name: str(vm.runtime.powerState) for vm in found}
            for s in sides:
                s.up = power.get(vms[s.app]) == "poweredOn"
        except Exception:  # the simulator busy or restarting: keep the last view, retry
            pool.close()
            pool = ClientPool()
        stop.wait(0.3)


def _target_refresher(uri: str) -> Any:
    """A target's state straight from libvirt, at most every 0.2 s per application: it
    serves only while its domain runs, from the disk that domain boots."""
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    lock = threading.Lock()
    conn: list[Any] = []

    def refresh(side: Side) -> None:
        with lock:
            try:
                if not conn or not conn[0].isAlive():
                    conn[:] = [libvirt.open(uri)]
                dom = conn[0].lookupByName(side.app)
                disk = ET.fromstring(dom.XMLDesc(0)).find("devices/disk")
                src = disk.find("source") if disk is not None else None
                driver = disk.find("driver") if disk is not None else None
                side.disk = Path(src.get("file", "")) if src is not None else None
                side.fmt = driver.get("type", "raw") if driver is not None else "raw"
                # a paused domain (fenced for a rollback) answers nothing
                side.up = dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            except libvirt.libvirtError:  # no such domain (or it just went)
                side.up = False

    return refresh


def main(argv: list[str]) -> int:
    state = json.loads(Path(argv[0]).read_text())
    knobs = Knobs(Path(state["dir"]) / "knobs.json")
    sides: list[Side] = []
    refresh = _target_refresher(state["libvirtUri"])
    for app in [*state["apps"], *([state["dayTwo"]] if state.get("dayTwo") else [])]:
        sides.append(Side(app["name"], "source", app["sourceAddress"], Path(app["disk"])))
        sides.append(Side(app["name"], "target", app["targetAddress"], refresh=refresh))
    servers = [_Server(s, knobs) for s in sides]
    stop = threading.Event()
    sources = [s for s in sides if s.side == "source"]
    threading.Thread(target=_watch_sources, args=(state, sources, stop), daemon=True).start()
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
