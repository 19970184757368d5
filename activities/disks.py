"""The warm data path: pre-copy, incremental passes, the final sync and its integrity check.

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
import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any, Protocol

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import staging
from activities.common import attempt as _attempt
from activities.convert import disk_id
from activities.staging import check_name, config_error
from adapters.vsphere.cbt import changed_areas, disk_change_id, enable_cbt
from adapters.vsphere.client import ClientPool, VSphereClient
from adapters.vsphere.datastore import DatastoreFile
from adapters.vsphere.inventory import read_inventory, resolve_vms
from cutover.catalog import Compensation, Step, WarmStep
from cutover.errors import ErrorKind
from cutover.models import StepContext, StepInput, StepResult

BLOCK = 1 << 20  # digest block: the unit an incremental pass copies
CHUNK = 16 << 20  # sequential read/write unit
DIGEST = 32
CHECKPOINT_SECONDS = 0.5

Extent = tuple[int, int]  # (offset, length)


# ---------------------------------------------------------------------------- errors


def integrity_error(message: str) -> ApplicationError:
    return ApplicationError(message, type=ErrorKind.INTEGRITY_ERROR.value, non_retryable=True)


# ---------------------------------------------------------------------------- sources


class DiskSource(Protocol):
    """Bytes of one source disk, plus what is known about its allocation and changes."""

    name: str
    size: int

    def read(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes (fewer only at the end of the disk)."""
        ...

    def allocated(self) -> list[Extent] | None:
        """Extents that may hold data (the rest reads as zeros); None when unknown."""
        ...

    def change_id(self) -> str | None:
        """The current changed-block-tracking ID; None without CBT."""
        ...

    def changed_since(self, change_id: str) -> list[Extent] | None:
        """Extents written since `change_id`; None when CBT cannot answer (fall back)."""
        ...

    def close(self) -> None: ...


class LocalFileSource:
    """A raw/flat disk file on a local file system; holes found with SEEK_DATA/SEEK_HOLE.

    Changed-block tracking when a change-tracking file lies beside it, in the simulator's
    format (`cutover.vcsim`: `<base>-ctk.json` for `<base>-flat.vmdk` or `<base>.raw`),
    kept by whoever writes the disk; without one, incremental passes compare digests."""

    def __init__(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.stem
        base = self.path.stem.removesuffix("-flat")
        self.ctk = self.path.with_name(f"{base}-ctk.json")
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self.size = os.fstat(self._fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        out = os.pread(self._fd, length, offset)
        while len(out) < length and offset + len(out) < self.size:
            more = os.pread(self._fd, length - len(out), offset + len(out))
            if not more:
                break
            out += more
        return out

    def allocated(self) -> list[Extent] | None:
        extents: list[Extent] = []
        pos = 0
        try:
            while pos < self.size:
                try:
                    start = os.lseek(self._fd, pos, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # only a hole from pos to the end
                        break
                    raise
                end = os.lseek(self._fd, start, os.SEEK_HOLE)
                extents.append((start, end - start))
                pos = end
        except OSError:
            return None  # no SEEK_DATA on this file system: unknown
        return extents

    def _ctk(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.ctk.read_text())
        except FileNotFoundError:
            return None
        return data

    def change_id(self) -> str | None:
        ctk = self._ctk()
        return None if ctk is None else f"{ctk['uuid']}/{ctk['seq']}"

    def changed_since(self, change_id: str) -> list[Extent] | None:
        """The blocks written after `change_id`; None (digest fallback) when the tracking
        file is gone or was reset (another uuid), as ESXi answers after a CBT reset."""
        ctk = self._ctk()
        uuid, _, seq = change_id.rpartition("/")
        if ctk is None or uuid != ctk["uuid"] or not seq.isdigit() or int(seq) > ctk["seq"]:
            return None
        block = int(ctk["blockSize"])
        since = int(seq)
        changed = sorted(int(b) for b, at in ctk["changes"].items() if at > since)
        extents: list[Extent] = []
        for b in changed:
            if extents and extents[-1][0] + extents[-1][1] == b * block:
                extents[-1] = (extents[-1][0], extents[-1][1] + block)
            else:
                extents.append((b * block, block))
        return [(o, min(n, self.size - o)) for o, n in extents if o < self.size]

    def close(self) -> None:
        os.close(self._fd)


class DatastoreSource:
    """A VM disk's flat file read through vCenter's `/folder` endpoint, with the VM's CBT."""

    def __init__(
        self,
        client: VSphereClient,
        *,
        name: str,
        vm_name: str,
        disk_key: int,
        flat_path: str,
        datacenter: str,
        cbt: bool,
    ) -> None:
        self.name = name
        self._client, self._vm, self._key, self._cbt = client, vm_name, disk_key, cbt
        self._stream = DatastoreFile(client, flat_path, datacenter, chunk=CHUNK)
        self.size = self._stream.size

    def read(self, offset: int, length: int) -> bytes:
        self._stream.seek(offset)
        buf = bytearray(min(length, max(0, self.size - offset)))
        got = 0
        view = memoryview(buf)
        while got < len(buf):
            n = self._stream.readinto(view[got:])
            if not n:
                break
            got += n
        return bytes(buf[:got])

    def allocated(self) -> list[Extent] | None:
        if not self._cbt:
            return None
        try:  # "*": the allocated extents, as backup tools ask for a first full copy
            return changed_areas(self._client, self._vm, self._key, "*", end=self.size)
        except ApplicationError:
            return None

    def change_id(self) -> str | None:
        return disk_change_id(self._client, self._vm, self._key) if self._cbt else None

    def changed_since(self, change_id: str) -> list[Extent] | None:
        if not self._cbt:
            return None
        try:
            return changed_areas(self._client, self._vm, self._key, change_id, end=self.size)
        except ApplicationError as exc:
            if exc.type == "VSphereUnavailable":
                raise  # retry the activity; do not silently degrade to a full scan
            return None  # CBT reset / invalid ID: the digest comparison takes over

    def close(self) -> None:
        self._stream.close()


#: Which disks a step works on: `(disk name, source)` pairs. The bool says the caller is
#: the pre-copy (a vSphere factory may enable CBT then).
SourceFactory = Callable[[StepContext, bool], list[DiskSource]]


def vsphere_sources(pool: ClientPool) -> SourceFactory:
    """The runbook's VMs' disks, read from their datastores through vCenter."""

    def make(ctx: StepContext, precopy: bool) -> list[DiskSource]:
        vc = ctx.site.vcenter
        if vc is None:
            raise config_error("the site config has no `vcenter` section")
        client = pool.get(vc)
        names_fact = ctx.facts.get("source_vms")
        names = names_fact.split(",") if names_fact else resolve_vms(client, ctx.runbook)
        if precopy:
            for vm_name in names:
                enable_cbt(client, vm_name)
        inv = read_inventory(client)
        sources: list[DiskSource] = []
        for vm_name in names:
            vm = inv.vm(vm_name)
            for disk in vm.disks:
                if disk.rdm or not disk.fileName.endswith(".vmdk"):
                    raise config_error(
                        f"{vm.name} disk {disk.key} ({disk.fileName or 'no file'}) is not a "
                        "VMDK on a datastore: it cannot be copied"
                    )
                base = disk.fileName.removesuffix(".vmdk")
                disk_name = check_name(disk_id(vm.name, disk.key), "disk")
                sources.append(
                    DatastoreSource(
                        client,
                        name=disk_name,
                        vm_name=vm.name,
                        disk_key=disk.key,
                        flat_path=f"{base}-flat.vmdk",
                        datacenter=vm.datacenter or vc.datacenter or "",
                        cbt=vm.changeTrackingEnabled or precopy,
                    )
                )
        return sources

    return make


# ---------------------------------------------------------------------------- paths


def staging_root(ctx: StepContext) -> Path:
    return staging.root(ctx.site)


def app_dir(ctx: StepContext) -> Path:
    """This workflow's staging dir (`activities.staging.application_dir`)."""
    return staging.application_dir(ctx.site, ctx.application, ctx.workflowId)


@dataclass(frozen=True)
class StagedDisk:
    """The files of one staged disk."""

    raw: Path
    src_map: Path
    copy_map: Path
    state: Path
    #: one byte per block: changed in `raw` since the pre-converted image last caught up
    dirty: Path
    #: the target image kept in step with the source during the warm phase (qcow2)
    mirror: Path

    @staticmethod
    def of(ctx: StepContext, disk: str) -> StagedDisk:
        base = app_dir(ctx)
        check_name(disk, "disk")
        staged = StagedDisk(
            raw=base / f"{disk}.raw",
            src_map=base / f"{disk}.src.sha256",
            copy_map=base / f"{disk}.copy.sha256",
            state=base / f"{disk}{staging.STATE_SUFFIX}",
            dirty=base / f"{disk}.dirty",
            mirror=base / f"{disk}.target.qcow2",
        )
        for p in (staged.raw, staged.src_map, staged.copy_map, staged.state, staged.mirror):
            staging.confine(staging_root(ctx), p)
        return staged


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
    `activities.mirror`): caught up after each warm pass, written directly by the final
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


# ---------------------------------------------------------------------------- activities


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


@dataclass
class DiskActivities:
    """The warm data path's activities; `sources` picks and opens the disks (injectable)."""

    sources: SourceFactory
    block_size: int = BLOCK
    chunk_size: int = CHUNK
    #: keeps a pre-converted target image in step (qcow2 targets); None: convert in window
    mirror: MirrorHooks | None = None

    @classmethod
    def for_vsphere(cls, pool: ClientPool, mirror: MirrorHooks | None = None) -> DiskActivities:
        return cls(vsphere_sources(pool), mirror=mirror)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.pre_copy, self.incremental_sync, self.final_data_sync, self.discard_staging]

    # -- one disk

    def _open(self, src: DiskSource, staged: StagedDisk, ctx: StepContext, fresh: bool) -> int:
        staged.raw.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        staging.confine(staging_root(ctx), staged.raw.parent)
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

    def _final(self, ctx: StepContext, src: DiskSource) -> PassStats:
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

    # -- steps

    def _each(
        self, inp: StepInput, precopy: bool, run: Callable[[DiskSource], PassStats]
    ) -> tuple[list[DiskSource], list[PassStats], StepResult]:
        ctx = inp.context
        app_dir(ctx)  # reject a bad application name before touching any source
        sources = self.sources(ctx, precopy)
        stats: list[PassStats] = []
        try:
            for src in sources:
                check_name(src.name, "disk")
            if len({s.name for s in sources}) != len(sources):
                raise config_error("two source disks map to the same staging name")
            for src in sources:
                stats.append(run(src))
        finally:
            for src in sources:
                src.close()
        result = StepResult(
            step=inp.step,
            changed=any(s.mode != "done" for s in stats),
            attempt=_attempt(),
        )
        result.facts["disks"] = ",".join(s.name for s in sources)
        result.details["bytesMoved"] = sum(s.bytesMoved for s in stats)
        result.details["bytesRead"] = sum(s.bytesRead for s in stats)
        result.details["bytesWritten"] = sum(s.bytesWritten for s in stats)
        result.details["bytesVerified"] = sum(s.bytesVerified for s in stats)
        result.details["seconds"] = round(sum(s.seconds for s in stats), 3)
        for src, st in zip(sources, stats, strict=True):
            staged = StagedDisk.of(ctx, src.name)
            state = DiskState.load(staged.state)
            result.facts[f"staging_path.{src.name}"] = str(staged.raw)
            if state is not None and state.changeId:
                result.facts[f"change_id.{src.name}"] = state.changeId
            if state is not None:
                result.details[f"passes.{src.name}"] = len(state.passes)
            result.details[f"mode.{src.name}"] = st.mode
            result.details[f"bytesMoved.{src.name}"] = st.bytesMoved
            result.details[f"resumedFrom.{src.name}"] = st.resumedFrom
        return sources, stats, result

    def _catch_up(self, inp: StepInput, sources: list[DiskSource], result: StepResult) -> None:
        """Warm phase, source still serving: bring the pre-converted images up to date."""
        if self.mirror is None:
            return
        for src in sources:
            for k, v in self.mirror.after_warm_pass(inp.context, src.name).items():
                result.details[f"{k}.{src.name}"] = v

    @activity.defn(name=WarmStep.PRE_COPY)
    def pre_copy(self, inp: StepInput) -> StepResult:
        srcs, _, result = self._each(inp, True, lambda s: self.precopy_disk(inp.context, s))
        self._catch_up(inp, srcs, result)
        return result

    @activity.defn(name=WarmStep.INCREMENTAL_SYNC)
    def incremental_sync(self, inp: StepInput) -> StepResult:
        label = f"pass-{inp.passNumber}"
        srcs, _, result = self._each(inp, False, lambda s: self.sync_disk(inp.context, s, label))
        result.details["pass"] = inp.passNumber
        self._catch_up(inp, srcs, result)
        return result

    @activity.defn(name=Step.FINAL_DATA_SYNC)
    def final_data_sync(self, inp: StepInput) -> StepResult:
        """The last pass after quiesce, then the integrity check of the digest maps."""
        sources, stats, result = self._each(inp, False, lambda s: self._final(inp.context, s))
        result.details["cold"] = any(s.label == "precopy" for s in stats)
        t0 = time.monotonic()
        bad: list[str] = []
        for src in sources:
            root, differing = self.verify_disk(inp.context, src.name)
            result.facts[f"digest_root.{src.name}"] = root
            if differing:
                shown = ", ".join(str(i) for i in differing[:10])
                bad.append(f"{src.name}: {len(differing)} block(s) differ ({shown})")
        result.details["integritySeconds"] = round(time.monotonic() - t0, 3)
        if bad:
            raise integrity_error(
                "the staged copy does not match the source after the final sync: " + "; ".join(bad)
            )
        result.details["integrity"] = "source and copy digest maps match"
        return result

    @activity.defn(name=Compensation.DISCARD_STAGING)
    def discard_staging(self, inp: StepInput) -> StepResult:
        """Remove this application's staging dir; a no-op when it is not there. At the
        pre-upgrade path (`activities.staging`), only this workflow's disk files."""
        ctx = inp.context
        removed = staging.legacy_files(ctx.site, ctx.application, ctx.workflowId)
        for f in removed:
            f.unlink(missing_ok=True)
        if removed and removed[0].parent.name not in staging.INTERNAL:
            with contextlib.suppress(OSError):  # only when empty
                removed[0].parent.rmdir()
        path = staging.application_dir(ctx.site, ctx.application)
        if path.is_symlink():
            path.unlink()  # never follow a link out of the staging dir
            removed.append(path)
        elif path.exists():
            shutil.rmtree(path)
            removed.append(path)
        return StepResult(
            step=inp.step,
            changed=bool(removed),
            details={"removed": ",".join(str(p) for p in removed)},
            attempt=_attempt(),
        )

    def consistency(self, ctx: StepContext) -> list[ConsistencyReport]:
        """`data_consistency_confirmed` for every disk of the application (frozen source)."""
        sources = self.sources(ctx, False)
        reports = []
        try:
            for s in sources:
                # what the target boots: the pre-converted image where there is one
                reader = self.mirror.reader(ctx, s.name) if self.mirror else None
                copy: Path | Reader = StagedDisk.of(ctx, s.name).raw if reader is None else reader
                try:
                    reports.append(data_consistency_confirmed(s, copy, self.block_size))
                finally:
                    if reader is not None:
                        reader.close()
            return reports
        finally:
            for s in sources:
                s.close()
