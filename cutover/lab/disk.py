"""Disks for the simulator's VMs with data a run can check (the demo, the lab, tests).

A VM of our simulator has `[LocalDS_0] <vm>/disk1.vmdk`; its data lives in
`<datastore>/<vm>/disk1-flat.vmdk` and its change tracking in `disk1-ctk.json` (format in
`cutover.lab.vcsim`). `seed` writes a sparse disk there that boots the lab's guest
(`cutover.lab.guest`: a real kernel whose init writes a journal to the disk while it runs):
an MBR (a boot partition and a Linux partition, so the target's boot-sector check passes),
the FAT boot partition, an empty journal, and a data block every `stride` bytes from
`DATA_OFFSET` (after the journal); `write` changes blocks the way a running application
would (data and change tracking together).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

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


def write(datastore: Path, vm: str, offsets: list[int], tag: bytes = b"changed") -> int:
    """Overwrite one tracked block at each offset; returns the bytes written."""
    flat, ctk = paths(datastore, vm)
    blocks = sorted({off // BLOCK_SIZE for off in offsets})
    with flat.open("r+b") as f:
        for b in blocks:
            f.seek(b * BLOCK_SIZE)
            f.write((tag + os.urandom(16).hex().encode()).ljust(BLOCK_SIZE, b"+"))
    record_writes(ctk, blocks)
    return len(blocks) * BLOCK_SIZE


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
