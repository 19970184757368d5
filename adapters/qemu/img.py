"""qemu-img on the conversion host: convert staged raw/VMDK disks to the target format,
verify the result, read image metadata.

`QemuImgConverter` runs `qemu-img` (Debian `qemu-utils`) without a shell, parses its `-p`
progress into heartbeats and verifies what it wrote (`qemu-img check` for qcow2,
`qemu-img compare` of source against output). It converts the *container* only. What it does
NOT change inside the guest, and what virt-v2v would do for a real guest:

- install/enable virtio drivers (virtio-blk/scsi/net) -- Windows has none in the box, so a
  Windows guest converted by qemu-img alone cannot boot from a virtio disk;
- remove VMware Tools and open-vm-tools, and install the QEMU guest agent;
- rebuild the initramfs so virtio modules load at boot (dracut/update-initramfs);
- rewrite /etc/fstab and bootloader entries that name disks by VMware-specific ids
  (`/dev/sdX`, `/dev/disk/by-id/scsi-...`) instead of UUIDs or labels;
- rewrite network configuration tied to the old NIC (vmxnet3 names, udev persistent rules,
  Windows adapter settings and static IPs).

virt-v2v is not implemented here; `virt_v2v_available()` tells whether it is installed, so a
converter behind the same `Converter` protocol can be chosen where it is.

Errors: `NotFound`, `ToolMissing`, `VerificationFailed` (non-retryable);
`ConversionFailed` (retryable: I/O, space).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from cutover.errors import ErrorKind, error

SourceFormat = Literal["raw", "vmdk"]
TargetFormat = Literal["qcow2", "raw"]
Progress = Callable[[float], None]

_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise error(ErrorKind.TOOL_MISSING, f"{name} is not installed (Debian package qemu-utils)")
    return path


def virt_v2v_available() -> bool:
    """Whether virt-v2v is installed (a converter that also fixes the guest; not built)."""
    return shutil.which("virt-v2v") is not None


def image_info(path: Path, fmt: str | None = None) -> dict[str, Any]:
    """`qemu-img info --output=json` (format given explicitly when known: no probing)."""
    argv = [tool("qemu-img"), "info", "--output=json"]
    if fmt:
        argv += ["-f", fmt]
    done = subprocess.run([*argv, str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise error(ErrorKind.NOT_FOUND, f"qemu-img info {path}: {done.stderr.strip()}")
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def overlay_extents(overlay: Path) -> list[tuple[int, int]]:
    """The guest ranges a qcow2 overlay holds itself (not read through to its backing
    file): what the guest wrote since the overlay was made, as sorted `(offset, length)`.
    Reads the metadata shared (`-U`): a running domain holds the image; call it with the
    domain paused or stopped for a final answer."""
    done = subprocess.run(
        [tool("qemu-img"), "map", "-U", "--output=json", "-f", "qcow2", str(overlay)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise error(ErrorKind.NOT_FOUND, f"qemu-img map {overlay}: {done.stderr.strip()}")
    out: list[tuple[int, int]] = []
    for ext in json.loads(done.stdout):
        # depth 0: this image's own clusters; `data` false there is a zeroed range the
        # guest wrote too (a discard or write-zeroes), which must be carried as well
        if ext.get("depth") == 0 and (ext.get("data") or ext.get("zero")):
            start, length = int(ext["start"]), int(ext["length"])
            if out and out[-1][0] + out[-1][1] == start:
                out[-1] = (out[-1][0], out[-1][1] + length)
            else:
                out.append((start, length))
    return out


@dataclass(frozen=True)
class GuestExtent:
    """A range of the guest's disk and where its bytes are: `file` at `file_offset`, or
    zeros (`file` None)."""

    start: int
    length: int
    depth: int
    file: Path | None
    file_offset: int


def guest_extents(path: Path, fmt: str) -> list[GuestExtent]:
    """Where every byte of the guest's view of `path` (an image and its backing chain) is,
    read shared (`-U`: a running domain may hold it): `qemu-img map` gives each range's
    depth in the chain and its offset in that layer's file."""
    chain = subprocess.run(
        [tool("qemu-img"), "info", "-U", "--backing-chain", "--output=json", "-f", fmt,
         str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    mapped = subprocess.run(
        [tool("qemu-img"), "map", "-U", "--output=json", "-f", fmt, str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    for done in (chain, mapped):
        if done.returncode != 0:
            raise error(ErrorKind.NOT_FOUND, f"qemu-img on {path}: {done.stderr.strip()}")
    layers = [Path(i["filename"]) for i in json.loads(chain.stdout)]
    out: list[GuestExtent] = []
    for ext in json.loads(mapped.stdout):
        depth = int(ext.get("depth", 0))
        if ext.get("data") and "offset" in ext:
            out.append(GuestExtent(int(ext["start"]), int(ext["length"]), depth,
                                   layers[depth], int(ext["offset"])))  # fmt: skip
        elif ext.get("data"):
            # compressed or encrypted clusters have no plain offset: not made by a guest
            raise error(ErrorKind.VERIFICATION_FAILED, f"{path}: cannot read range {ext}")
        else:
            out.append(GuestExtent(int(ext["start"]), int(ext["length"]), depth, None, 0))
    return out


def read_guest(extents: list[GuestExtent], chunk: int = 4 << 20) -> Iterator[tuple[int, bytes]]:
    """The bytes of `extents`, in chunks of at most `chunk`: `(guest offset, data)`."""
    handles: dict[Path, IO[bytes]] = {}
    try:
        for ext in extents:
            done = 0
            while done < ext.length:
                n = min(chunk, ext.length - done)
                if ext.file is None:
                    data = bytes(n)
                else:
                    f = handles.get(ext.file)
                    if f is None:
                        f = handles[ext.file] = ext.file.open("rb")
                    f.seek(ext.file_offset + done)
                    data = f.read(n).ljust(n, b"\0")  # a raw file shorter than the disk
                yield ext.start + done, data
                done += n
    finally:
        for f in handles.values():
            f.close()


def check_qcow2(path: Path, what: Path | None = None) -> None:
    """`qemu-img check` of a qcow2 image's metadata; `VerificationFailed` naming `what`."""
    done = subprocess.run(
        [tool("qemu-img"), "check", "-f", "qcow2", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise error(
            ErrorKind.VERIFICATION_FAILED,
            f"qemu-img check {what or path} (exit {done.returncode}): "
            f"{(done.stdout + done.stderr).strip()}",
        )


def source_format(path: Path) -> SourceFormat:
    """By name, never by probing content (a raw guest disk may hold any header)."""
    return "vmdk" if path.suffix.lower() == ".vmdk" else "raw"


class Converter(Protocol):
    """Turns a source image into a target image; virt-v2v would plug in here."""

    name: str

    def convert(
        self,
        source: Path,
        source_format: SourceFormat,
        target: Path,
        target_format: TargetFormat,
        progress: Progress | None = None,
    ) -> None: ...

    def verify(
        self, source: Path, source_format: SourceFormat, target: Path, target_format: TargetFormat
    ) -> None: ...


def _pump_progress(stream: IO[bytes], progress: Progress | None) -> None:
    buf = b""
    while chunk := stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096):
        buf = (buf + chunk)[-256:]
        found = _PROGRESS.findall(buf)
        if found and progress is not None:
            progress(float(found[-1]))
            buf = b""


@dataclass
class QemuImgConverter:
    name: str = "qemu-img"
    #: Extra options for `qemu-img convert` (e.g. ["-W"] for out-of-order writes).
    extra: list[str] = field(default_factory=list)

    def argv(self, source: Path, source_format: str, target: Path, target_format: str) -> list[str]:
        return [
            tool("qemu-img"), "convert", "-p", *self.extra,
            "-f", source_format, "-O", target_format, str(source), str(target),
        ]  # fmt: skip

    def convert(
        self,
        source: Path,
        source_format: SourceFormat,
        target: Path,
        target_format: TargetFormat,
        progress: Progress | None = None,
    ) -> None:
        argv = self.argv(source, source_format, target, target_format)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        err: list[bytes] = []
        reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        _pump_progress(proc.stdout, progress)
        code = proc.wait()
        reader.join()
        if code != 0:
            message = b"".join(err).decode(errors="replace").strip()
            raise error(
                ErrorKind.CONVERSION_FAILED,
                f"qemu-img convert {source} -> {target}: {message}",
                True,
            )
        if progress is not None:
            progress(100.0)

    def verify(
        self, source: Path, source_format: SourceFormat, target: Path, target_format: TargetFormat
    ) -> None:
        if target_format == "qcow2":
            check_qcow2(target)
        done = subprocess.run(
            [tool("qemu-img"), "compare", "-f", source_format, "-F", target_format,
             str(source), str(target)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise error(
                ErrorKind.VERIFICATION_FAILED,
                f"qemu-img compare {source} {target} (exit {done.returncode}): "
                f"{(done.stdout + done.stderr).strip()}",
            )
