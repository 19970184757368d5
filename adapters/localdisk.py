"""Source disks read from local files (raw or flat VMDK), with changed-block tracking from a
change-tracking file beside them: what tests, benchmarks and the lab's local disks use."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from cutover.ports import Extent


class LocalFileSource:
    """A raw/flat disk file on a local file system; holes found with SEEK_DATA/SEEK_HOLE.

    Changed-block tracking when a change-tracking file lies beside it, in the simulator's
    format (`cutover.lab.vcsim`: `<base>-ctk.json` for `<base>-flat.vmdk` or `<base>.raw`),
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
