"""A guest that behaves like one: a real Linux kernel from Debian packages whose init
writes a journal to its disk at boot and every few seconds, as every real guest writes
(journal, mount counts) while it runs.

Pieces (all from Debian packages, see `APT` below; built without root and without
mounting, cached under `$XDG_CACHE_HOME/cutover/guest/<kernel>-<hash>/`):

- the kernel of `linux-image-cloud-amd64` (`/boot/vmlinuz-<ver>`);
- an initramfs: busybox (`busybox-static`), the modules the cloud kernel does not build in
  (`MODULES`, in load order: virtio for the disk, the ACPI power button) and `/init`
  (`INIT`), the journal writer, which powers off on a power button press;
- a FAT boot partition holding both, booted under BIOS by syslinux (installed through
  mtools) and under UEFI by systemd-boot (`\\EFI\\BOOT\\BOOTX64.EFI`, the fallback path
  firmware looks for), so one disk boots both ways.

The disk layout (`install` writes the first two, offsets are fixed so readers need no
partition parsing):

    0            MBR: syslinux's boot code, partition 1 (type 0xEF, active) = boot,
                 partition 2 (type 0x83, Linux) = the rest of the disk
    BOOT_OFFSET  the FAT boot partition (BOOT_SIZE)
    JOURNAL_OFFSET  the journal: JOURNAL_SLOTS records of RECORD_SIZE bytes, a ring
    DATA_OFFSET  free for the lab's data blocks (`cutover.lab.disk`)

A journal record is one text line padded to `RECORD_SIZE` bytes::

    cutover-journal n=<global> boot=<boot> seq=<in boot> up=<uptime s> id=<uuid>

`n` counts records across boots (the ring slot is `(n - 1) % JOURNAL_SLOTS`), `boot`
counts boots of this disk, `id` is random: a reader tells which records exist.
`read_journal` reads them from an image file while a running QEMU holds it: a raw file
directly, a qcow2 overlay through its backing chain with `qemu-img dd -U` (force-share:
QEMU's image lock refuses any other opener; ~7 ms).

Boot it as domain type `qemu` (TCG): under this machine's nested KVM the kernel hangs
(LAB.md). It needs `MIN_MEMORY_MIB` of memory.

    python -m cutover.lab.guest [DISK]   # build (cached); with DISK: install onto it
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from adapters.qemu.img import tool as qemu_tool

MiB = 1 << 20
SECTOR = 512

#: what the guest is built from (scripts/setup.sh installs them)
APT = (
    "linux-image-cloud-amd64", "busybox-static", "syslinux", "syslinux-common", "mtools",
    "dosfstools", "systemd-boot-efi",
)  # fmt: skip

BOOT_OFFSET = 1 * MiB
BOOT_SIZE = 24 * MiB
JOURNAL_OFFSET = BOOT_OFFSET + BOOT_SIZE
RECORD_SIZE = 512
JOURNAL_SLOTS = 2048
JOURNAL_SIZE = JOURNAL_SLOTS * RECORD_SIZE
#: where data that is not the guest's may start (the lab's data blocks)
DATA_OFFSET = 28 * MiB
MIN_DISK = DATA_OFFSET + MiB
#: memory the guest boots with: BIOS booted it with 128 MiB, but OVMF then faults loading
#: the 14 MB kernel (measured); 256 MiB boots both
MIN_MEMORY_MIB = 256
#: seconds between the records a running guest writes
INTERVAL = 2

#: modules of the cloud kernel (not built in), in load order: virtio for the disk; the
#: balloon, so a live memory resize (the day-two `live-resize` probe) is taken; evdev and
#: the ACPI button, so a power button press (`virsh shutdown`) reaches /init
MODULES = (
    "drivers/virtio/virtio_ring", "drivers/virtio/virtio", "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci_legacy_dev", "drivers/virtio/virtio_pci", "drivers/block/virtio_blk",
    "drivers/virtio/virtio_balloon", "drivers/input/evdev", "drivers/acpi/button",
)  # fmt: skip

CMDLINE = "rdinit=/init console=ttyS0 quiet"

INIT = f"""#!/bin/busybox sh
# cutover's lab guest: appends journal records to a fixed region of /dev/vda at boot
# and every {INTERVAL} s, each flushed to the disk (conv=fsync), like a journal; powers
# off on an ACPI power button press.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in {" ".join(Path(m).name for m in MODULES)}; do
  insmod /lib/modules/$m.ko || echo "guest: insmod $m failed"
done
# an ACPI power button press (a graceful shutdown) flushes and powers off
for e in /sys/class/input/event*; do
  if [ "$(cat $e/device/name 2>/dev/null)" = "Power Button" ]; then
    (dd if=/dev/input/${{e##*/}} bs=24 count=1 >/dev/null 2>&1
     echo "guest: power button, powering off"; sync; poweroff -f) &
  fi
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
if [ ! -b /dev/vda ]; then echo "guest: no /dev/vda"; while :; do sleep 3600; done; fi
START={JOURNAL_OFFSET // RECORD_SIZE}
SLOTS={JOURNAL_SLOTS}
# the highest record number and boot number on the disk
set -- $(dd if=/dev/vda bs={RECORD_SIZE} skip=$START count=$SLOTS 2>/dev/null | tr '\\000' '\\n' |
  awk '/^cutover-journal /{{split($2, a, "="); split($3, b, "=");
       if (a[2] + 0 > n) n = a[2] + 0; if (b[2] + 0 > m) m = b[2] + 0}}
       END {{print n + 0, m + 0}}')
n=$1
boot=$(($2 + 1))
seq=0
echo "guest: boot $boot, journal has $n records"
while :; do
  n=$((n + 1))
  seq=$((seq + 1))
  read up _ < /proc/uptime
  rec="cutover-journal n=$n boot=$boot seq=$seq up=$up id=$(cat /proc/sys/kernel/random/uuid)"
  printf '%-{RECORD_SIZE - 1}s\\n' "$rec" |
    dd of=/dev/vda bs={RECORD_SIZE} seek=$((START + (n - 1) % SLOTS)) count=1 \\
      iflag=fullblock conv=notrunc,fsync 2>/dev/null || echo "guest: journal write failed"
  echo "$rec"
  sleep {INTERVAL}
done
"""

SYSLINUX_CFG = f"""DEFAULT guest
PROMPT 0
TIMEOUT 0
LABEL guest
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND {CMDLINE}
"""

LOADER_CONF = "default guest.conf\ntimeout 0\n"
LOADER_ENTRY = f"""title cutover lab guest
linux /vmlinuz
initrd /initrd.img
options {CMDLINE}
"""

SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
BUSYBOX = Path("/bin/busybox")
#: bump when the build changes in a way the hash of its inputs does not see
FORMAT = 1


class GuestError(RuntimeError):
    """A piece of the guest is missing or could not be built (the message says which)."""


@dataclass(frozen=True)
class Guest:
    """The built pieces (files in the cache directory `dir`)."""

    version: str  # the kernel's
    key: str  # the cache key: <version>-<hash of the inputs>
    dir: Path
    kernel: Path
    initrd: Path
    boot: Path  # the FAT boot partition, BOOT_SIZE bytes
    mbr: Path  # sector 0 of a disk: boot code and partition table (size filled in later)


@dataclass(frozen=True)
class JournalRecord:
    n: int  # across boots: the record's number on this disk
    boot: int
    seq: int  # within the boot
    uptime: float  # seconds since the guest's kernel started
    id: str


# ------------------------------------------------------------------------ building


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cutover" / "guest"


def kernel_version() -> str:
    """The newest installed cloud kernel that has its modules."""
    found = sorted(
        (p.name.removeprefix("vmlinuz-") for p in Path("/boot").glob("vmlinuz-*-cloud-amd64")),
        key=_version_key,
    )
    found = [v for v in found if Path("/lib/modules", v).is_dir()]
    if not found:
        raise GuestError(
            "no cloud kernel in /boot with its modules: apt-get install linux-image-cloud-amd64 "
            "(scripts/setup.sh)"
        )
    return found[-1]


def _version_key(v: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", v)]


def _need(path: Path, package: str) -> Path:
    if not path.exists():
        raise GuestError(f"{path} is missing: apt-get install {package} (scripts/setup.sh)")
    return path


def _tool(name: str, package: str) -> str:
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if found is None:
        raise GuestError(f"{name} is missing: apt-get install {package} (scripts/setup.sh)")
    return found


def build(cache: Path | None = None) -> Guest:
    """The guest's pieces, built once per kernel version and inputs (idempotent; a build
    goes into a temporary directory renamed into place, so a crashed build leaves no
    half-made cache entry)."""
    version = kernel_version()
    kernel = _need(Path("/boot", f"vmlinuz-{version}"), "linux-image-cloud-amd64")
    modules = [
        _need(Path("/lib/modules", version, "kernel", m + ".ko"), "linux-image-cloud-amd64")
        for m in MODULES
    ]
    busybox = _need(BUSYBOX, "busybox-static")
    _need(SYSLINUX_MBR, "syslinux-common")
    _need(SYSTEMD_BOOT, "systemd-boot-efi")
    h = hashlib.sha256()
    for part in (str(FORMAT), INIT, SYSLINUX_CFG, LOADER_CONF, LOADER_ENTRY,
                 f"{BOOT_SIZE} {JOURNAL_OFFSET} {JOURNAL_SLOTS} {RECORD_SIZE}"):  # fmt: skip
        h.update(part.encode() + b"\0")
    for f in (busybox, SYSLINUX_MBR, SYSTEMD_BOOT):
        h.update(f.read_bytes())
    key = f"{version}-{h.hexdigest()[:16]}"
    root = cache if cache is not None else cache_root()
    final = root / key
    guest = Guest(
        version=version, key=key, dir=final, kernel=final / "vmlinuz",
        initrd=final / "initrd.img", boot=final / "boot.img", mbr=final / "mbr.bin",
    )  # fmt: skip
    if (final / "done").exists():
        return guest
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        shutil.copyfile(kernel, tmp / "vmlinuz")
        (tmp / "initrd.img").write_bytes(_initramfs(busybox, modules))
        _boot_partition(tmp)
        (tmp / "mbr.bin").write_bytes(_mbr())
        (tmp / "done").write_text(key + "\n")
        try:
            tmp.rename(final)
        except OSError:  # another process built it first: theirs is as good
            if not (final / "done").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return guest


def _initramfs(busybox: Path, modules: list[Path]) -> bytes:
    """A gzip'd newc cpio, byte-for-byte the same for the same inputs (fixed mtimes)."""
    entries: list[tuple[str, int, bytes]] = []
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules"):
        entries.append((d, 0o040755, b""))
    entries.append(("bin/busybox", 0o100755, busybox.read_bytes()))
    entries.append(("bin/sh", 0o120777, b"busybox"))
    entries.append(("dev/console", 0o020600, b""))  # char 5:1, for the kernel's own output
    for m in modules:
        entries.append((f"lib/modules/{m.name}", 0o100644, m.read_bytes()))
    entries.append(("init", 0o100755, INIT.encode()))
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate(entries, start=1):
        rdev = (5, 1) if name == "dev/console" else (0, 0)
        _cpio_entry(out, ino, name, mode, data, rdev)
    _cpio_entry(out, 0, "TRAILER!!!", 0, b"", (0, 0))
    return gzip.compress(out.getvalue(), compresslevel=6, mtime=0)


def _cpio_entry(
    out: io.BytesIO, ino: int, name: str, mode: int, data: bytes, rdev: tuple[int, int]
) -> None:
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
    out.write(name.encode() + b"\0")
    out.write(b"\0" * (-out.tell() % 4))
    out.write(data)
    out.write(b"\0" * (-out.tell() % 4))


def _boot_partition(d: Path) -> None:
    """boot.img: FAT with the kernel, the initramfs, syslinux (BIOS) and systemd-boot
    (UEFI), made with dosfstools and mtools on a plain file."""
    img = d / "boot.img"
    # mtools stamps files and directories with SOURCE_DATE_EPOCH: the same bytes every build
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C", "SOURCE_DATE_EPOCH": "1700000000"}
    mkfs = _tool("mkfs.fat", "dosfstools")
    _run([mkfs, "-C", "--invariant", "-i", "c07e0012", "-n", "CUTOVER", "-h",
          str(BOOT_OFFSET // SECTOR), str(img), str(BOOT_SIZE // 1024)], env)  # fmt: skip
    (d / "syslinux.cfg").write_text(SYSLINUX_CFG)
    (d / "loader.conf").write_text(LOADER_CONF)
    (d / "guest.conf").write_text(LOADER_ENTRY)
    mmd, mcopy = _tool("mmd", "mtools"), _tool("mcopy", "mtools")
    i = f"{img}"
    _run([mmd, "-i", i, "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries"], env)
    for src, dst in (
        (d / "vmlinuz", "::/vmlinuz"),
        (d / "initrd.img", "::/initrd.img"),
        (d / "syslinux.cfg", "::/syslinux.cfg"),
        (SYSTEMD_BOOT, "::/EFI/BOOT/BOOTX64.EFI"),
        (d / "loader.conf", "::/loader/loader.conf"),
        (d / "guest.conf", "::/loader/entries/guest.conf"),
    ):
        _run([mcopy, "-i", i, str(src), dst], env)
    # Debian's `syslinux` installs through mtools: no root, no mount
    _run([_tool("syslinux", "syslinux"), "--install", i], env)
    for f in ("syslinux.cfg", "loader.conf", "guest.conf"):
        (d / f).unlink()


def _mbr() -> bytes:
    """Syslinux's MBR boot code (it boots the active partition) and the partition table;
    the second partition's size is filled in per disk by `install`."""
    mbr = bytearray(SECTOR)
    code = SYSLINUX_MBR.read_bytes()[:440]
    mbr[: len(code)] = code
    mbr[440:444] = b"CUTV"  # disk signature
    _partition(mbr, 0, active=True, kind=0xEF, start=BOOT_OFFSET, size=BOOT_SIZE)
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def _partition(mbr: bytearray, i: int, *, active: bool, kind: int, start: int, size: int) -> None:
    e = 446 + 16 * i
    mbr[e] = 0x80 if active else 0
    mbr[e + 1 : e + 4] = b"\xfe\xff\xff"  # CHS unused: LBA only
    mbr[e + 4] = kind
    mbr[e + 5 : e + 8] = b"\xfe\xff\xff"
    mbr[e + 8 : e + 12] = (start // SECTOR).to_bytes(4, "little")
    mbr[e + 12 : e + 16] = (size // SECTOR).to_bytes(4, "little")


def _run(cmd: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise GuestError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()}")


# ---------------------------------------------------------------------- installing


def install(disk: Path, guest: Guest | None = None, block: int = 65536) -> list[int]:
    """Make the raw disk image `disk` (at least MIN_DISK bytes) boot the guest: the MBR
    (partition 2, Linux, spans the rest of the disk) and the boot partition. Zero blocks
    of the boot partition are left as holes. Returns the indices of the `block`-sized
    blocks written (for change tracking)."""
    g = guest or build()
    size = disk.stat().st_size
    if size < MIN_DISK:
        raise GuestError(f"{disk}: {size} bytes, the guest needs at least {MIN_DISK}")
    mbr = bytearray(g.mbr.read_bytes())
    _partition(mbr, 1, active=False, kind=0x83, start=JOURNAL_OFFSET,
               size=min(size, 1 << 41) - JOURNAL_OFFSET)  # fmt: skip
    written = {0}
    with disk.open("r+b") as f, g.boot.open("rb") as b:
        f.write(mbr)
        off = 0
        while chunk := b.read(block):
            at = BOOT_OFFSET + off
            if chunk.count(0) != len(chunk):
                f.seek(at)
                f.write(chunk)
                written.update(range(at // block, (at + len(chunk) - 1) // block + 1))
            off += len(chunk)
    return sorted(written)


def make_disk(path: Path, size: int = 64 * MiB, guest: Guest | None = None) -> Path:
    """A fresh sparse raw disk of `size` bytes that boots the guest (an empty journal)."""
    with path.open("wb") as f:
        f.truncate(size)
    install(path, guest)
    return path


# ------------------------------------------------------------------------- reading

_RECORD = re.compile(rb"cutover-journal n=(\d+) boot=(\d+) seq=(\d+) up=([0-9.]+) id=([\w-]+)")


def read_journal(path: Path, fmt: str) -> list[JournalRecord]:
    """The journal records on the disk image `path` (`fmt`: raw, qcow2, ...: what the
    guest sees, through the backing chain), by record number. Works while a running QEMU
    holds the image (force-share); a record being written at that instant may be torn and
    is then left out."""
    if fmt == "raw":  # the bytes are the guest's view: read them (QEMU's lock is advisory)
        with path.open("rb") as f:
            f.seek(JOURNAL_OFFSET)
            return parse_journal(f.read(JOURNAL_SIZE))
    # qemu-img dd of this version refuses skip= with count= ("cannot skip to specified
    # offset"): a raw node with offset/size on top of the image's format node reads just
    # the journal, through the backing chain
    file = str(path).replace(",", ",,")
    opts = (
        f"driver=raw,offset={JOURNAL_OFFSET},size={JOURNAL_SIZE},"
        f"file.driver={fmt},file.file.driver=file,file.file.filename={file}"
    )
    with tempfile.TemporaryDirectory(prefix="cutover-journal-") as tmp:
        out = Path(tmp) / "journal.raw"
        done = subprocess.run(
            [qemu_tool("qemu-img"), "dd", "-U", "--image-opts", "-O", "raw",
             f"bs={JOURNAL_SIZE}", "count=1", f"if={opts}", f"of={out}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise GuestError(f"cannot read the journal of {path}: {done.stderr.strip()}")
        data = out.read_bytes()
    return parse_journal(data)


def data_digest(path: Path, fmt: str) -> str:
    """SHA-256 of the disk as its guest sees it (through a qcow2 overlay's backing chain),
    the journal region read as zeros: equal for two disks that hold the same data whatever
    their guests journaled (a fresh source's journal is zeros). Works while QEMU holds it."""
    with tempfile.TemporaryDirectory(prefix="cutover-view-") as tmp:
        view = path
        if fmt != "raw":
            view = Path(tmp) / "view.raw"
            done = subprocess.run(
                [qemu_tool("qemu-img"), "convert", "-U", "-f", fmt, "-O", "raw", str(path),
                 str(view)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise GuestError(f"cannot read {path}: {done.stderr.strip()}")
        h = hashlib.sha256()
        with view.open("rb") as f:
            pos = 0
            while chunk := f.read(4 * MiB):
                lo, hi = (
                    max(JOURNAL_OFFSET - pos, 0),
                    min(JOURNAL_OFFSET + JOURNAL_SIZE - pos, len(chunk)),
                )
                if lo < hi:
                    chunk = chunk[:lo] + bytes(hi - lo) + chunk[hi:]
                h.update(chunk)
                pos += len(chunk)
        return h.hexdigest()


def wait_journal(
    path: Path, fmt: str, at_least: int, timeout: float, every: float = 0.2
) -> list[JournalRecord]:
    """The journal once it holds `at_least` records (a booting or running guest's); raises
    TimeoutError with what it found after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_journal(path, fmt)
        if len(records) >= at_least:
            return records
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{path}: {len(records)} journal records after {timeout:.0f} s, wanted {at_least}"
            )
        time.sleep(every)


def parse_journal(data: bytes) -> list[JournalRecord]:
    records = []
    for slot in range(0, len(data), RECORD_SIZE):
        m = _RECORD.match(data, slot, slot + RECORD_SIZE)
        if m is None:
            continue
        n, boot, seq, up, uid = m.groups()
        records.append(JournalRecord(int(n), int(boot), int(seq), float(up), uid.decode()))
    return sorted(records, key=lambda r: r.n)


def journal_summary(records: list[JournalRecord]) -> dict[str, object]:
    """What the lab's applications serve: how many records, and the last one."""
    last = records[-1] if records else None
    return {
        "records": len(records),
        "boots": len({r.boot for r in records}),
        "last": None if last is None else {
            "n": last.n, "boot": last.boot, "seq": last.seq, "uptime": last.uptime, "id": last.id,
        },
    }  # fmt: skip


if __name__ == "__main__":
    t0 = time.monotonic()
    g = build()
    print(f"{g.dir} ({time.monotonic() - t0:.1f}s)")
    if len(sys.argv) > 1:
        written = install(Path(sys.argv[1]), g)
        print(f"installed onto {sys.argv[1]}: {len(written)} blocks")
