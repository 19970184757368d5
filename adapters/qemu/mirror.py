"""The pre-converted target image: for a disk whose storage mapping asks for qcow2, the
conversion happens in the warm phase, not in the downtime.

- After pre-copy, the staged raw copy is converted once (`qemu-img convert`, then a full
  `qemu-img compare`), while the source still serves.
- After each incremental pass, the blocks that pass changed in the staged copy (the dirty
  bitmap `adapters.staging.copy` keeps) are written into the image through `qemu-nbd`.
- The final pass, after quiesce, writes the changed blocks straight into the image (a
  `Sink`), so the downtime's data work is the changed bytes read once and written once.
- `convert_image` then links the image in as the converted output (no byte copied) after
  `qemu-img check` of its metadata; the window's `data_consistency_confirmed` reads the
  image's guest view, so what the target boots is what is compared with the source.

Raw mappings need none of this: the staged copy itself is linked in (see `activities/convert.py`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from adapters.progress import heartbeat as _heartbeat
from adapters.qemu.img import Converter, QemuImgConverter, check_qcow2
from adapters.qemu.nbd import NbdError, NbdImage
from adapters.staging.copy import DiskState, load_dirty, save_dirty
from adapters.staging.layout import StagedDisk
from cutover import facts as F
from cutover.disknames import mapping_for
from cutover.errors import ErrorKind
from cutover.errors import error as _error
from cutover.inventory import VM
from cutover.models import StepContext

Details = dict[str, str | int | float]


def _vms(ctx: StepContext) -> list[VM]:
    return F.source_vm_models(ctx.facts)


@dataclass
class TargetMirror:
    """Implements `adapters.staging.copy.MirrorHooks` and `activities.convert.PreConverted`."""

    converter: Converter = field(default_factory=QemuImgConverter)

    def _staged(self, ctx: StepContext, disk: str) -> tuple[StagedDisk, DiskState] | None:
        """The staged disk and its state when its mapping wants qcow2; else None."""
        if mapping_for(ctx.resolved_site, _vms(ctx), disk).format != "qcow2":
            return None
        staged = StagedDisk.of(ctx, disk)
        state = DiskState.load(staged.state)
        if state is None or state.workflowId != ctx.workflowId or not state.precopyDone:
            return None
        return staged, state

    def _apply(self, staged: StagedDisk, state: DiskState) -> int:
        """Write the dirty blocks of the staged copy into the image; returns bytes written."""
        blocks = -(-state.size // state.blockSize)
        dirty = load_dirty(staged.dirty, blocks)
        todo = [i for i in range(blocks) if dirty[i]]
        if not todo:
            return 0
        written = 0
        fd = os.open(staged.raw, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with NbdImage(staged.mirror, "qcow2") as image:
                for i in todo:
                    n = min(state.blockSize, state.size - i * state.blockSize)
                    image.write(i * state.blockSize, os.pread(fd, n, i * state.blockSize))
                    written += n
                    if written % (256 << 20) < n:
                        _heartbeat({"image": staged.mirror.name, "bytes": written})
        except NbdError as exc:
            raise _error(
                ErrorKind.CONVERSION_FAILED, f"updating {staged.mirror}: {exc}", True
            ) from None
        finally:
            os.close(fd)
        save_dirty(staged.dirty, bytearray(blocks))  # only once the image holds them
        return written

    # -- adapters.staging.copy.MirrorHooks

    def after_warm_pass(self, ctx: StepContext, disk: str) -> Details:
        found = self._staged(ctx, disk)
        if found is None:
            return {}
        staged, state = found
        t0 = time.monotonic()
        if staged.mirror.exists():
            applied = self._apply(staged, state)
            return {"image": "caught up", "imageBytes": applied,
                    "imageSeconds": round(time.monotonic() - t0, 3)}  # fmt: skip
        part = staged.mirror.with_name(staged.mirror.name + ".part")
        part.unlink(missing_ok=True)

        def beat(pct: float) -> None:
            _heartbeat({"disk": disk, "preconvert": pct})

        self.converter.convert(staged.raw, "raw", part, "qcow2", beat)
        self.converter.verify(staged.raw, "raw", part, "qcow2")
        os.replace(part, staged.mirror)
        save_dirty(staged.dirty, bytearray(-(-state.size // state.blockSize)))
        return {"image": "pre-converted", "imageBytes": staged.mirror.stat().st_size,
                "imageSeconds": round(time.monotonic() - t0, 3)}  # fmt: skip

    def final_sink(self, ctx: StepContext, disk: str) -> NbdImage | None:
        found = self._staged(ctx, disk)
        if found is None or not found[0].mirror.exists():
            return None
        staged, state = found
        self._apply(staged, state)  # a warm catch-up that failed: its blocks first
        try:
            return NbdImage(staged.mirror, "qcow2")
        except NbdError as exc:
            raise _error(
                ErrorKind.CONVERSION_FAILED, f"opening {staged.mirror}: {exc}", True
            ) from None

    def reader(self, ctx: StepContext, disk: str) -> NbdImage | None:
        found = self._staged(ctx, disk)
        if found is None or not found[0].mirror.exists():
            return None
        try:  # a running domain holds the image: read it without taking its lock
            return NbdImage(found[0].mirror, "qcow2", read_only=True, shared=True)
        except NbdError as exc:
            raise _error(
                ErrorKind.CONVERSION_FAILED, f"reading {found[0].mirror}: {exc}", True
            ) from None

    # -- activities.convert.PreConverted

    def take(self, ctx: StepContext, disk: str, out: Path) -> Details | None:
        """Link the caught-up image as `out` (a hard link: the same file system), after a
        metadata check; None when there is no image to take (then convert in full)."""
        found = self._staged(ctx, disk)
        if found is None or not found[0].mirror.exists():
            return None
        staged, state = found
        applied = self._apply(staged, state)
        try:
            os.link(staged.mirror, out)
        except OSError:
            return None
        try:
            check_qcow2(out, staged.mirror)
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        return {"method": "pre-converted", "bytes": applied}
