"""VMDK snapshot chains: descriptors, vmfsSparse (COWD) delta extents, and a reader of a
chain's point in time. Pure format code over a `Fetch` (bytes of a datastore file), so the
same reader runs over vCenter's `/folder` endpoint and over a local (mounted) datastore.

What ESXi does on a snapshot (and our simulator, `lab/vcsim/chain.go`): the disk's backing
becomes a delta `<disk>-00000N.vmdk` (a text descriptor: `createType="vmfsSparse"`,
`parentFileNameHint`, an extent `VMFSSPARSE "<disk>-00000N-delta.vmdk"`) on top of the disk
it had, which is frozen from then on. A delta extent (VMware Virtual Disk Format 5.0, "ESX
Server sparse extents") is a 2048-byte header (magic `COWD`, sectors, grain size, grain
directory offset and size, first free sector), a grain directory of uint32 sector offsets of
grain tables (0: none), grain tables of 4096 uint32 sector offsets of grains (0: the grain
is not in this delta: read the parent). A base is `createType="vmfs"` with a flat extent
`<disk>-flat.vmdk` (an empty descriptor, as the simulator makes, means that too).

seSparse deltas (VMFS6's default) are not parsed here: they need VDDK (the error says so).
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

SECTOR = 512
GT_ENTRIES = 4096
_HEADER = struct.Struct("<4sIIIIIII")  # magic, version, flags, sectors, grain, gd, gdN, free
#: `<disk>-000001`: the name a delta gets (vSphere's numbering)
DELTA_NAME = re.compile(r"-\d{6}$")

#: bytes of one file of the chain: (file name relative to the disk's directory, offset,
#: length) -> exactly that many bytes (fewer only at the file's end)
Fetch = Callable[[str, int, int], bytes]


class VmdkError(ValueError):
    """A descriptor or extent this code cannot read (the message names the file)."""


@dataclass(frozen=True)
class Descriptor:
    name: str  # the descriptor's file name
    create_type: str
    extent: str  # the data file's name
    extent_type: str  # VMFS, VMFSSPARSE, SESPARSE, ...
    parent: str | None  # parentFileNameHint


_KV = re.compile(r'^\s*([A-Za-z.]+)\s*=\s*"?([^"\n]*)"?\s*$', re.M)
_EXTENT = re.compile(r'^\s*(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)\s+"([^"]+)"', re.M)


def parse_descriptor(name: str, text: str) -> Descriptor:
    """A descriptor's chain facts; an empty one is the simulator's flat base."""
    if not text.strip():
        return Descriptor(name, "vmfs", f"{name.removesuffix('.vmdk')}-flat.vmdk", "VMFS", None)
    kv = {k: v for k, v in _KV.findall(text)}
    extents = _EXTENT.findall(text)
    if len(extents) != 1:
        raise VmdkError(f"{name}: expected one extent line in the descriptor, found {len(extents)}")
    _, _, kind, extent = extents[0]
    if "/" in extent or extent in ("", ".", ".."):
        raise VmdkError(f"{name}: extent {extent!r} is not a file beside the descriptor")
    parent = kv.get("parentFileNameHint") or None
    if parent is not None and ("/" in parent or not parent.endswith(".vmdk")):
        raise VmdkError(f"{name}: parentFileNameHint {parent!r} is not a .vmdk beside it")
    return Descriptor(name, kv.get("createType", ""), extent, kind.upper(), parent)


@dataclass
class Cowd:
    """A vmfsSparse (COWD) extent's header and grain directory."""

    sectors: int
    grain: int  # in sectors
    gd_offset: int  # in sectors
    free: int  # first free sector
    gd: list[int]

    @classmethod
    def parse(cls, name: str, head: bytes, read: Callable[[int, int], bytes]) -> Cowd:
        if len(head) < _HEADER.size or head[:4] != b"COWD":
            raise VmdkError(f"{name}: not a vmfsSparse (COWD) extent")
        _, _, _, sectors, grain, gd_off, gd_n, free = _HEADER.unpack_from(head)
        if grain <= 0 or gd_n * GT_ENTRIES * grain < sectors:
            raise VmdkError(f"{name}: inconsistent COWD header (grain {grain}, {gd_n} tables)")
        raw = read(gd_off * SECTOR, 4 * gd_n)
        if len(raw) != 4 * gd_n:
            raise VmdkError(f"{name}: grain directory cut short")
        return cls(sectors, grain, gd_off, free, list(struct.unpack(f"<{gd_n}I", raw)))


@dataclass
class _Layer:
    desc: Descriptor
    cowd: Cowd | None  # None: a flat extent
    tables: dict[int, tuple[int, ...]] = field(default_factory=dict)  # GT cache


class Chain:
    """A disk's point in time: the descriptor `top` and everything under it, read through
    `fetch`. Reads resolve each grain to the topmost layer holding it (else the flat base,
    else zeros). The layers must be frozen while read (a snapshot's point in time, or a
    powered-off VM's disk)."""

    def __init__(self, fetch: Fetch, top: str, size: int, max_depth: int = 64) -> None:
        self._fetch, self.size = fetch, size
        self.layers: list[_Layer] = []
        name: str | None = top
        while name is not None:
            if len(self.layers) >= max_depth or any(x.desc.name == name for x in self.layers):
                raise VmdkError(f"{top}: the snapshot chain loops or is deeper than {max_depth}")
            desc = parse_descriptor(name, fetch(name, 0, 64 << 10).decode("utf-8", "replace"))
            if desc.extent_type == "SESPARSE":
                raise VmdkError(
                    f"{name} is a seSparse delta: reading it needs VDDK (vcenter.vddk), "
                    "not the datastore's HTTP access"
                )
            if desc.extent_type not in ("VMFS", "VMFSSPARSE", "FLAT"):
                raise VmdkError(f"{name}: extent type {desc.extent_type} is not supported")
            cowd = None
            if desc.extent_type == "VMFSSPARSE":
                ext = desc.extent
                cowd = Cowd.parse(ext, fetch(ext, 0, 2048), partial(fetch, ext))
            self.layers.append(_Layer(desc, cowd))
            name = desc.parent
        if self.layers[-1].cowd is not None:
            raise VmdkError(f"{top}: the chain ends in a delta (its base is missing)")

    @property
    def names(self) -> list[str]:
        return [x.desc.name for x in self.layers]

    def _table(self, layer: _Layer, i: int) -> tuple[int, ...] | None:
        assert layer.cowd is not None
        if i >= len(layer.cowd.gd) or layer.cowd.gd[i] == 0:
            return None
        if i not in layer.tables:
            raw = self._fetch(layer.desc.extent, layer.cowd.gd[i] * SECTOR, 4 * GT_ENTRIES)
            if len(raw) != 4 * GT_ENTRIES:
                raise VmdkError(f"{layer.desc.extent}: grain table {i} cut short")
            layer.tables[i] = struct.unpack(f"<{GT_ENTRIES}I", raw)
        return layer.tables[i]

    def _where(self, sector: int) -> tuple[int, int, int]:
        """(layer index, file byte offset, sectors from there that resolve the same way)."""
        bound = 1 << 40
        for li, layer in enumerate(self.layers):
            if layer.cowd is None:
                return li, sector * SECTOR, bound
            g = layer.cowd.grain
            gi = sector // g
            t, e = divmod(gi, GT_ENTRIES)
            table = self._table(layer, t)
            if table is not None and table[e]:
                within = sector - gi * g
                return li, (table[e] + within) * SECTOR, min(bound, g - within)
            # not in this layer until its next allocated grain: the layers below decide
            nxt = (t + 1) * GT_ENTRIES
            if table is not None:
                nxt = next((t * GT_ENTRIES + k for k in range(e + 1, GT_ENTRIES) if table[k]), nxt)
            bound = min(bound, nxt * g - sector)
        raise VmdkError(f"{self.layers[0].desc.name}: the chain has no base")

    def runs(self, offset: int, length: int) -> Iterator[tuple[int, int, int, int]]:
        """(disk offset, layer index, file offset, length) runs covering the range."""
        end = min(offset + length, self.size)
        pos = offset
        cur: list[int] | None = None
        while pos < end:
            sector, within = divmod(pos, SECTOR)
            li, foff, count = self._where(sector)
            n = min(end - pos, count * SECTOR - within)
            foff += within
            if cur and cur[1] == li and cur[2] + cur[3] == foff and cur[0] + cur[3] == pos:
                cur[3] += n
            else:
                if cur:
                    yield cur[0], cur[1], cur[2], cur[3]
                cur = [pos, li, foff, n]
            pos += n
        if cur:
            yield cur[0], cur[1], cur[2], cur[3]

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(max(0, min(offset + length, self.size) - offset))
        for pos, li, foff, n in self.runs(offset, length):
            data = self._fetch(self.layers[li].desc.extent, foff, n)
            buf[pos - offset : pos - offset + len(data)] = data  # short: zeros stay
        return bytes(buf)


# ------------------------------------------------------------- local (mounted) chains


def local_fetch(directory: Path) -> Fetch:
    def fetch(name: str, offset: int, length: int) -> bytes:
        with (directory / name).open("rb") as f:
            return os.pread(f.fileno(), length, offset)

    return fetch


def current_top(base: Path) -> Path:
    """The top of a local disk's chain: the highest-numbered `<disk>-NNNNNN.vmdk` beside the
    base descriptor, else the base (the simulator's convention, `lab/vcsim/chain.go`)."""
    stem = base.name.removesuffix(".vmdk")
    deltas = sorted(p for p in base.parent.glob(f"{stem}-[0-9][0-9][0-9][0-9][0-9][0-9].vmdk"))
    return deltas[-1] if deltas else base


@contextmanager
def chain_lock(base: Path) -> Iterator[None]:
    """The chain's exclusive lock (the simulator takes it to snapshot or consolidate)."""
    with base.with_name(base.name.removesuffix(".vmdk") + "-chain.lck").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def create_delta(directory: Path, name: str, parent: str, capacity: int) -> Path:
    """A new empty delta `name` (descriptor and COWD extent) on `parent`, as ESXi makes one
    at a snapshot (tests and benchmarks; the simulator makes its own)."""
    sectors = -(-capacity // SECTOR)
    gd_n = -(-sectors // GT_ENTRIES)
    gd_sectors = -(-(4 * gd_n) // SECTOR)
    head = bytearray(2048)
    _HEADER.pack_into(head, 0, b"COWD", 1, 3, sectors, 1, 4, gd_n, 4 + gd_sectors)
    head[32 : 32 + len(parent)] = parent.encode()
    extent = name.removesuffix(".vmdk") + "-delta.vmdk"
    (directory / extent).write_bytes(bytes(head) + bytes(gd_sectors * SECTOR))
    (directory / name).write_text(
        f"# Disk DescriptorFile\nversion=1\nCID=fffffffd\nparentCID=fffffffe\n"
        f'createType="vmfsSparse"\nparentFileNameHint="{parent}"\n\n'
        f'RW {sectors} VMFSSPARSE "{extent}"\n'
    )
    return directory / name


class CowdWriter:
    """Sector-aligned writes into a local vmfsSparse extent (grain tables and grains
    allocated at its end, then the table entry, then the header's free sector)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR)
        head = os.pread(self._fd, 2048, 0)
        self._c = Cowd.parse(path.name, head, lambda o, n: os.pread(self._fd, n, o))

    def write(self, offset: int, data: bytes | memoryview) -> None:
        c, g = self._c, self._c.grain * SECTOR
        if offset % g or len(data) % g:
            raise VmdkError(f"{self.path.name}: unaligned write at {offset} ({len(data)} bytes)")
        view = memoryview(data)
        for p in range(0, len(view), g):
            gi = (offset + p) // g
            t, e = divmod(gi, GT_ENTRIES)
            if t >= len(c.gd):
                raise VmdkError(f"{self.path.name}: write at {offset + p} is beyond the disk")
            # Order, so that a writer killed at any instant leaves a readable extent: the
            # new space is written, then the header's free sector moves past it, then the
            # table entry points at it (a kill in between leaks space; it never lets two
            # entries share a sector).
            if c.gd[t] == 0:  # a new, zeroed grain table
                table = c.free
                os.pwrite(self._fd, bytes(4 * GT_ENTRIES), table * SECTOR)
                self._set_free(table + 4 * GT_ENTRIES // SECTOR)
                os.pwrite(self._fd, struct.pack("<I", table), c.gd_offset * SECTOR + 4 * t)
                c.gd[t] = table
            entry = c.gd[t] * SECTOR + 4 * e
            (grain,) = struct.unpack("<I", os.pread(self._fd, 4, entry))
            if grain:  # already in this delta: in place
                os.pwrite(self._fd, view[p : p + g], grain * SECTOR)
                continue
            grain = c.free
            os.pwrite(self._fd, view[p : p + g], grain * SECTOR)
            self._set_free(grain + c.grain)
            os.pwrite(self._fd, struct.pack("<I", grain), entry)

    def _set_free(self, sector: int) -> None:
        self._c.free = sector
        os.pwrite(self._fd, struct.pack("<I", sector), 28)

    def flush(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


class LocalDisk:
    """A local disk's current top, written in place: a flat base or a COWD delta."""

    def __init__(self, top: Path) -> None:
        desc = parse_descriptor(top.name, top.read_text() if top.stat().st_size else "")
        self.extent = top.parent / desc.extent
        if desc.extent_type == "VMFSSPARSE":
            self._cowd: CowdWriter | None = CowdWriter(self.extent)
            self._fd = -1
        elif desc.extent_type in ("VMFS", "FLAT"):
            self._cowd, self._fd = None, os.open(self.extent, os.O_WRONLY)
        else:
            raise VmdkError(f"{top.name}: cannot write a {desc.extent_type} extent")

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if self._cowd is not None:
            self._cowd.write(offset, data)
            return
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n

    def flush(self) -> None:
        if self._cowd is not None:
            self._cowd.flush()
        else:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._cowd is not None:
            self._cowd.close()
        else:
            os.close(self._fd)
