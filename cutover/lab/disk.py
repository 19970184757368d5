"""Disks for the simulator's VMs with data a run can check (the demo, the lab, tests).

A VM of our simulator has `[LocalDS_0] <vm>/disk1.vmdk`; its data lives in
`<datastore>/<vm>/disk1-flat.vmdk` and its change tracking in `disk1-ctk.json` (format in
`cutover.lab.vcsim`). `seed` writes a sparse disk there that boots the lab's guest
(`cutover.lab.guest`: a real kernel whose init writes a journal to the disk while it runs):
an MBR (a boot partition and a Linux partition, so the target's boot-sector check passes),
the FAT boot partition, an empty journal, and a data block every `stride` bytes from
`DATA_OFFSET` (after the journal); `write` changes blocks the way a running application
would (data and change tracking together), into the top of the disk's snapshot chain (a
snapshot freezes the flat file and puts a delta on it, as on ESXi: `lab/vcsim/chain.go`);
`read` and `current_digest` read that chain's current content.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

from adapters.vsphere.vmdk import SECTOR, Chain, LocalDisk, chain_lock, current_top, local_fetch
from cutover.lab import guest
from cutover.lab.vcsim import BLOCK_SIZE, record_writes

MiB = 1 << 20
#: the first data block: after the guest's boot partition and journal
DATA_OFFSET = guest.DATA_OFFSET


def paths(datastore: Path, vm: str) -> tuple[Path, Path]:
    return datastore / vm / "disk1-flat.vmdk", datastore / vm / "disk1-ctk.json"


def seed(datastore: Path, vm: str, size: int = 64 * MiB, stride: int = 4 * MiB) -> str:
    """A fresh disk for `vm`; returns its SHA-256."""
    flat, ctk = paths(datastore, vm)
    ctk.unlink(missing_ok=True)
    with flat.open("wb") as f:
        f.truncate(size)
    blocks = set(guest.install(flat, block=BLOCK_SIZE))
    with flat.open("r+b") as f:
        for off in range(DATA_OFFSET, size, stride):
            f.seek(off)
            f.write(f"{vm} block at {off}\n".encode().ljust(BLOCK_SIZE, b"."))
    blocks |= {off // BLOCK_SIZE for off in range(DATA_OFFSET, size, stride)}
    record_writes(ctk, sorted(blocks), capacity=size)
    return digest(flat)


def descriptor(datastore: Path, vm: str) -> Path:
    return datastore / vm / "disk1.vmdk"


def write_at(datastore: Path, vm: str, offset: int, data: bytes, *, track: bool = True) -> None:
    """Write into the VM's disk where a running guest would: the top of its chain, under
    the chain's lock; recorded in change tracking unless `track` is False (a CBT miss)."""
    base = descriptor(datastore, vm)
    flat, ctk = paths(datastore, vm)
    end = offset + len(data)
    with chain_lock(base):
        top = current_top(base) if base.exists() else None
        if top is None or top == base:  # no snapshot: the flat file is the disk
            with flat.open("r+b") as f:
                os.pwrite(f.fileno(), data, offset)
        else:
            # a delta takes whole sectors: read the rest of the edge sectors through the chain
            lo, hi = offset - offset % SECTOR, -(-end // SECTOR) * SECTOR
            if (lo, hi) != (offset, end):
                buf = bytearray(_read(base, top, lo, hi - lo))
                buf[offset - lo : end - lo] = data
                data, offset = bytes(buf), lo
            target = LocalDisk(top)
            try:
                target.write(offset, data)
                target.flush()
            finally:
                target.close()
    if track:
        record_writes(ctk, range(offset // BLOCK_SIZE, -(-end // BLOCK_SIZE)))


def write(datastore: Path, vm: str, offsets: list[int], tag: bytes = b"changed") -> int:
    """Overwrite one tracked block at each offset; returns the bytes written."""
    blocks = sorted({off // BLOCK_SIZE for off in offsets})
    for b in blocks:
        data = (tag + os.urandom(16).hex().encode()).ljust(BLOCK_SIZE, b"+")
        write_at(datastore, vm, b * BLOCK_SIZE, data, track=False)
    record_writes(paths(datastore, vm)[1], blocks)
    return len(blocks) * BLOCK_SIZE


def _read(base: Path, top: Path, offset: int, length: int) -> bytes:
    flat = base.with_name(base.name.removesuffix(".vmdk") + "-flat.vmdk")
    size = flat.stat().st_size
    if top == base:
        with flat.open("rb") as f:
            return os.pread(f.fileno(), length, offset).ljust(
                min(length, max(0, size - offset)), b"\0"
            )
    return Chain(local_fetch(base.parent), top.name, size).read(offset, length)


def read(datastore: Path, vm: str, offset: int, length: int) -> bytes:
    """The VM's disk as its guest sees it now (through the snapshot chain)."""
    base = descriptor(datastore, vm)
    with chain_lock(base):
        return _read(base, current_top(base) if base.exists() else base, offset, length)


def has_delta(datastore: Path, vm: str) -> bool:
    base = descriptor(datastore, vm)
    return base.exists() and current_top(base) != base


def view(datastore: Path, vm: str, dest: Path) -> Path:
    """The disk's current content as one raw file: the flat file itself when no snapshot
    sits on it, else `dest`, written from the chain (sparse)."""
    flat, _ = paths(datastore, vm)
    if not has_delta(datastore, vm):
        return flat
    size = flat.stat().st_size
    tmp = dest.with_name(dest.name + ".tmp")
    with tmp.open("wb") as f:
        f.truncate(size)
        for off in range(0, size, 16 * MiB):
            data = read(datastore, vm, off, min(16 * MiB, size - off))
            if data.strip(b"\0"):
                os.pwrite(f.fileno(), data, off)
    tmp.replace(dest)
    return dest


def current_digest(datastore: Path, vm: str) -> str:
    """SHA-256 of the disk's current content (through its snapshot chain)."""
    size = paths(datastore, vm)[0].stat().st_size
    h = hashlib.sha256()
    for off in range(0, size, 16 * MiB):
        h.update(read(datastore, vm, off, min(16 * MiB, size - off)))
    return h.hexdigest()


def data_digest(datastore: Path, vm: str) -> str:
    """`guest.data_digest` of the disk's current content (journal region as zeros)."""
    with tempfile.TemporaryDirectory(prefix="cutover-disk-") as tmp:
        return guest.data_digest(view(datastore, vm, Path(tmp) / "view.raw"), "raw")


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(16 * MiB):
            h.update(chunk)
    return h.hexdigest()


if __name__ == "__main__":  # python -m cutover.lab.disk DATASTORE VM [SIZE_MIB]
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m cutover.lab.disk DATASTORE VM [SIZE_MIB]")
    size = int(sys.argv[3]) * MiB if len(sys.argv) == 4 else 64 * MiB
    print(seed(Path(sys.argv[1]), sys.argv[2], size=size))
