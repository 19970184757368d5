"""The conversion step: staged disks to target images (convert_image), and its undo
(remove_converted_image). Thin: the converter is `adapters.qemu.img.QemuImgConverter`
(behind the `Converter` protocol); the paths are `adapters.staging.layout`'s.

Facts read: `staging_path.<diskKey>` (the warm copy's staged disk, inside the site's
`stagingDir`). Facts written: `converted_path.<diskKey>`, `converted_format.<diskKey>`.
Errors: `ConfigError`, `PathRejected`, `NotFound`, `ToolMissing`, `VerificationFailed`
(non-retryable); `ConversionFailed` (retryable: I/O, space).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from temporalio import activity

from activities.common import attempt as _attempt
from activities.common import error as _error
from activities.common import heartbeat as _heartbeat
from adapters.qemu.img import Converter, QemuImgConverter, TargetFormat, source_format
from adapters.staging.layout import confined, converted_path, legacy_converted_path, staging_dir
from cutover import facts as F
from cutover.catalog import Compensation, Step
from cutover.disknames import mapping_for
from cutover.errors import ErrorKind
from cutover.facts import disk_keys
from cutover.inventory import VM
from cutover.models import StepContext, StepInput, StepResult


def vms_from_facts(inp: StepInput) -> list[VM]:
    """Source VM models published as facts `source_vm.<name>` (VM model JSON)."""
    return F.source_vm_models(inp.context.facts)


#: What a step learns about the source VMs (for storage mappings and the domain XML).
VmSource = Callable[[StepInput], list[VM]]


def _link(source: Path, target: Path) -> bool:
    """Hard-link `source` as `target`; False where the file system cannot (another device)."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            return False
        raise
    return True


class PreConverted(Protocol):
    """A target image converted during the warm phase and kept in step (`adapters.qemu.mirror`)."""

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
        root = staging_dir(ctx.resolved_site)
        keys = disk_keys(ctx.facts, F.STAGING_PATH)
        if not keys:
            raise _error(
                ErrorKind.NOT_FOUND, "no staged disks: facts `staging_path.<diskKey>` are absent"
            )
        vms = self.vm_source(inp)
        plan = []
        for key in keys:
            source = confined(
                root, ctx.facts[F.per_disk(F.STAGING_PATH, key)], f"staged disk {key}"
            )
            fmt = mapping_for(ctx.resolved_site, vms, key).format
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
            facts[F.per_disk(F.CONVERTED_PATH, key)] = str(out)
            facts[F.per_disk(F.CONVERTED_FORMAT, key)] = fmt
            details[f"bytes.{key}"] = out.stat().st_size
        details["verified"] = self.verify
        return StepResult(step=inp.step, facts=facts, details=details, attempt=_attempt())

    @activity.defn(name=Compensation.REMOVE_CONVERTED_IMAGE)
    def remove_converted_image(self, inp: StepInput) -> StepResult:
        """Delete the converted images (and partial ones); a no-op when none exist."""
        ctx = inp.context
        root = staging_dir(ctx.resolved_site)
        removed: list[str] = []
        for key in disk_keys(ctx.facts, F.STAGING_PATH) or disk_keys(ctx.facts, F.CONVERTED_PATH):
            for fmt in ("qcow2", "raw"):
                outs = [confined(root, converted_path(ctx, key, fmt), "converted image")]
                legacy = legacy_converted_path(ctx, key, fmt)
                if ctx.facts.get(F.per_disk(F.CONVERTED_PATH, key)) == str(legacy):
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
