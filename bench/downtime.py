"""Downtime data work of a warm cutover against a cold one, same VM, same run.

    .venv/bin/python -m bench.downtime [--sizes-gib 2 8] [--changed 0.02] [--json]

For each size: a source disk half data, half holes (64 MiB of every 128 MiB; every 1 MiB
block distinct) with a change-tracking
file beside it (the simulator's format, so the final pass uses CBT as against vSphere).

- **warm**: pre-copy and one incremental pass while the "source serves" (not timed as
  downtime); then `changed` of the 1 MiB blocks are rewritten (the application's last
  writes, recorded in the tracking file) and the window starts.
- **cold**: no warm phase; the window starts right away (the full copy happens in it).

The window is what runs between quiesce and a running target, the real activities called in
order in this process: `final_data_sync`, `convert_image`, `attach_target_storage_profile`
and `validate_guest_tools_and_drivers` against a private libvirtd, and `power_on_target` (a
real QEMU domain), for each target format (`--formats`, default raw and qcow2). Its I/O is
this process's `rchar + wchar` from /proc/self/io over the window (every byte read or
written through a syscall: the source, staging, digest maps, the tracking file; and, as
Linux adds reaped children to it, `qemu-nbd` writing the changed blocks into a qcow2 image
and `qemu-img` runs; socket transfers between them are not counted). Reported: downtime
seconds, I/O / (2 x changed bytes) (each changed byte read once and written once is 1.0;
target <= 1.1), and warm / cold downtime (target <= 0.25 at 8 GiB). The source's cached
pages are dropped before each window. Temporal is left out on purpose: its per-step cost
is the same in both and measured in bench.orchestration.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from activities.convert import ConvertActivities
from activities.disks import DiskActivities
from activities.libvirt_target import LibvirtTarget
from adapters.libvirt.domain import remove_cutover_domains
from adapters.localdisk import LocalFileSource
from adapters.qemu.mirror import TargetMirror
from adapters.staging.copy import BLOCK
from bench.precopy import drop, make_disk
from cutover.inventory import VM, Disk
from cutover.lab import libvirtd
from cutover.lab.vcsim import BLOCK_SIZE, record_writes
from cutover.models import StepContext, StepInput, StepResult
from cutover.ports import DiskSource
from cutover.runbook import Runbook
from cutover.site import Libvirt, SiteConfig, StorageMapping
from tests.factories import SEED

MiB, GiB = 1 << 20, 1 << 30
VM_NAME = "bench-vm"
DISK_ID = f"{VM_NAME}-2000"


def io() -> int:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"]) + int(fields["wchar"])


class Run:
    """One cutover's activities and the facts they pass along (as the workflow does)."""

    def __init__(
        self, app: str, staging: Path, src: Path, uri: str, size: int, fmt: str = "raw"
    ) -> None:
        vm = VM(moref="vm-1", name=VM_NAME, numCpu=1, memoryMB=64,
                disks=[Disk(key=2000, capacityBytes=size, datastore="ds1")])  # fmt: skip
        rb = Runbook.model_validate({**SEED, "application": app, "vms": [VM_NAME],
                                     "endpoint": {"targetAddress": "127.0.0.1:1"}})  # fmt: skip
        site = SiteConfig(
            stagingDir=str(staging),
            libvirt=Libvirt(uri=uri),
            storageMappings=[
                StorageMapping(sourceDatastore="ds1", targetPool=f"bench-{app}", format=fmt)
            ],
        )
        self.ctx = StepContext(workflowId=f"cutover-{app}", application=app, wave="0",
                               runbook=rb, site=site,
                               facts={f"source_vm.{VM_NAME}": vm.model_dump_json()})  # fmt: skip

        def sources(ctx: StepContext, precopy: bool) -> list[DiskSource]:
            return [LocalFileSource(src, name=DISK_ID)]

        mirror = TargetMirror()  # as the worker wires it: qcow2 pre-converted while warm
        self.disks = DiskActivities(sources, mirror=mirror)
        self.convert = ConvertActivities(prepared=mirror)
        self.target = LibvirtTarget()

    def step(self, fn: Any, name: str, n: int = 0) -> StepResult:
        res: StepResult = fn(StepInput(step=name, context=self.ctx, passNumber=n))
        self.ctx = self.ctx.model_copy(update={"facts": {**self.ctx.facts, **res.facts}})
        return res

    def window(self) -> dict[str, Any]:
        before, t0 = io(), time.perf_counter()
        final = self.step(self.disks.final_data_sync, "final_data_sync")
        conv = self.step(self.convert.convert_image, "convert_image")
        att = self.step(self.target.attach_target_storage_profile, "attach_target_storage_profile")
        self.step(self.target.validate_guest_tools_and_drivers, "validate_guest_tools_and_drivers")
        on = self.step(self.target.power_on_target, "power_on_target")
        seconds = time.perf_counter() - t0
        return {
            "seconds": round(seconds, 3),
            "ioBytes": io() - before,
            "finalBytesMoved": int(final.details["bytesMoved"]),
            "finalMode": final.details[f"mode.{DISK_ID}"],
            "convertMethod": conv.details[f"method.{DISK_ID}"],
            "attachMethod": att.details[f"method.{DISK_ID}"],
            "domain": on.facts["target_domain"],
        }


def drop_pool(uri: str, name: str) -> None:
    import libvirt

    conn = libvirt.open(uri)
    try:
        pool = conn.storagePoolLookupByName(name)
        if pool.isActive():
            pool.destroy()
        pool.undefine()
    finally:
        conn.close()


def one_size(size: int, fraction: float, work: Path, uri: str, fmt: str) -> dict[str, Any]:
    src = work / "disk1-flat.vmdk"
    make_disk(src, size)
    with open(src, "r+b") as f:  # an MBR: the target's boot-sector check must pass
        f.seek(446 + 4)
        f.write(b"\x83")
        f.seek(510)
        f.write(b"\x55\xaa")
    ctk = work / "disk1-ctk.json"
    ctk.unlink(missing_ok=True)
    record_writes(ctk, range(size // BLOCK_SIZE), capacity=size)

    warm = Run(f"warm-{fmt}-{size // MiB}m", work / "staging", src, uri, size, fmt)
    t0 = time.perf_counter()
    warm.step(warm.disks.pre_copy, "pre_copy")
    warm.step(warm.disks.incremental_sync, "incremental_sync", 1)
    warm_phase = time.perf_counter() - t0
    blocks = random.Random(7).sample(range(size // BLOCK), max(1, round(size // BLOCK * fraction)))
    with open(src, "r+b") as f:
        for i in blocks:
            f.seek(i * BLOCK)
            f.write(os.urandom(BLOCK))
        os.fdatasync(f.fileno())
    per = BLOCK // BLOCK_SIZE
    record_writes(ctk, [i * per + j for i in blocks for j in range(per)])
    changed = len(blocks) * BLOCK
    drop(src)
    w = warm.window()

    cold = Run(f"cold-{fmt}-{size // MiB}m", work / "staging", src, uri, size, fmt)
    drop(src)
    c = cold.window()
    for r in (warm, cold):
        remove_cutover_domains(uri, r.ctx.application)
        r.step(r.target.detach_target_storage, "detach_target_storage")
        r.target.close()
        drop_pool(uri, f"bench-{r.ctx.application}")
    shutil.rmtree(work / "staging", ignore_errors=True)
    src.unlink()
    return {
        "format": fmt,
        "diskBytes": size,
        "changedBytes": changed,
        "warmPhaseSeconds": round(warm_phase, 3),
        "warm": w,
        "cold": c,
        "warmIoOverTwiceChanged": round(w["ioBytes"] / (2 * changed), 3),
        "warmOverColdDowntime": round(w["seconds"] / c["seconds"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes-gib", type=float, nargs="+", default=[2.0, 8.0])
    ap.add_argument("--changed", type=float, default=0.02)
    ap.add_argument("--formats", nargs="+", choices=["raw", "qcow2"], default=["raw", "qcow2"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    # QEMU runs as libvirt-qemu: the pools must be reachable (not under a 0700 tmp dir)
    work = Path(tempfile.mkdtemp(prefix="cutover-bench-", dir="/var/tmp"))
    work.chmod(0o711)
    lv = libvirtd.start(work / "libvirtd")
    try:
        out = [
            one_size(int(g * GiB), args.changed, work, lv.uri, fmt)
            for g in args.sizes_gib
            for fmt in args.formats
        ]
    finally:
        lv.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for r in out:
        w, c = r["warm"], r["cold"]
        print(
            f"{r['format']:5} {r['diskBytes'] / GiB:4.0f} GiB, "
            f"{r['changedBytes'] / MiB:.0f} MiB changed: "
            f"warm window {w['seconds']:.2f} s, I/O {w['ioBytes'] / MiB:.1f} MiB "
            f"(= {r['warmIoOverTwiceChanged']} x 2 x changed; target <= 1.1) | "
            f"cold window {c['seconds']:.2f} s, I/O {c['ioBytes'] / MiB:.0f} MiB | "
            f"warm/cold {r['warmOverColdDowntime']} (target <= 0.25) | "
            f"warm phase {r['warmPhaseSeconds']:.1f} s"
        )


if __name__ == "__main__":
    main()
