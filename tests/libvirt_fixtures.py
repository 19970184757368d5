"""Fixtures for the KVM target: real qemu-img, real libvirt (test driver, embedded QEMU
driver, and a libvirtd started here for storage streams). A missing component FAILS the
test with what to install; nothing is skipped.

What the host needs (scripts/setup.sh): qemu-utils, qemu-system-x86, libvirt-daemon,
libvirt-daemon-driver-qemu, libvirt-clients; a `libvirt-qemu` user and group (the QEMU
driver resolves its compiled-in default user even when qemu.conf overrides it).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from adapters.libvirt.connection import ensure_event_loop
from adapters.libvirt.domain import remove_cutover_domains
from cutover.lab import libvirtd

QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
namespaces = [ ]
"""


def require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is missing: apt-get install -y {package}", pytrace=False)
    return path


def require_qemu_user() -> None:
    try:
        pwd.getpwnam("libvirt-qemu")
        grp.getgrnam("libvirt-qemu")
    except KeyError:
        pytest.fail(
            "the QEMU driver needs a libvirt-qemu user and group: groupadd -r libvirt-qemu; "
            "useradd -r -g libvirt-qemu libvirt-qemu",
            pytrace=False,
        )


@pytest.fixture
def qemu_dir() -> Iterator[Path]:
    """A directory QEMU's own user (libvirt-qemu) can reach, for staging and target pools:
    pytest's tmp_path cannot serve (pytest keeps its base 0700, per session). Removed after."""
    base = Path(tempfile.mkdtemp(prefix="cutover-test-", dir="/var/tmp"))
    base.chmod(0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def sh(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True)


def make_raw(path: Path, size: int, boot: bool = True) -> bytes:
    """A sparse raw disk with known content: an MBR boot signature and scattered data."""
    content = bytearray(size)
    if boot:
        content[446 + 4] = 0x83  # one Linux partition
        content[510:512] = b"\x55\xaa"
    for off in (1 << 20, size // 2, size - 4096):
        content[off : off + 4096] = os.urandom(4096)
    with path.open("wb") as f:
        f.truncate(size)
        for off in (0, 1 << 20, size // 2, size - 4096):
            f.seek(off)
            f.write(content[off : off + 4096])
    return bytes(content)


def make_vmdk(raw: Path, vmdk: Path) -> None:
    qemu_img = require("qemu-img", "qemu-utils")
    sh(qemu_img, "convert", "-f", "raw", "-O", "vmdk", str(raw), str(vmdk))


@pytest.fixture(scope="session")
def qemu_img() -> str:
    return require("qemu-img", "qemu-utils")


@pytest.fixture(scope="session")
def embed_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The QEMU driver in-process (`qemu:///embed`), no daemon; KVM when the host has it."""
    require("qemu-system-x86_64", "qemu-system-x86")
    require_qemu_user()
    root = tmp_path_factory.mktemp("embed")
    (root / "etc").mkdir()
    (root / "etc" / "qemu.conf").write_text(QEMU_CONF)
    ensure_event_loop()
    uri = f"qemu:///embed?root={root}"
    conn = libvirt.open(uri)  # the driver stays up while one connection is open
    yield uri
    for dom in conn.listAllDomains(0):
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    conn.close()


TEST_POOL_PREFIX = "cutover-test"


def drop_pools(conn: Any) -> None:
    for pool in conn.listAllStoragePools(0):
        if pool.name().startswith(TEST_POOL_PREFIX):
            with contextlib.suppress(libvirt.libvirtError):
                if pool.isActive():
                    pool.destroy()
            pool.undefine()


@pytest.fixture(scope="session")
def libvirtd_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A libvirtd (and virtlogd) started here (cutover.lab.libvirtd); stopped by PID. Domains
    run under it as real QEMU processes (KVM where /dev/kvm works, else TCG)."""
    require("libvirtd", "libvirt-daemon libvirt-daemon-driver-qemu")
    require_qemu_user()
    try:
        lv = libvirtd.start(tmp_path_factory.mktemp("libvirtd"))
    except libvirtd.LibvirtdError as exc:
        pytest.fail(str(exc), pytrace=False)
    conn = libvirt.open(lv.uri)
    drop_pools(conn)  # definitions a crashed run left in /etc/libvirt/storage
    conn.close()
    yield lv.uri
    with contextlib.suppress(libvirt.libvirtError):
        remove_cutover_domains(lv.uri)
        conn = libvirt.open(lv.uri)
        drop_pools(conn)
        conn.close()
    lv.stop()


def guest_write(dom: Any, offset: int, length: int, pattern: int, disk: int = 0) -> None:
    """Write into a running domain's disk the way its guest would: through QEMU's block
    layer (HMP `qemu-io` on the virtio device), so the write lands wherever the domain's
    disk chain puts guest writes (a raw volume, a qcow2 overlay's top)."""
    import libvirt_qemu

    dev = f"/machine/peripheral/virtio-disk{disk}/virtio-backend"
    out = libvirt_qemu.qemuMonitorCommand(
        dom,
        f'qemu-io -d {dev} "write -P {pattern:#x} {offset} {length}"',
        libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
    )
    # HMP answers nothing on success, an error text otherwise
    assert not out.strip(), f"qemu-io write into {dom.name()}: {out!r}"
