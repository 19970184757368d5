"""The lab's guest (cutover.lab.guest): a real Debian kernel and a busybox initramfs whose
init writes journal records to its disk at boot and every few seconds. Real QEMU domains
(type qemu: TCG, as the lab's site asks) defined through the embedded libvirt QEMU driver
with the target's own domain XML; BIOS (syslinux) and UEFI (OVMF, systemd-boot) boots of
the same disk, from a raw volume and from a qcow2 overlay on a frozen raw base. A missing
package FAILS with what to install."""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from temporalio.exceptions import ApplicationError

from adapters.libvirt.connection import open_connection
from adapters.libvirt.domain import (
    DiskPlan,
    destroy_and_undefine,
    domain_type,
    domain_xml,
    wanted_domain_type,
)
from cutover.errors import ErrorKind
from cutover.inventory import VM
from cutover.lab import apps, disk, guest
from cutover.lab.guest import JournalRecord, read_journal
from cutover.site import Libvirt, LibvirtPlatform, SiteConfig
from tests.libvirt_fixtures import require, sh

#: a running guest's first record, from `virDomainCreate` (TCG): measured ~6 s (BIOS)
FIRST_RECORD_S = 20.0


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> guest.Guest:
    try:
        return guest.build(tmp_path_factory.mktemp("guest-cache"))
    except guest.GuestError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def conn(embed_uri: str) -> Iterator[Any]:
    c = open_connection(embed_uri)
    yield c
    c.close()


def _vm(firmware: str = "bios") -> VM:
    return VM(moref="vm-g", name="guest", memoryMB=guest.MIN_MEMORY_MIB, firmware=firmware,
              guestId="debian12_64Guest")  # fmt: skip


def _boot(conn: Any, name: str, path: Path, fmt: str, firmware: str = "bios") -> Any:
    """A domain as the target defines it (domain_xml), of the type the lab's site asks."""
    xml = domain_xml(
        name=name, vm=_vm(firmware), disks=[DiskPlan(key="2000", path=str(path), format=fmt)],
        nics=[], domain_type=domain_type(conn, "qemu"), application=name, workflow_id="t",
    )  # fmt: skip
    dom = conn.defineXML(xml)
    dom.create()
    return dom


def _records(path: Path, fmt: str, at_least: int, timeout: float) -> list[JournalRecord]:
    try:
        return guest.wait_journal(path, fmt, at_least, timeout)
    except TimeoutError as exc:
        pytest.fail(str(exc), pytrace=False)


def _consistent(records: list[JournalRecord], boot: int = 1) -> None:
    assert [r.n for r in records] == list(range(1, len(records) + 1))
    mine = [r for r in records if r.boot == boot]
    assert [r.seq for r in mine] == list(range(1, len(mine) + 1))
    assert len({r.id for r in records}) == len(records)  # every record its own


# -------------------------------------------------------------------------- image


def test_guest_image_builds_from_debian_packages_once_and_the_same(tmp_path: Path) -> None:
    for tool, package in (
        ("mcopy", "mtools"),
        ("syslinux", "syslinux"),
        ("qemu-img", "qemu-utils"),
    ):
        require(tool, package)
    started = time.monotonic()
    try:
        first = guest.build(tmp_path / "a")
    except guest.GuestError as exc:
        pytest.fail(str(exc), pytrace=False)
    cold = time.monotonic() - started
    started = time.monotonic()
    again = guest.build(tmp_path / "a")
    warm = time.monotonic() - started
    assert again == first and warm < 0.5, f"cached build took {warm:.2f}s (cold {cold:.2f}s)"
    assert first.key.startswith(first.version) and first.version.endswith("-cloud-amd64")
    assert first.boot.stat().st_size == guest.BOOT_SIZE
    # a fresh cache builds the same bytes (fixed timestamps in the initramfs and the FAT)
    other = guest.build(tmp_path / "b")
    for f in ("kernel", "initrd", "boot", "mbr"):
        assert getattr(other, f).read_bytes() == getattr(first, f).read_bytes(), f
    # an installed disk: boot partition (0xEF, active) then Linux, the journal empty
    d = guest.make_disk(tmp_path / "d.raw", guest=first)
    mbr = d.read_bytes()[:512]
    assert mbr[510:512] == b"\x55\xaa" and mbr[446] == 0x80
    assert (mbr[446 + 4], mbr[462 + 4]) == (0xEF, 0x83)
    assert read_journal(d, "raw") == []


def test_lab_disk_boots_the_guest_and_keeps_its_data_blocks(tmp_path: Path) -> None:
    (tmp_path / "vm").mkdir()
    disk.seed(tmp_path, "vm", size=64 << 20)
    flat, ctk = disk.paths(tmp_path, "vm")
    data = flat.read_bytes()
    assert data[510:512] == b"\x55\xaa" and data[446 + 16 + 4] == 0x83
    assert data[guest.BOOT_OFFSET : guest.BOOT_OFFSET + 3] == b"\xeb\x58\x90"  # FAT boot sector
    offsets = range(disk.DATA_OFFSET, 64 << 20, 4 << 20)
    for off in offsets:
        assert data[off : off + 20].startswith(f"vm block at {off}".encode())
    assert disk.DATA_OFFSET >= guest.JOURNAL_OFFSET + guest.JOURNAL_SIZE
    changes = {int(b) for b in json.loads(ctk.read_text())["changes"]}
    assert {off // 65536 for off in offsets} <= changes and 0 in changes
    assert guest.BOOT_OFFSET // 65536 in changes  # the boot partition is tracked data too


def test_lab_source_side_serves_the_journal_its_disk_holds(tmp_path: Path) -> None:
    """Records on a source disk (as a reverse sync brings them back) show in what the
    lab's source service answers; its data digest ignores them."""
    (tmp_path / "vm").mkdir()
    disk.seed(tmp_path, "vm", size=64 << 20)
    flat, _ = disk.paths(tmp_path, "vm")
    data_before = guest.data_digest(flat, "raw")
    with flat.open("r+b") as f:
        for n in (1, 2):
            f.seek(guest.JOURNAL_OFFSET + (n - 1) * guest.RECORD_SIZE)
            rec = f"cutover-journal n={n} boot=1 seq={n} up={n}.5 id=rec-{n}"
            f.write(rec.encode().ljust(guest.RECORD_SIZE - 1) + b"\n")
    side = apps.Side("shop", "source", "127.0.0.1:0", disk=flat, up=True)
    server = apps._Server(side, apps.Knobs(tmp_path / "knobs.json"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        served = _get(server.server_address[1], "/shop/")
    finally:
        server.shutdown()
    assert served["journal"] == {
        "records": 2, "boots": 1,
        "last": {"n": 2, "boot": 1, "seq": 2, "uptime": 2.5, "id": "rec-2"},
    }  # fmt: skip
    assert served["dataSha256"] == data_before != served["sha256"] == disk.digest(flat)


# ---------------------------------------------------------------- domain type


def test_domain_type_follows_the_site(conn: Any) -> None:
    offered = {"qemu"} | ({"kvm"} if Path("/dev/kvm").exists() else set())
    assert domain_type(conn, "qemu") == "qemu"
    assert domain_type(conn) == ("kvm" if "kvm" in offered else "qemu")
    site = SiteConfig(libvirt=Libvirt(uri="test:///default", domainType="qemu"))
    assert wanted_domain_type(site, "kvm-libvirt") == "qemu"
    assert wanted_domain_type(SiteConfig(libvirt=Libvirt()), None) == "auto"
    bound = SiteConfig(
        libvirt=Libvirt(domainType="qemu"),
        targetPlatforms={"kvm-libvirt": LibvirtPlatform(domainType="kvm")},
    )
    assert wanted_domain_type(bound, "kvm-libvirt") == "kvm"
    test_conn = libvirt.open("test:///default")
    try:
        assert domain_type(test_conn, "qemu") == "test"  # the test driver offers nothing else
    finally:
        test_conn.close()
    with pytest.raises(ApplicationError, match="xen") as caught:
        domain_type(conn, "xen")
    assert caught.value.type == ErrorKind.CONFIG_ERROR.value


# ------------------------------------------------------------------- real boots


def test_lab_disk_boots_and_journals_while_it_runs_and_powers_off_on_acpi(
    conn: Any, built: guest.Guest, qemu_dir: Path
) -> None:
    """The lab's source disk (disk.seed) as a raw volume: the guest boots, its journal
    grows while it runs, a graceful shutdown (ACPI power button) stops it, and the lab's
    data blocks are untouched."""
    (qemu_dir / "vm").mkdir()
    disk.seed(qemu_dir, "vm", size=64 << 20)
    vol, _ = disk.paths(qemu_dir, "vm")
    seeded = vol.read_bytes()
    started = time.monotonic()
    dom = _boot(conn, "guest-raw", vol, "raw")
    try:
        first = _records(vol, "raw", 1, FIRST_RECORD_S)
        print(f"\nBIOS, raw: first record {time.monotonic() - started:.1f}s after start")
        assert first[0].boot == 1 and first[0].seq == 1
        later = _records(vol, "raw", len(first) + 2, 4 * guest.INTERVAL + 5)
        assert dom.isActive() and later[: len(first)] == first
        _consistent(later)
        dom.shutdown()  # the ACPI power button, as `virsh shutdown`
        deadline = time.monotonic() + 15
        while dom.isActive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not dom.isActive(), "the guest ignored the ACPI power button"
    finally:
        destroy_and_undefine(dom)
    now = vol.read_bytes()
    journal = slice(guest.JOURNAL_OFFSET, guest.JOURNAL_OFFSET + guest.JOURNAL_SIZE)
    assert now[: journal.start] == seeded[: journal.start]  # boot code and partition
    assert now[journal.stop :] == seeded[journal.stop :]  # the lab's data blocks
    # what the lab's apps serve as its data: the seeded disk's, whatever the guest journaled
    assert guest.data_digest(vol, "raw") == hashlib.sha256(seeded).hexdigest()


def test_guest_writes_into_a_qcow2_overlay_and_leaves_its_base_frozen(
    conn: Any, built: guest.Guest, qemu_dir: Path, embed_uri: str
) -> None:
    qemu_img = require("qemu-img", "qemu-utils")
    base = guest.make_disk(qemu_dir / "base.raw", guest=built)
    top = qemu_dir / "top.qcow2"
    sh(qemu_img, "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(top))
    frozen = disk.digest(base)
    started = time.monotonic()
    dom = _boot(conn, "guest-overlay", top, "qcow2")
    server = None
    try:
        records = _records(top, "qcow2", 2, FIRST_RECORD_S + 2 * guest.INTERVAL)
        print(f"\nBIOS, qcow2 overlay: 2 records {time.monotonic() - started:.1f}s after start")
        _consistent(records)
        assert read_journal(base, "raw") == []  # the records are in the overlay only
        # the lab's target side serves what the running guest wrote (through the overlay)
        side = apps.Side("guest-overlay", "target", "127.0.0.1:0",
                         refresh=apps._target_refresher(embed_uri))  # fmt: skip
        server = apps._Server(side, apps.Knobs(qemu_dir / "knobs.json"))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        served = _get(server.server_address[1], "/guest-overlay/")
        assert served["journal"]["records"] >= len(records)
        assert served["journal"]["last"]["boot"] == 1 and side.fmt == "qcow2"
        assert side.disk == top
        # the data it serves is the source's: the guest wrote nothing but its journal
        assert served["dataSha256"] == guest.data_digest(base, "raw") == frozen
        # a second boot of the same disk goes on from the journal it finds
        dom.destroy()
        before = read_journal(top, "qcow2")
        dom.create()
        after = _records(top, "qcow2", len(before) + 1, FIRST_RECORD_S)
        assert after[: len(before)] == before and after[-1].boot == 2
        _consistent(after, boot=2)
    finally:
        if server is not None:
            server.shutdown()
        destroy_and_undefine(dom)
    assert disk.digest(base) == frozen


def test_uefi_guest_boots_with_ovmf_and_writes(
    conn: Any, built: guest.Guest, qemu_dir: Path
) -> None:
    for f in ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/qemu/firmware/60-edk2-x86_64.json"):
        if not Path(f).exists():
            pytest.fail(f"{f} is missing: apt-get install ovmf", pytrace=False)
    vol = guest.make_disk(qemu_dir / "efi.img", guest=built)
    started = time.monotonic()
    dom = _boot(conn, "guest-efi", vol, "raw", firmware="efi")
    try:
        xml = dom.XMLDesc(0)
        # libvirt picked OVMF without Secure Boot (its default, Microsoft's keys enrolled,
        # refuses the unsigned loader) and made the domain its own VARS copy
        assert "OVMF_CODE_4M.fd" in xml and "secure='yes'" not in xml and "<nvram" in xml
        records = _records(vol, "raw", 1, FIRST_RECORD_S + 10)
        print(f"\nUEFI, raw: first record {time.monotonic() - started:.1f}s after start")
        _consistent(records)
    finally:
        destroy_and_undefine(dom)


def _get(port: int, path: str) -> dict[str, Any]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        body: dict[str, Any] = json.loads(r.read())
        assert r.status == 200, body
        return body
    finally:
        c.close()
