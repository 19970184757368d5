"""Conversion through our converter against bare `qemu-img convert`, same disk, same run.

    .venv/bin/python -m bench.convert [--size-gib 2] [--data-gib 1] [--rounds 5] [--json]

Builds a sparse raw disk (`--size-gib`, with `--data-gib` of random data in 64 MiB extents
spread over it), turns it into a VMDK, then alternates, `--rounds` times: bare
`qemu-img convert -f vmdk -O qcow2` and `QemuImgConverter.convert` (the same argv plus `-p`,
progress parsed into callbacks). Each run writes a fresh file; a `sync` before and inside
each timing charges the write-back to the run that caused it. Reports the medians and the
ratio bare/ours (target: >= 0.95). Verification (`qemu-img check` + `compare`, a full read
of both images) is timed separately: it is an
extra pass, not part of the conversion.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from adapters.qemu.img import QemuImgConverter

EXTENT = 64 << 20


def build(work: Path, size: int, data: int) -> Path:
    raw = work / "disk.raw"
    extents = max(1, data // EXTENT)
    stride = size // extents
    with raw.open("wb") as f:
        f.truncate(size)
        for i in range(extents):
            f.seek(i * stride)
            f.write(os.urandom(EXTENT))
    vmdk = work / "disk.vmdk"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(raw), str(vmdk)],
                   check=True)  # fmt: skip
    raw.unlink()
    return vmdk


def timed(fn: object) -> float:
    subprocess.run(["sync"], check=True)
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    subprocess.run(["sync"], check=True)  # the write-back belongs to the run that caused it
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gib", type=float, default=2)
    ap.add_argument("--data-gib", type=float, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if shutil.which("qemu-img") is None:
        raise SystemExit("qemu-img is missing: apt-get install -y qemu-utils")
    with tempfile.TemporaryDirectory(prefix="bench-convert-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        vmdk = build(work, int(args.size_gib * (1 << 30)), int(args.data_gib * (1 << 30)))
        out = work / "out.qcow2"
        conv = QemuImgConverter()
        beats: list[float] = []
        bare: list[float] = []
        ours: list[float] = []

        def run_bare() -> None:
            subprocess.run(
                ["qemu-img", "convert", "-f", "vmdk", "-O", "qcow2", str(vmdk), str(out)],
                check=True,
            )

        def run_ours() -> None:
            conv.convert(vmdk, "vmdk", out, "qcow2", beats.append)

        for _ in range(args.rounds):
            for runner, into in ((run_bare, bare), (run_ours, ours)):
                out.unlink(missing_ok=True)
                into.append(timed(runner))
        verify = timed(lambda: conv.verify(vmdk, "vmdk", out, "qcow2"))
        result = {
            "sizeGiB": args.size_gib,
            "dataGiB": args.data_gib,
            "rounds": args.rounds,
            "bareSeconds": round(statistics.median(bare), 3),
            "oursSeconds": round(statistics.median(ours), 3),
            "ratio": round(statistics.median(bare) / statistics.median(ours), 3),
            "ratioBest": round(min(bare) / min(ours), 3),
            "progressCallbacks": len(beats),
            "verifySeconds": round(verify, 3),
            "bareAll": [round(x, 3) for x in bare],
            "oursAll": [round(x, 3) for x in ours],
        }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:18} {v}")
        ratio = statistics.median(bare) / statistics.median(ours)
        print("target: ratio >= 0.95", "OK" if ratio >= 0.95 else "MISSED")


if __name__ == "__main__":
    main()
