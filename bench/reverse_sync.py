"""Reverse sync's I/O against what the target wrote, and against copying the whole disk.

    .venv/bin/python -m bench.reverse_sync [--size-gib 2] [--writes 200 2000] [--json]

A source disk (raw, half data) is the target's frozen base; a qcow2 overlay with 4 KiB
clusters on it (what `attach_target_storage_profile` makes) takes `writes` guest-sized
writes (4 KiB to 64 KiB at random offsets, through QEMU's block layer: `qemu-io`, as a
guest's writes land). Then the real `ReverseSync.reverse_sync` activity writes the overlay's
own ranges into a copy of the source disk through the datastore-mount sink. Reported: the
bytes the guest wrote, the activity's I/O (this process's `rchar + wchar`, /proc/self/io)
over 2 x those bytes (each written byte read once and written once is 1.0; goal <= 1.1),
its seconds, and seconds / the seconds of copying the whole disk (`cp --sparse=always`,
the baseline, same run). The result is checked: the source then equals the guest's view.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from activities.reverse_sync import ReverseSync
from adapters.vsphere.disk_sink import MountedDisk
from cutover import facts as F
from cutover.models import StepContext, StepInput
from cutover.ports import DiskSink
from cutover.runbook import Runbook
from cutover.site import SiteConfig

MiB = 1 << 20
KEY = "vm-1-2000"


def _io() -> int:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"]) + int(fields["wchar"])


def _disk(path: Path, size: int) -> None:
    rnd = random.Random(7)
    with path.open("wb") as f:
        f.truncate(size)
        for off in range(0, size, 2 * MiB):  # half data, half holes
            f.seek(off)
            f.write(rnd.randbytes(MiB))


def _guest_writes(overlay: Path, size: int, n: int, seed: int) -> int:
    rnd = random.Random(seed)
    cmds: list[str] = []
    for _ in range(n):
        length = rnd.choice([4096, 8192, 16384, 65536])
        off = rnd.randrange(0, size - length) // 4096 * 4096
        cmds += ["-c", f"write -P {rnd.randrange(1, 255)} {off} {length}"]
    subprocess.run(["qemu-io", "-f", "qcow2", *cmds, str(overlay)], check=True,
                   capture_output=True)  # fmt: skip
    done = subprocess.run(["qemu-img", "map", "--output=json", "-f", "qcow2", str(overlay)],
                          check=True, capture_output=True, text=True)  # fmt: skip
    return sum(e["length"] for e in json.loads(done.stdout) if e["depth"] == 0)


def _input(facts: dict[str, str]) -> StepInput:
    runbook = Runbook.model_validate({
        "application": "bench", "wave": 1, "sourcePlatform": "vmware-vsphere",
        "sourceCluster": "c", "targetPlatform": "kvm-libvirt", "rollbackWindowMinutes": 5,
        "cutoverSteps": ["convert_image"],
    })  # fmt: skip
    ctx = StepContext(workflowId="b", application="bench", wave="1", runbook=runbook,
                      site=SiteConfig(), facts=facts)  # fmt: skip
    return StepInput(step="reverse_sync", context=ctx)


def run(size: int, writes: int, root: Path) -> dict[str, Any]:
    base, overlay, source = root / "base.raw", root / "top.qcow2", root / "source-flat.vmdk"
    _disk(base, size)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096",
                    "-b", str(base), "-F", "raw", str(overlay)], check=True)  # fmt: skip
    written = _guest_writes(overlay, size, writes, writes)
    subprocess.run(["sync"], check=True)
    t0 = time.monotonic()
    subprocess.run(["cp", "--sparse=always", str(base), str(source)], check=True)
    subprocess.run(["sync"], check=True)
    copy_s = time.monotonic() - t0

    def sinks(_: StepContext) -> list[DiskSink]:
        descriptor = root / "source.vmdk"
        descriptor.touch()  # empty: the flat file is the disk (as the simulator makes them)
        return [MountedDisk(KEY, descriptor)]

    facts = {F.per_disk(F.TARGET_BASE, KEY): str(base),
             F.per_disk(F.TARGET_VOLUME, KEY): str(overlay)}  # fmt: skip
    io0, t0 = _io(), time.monotonic()
    result = ReverseSync(sinks).reverse_sync(_input(facts))
    seconds, io = time.monotonic() - t0, _io() - io0
    view = root / "view.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(overlay), str(view)],
                   check=True)  # fmt: skip
    assert filecmp.cmp(view, source, shallow=False), "the source does not equal the guest view"
    assert result.details["targetWrittenBytes"] == written
    for p in (view, source, overlay, base):
        p.unlink()
    return {
        "sizeGiB": size / (1 << 30),
        "guestWrites": writes,
        "writtenMiB": round(written / MiB, 2),
        "ioRatio": round(io / (2 * written), 3),
        "seconds": round(seconds, 3),
        "wholeDiskCopySeconds": round(copy_s, 3),
        "vsWholeCopy": round(seconds / copy_s, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=2)
    ap.add_argument("--writes", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    size = int(args.size_gib * (1 << 30))
    root = Path(tempfile.mkdtemp(prefix="cutover-bench-rs-", dir="/var/tmp"))
    try:
        rows = [run(size, n, root) for n in args.writes]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'disk':>6} {'writes':>7} {'written':>9} {'I/O / 2x':>9} {'seconds':>8} "
          f"{'cp disk':>8} {'vs cp':>7}")  # fmt: skip
    for r in rows:
        print(f"{r['sizeGiB']:5.1f}G {r['guestWrites']:7d} {r['writtenMiB']:7.2f}Mi "
              f"{r['ioRatio']:9.3f} {r['seconds']:8.3f} {r['wholeDiskCopySeconds']:8.3f} "
              f"{r['vsWholeCopy']:7.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
