"""Reading a disk through a snapshot chain (flat base + vmfsSparse delta) against reading
the same bytes from one raw file, in the same run (issue 12's chain-aware data path).

    .venv/bin/python -m bench.chain_read [--size-mib 512] [--changed-mib 8 64] [--json]

A `size` flat base (every 64 KiB block distinct) and a delta on it (`create_delta`, as
ESXi makes one at a snapshot) holding `changed` MiB of 64 KiB writes at random blocks, made
through `CowdWriter` (512-byte grains). Measured, each against a raw file with the same
content read the same way (best of 3, alternating, caches dropped on our files):
(1) the whole disk in 16 MiB reads (a pre-copy of a snapshot's
point in time), (2) only the changed blocks (an incremental pass: CBT's extents). Reads go
through `Chain` over local files, the same code the data path runs over `/folder`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from adapters.vsphere.vmdk import Chain, CowdWriter, create_delta, local_fetch

MiB = 1 << 20
BS = 64 << 10


def _drop(path: Path) -> None:
    with path.open("rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def run(size: int, changed: int, root: Path) -> dict[str, Any]:
    flat, raw = root / "d-flat.vmdk", root / "raw.img"
    (root / "d.vmdk").write_text("")  # empty: the flat file is the base
    with flat.open("wb") as f:
        for off in range(0, size, BS):
            f.write(off.to_bytes(8, "little") * (BS // 8))
    top = create_delta(root, "d-000001.vmdk", "d.vmdk", size)
    rng = random.Random(12)
    blocks = sorted(rng.sample(range(size // BS), changed // BS))
    w = CowdWriter(root / "d-000001-delta.vmdk")
    for b in blocks:
        w.write(b * BS, os.urandom(BS))
    w.flush()
    w.close()
    chain = Chain(local_fetch(root), top.name, size)
    with raw.open("wb") as f:  # the same content in one raw file: the baseline
        for off in range(0, size, 16 * MiB):
            f.write(chain.read(off, 16 * MiB))

    def whole_chain() -> None:
        c = Chain(local_fetch(root), top.name, size)
        for off in range(0, size, 16 * MiB):
            c.read(off, 16 * MiB)

    def whole_raw() -> None:
        with raw.open("rb") as f:
            while f.read(16 * MiB):
                pass

    def changed_chain() -> None:
        c = Chain(local_fetch(root), top.name, size)
        for b in blocks:
            c.read(b * BS, BS)

    def changed_raw() -> None:
        with raw.open("rb") as f:
            for b in blocks:
                os.pread(f.fileno(), BS, b * BS)

    out: dict[str, Any] = {"sizeMiB": size // MiB, "changedMiB": changed // MiB}
    cases = (("whole", whole_chain, whole_raw), ("changed", changed_chain, changed_raw))
    for label, fn, base in cases:
        times: dict[str, float] = {}
        for _ in range(3):  # best of 3, alternating, each from dropped caches
            for name, run_one in (("chain", fn), ("raw", base)):
                for p in root.iterdir():
                    _drop(p)
                t0 = time.perf_counter()
                run_one()
                times[name] = min(times.get(name, 1e9), time.perf_counter() - t0)
        out[label] = {"chainS": round(times["chain"], 3), "rawS": round(times["raw"], 3),
                      "ratio": round(times["chain"] / times["raw"], 2)}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--changed-mib", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for changed in args.changed_mib:
        with tempfile.TemporaryDirectory(prefix="cutover-chain-") as tmp:
            rows.append(run(args.size_mib * MiB, changed * MiB, Path(tmp)))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"{r['sizeMiB']} MiB disk, {r['changedMiB']} MiB in the delta: whole disk "
              f"{r['whole']['chainS']} s vs raw {r['whole']['rawS']} s ({r['whole']['ratio']}x); "
              f"changed blocks {r['changed']['chainS']} s vs raw {r['changed']['rawS']} s "
              f"({r['changed']['ratio']}x)")  # fmt: skip


if __name__ == "__main__":
    main()
