"""Disk image conversion on the conversion host: staged raw/VMDK disks to the target format.

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

Facts read: `staging_path.<diskKey>` (the warm copy's staged disk, inside the site's
`stagingDir`). Facts written: `converted_path.<diskKey>`, `converted_format.<diskKey>`.
Errors: `ConfigError`, `PathRejected`, `NotFound`, `ToolMissing`, `VerificationFailed`
(non-retryable); `ConversionFailed` (retryable: I/O, space).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from temporalio import activity

from activities import staging
from activities.common import attempt as _attempt
from activities.common import error as _error
from activities.common import heartbeat as _heartbeat
from cutover.catalog import Compensation, Step
from cutover.errors import ErrorKind
from cutover.inventory import VM
from cutover.models import StepContext, StepInput, StepResult
from cutover.site import SiteConfig, StorageMapping

SourceFormat = Literal["raw", "vmdk"]
TargetFormat = Literal["qcow2", "raw"]
Progress = Callable[[float], None]

#: A name that can become one path component: no separators, no `..`, no shell metacharacters.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
STAGING_FACT = "staging_path."
CONVERTED_FACT = "converted_path."
FORMAT_FACT = "converted_format."


# ----------------------------------------------------------------------------- paths


def safe_name(name: str, what: str) -> str:
    """`name` if it can be one path component; else a non-retryable `PathRejected`."""
    if not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise _error(
            ErrorKind.PATH_REJECTED,
            f"{what} {name!r} may hold only letters, digits, '.', '_' and '-' (starting with "
            "a letter or digit, no '..'): it names a file and must not leave its directory",
        )
    return name


def confined(root: Path, candidate: str | Path, what: str) -> Path:
    """`candidate` resolved (symlinks too) if it lies inside `root`; else `PathRejected`."""
    base = root.resolve()
    path = Path(candidate)
    if not path.is_absolute():
        path = base / path
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise _error(ErrorKind.PATH_REJECTED, f"{what} {str(candidate)!r} is outside {base}")
    return resolved


def staging_dir(site: SiteConfig) -> Path:
    """The site's `stagingDir`: every staged and converted image lies inside it."""
    return staging.root(site)


def disk_id(vm_name: str, device_key: int | str) -> str:
    """A disk's name across steps (facts, staged and converted file names, volumes): the VM's
    name and the disk's device key, unique even when several VMs have a disk 2000."""
    return f"{vm_name}-{device_key}"


def disk_keys(facts: dict[str, str], prefix: str) -> list[str]:
    return sorted(k[len(prefix) :] for k in facts if k.startswith(prefix))


def mapping_for(site: SiteConfig, vms: Sequence[VM], disk_key: str) -> StorageMapping:
    """The storage mapping of the disk's datastore (the only mapping when one; else
    a `ConfigError`). A site without mappings converts to qcow2 in pool `default`."""
    datastore = next(
        (d.datastore for vm in vms for d in vm.disks if disk_id(vm.name, d.key) == disk_key), None
    )
    maps = site.storageMappings
    for m in maps:
        if datastore is not None and m.sourceDatastore == datastore:
            return m
    if len(maps) == 1:
        return maps[0]
    if not maps:
        return StorageMapping(sourceDatastore="*", targetPool="default")
    raise _error(
        ErrorKind.CONFIG_ERROR,
        f"disk {disk_key}: no storage mapping for datastore {datastore!r} "
        f"(mapped: {', '.join(m.sourceDatastore for m in maps)})",
    )


def output_name(application: str, disk_key: str, fmt: str) -> str:
    """The name volumes and converted images had before `volume_name` (legacy): it can
    collide across applications (`web` + disk `db-1-2000`, `web-db` + disk `1-2000`)."""
    app, key = safe_name(application, "application"), safe_name(disk_key, "disk key")
    return f"{app}-{key}-target.{fmt}"


def volume_name(application: str, disk_key: str, fmt: str) -> str:
    """The target volume's name in its pool: `<app>.<disk>.target.<fmt>`. An application
    name holds no '.', so no two applications' volumes can share a name (detach and a
    re-attach delete by name: they must never reach another application's volume)."""
    app, key = safe_name(application, "application"), safe_name(disk_key, "disk key")
    return f"{app}.{key}.target.{fmt}"


def converted_path(ctx: StepContext, disk_key: str, fmt: str) -> Path:
    """The converted image, in this workflow's staging dir beside the staged disk (named
    after it, distinct from every name the warm copy uses)."""
    key = safe_name(disk_key, "disk key")
    return staging.application_dir(ctx.site, ctx.application, ctx.workflowId) / (
        f"{key}.converted.{fmt}"
    )


def legacy_converted_path(ctx: StepContext, disk_key: str, fmt: str) -> Path:
    """Where a worker before `activities.staging` wrote the converted image."""
    return staging.root(ctx.site) / output_name(ctx.application, disk_key, fmt)


# ------------------------------------------------------------------------- qemu-img


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise _error(ErrorKind.TOOL_MISSING, f"{name} is not installed (Debian package qemu-utils)")
    return path


def virt_v2v_available() -> bool:
    """Whether virt-v2v is installed (a converter that also fixes the guest; not built)."""
    return shutil.which("virt-v2v") is not None


def image_info(path: Path, fmt: str | None = None) -> dict[str, Any]:
    """`qemu-img info --output=json` (format given explicitly when known: no probing)."""
    argv = [_tool("qemu-img"), "info", "--output=json"]
    if fmt:
        argv += ["-f", fmt]
    done = subprocess.run([*argv, str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise _error(ErrorKind.NOT_FOUND, f"qemu-img info {path}: {done.stderr.strip()}")
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def check_qcow2(path: Path, what: Path | None = None) -> None:
    """`qemu-img check` of a qcow2 image's metadata; `VerificationFailed` naming `what`."""
    done = subprocess.run(
        [_tool("qemu-img"), "check", "-f", "qcow2", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise _error(
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
            _tool("qemu-img"), "convert", "-p", *self.extra,
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
            raise _error(
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
            [_tool("qemu-img"), "compare", "-f", source_format, "-F", target_format,
             str(source), str(target)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise _error(
                ErrorKind.VERIFICATION_FAILED,
                f"qemu-img compare {source} {target} (exit {done.returncode}): "
                f"{(done.stdout + done.stderr).strip()}",
            )


# ------------------------------------------------------------------------ activities

#: What a step learns about the source VMs (for storage mappings and the domain XML).
VmSource = Callable[[StepInput], list[VM]]

SOURCE_VM_FACT = "source_vm."


def _link(source: Path, target: Path) -> bool:
    """Hard-link `source` as `target`; False where the file system cannot (another device)."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            return False
        raise
    return True


def vms_from_facts(inp: StepInput) -> list[VM]:
    """Source VM models published as facts `source_vm.<name>` (VM model JSON)."""
    facts = inp.context.facts
    return [VM.model_validate_json(facts[k]) for k in sorted(facts) if k.startswith(SOURCE_VM_FACT)]


class PreConverted(Protocol):
    """A target image converted during the warm phase and kept in step (`activities.mirror`)."""

    def take(
        self, ctx: StepContext, disk: str, out: Path
    ) -> dict[str, str | int | float] | None: ...


@dataclass
class ConvertActivities:
    converter: Converter = field(default_factory=QemuImgConverter)
    vm_source: VmSource = vms_from_facts
    verify: bool = True
    #: qcow2 images pre-converted in the warm phase; None: convert here, in the window
    prepared: PreConverted | None = None

    def _plan(self, inp: StepInput) -> list[tuple[str, Path, Path, TargetFormat]]:
        """(disk key, source, output, format) for each staged disk; checks every path
        before anything is touched."""
        ctx = inp.context
        root = staging_dir(ctx.site)
        keys = disk_keys(ctx.facts, STAGING_FACT)
        if not keys:
            raise _error(
                ErrorKind.NOT_FOUND, "no staged disks: facts `staging_path.<diskKey>` are absent"
            )
        vms = self.vm_source(inp)
        plan = []
        for key in keys:
            source = confined(root, ctx.facts[STAGING_FACT + key], f"staged disk {key}")
            fmt = mapping_for(ctx.site, vms, key).format
            out = confined(root, converted_path(ctx, key, fmt), "converted image")
            plan.append((key, source, out, fmt))
        return plan

    @activity.defn(name=Step.CONVERT_IMAGE)
    def convert_image(self, inp: StepInput) -> StepResult:
        plan = self._plan(inp)
        facts: dict[str, str] = {}
        details: dict[str, str | int | float | bool] = {"converter": self.converter.name}
        for key, source, out, fmt in plan:
            if not source.is_file():
                raise _error(ErrorKind.NOT_FOUND, f"staged disk {key} is missing: {source}")
            src_fmt = source_format(source)
            part = out.with_name(out.name + ".part")
            part.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            part.unlink(missing_ok=True)

            def beat(pct: float, key: str = key) -> None:
                _heartbeat({"disk": key, "percent": pct})

            taken = None
            if fmt == "qcow2" and self.prepared is not None:
                taken = self.prepared.take(inp.context, key, part)
            if taken is not None:
                # Converted in the warm phase, the final pass wrote into it: no full
                # conversion in the downtime.
                details[f"method.{key}"] = str(taken["method"])
                details[f"applied.{key}"] = taken["bytes"]
            elif src_fmt == fmt == "raw" and _link(source, part):
                # Nothing to convert: the staged copy becomes the image without a byte
                # copied (the final sync's digest maps and the window's full comparison
                # verify it), so the downtime does not grow with the disk.
                details[f"method.{key}"] = "link"
            else:
                self.converter.convert(source, src_fmt, part, fmt, beat)
                if self.verify:
                    self.converter.verify(source, src_fmt, part, fmt)
                details[f"method.{key}"] = self.converter.name
            os.replace(part, out)
            facts[CONVERTED_FACT + key] = str(out)
            facts[FORMAT_FACT + key] = fmt
            details[f"bytes.{key}"] = out.stat().st_size
        details["verified"] = self.verify
        return StepResult(step=inp.step, facts=facts, details=details, attempt=_attempt())

    @activity.defn(name=Compensation.REMOVE_CONVERTED_IMAGE)
    def remove_converted_image(self, inp: StepInput) -> StepResult:
        """Delete the converted images (and partial ones); a no-op when none exist."""
        ctx = inp.context
        root = staging_dir(ctx.site)
        removed: list[str] = []
        for key in disk_keys(ctx.facts, STAGING_FACT) or disk_keys(ctx.facts, CONVERTED_FACT):
            for fmt in ("qcow2", "raw"):
                outs = [confined(root, converted_path(ctx, key, fmt), "converted image")]
                legacy = legacy_converted_path(ctx, key, fmt)
                if ctx.facts.get(CONVERTED_FACT + key) == str(legacy):
                    outs.append(legacy)  # converted before the upgrade: this workflow's
                for out in outs:
                    for path in (out, out.with_name(out.name + ".part")):
                        if path.is_file():
                            path.unlink()
                            removed.append(path.name)
        return StepResult(
            step=inp.step,
            changed=bool(removed),
            details={"removed": ",".join(removed)},
            attempt=_attempt(),
        )

    def activities(self) -> list[Callable[..., Any]]:
        return [self.convert_image, self.remove_converted_image]
