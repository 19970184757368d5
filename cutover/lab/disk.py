"""Disks for the simulator's VMs with data a run can check (the demo, the lab, tests).

A VM of our simulator has `[LocalDS_0] <vm>/disk1.vmdk`; its data lives in
`<datastore>/<vm>/disk1-flat.vmdk` and its change tracking in `disk1-ctk.json` (format in
`cutover.lab.vcsim`). `seed` writes a sparse disk there: an MBR (one Linux partition, so the
target's boot-sector check passes; boot code that halts the CPU) and a data block every
`stride` bytes; `write` changes blocks the way a running application would (data and
change tracking together).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from cutover.lab.vcsim import BLOCK_SIZE, record_writes

MiB = 1 << 20


def paths(datastore: Path, vm: str) -> tuple[Path, Path]:
    return datastore / vm / "disk1-flat.vmdk", datastore / vm / "disk1-ctk.json"


def seed(datastore: Path, vm: str, size: int = 64 * MiB, stride: int = 4 * MiB) -> str:
    """A fresh disk for `vm`; returns its SHA-256."""
    flat, ctk = paths(datastore, vm)
    ctk.unlink(missing_ok=True)
    mbr = bytearray(512)
    # boot code that halts (cli; hlt; jmp back): a target booting this disk idles, it does
    # not spin a host core executing zeros
    mbr[0:4] = b"\xfa\xf4\xeb\xfd"
    mbr[446 + 4] = 0x83
    mbr[510:512] = b"\x55\xaa"
    with flat.open("wb") as f:
        f.truncate(size)
        f.write(mbr)
        for off in range(MiB, size, stride):
            f.seek(off)
            f.write(f"{vm} block at {off}\n".encode().ljust(BLOCK_SIZE, b"."))
    blocks = {0} | {off // BLOCK_SIZE for off in range(MiB, size, stride)}
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
