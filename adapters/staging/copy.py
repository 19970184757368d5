"""The warm data path's copy engine: pre-copy, incremental passes, the final pass, and
the integrity checks (digest maps, full comparison against a frozen source).

Each source disk is copied to `<stagingDir>/apps/<application>/<disk>.raw`, sparse (holes stay
holes), in large sequential chunks. Beside it live two block digest maps (SHA-256 per
`block_size` block, a root digest over them): `<disk>.src.sha256` (what was read from the
source) and `<disk>.copy.sha256` (what the staged copy holds, read back after each
incremental write), and `<disk>.state.json` (change ID, passes, the checkpoint of a pass in
progress). A pass updates the maps only for the blocks it touches.

Incremental passes use changed-block tracking when the source has it (a change ID kept from
the previous pass) and otherwise compare the source's block digests with the map. Passes
heartbeat `{disk, offset, bytes}` after persisting the maps, and a retried attempt resumes
from the heartbeat offset. No shell anywhere; every path is confined to the staging dir.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any, Protocol

from temporalio import activity
from temporalio.exceptions import ApplicationError

from adapters.staging.layout import StagedDisk, confine, staging_root
from cutover.errors import ErrorKind
from cutover.models import StepContext
from cutover.ports import DiskSource, Extent

BLOCK = 1 << 20  # digest block: the unit an incremental pass copies
CHUNK = 16 << 20  # sequential read/write unit
DIGEST = 32
CHECKPOINT_SECONDS = 0.5

# ---------------------------------------------------------------------------- errors


def integrity_error(message: str) -> ApplicationError:
    return ApplicationError(message, type=ErrorKind.INTEGRITY_ERROR.value, non_retryable=True)


# ---------------------------------------------------------------------------- digests


@cache
def zero_digest(length: int) -> bytes:
    return hashlib.sha256(bytes(length)).digest()


class DigestMap:
    """Per-block SHA-256 digests, and a root digest over them (a one-level Merkle tree)."""

    def __init__(self, size: int, block_size: int, data: bytes | None = None) -> None:
        self.size, self.block_size = size, block_size
        self.blocks = (size + block_size - 1) // block_size
        if data is None:
            self.data = bytearray()
            for i in range(self.blocks):
                self.data += zero_digest(self.block_len(i))
        else:
            if len(data) != self.blocks * DIGEST:
                raise ValueError("digest map does not match the disk size")
            self.data = bytearray(data)

    def block_len(self, i: int) -> int:
        return min(self.block_size, self.size - i * self.block_size)

    def get(self, i: int) -> bytes:
        return bytes(self.data[i * DIGEST : (i + 1) * DIGEST])

    def set(self, i: int, digest: bytes) -> None:
        self.data[i * DIGEST : (i + 1) * DIGEST] = digest

    def root(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def differing(self, other: DigestMap) -> list[int]:
        return [i for i in range(self.blocks) if self.get(i) != other.get(i)]

    def save(self, path: Path) -> None:
        _atomic_write(path, bytes(self.data))

    @staticmethod
    def load(path: Path, size: int, block_size: int) -> DigestMap:
        return DigestMap(size, block_size, path.read_bytes())


def load_dirty(path: Path, blocks: int) -> bytearray:
    """The dirty bitmap (one byte per block); all clean when there is none yet."""
    try:
        data = bytearray(path.read_bytes())
    except FileNotFoundError:
        return bytearray(blocks)
    return data if len(data) == blocks else bytearray(b"\x01" * blocks)


def save_dirty(path: Path, dirty: bytearray) -> None:
    _atomic_write(path, bytes(dirty))


class Sink(Protocol):
    """Where the final pass writes instead of the staged raw file (a pre-converted image)."""

    def write(self, offset: int, data: bytes | memoryview) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class MirrorHooks(Protocol):
    """The pre-converted target image kept in step with the staged copy (see
    `adapters.qemu.mirror`): caught up after each warm pass, written directly by the final
    pass, and read by the window's consistency check."""

    def after_warm_pass(self, ctx: StepContext, disk: str) -> dict[str, str | int | float]: ...

    def final_sink(self, ctx: StepContext, disk: str) -> Sink | None: ...

    def reader(self, ctx: StepContext, disk: str) -> Reader | None: ...


class Reader(Protocol):
    """The guest's view of a target image, block by block."""

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- hole punching

_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_libc_name = ctypes.util.find_library("c")
_libc = ctypes.CDLL(_libc_name, use_errno=True) if _libc_name else None


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """Make a range a hole again (it reads as zeros); writes zeros where unsupported."""
    if _libc is not None:
        mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
        res = _libc.fallocate(
            ctypes.c_int(fd), ctypes.c_int(mode), ctypes.c_long(offset), ctypes.c_long(length)
        )
        if res == 0:
            return
    os.pwrite(fd, bytes(length), offset)


def _write_block(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


# ---------------------------------------------------------------------------- state


@dataclass
class DiskState:
    workflowId: str
    size: int
    blockSize: int
    changeId: str | None = None
    precopyDone: bool = False
    #: the pass in progress ("precopy", "pass-N", "final") and how far its maps reach
    inProgress: str | None = None
    checkpoint: int = 0
    #: a pass in progress keeps the change ID it started from (CBT writes since are next)
    pendingChangeId: str | None = None
    passes: list[dict[str, Any]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        _atomic_write(path, json.dumps(self.__dict__, indent=1).encode())

    @staticmethod
    def load(path: Path) -> DiskState | None:
        try:
            return DiskState(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None

    def done(self, label: str) -> dict[str, Any] | None:
        return next((p for p in self.passes if p["pass"] == label), None)


@dataclass
class PassStats:
    label: str
    mode: str  # full | cbt | digest
    bytesRead: int = 0
    bytesMoved: int = 0
    bytesWritten: int = 0
    #: read back from the staged copy to verify it (warm passes only, page cache mostly)
    bytesVerified: int = 0
    blocksMoved: int = 0
    seconds: float = 0.0
    resumedFrom: int = 0

    @staticmethod
    def replay(rec: dict[str, Any] | None, label: str) -> PassStats:
        """A pass that already ran: reported again, with mode "done" (nothing copied now)."""
        rec = rec or {}
        return PassStats(
            label,
            "done",
            bytesRead=0,
            bytesMoved=0,
            blocksMoved=0,
            seconds=0.0,
            resumedFrom=int(rec.get("resumedFrom", 0)),
        )

    def record(self) -> dict[str, Any]:
        return {"pass": self.label, **{k: v for k, v in self.__dict__.items() if k != "label"}}


# ---------------------------------------------------------------------------- the engine


def _block_aligned(extents: list[Extent], size: int, block: int) -> list[Extent]:
    """Extents widened to whole blocks, merged, clipped to the disk."""
    spans: list[list[int]] = []
    for start, length in sorted(extents):
        if length <= 0:
            continue
        a = start // block * block
        b = min(size, -(-(start + length) // block) * block)
        if spans and a <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], b)
        elif a < b:
            spans.append([a, b])
    return [(a, b - a) for a, b in spans]


def _chunks(extents: list[Extent], chunk: int) -> Iterator[Extent]:
    for start, length in extents:
        pos, end = start, start + length
        while pos < end:
            n = min(chunk, end - pos)
            yield pos, n
            pos += n


class _Pass:
    """One copy pass over one disk: reads chunks, updates maps, checkpoints, heartbeats."""

    def __init__(
        self,
        src: DiskSource,
        staged: StagedDisk,
        state: DiskState,
        smap: DigestMap,
        cmap: DigestMap,
        fd: int,
        stats: PassStats,
        chunk: int,
        sink: Sink | None = None,
    ) -> None:
        self.src, self.staged, self.state = src, staged, state
        self.smap, self.cmap, self.fd, self.stats, self.chunk = smap, cmap, fd, stats, chunk
        self.block = state.blockSize
        self.sink = sink
        # blocks the staged file gets here that a pre-converted image has not (with a
        # sink, the image itself is written and the staged file is left as it was)
        self.dirty = load_dirty(staged.dirty, smap.blocks)
        self._last = time.monotonic()

    def save_dirty(self) -> None:
        if self.sink is None:
            save_dirty(self.staged.dirty, self.dirty)

    def checkpoint(self, offset: int, force: bool = False) -> None:
        """Persist the maps up to `offset`, then heartbeat it (never ahead of the maps)."""
        if not force and time.monotonic() - self._last < CHECKPOINT_SECONDS:
            return
        if self.sink is not None:
            self.sink.flush()  # the maps never claim what the image may not hold
        self.save_dirty()
        self.smap.save(self.staged.src_map)
        self.cmap.save(self.staged.copy_map)
        self.state.checkpoint = offset
        self.state.save(self.staged.state)
        self._last = time.monotonic()
        if activity.in_activity():
            activity.heartbeat(
                {
                    "disk": self.src.name,
                    "pass": self.stats.label,
                    "offset": offset,
                    "bytes": self.stats.bytesMoved,
                }
            )

    def run(
        self,
        extents: list[Extent],
        start: int,
        compare: bool,
        incremental: bool,
        readback: bool,
    ) -> None:
        """Copy the blocks of `extents` from `start` on. `compare`: copy only blocks whose
        digest differs from the source map; `incremental`: the staged file already holds
        data (a zero block is punched and counts as moved); `readback`: the copy map from
        reading the staged file back, else from the bytes written."""
        block = self.block
        for off, length in _chunks(extents, self.chunk):
            if off + length <= start:
                continue
            data = self.src.read(off, length)
            if len(data) != length:
                raise ApplicationError(
                    f"{self.src.name}: short read at {off} ({len(data)} of {length} bytes)",
                    type=ErrorKind.SOURCE_READ_ERROR.value,
                )
            self.stats.bytesRead += length
            view = memoryview(data)
            written: list[int] = []
            for rel in range(0, length, block):
                i = (off + rel) // block
                piece = view[rel : rel + block]
                digest = hashlib.sha256(piece).digest()
                if compare and digest == self.smap.get(i):
                    continue
                zero = digest == zero_digest(len(piece))
                if self.sink is not None:
                    self.sink.write(off + rel, piece)
                    self.stats.bytesWritten += len(piece)
                elif zero and not incremental:
                    if self.stats.resumedFrom:  # a crashed attempt may have written here
                        _punch_hole(self.fd, off + rel, len(piece))
                elif zero:
                    _punch_hole(self.fd, off + rel, len(piece))
                else:
                    _write_block(self.fd, piece, off + rel)
                    self.stats.bytesWritten += len(piece)
                if self.sink is None and (incremental or not zero):
                    self.dirty[i] = 1
                self.smap.set(i, digest)
                if readback:
                    written.append(i)
                else:
                    self.cmap.set(i, digest)
                if incremental or not zero:  # pre-copy: a zero block stays a hole, not moved
                    self.stats.bytesMoved += len(piece)
                    self.stats.blocksMoved += 1
            for i in written:
                back = os.pread(self.fd, self.cmap.block_len(i), i * block)
                self.stats.bytesVerified += len(back)
                self.cmap.set(i, hashlib.sha256(back).digest())
            self.checkpoint(off + length)


# ---------------------------------------------------------------------------- consistency


@dataclass
class ConsistencyReport:
    disk: str
    consistent: bool
    blocks: int
    mismatched: list[int]
    bytesRead: int
    seconds: float
    sourceRoot: str
    copyRoot: str


def _pread(fd: int, offset: int, length: int) -> bytes:
    return os.pread(fd, length, offset)


def data_consistency_confirmed(
    source: DiskSource, staged: Path | Reader, block_size: int = BLOCK, chunk: int = CHUNK
) -> ConsistencyReport:
    """Full digest comparison of a frozen source against its copy (every block, holes
    included; CBT is not trusted here): the staged file, or a reader of the target image.
    Read-only."""
    t0 = time.monotonic()
    size = source.size
    smap, cmap = DigestMap(size, block_size), DigestMap(size, block_size)
    read = 0
    fd: int | None = None
    if isinstance(staged, Path):
        if not staged.exists() or staged.stat().st_size != size:
            have = staged.stat().st_size if staged.exists() else None
            return ConsistencyReport(
                source.name,
                False,
                smap.blocks,
                list(range(smap.blocks)),
                0,
                time.monotonic() - t0,
                "",
                f"size {have}",
            )
        fd = os.open(staged, os.O_RDONLY | os.O_CLOEXEC)
        copy: Callable[[int, int], bytes] = partial(_pread, fd)
    else:
        copy = staged.read
    try:
        for off, length in _chunks([(0, size)], chunk):
            a, b = source.read(off, length), copy(off, length)
            read += len(a) + len(b)
            for rel in range(0, length, block_size):
                i = (off + rel) // block_size
                smap.set(i, hashlib.sha256(a[rel : rel + block_size]).digest())
                cmap.set(i, hashlib.sha256(b[rel : rel + block_size]).digest())
    finally:
        if fd is not None:
            os.close(fd)
    bad = smap.differing(cmap)
    return ConsistencyReport(
        disk=source.name,
        consistent=not bad,
        blocks=smap.blocks,
        mismatched=bad,
        bytesRead=read,
        seconds=time.monotonic() - t0,
        sourceRoot=smap.root(),
        copyRoot=cmap.root(),
    )


def _heartbeat_for(disk: str, label: str) -> int | None:
    """The offset the previous attempt of this activity heartbeated for this disk's pass."""
    if not activity.in_activity():
        return None
    details = activity.info().heartbeat_details
    if not details:
        return None
    hb = details[-1]
    if isinstance(hb, dict) and hb.get("disk") == disk and hb.get("pass") == label:
        return int(hb.get("offset", 0))
    return None


# ---------------------------------------------------------------------------- one disk


@dataclass
class DiskCopier:
    """Copies one source disk into its staged files, pass by pass (see the module docstring);
    `mirror` keeps a pre-converted target image in step (qcow2 targets)."""

    block_size: int = BLOCK
    chunk_size: int = CHUNK
    mirror: MirrorHooks | None = None

    def _open(self, src: DiskSource, staged: StagedDisk, ctx: StepContext, fresh: bool) -> int:
        staged.raw.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        confine(staging_root(ctx), staged.raw.parent)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(staged.raw, flags | (os.O_TRUNC if fresh else 0), 0o640)
        os.ftruncate(fd, src.size)
        return fd

    def precopy_disk(self, ctx: StepContext, src: DiskSource) -> PassStats:
        staged = StagedDisk.of(ctx, src.name)
        state = DiskState.load(staged.state)
        if state and state.workflowId == ctx.workflowId and state.precopyDone:
            return PassStats.replay(state.done("precopy"), "precopy")
        hb = _heartbeat_for(src.name, "precopy")
        resumable = (
            state is not None
            and state.workflowId == ctx.workflowId
            and state.inProgress == "precopy"
            and state.size == src.size
            and state.blockSize == self.block_size
            and hb is not None
            and staged.raw.exists()
        )
        if resumable:
            assert state is not None and hb is not None
            start = min(hb, state.checkpoint)
            smap = DigestMap.load(staged.src_map, src.size, self.block_size)
            cmap = DigestMap.load(staged.copy_map, src.size, self.block_size)
        else:
            start = 0
            # a new copy: an image pre-converted from an older one is worthless
            staged.mirror.unlink(missing_ok=True)
            staged.dirty.unlink(missing_ok=True)
            # the change ID from *before* the first read: writes during the copy are next
            state = DiskState(ctx.workflowId, src.size, self.block_size, inProgress="precopy",
                              pendingChangeId=src.change_id())  # fmt: skip
            smap, cmap = DigestMap(src.size, self.block_size), DigestMap(src.size, self.block_size)
        stats = PassStats("precopy", "full", resumedFrom=start)
        t0 = time.monotonic()
        fd = self._open(src, staged, ctx, fresh=start == 0)
        try:
            extents = src.allocated()
            extents = [(0, src.size)] if extents is None else extents
            p = _Pass(src, staged, state, smap, cmap, fd, stats, self.chunk_size)
            p.checkpoint(start, force=True)
            p.run(_block_aligned(extents, src.size, self.block_size), start, False, False, False)
            os.fdatasync(fd)
            p.save_dirty()
        finally:
            os.close(fd)
        stats.seconds = time.monotonic() - t0
        state.changeId, state.pendingChangeId = state.pendingChangeId, None
        state.precopyDone, state.inProgress, state.checkpoint = True, None, src.size
        state.passes.append(stats.record())
        smap.save(staged.src_map)
        cmap.save(staged.copy_map)
        state.save(staged.state)
        return stats

    def sync_disk(
        self, ctx: StepContext, src: DiskSource, label: str, readback: bool = True
    ) -> PassStats:
        """One incremental pass (CBT when it can answer, else digest comparison).
        `readback` False (the final pass, in the downtime): the copy map records the bytes
        written, so the window's I/O is the changed blocks once read and once written; the
        full comparison against the frozen source runs as a post-check in the window."""
        staged = StagedDisk.of(ctx, src.name)
        state = DiskState.load(staged.state)
        if state is None or state.workflowId != ctx.workflowId or not state.precopyDone:
            raise ApplicationError(
                f"{src.name}: no pre-copy of this workflow in {staged.raw.parent}; run "
                "pre_copy first",
                type=ErrorKind.INVALID_STATE.value,
                non_retryable=True,
            )
        if state.size != src.size or not staged.raw.exists():
            raise ApplicationError(
                f"{src.name}: the source is now {src.size} bytes, the staged copy "
                f"{state.size}: a resized disk needs a new pre-copy",
                type=ErrorKind.INVALID_STATE.value,
                non_retryable=True,
            )
        rec = state.done(label)
        if rec is not None:  # this pass already ran (a retried activity whose result was lost)
            return PassStats.replay(rec, label)
        hb = _heartbeat_for(src.name, label)
        if state.inProgress == label and hb is not None:
            start = min(hb, state.checkpoint)
        else:
            start = 0
            state.inProgress, state.checkpoint = label, 0
            state.pendingChangeId = src.change_id()  # before reading: later writes are next
        smap = DigestMap.load(staged.src_map, src.size, state.blockSize)
        cmap = DigestMap.load(staged.copy_map, src.size, state.blockSize)
        t0 = time.monotonic()
        changed = src.changed_since(state.changeId) if state.changeId else None
        if changed is not None:
            stats = PassStats(label, "cbt", resumedFrom=start)
            extents, compare = _block_aligned(changed, src.size, state.blockSize), False
        else:
            stats = PassStats(label, "digest", resumedFrom=start)
            extents, compare = [(0, src.size)], True
        # The final pass (in the downtime) writes straight into a pre-converted image that
        # is caught up, so no conversion of the whole disk follows it.
        sink = self.mirror.final_sink(ctx, src.name) if self.mirror and not readback else None
        fd = self._open(src, staged, ctx, fresh=False)
        try:
            p = _Pass(src, staged, state, smap, cmap, fd, stats, self.chunk_size, sink)
            p.checkpoint(start, force=True)
            if compare:
                # Blocks the source says are holes: no read needed, zero digests compared.
                allocated = src.allocated()
                data = _block_aligned(allocated, src.size, state.blockSize) if allocated else None
                p.run(data if data is not None else extents, start, True, True, readback)
                if data is not None:
                    self._holes(p, data, readback)
            else:
                p.run(extents, start, False, True, readback)
            os.fdatasync(fd)
            p.save_dirty()
            if sink is not None:
                sink.close()
                sink = None
                stats.mode += "->image"
        finally:
            os.close(fd)
            if sink is not None:  # failed: the image keeps what was flushed; maps say so
                with contextlib.suppress(Exception):
                    sink.close()
        stats.seconds = time.monotonic() - t0
        state.changeId, state.pendingChangeId = state.pendingChangeId, None
        state.inProgress, state.checkpoint = None, src.size
        state.passes.append(stats.record())
        smap.save(staged.src_map)
        cmap.save(staged.copy_map)
        state.save(staged.state)
        return stats

    def _holes(self, p: _Pass, data: list[Extent], readback: bool) -> None:
        """Digest fallback: blocks outside the source's data extents read as zeros."""
        in_data = {i for off, n in data for i in range(off // p.block, -(-(off + n) // p.block))}
        for i in range(p.smap.blocks):
            if i in in_data:
                continue
            zero = zero_digest(p.smap.block_len(i))
            if p.smap.get(i) != zero:
                if p.sink is not None:
                    p.sink.write(i * p.block, bytes(p.smap.block_len(i)))
                else:
                    _punch_hole(p.fd, i * p.block, p.smap.block_len(i))
                    p.dirty[i] = 1
                p.smap.set(i, zero)
                if readback:
                    back = os.pread(p.fd, p.smap.block_len(i), i * p.block)
                    p.cmap.set(i, hashlib.sha256(back).digest())
                else:
                    p.cmap.set(i, zero)
                p.stats.bytesMoved += p.smap.block_len(i)
                p.stats.blocksMoved += 1

    def final(self, ctx: StepContext, src: DiskSource) -> PassStats:
        """The final pass; without a warm copy of this workflow (a cold cutover), the full
        copy, now, in the downtime."""
        state = DiskState.load(StagedDisk.of(ctx, src.name).state)
        if state is None or state.workflowId != ctx.workflowId or not state.precopyDone:
            return self.precopy_disk(ctx, src)
        return self.sync_disk(ctx, src, "final", readback=False)

    def verify_disk(self, ctx: StepContext, name: str) -> tuple[str, list[int]]:
        """Compare the source map and the copy map (no disk read): (root, differing blocks)."""
        staged = StagedDisk.of(ctx, name)
        state = DiskState.load(staged.state)
        if state is None:
            raise integrity_error(f"{name}: no digest maps in {staged.raw.parent}")
        smap = DigestMap.load(staged.src_map, state.size, state.blockSize)
        cmap = DigestMap.load(staged.copy_map, state.size, state.blockSize)
        return smap.root(), smap.differing(cmap)
