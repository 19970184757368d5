"""Warm data path benchmark: pre-copy against `cp --sparse=always`, and an incremental pass.

    .venv/bin/python -m bench.precopy [--size-gib 2] [--rounds 2] [--dir DIR] [--json]

A `size` disk, half of it data (64 MiB data / 64 MiB hole, every 1 MiB block distinct),
in a temporary directory under DIR (default: the system's). Both copies run in the same
run, alternating, from the same page-cache state: before each copy the source's cached
pages are dropped with posix_fadvise(DONTNEED) on our own files only (no global sync or
drop_caches), and each copy's time includes an fdatasync of its output (the pre-copy
does that itself; cp is followed by one).

Incremental: 2% of the disk's blocks (of the digest block size, spread over data and
holes) are overwritten with new random bytes, then one digest-fallback pass runs (local
files have no CBT, so it reads the whole source: bytes moved, not bytes read, is what the
ratio measures). Reported: bytes moved / bytes changed, and its seconds against the full copy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from activities.disks import DiskActivities
from adapters.localdisk import LocalFileSource
from adapters.staging.copy import BLOCK
from cutover.models import StepContext, StepInput
from cutover.ports import DiskSource
from cutover.runbook import Runbook
from cutover.site import SiteConfig
from tests.factories import SEED

MiB = 1 << 20


def make_disk(path: Path, size: int) -> None:
    base = bytearray(os.urandom(64 * MiB))
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, 128 * MiB):
            for b in range(0, 64 * MiB, MiB):  # make every block unique
                base[b : b + 8] = (off + b).to_bytes(8, "little")
            f.seek(off)
            f.write(base)
        os.fdatasync(f.fileno())


def drop(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def step_input(staging: Path, app: str, step: str, n: int = 0) -> StepInput:
    rb = Runbook.model_validate({**SEED, "application": app, "vms": ["bench"]})
    ctx = StepContext(
        workflowId=f"bench-{app}",
        application=app,
        wave="0",
        runbook=rb,
        site=SiteConfig(stagingDir=str(staging)),
    )
    return StepInput(step=step, context=ctx, passNumber=n)


def run(size: int, rounds: int, base: Path | None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-precopy-", dir=base))
    try:
        src = work / "disk.raw"
        make_disk(src, size)
        data = os.stat(src).st_blocks * 512

        def factory(ctx: StepContext, precopy: bool) -> list[DiskSource]:
            return [LocalFileSource(src)]

        acts = DiskActivities(factory)
        cp_s: list[float] = []
        ours_s: list[float] = []
        app = "bench"
        for r in range(rounds):
            dst = work / f"cp-{r}.raw"
            drop(src)
            t0 = time.perf_counter()
            subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
            fd = os.open(dst, os.O_RDONLY)
            os.fdatasync(fd)
            os.close(fd)
            cp_s.append(time.perf_counter() - t0)
            dst.unlink()

            shutil.rmtree(work / "staging", ignore_errors=True)
            app = f"bench-{r}"
            drop(src)
            t0 = time.perf_counter()
            res = acts.pre_copy(step_input(work / "staging", app, "pre_copy"))
            ours_s.append(time.perf_counter() - t0)
            copy = Path(res.facts["staging_path.disk"])
            assert os.stat(copy).st_blocks * 512 <= data + 2 * BLOCK, "holes were filled"

        # incremental: 2% of the blocks, over the whole disk (data and holes)
        blocks = size // BLOCK
        rng = random.Random(42)
        chosen = rng.sample(range(blocks), max(1, blocks * 2 // 100))
        with open(src, "r+b") as f:
            for i in chosen:
                f.seek(i * BLOCK)
                f.write(os.urandom(BLOCK))
            os.fdatasync(f.fileno())
        changed = len(chosen) * BLOCK
        drop(src)
        t0 = time.perf_counter()
        inc = acts.incremental_sync(step_input(work / "staging", app, "incremental_sync", 1))
        inc_s = time.perf_counter() - t0
        moved = int(inc.details["bytesMoved"])
        best_cp, best_ours = min(cp_s), min(ours_s)
        return {
            "diskBytes": size,
            "dataBytes": data,
            "blockSize": BLOCK,
            "cpSeconds": [round(x, 3) for x in cp_s],
            "precopySeconds": [round(x, 3) for x in ours_s],
            "cpMiBps": round(size / MiB / best_cp, 1),
            "precopyMiBps": round(size / MiB / best_ours, 1),
            "throughputVsCp": round(best_cp / best_ours, 3),
            "throughputVsCpMedian": round(
                sorted(cp_s)[len(cp_s) // 2] / sorted(ours_s)[len(ours_s) // 2], 3
            ),
            "incrementalMode": inc.details["mode.disk"],
            "bytesChanged": changed,
            "bytesMoved": moved,
            "movedOverChanged": round(moved / changed, 4),
            "incrementalBytesRead": int(inc.details["bytesRead"]),
            "incrementalSeconds": round(inc_s, 3),
            "incrementalVsFullCopy": round(inc_s / best_ours, 3),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = run(int(args.size_gib * (1 << 30)), args.rounds, args.dir)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for k, v in out.items():
        print(f"{k:24} {v}")
    print(
        f"\npre-copy vs cp: {out['throughputVsCp']}x (target >= 0.8)   "
        f"incremental moved/changed: {out['movedOverChanged']} (target <= 1.05)"
    )


if __name__ == "__main__":
    main()
