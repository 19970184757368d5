"""The `live-resize` probe against a real QEMU domain (type qemu: TCG) under the libvirtd
the tests start: the lab's guest (cutover.lab.guest: a Debian kernel whose init writes a
journal to its disk every 2 s) with Debian's virtio_balloon driver loaded, so it takes
balloon changes, booted with 1 of 2 vCPUs, so a vCPU can be plugged live. The
guest's answer is its journal advancing, served over HTTP here as a lab's application
serves its guest's state.

Measured with the lab guest before it loaded the balloon driver: a -64 MiB balloon change
was never taken (QEMU's balloon stayed at 256 MiB). With either guest a plugged vCPU is never
ejected again (no udev, nothing in the guest answers the unplug request): that is the
"not restored" case below.

Run under `flock /tmp/cutover-libvirt.lock` (one libvirtd per host). A missing component
FAILS with what to install."""

from __future__ import annotations

import asyncio
import http.server
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from activities.checks import CheckActivities
from adapters.libvirt.connection import open_connection
from adapters.libvirt.domain import DiskPlan, destroy_and_undefine, domain_xml
from cutover.inventory import VM
from cutover.lab import guest
from cutover.models import CheckInput, CheckResult
from cutover.site import LiveResizeProbe, SiteConfig

#: how long after the guest's last journal record it still counts as answering
SILENT_AFTER = 3 * guest.INTERVAL + 1.0


class _Answer(http.server.ThreadingHTTPServer):
    """200 while the guest's journal grows (a record within SILENT_AFTER), else 503."""

    daemon_threads = True

    def __init__(self, disk: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.disk, self.records, self.changed = disk, 0, 0.0
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            n = len(guest.read_journal(self.disk, "raw"))
            if n != self.records:
                self.records, self.changed = n, time.monotonic()
            self._stop.wait(0.5)

    def silent_for(self) -> float:
        return time.monotonic() - self.changed if self.changed else float("inf")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def stop(self) -> None:
        self._stop.set()
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Answer

    def do_GET(self) -> None:
        silent = self.server.silent_for()
        ok = silent < SILENT_AFTER
        body = f"journal {self.server.records} records, silent {silent:.1f}s\n".encode()
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Guest:
    uri: str
    name: str
    dom: Any
    answer: _Answer


BALLOON = "drivers/virtio/virtio_balloon"


def balloon_guest() -> guest.Guest:
    """The lab guest: its init loads virtio_balloon (so the lab's resize check works)."""
    assert BALLOON in guest.MODULES
    try:
        return guest.build()
    except guest.GuestError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def running(libvirtd_uri: str) -> Iterator[Guest]:
    built = balloon_guest()
    base = Path(tempfile.mkdtemp(prefix="cutover-test-resize-", dir="/var/tmp"))
    base.chmod(0o711)
    disk = guest.make_disk(base / "guest.raw", guest=built)
    name = f"cutover-test-resize-{uuid.uuid4().hex[:8]}"
    vm = VM(moref="vm-r", name="resize", memoryMB=guest.MIN_MEMORY_MIB, numCpu=1,
            guestId="debian12_64Guest")  # fmt: skip
    xml = domain_xml(name=name, vm=vm, disks=[DiskPlan(key="2000", path=str(disk), format="raw")],
                     nics=[], domain_type="qemu", application=name, workflow_id="t")  # fmt: skip
    # 1 vCPU online of 2: the second can be plugged live (libvirt's default hotpluggable)
    xml = xml.replace("<vcpu>1</vcpu>", '<vcpu placement="static" current="1">2</vcpu>')
    conn = open_connection(libvirtd_uri)
    dom = conn.defineXML(xml)
    answer = _Answer(disk)
    try:
        dom.create()
        deadline = time.monotonic() + 40
        while answer.records < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert answer.records >= 2, "the guest wrote no journal within 40 s of its start"
        yield Guest(libvirtd_uri, name, dom, answer)
    finally:
        answer.stop()
        destroy_and_undefine(dom)
        conn.close()
        shutil.rmtree(base, ignore_errors=True)


def probe_for(g: Guest, **over: Any) -> LiveResizeProbe:
    """The probe as a site binds it (through the site model: what YAML gives)."""
    check = {"type": "live-resize", "uri": g.uri, "domain": g.name, "url": g.answer.url,
             "settleSeconds": 15, "holdSeconds": 1, **over}  # fmt: skip
    probe = SiteConfig.model_validate({"checks": {"resize": check}}).checks["resize"]
    assert isinstance(probe, LiveResizeProbe)
    return probe


def run(probe: LiveResizeProbe) -> CheckResult:
    inp = CheckInput(name="resize_survives", phase="post", application="app", probe=probe)
    return asyncio.run(CheckActivities().run_check(inp))


def memory(g: Guest) -> int:
    return int(g.dom.memoryStats()["actual"]) // 1024


FULL = guest.MIN_MEMORY_MIB


def test_a_balloon_change_taken_and_given_back_passes(running: Guest) -> None:
    res = run(probe_for(running, memoryDeltaMiB=-64))
    assert res.passed, res.detail
    assert res.measured is not None
    assert res.measured.startswith(f"memory {FULL} -> {FULL - 64} -> {FULL} MiB;")
    assert f"after the resize: domain running, {running.answer.url}: status 200" in res.measured
    assert res.threshold == (
        f"domain {running.name}: memory -64 MiB taken live within 15s, running and "
        f"{running.answer.url} answering after 1s, then restored"
    )
    assert memory(running) == FULL


def test_a_change_beyond_the_maximum_is_refused_before_anything_changes(running: Guest) -> None:
    res = run(probe_for(running, vcpusDelta=2))
    assert (res.passed, res.measured) == (False, "not resized")
    assert res.detail == "vCPUs 1 +2 = 3 is outside 1..2 (the domain's maximum vCPUs)"
    res = run(probe_for(running, memoryDeltaMiB=64))
    assert res.detail == (
        f"memory {FULL} MiB +64 MiB = {FULL + 64} MiB is outside 1..{FULL} MiB (the domain's "
        "maximum memory)"
    )


def test_a_guest_answering_nothing_before_the_resize_is_not_resized(running: Guest) -> None:
    res = run(probe_for(running, memoryDeltaMiB=-64, url="http://127.0.0.1:9/"))
    assert (res.passed, res.measured) == (False, "not answering before the resize")
    assert res.detail.startswith("before any change: domain running, http://127.0.0.1:9/: no ")
    assert memory(running) == FULL


def test_a_guest_that_stops_after_the_resize_fails_and_is_not_restored(running: Guest) -> None:
    """The guest freezes once it gave the memory back (the domain paused): the probe finds
    it not running, and the balloon, which needs the guest to deflate, stays small."""

    def freeze_when_taken() -> None:
        deadline = time.monotonic() + 30
        while memory(running) != FULL - 64 and time.monotonic() < deadline:
            time.sleep(0.05)
        running.dom.suspend()

    t = threading.Thread(target=freeze_when_taken, daemon=True)
    t.start()
    try:
        res = run(probe_for(running, memoryDeltaMiB=-64, holdSeconds=2, settleSeconds=3))
    finally:
        t.join()
        running.dom.resume()
    assert not res.passed
    assert res.measured == f"memory {FULL} -> {FULL - 64} -> {FULL - 64} MiB"
    assert res.detail == (
        "the guest did not survive the resize: domain paused, QEMU paused; not restored: "
        f"memory at {FULL - 64} MiB after 3s, asked {FULL} MiB"
    )
    # running again, the guest deflates the balloon to the size last asked, and journals
    # again (the next test must meet a guest that answers: it was silent while paused)
    deadline = time.monotonic() + 20
    while (memory(running) != FULL or running.answer.silent_for() > 2 * guest.INTERVAL) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert memory(running) == FULL
    assert running.answer.silent_for() <= 2 * guest.INTERVAL, "the guest stays silent"


def test_a_vcpu_the_guest_never_gives_back_is_not_restored(running: Guest) -> None:
    """Last: the plugged vCPU stays (see the module's docstring)."""
    res = run(probe_for(running, vcpusDelta=1, settleSeconds=3))
    assert not res.passed
    assert res.measured == "vCPUs 1 -> 2 -> 2"
    assert res.detail.startswith("not restored: vCPUs at 2 after 3s, asked 1 (")
    assert "vcpu unplug request timed out" in res.detail


def test_site_validation_names_the_field() -> None:
    def problem(**check: Any) -> str:
        base = {"type": "live-resize", "domain": "d", **check}
        with pytest.raises(ValidationError) as caught:
            SiteConfig.model_validate({"checks": {"resize": base}})
        return str(caught.value)

    assert "non-zero `memoryDeltaMiB` and/or `vcpusDelta`" in problem()
    assert "non-zero `memoryDeltaMiB` and/or `vcpusDelta`" in problem(vcpusDelta=0)
    assert "both `host` and `port`" in problem(vcpusDelta=1, host="h")
    assert "`url`: expected an http" in problem(vcpusDelta=1, url="ftp://x")
    assert "settleSeconds" in problem(vcpusDelta=1, settleSeconds=0)
    assert "`domain`: unknown placeholder {app}" in problem(vcpusDelta=1, domain="{app}")
