"""The tamper-evident audit log: one JSON line per finished cutover or wave, hash-chained and
signed by the worker.

Each entry names a workflow run, the history event its record was taken at
(`throughEventId`: the scheduled event of the activity that appended it) and the digest of
the audit report derived from that history up to that event. Each entry's `hash` covers
its content and the previous entry's hash (`prev`); the worker's key signs the hash. So
editing an entry breaks its hash, inserting or deleting one breaks the chain (`prev`,
`seq`), forging one needs the worker's key, and a report that no longer matches its
history is found by deriving it again (`verify_history`).

What the chain cannot show: entries cut from its end (compare the head's seq and hash
with a copy kept elsewhere, or with the workflows' histories, which record each append's
result).

Appending is crash-safe and concurrent-safe: an exclusive lock on the file, its lines read,
one line appended, fsync. A torn last line (a crash mid-write) is named and never extended.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from temporalio.client import Client

from cutover.signing import canonical, digest

#: The first entry's `prev`.
GENESIS = "sha256:" + "0" * 64

Kind = Literal["cutover", "wave"]


SHA256 = r"^sha256:[0-9a-f]{64}$"


class LedgerEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int = Field(ge=1)
    time: datetime
    workflowId: str = Field(min_length=1)
    runId: str = Field(min_length=1)
    kind: Kind
    throughEventId: int = Field(ge=1)
    reportDigest: str = Field(pattern=SHA256)
    outcome: str
    prev: str = Field(pattern=SHA256)
    hash: str = Field(pattern=SHA256)
    signer: str = Field(min_length=1)
    signature: str


class LedgerError(Exception):
    """The log cannot be read or extended as it is (names the file and the line)."""


def entry_hash(fields: Mapping[str, Any]) -> str:
    """The hash of an entry: over everything but `hash` and `signature`."""
    return digest({k: v for k, v in fields.items() if k not in ("hash", "signature")})


#: Report fields added after records were first written (issue 17: each step's data host):
#: left out while unset, so older records still read as equal to their report.
_LATER_STEP_FIELDS = ("dataHost",)


def _without_later_fields(data: Any) -> Any:
    if isinstance(data, dict):
        return {
            k: _without_later_fields(v)
            for k, v in data.items()
            if not (k in _LATER_STEP_FIELDS and v is None)
        }
    if isinstance(data, list):
        return [_without_later_fields(v) for v in data]
    return data


def report_digest(report: BaseModel) -> str:
    """The digest recorded for an audit report (its JSON form)."""
    return digest(_without_later_fields(report.model_dump(mode="json")))


@dataclass
class _Line:
    number: int
    offset: int
    raw: bytes


def _lines(path: Path) -> Iterator[_Line]:
    offset = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            yield _Line(number, offset, raw)
            offset += len(raw)


class _BadLine(Exception):
    """What is wrong with one line (the caller names the file and the line)."""


def _parse(path: Path, line: _Line) -> dict[str, Any]:
    if not line.raw.endswith(b"\n"):
        raise _BadLine(
            "torn (no end of line: a crash while appending?); it was never acknowledged: "
            f"remove it (truncate -s {line.offset} {path}) once sure it is the last line"
        )
    try:
        data = json.loads(line.raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _BadLine("not JSON (damaged or edited)") from None
    if not isinstance(data, dict):
        raise _BadLine("not a JSON object (damaged or edited)")
    return data


def _entry(data: dict[str, Any]) -> LedgerEntry:
    try:
        return LedgerEntry.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(entry)"
        raise _BadLine(f"not a ledger entry: {loc}: {first['msg']}") from None


#: What the appender brings; the log adds seq, time, prev, signer, hash and signature.
RECORD_FIELDS = ("workflowId", "runId", "kind", "throughEventId", "reportDigest", "outcome")


def append(
    path: Path,
    record: Mapping[str, Any],
    signer: str,
    key: Ed25519PrivateKey,
    now: datetime | None = None,
) -> tuple[LedgerEntry, bool]:
    """Append `record` (workflowId, runId, kind, throughEventId, reportDigest, outcome) as
    the next entry; (entry, True). When an entry for the same workflowId, runId and
    throughEventId is already there (a retry after a crash): (that entry, False)."""
    key_of = (record["workflowId"], record["runId"], record["throughEventId"])
    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)  # a fresh state dir or --audit-log path
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd closes (also when we die)
        last: LedgerEntry | None = None
        size = 0
        for line in _lines(path):
            try:
                entry = _entry(_parse(path, line))
            except _BadLine as exc:  # never extended: the chain would hide it
                raise LedgerError(f"{path}: line {line.number}: {exc}") from None
            if (entry.workflowId, entry.runId, entry.throughEventId) == key_of:
                return entry, False
            last, size = entry, line.offset + len(line.raw)
        seq, prev_hash = (last.seq + 1, last.hash) if last is not None else (1, GENESIS)
        fields: dict[str, Any] = {
            "seq": seq,
            "time": (now or datetime.now(UTC)).astimezone(UTC).isoformat(),
            **{k: record[k] for k in RECORD_FIELDS},
            "prev": prev_hash,
            "signer": signer,
        }
        h = entry_hash(fields)
        fields["hash"] = h
        fields["signature"] = base64.b64encode(key.sign(h.encode("ascii"))).decode("ascii")
        new = LedgerEntry.model_validate(fields)  # a malformed record never lands
        _write(fd, canonical(fields) + b"\n", size)
        if created:  # the new file's name, durable too
            _fsync_dir(path.parent)
        return new, True
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _write(fd: int, data: bytes, size: int) -> None:
    """One line, durable; on failure (a full disk) the file is cut back to `size`."""
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.ftruncate(fd, size)
        raise


# ------------------------------------------------------------------- verification


@dataclass
class Problem:
    line: int
    seq: int | None
    what: str

    def __str__(self) -> str:
        seq = f" (seq {self.seq})" if self.seq is not None else ""
        return f"line {self.line}{seq}: {self.what}"


@dataclass
class ChainCheck:
    #: The entries read, with their line numbers, up to the first problem.
    entries: list[tuple[int, LedgerEntry]] = field(default_factory=list)
    problem: Problem | None = None

    @property
    def head(self) -> LedgerEntry | None:
        return self.entries[-1][1] if self.entries else None


def check_chain(path: Path, keys: Mapping[str | None, Ed25519PublicKey]) -> ChainCheck:
    """Every entry's hash, signature, seq and prev, first line to last; stops at the first
    problem. `keys`: the worker's public keys by signer name (None: any signer).

    Raises OSError when the file cannot be read at all."""
    out = ChainCheck()
    prev: LedgerEntry | None = None
    prev_line = 0
    for line in _lines(path):
        try:
            data = _parse(path, line)
            entry = _entry(data)
        except _BadLine as exc:
            out.problem = Problem(line.number, None, str(exc))
            return out
        problem = _check_entry(data, entry, keys, prev, prev_line)
        if problem is not None:
            out.problem = Problem(line.number, entry.seq, problem)
            return out
        out.entries.append((line.number, entry))
        prev, prev_line = entry, line.number
    return out


def _check_entry(
    data: dict[str, Any],
    entry: LedgerEntry,
    keys: Mapping[str | None, Ed25519PublicKey],
    prev: LedgerEntry | None,
    prev_line: int,
) -> str | None:
    recomputed = entry_hash(data)
    if recomputed != entry.hash:
        return (
            f"edited: its content does not match its hash (recorded {entry.hash}, its content "
            f"hashes to {recomputed})"
        )
    key = keys.get(entry.signer, keys.get(None))
    if key is None:
        return f"signed by '{entry.signer}', and no --key-pub given for it"
    try:
        key.verify(base64.b64decode(entry.signature, validate=True), entry.hash.encode("ascii"))
    except (InvalidSignature, binascii.Error, ValueError):
        return (
            f"its signature does not verify against the worker key '{entry.signer}': not "
            "written by the worker (forged, or inserted by hand)"
        )
    if prev is None:
        if entry.seq != 1:
            return f"the log starts at seq {entry.seq}: entries 1..{entry.seq - 1} were deleted"
        if entry.prev != GENESIS:
            return "the first entry's prev is not the genesis hash: entries before it deleted"
        return None
    if entry.seq > prev.seq + 1:
        missing = (
            f"seq {prev.seq + 1}"
            if entry.seq == prev.seq + 2
            else f"seq {prev.seq + 1}..{entry.seq - 1}"
        )
        return f"deleted: {missing} missing after line {prev_line} (seq {prev.seq})"
    if entry.seq <= prev.seq:
        return (
            f"inserted: seq {entry.seq} after line {prev_line} (seq {prev.seq}) (an entry "
            "inserted, duplicated or reordered)"
        )
    if entry.prev != prev.hash:
        return (
            f"inserted or replaced: its prev does not match line {prev_line}'s hash (an entry "
            "before it was inserted, deleted or replaced)"
        )
    return None


@dataclass
class HistoryCheck:
    checked: int = 0
    #: Entries whose workflow history is no longer retained (not re-derived).
    gone: list[tuple[int, LedgerEntry]] = field(default_factory=list)
    problem: Problem | None = None


async def check_history(
    client: Client, entries: list[tuple[int, LedgerEntry]], concurrency: int = 8
) -> HistoryCheck:
    """Each entry's report derived again from its workflow's history up to its event,
    compared with the recorded digest (several at once); names the first that differs."""
    from cutover.audit.model import AuditNotFound
    from cutover.audit.reader import audit

    gate = asyncio.Semaphore(concurrency)

    async def derive(entry: LedgerEntry) -> str | None:
        async with gate:
            try:
                report = await audit(
                    client, entry.workflowId, entry.runId, through_event_id=entry.throughEventId
                )
            except AuditNotFound:
                return None
            return report_digest(report)

    found = await asyncio.gather(*(derive(e) for _, e in entries))
    out = HistoryCheck()
    for (number, entry), got in zip(entries, found, strict=True):
        if got is None:
            out.gone.append((number, entry))
            continue
        out.checked += 1
        if got != entry.reportDigest:
            out.problem = Problem(
                number,
                entry.seq,
                f"the report differs from its history: {entry.workflowId} run {entry.runId} "
                f"through event {entry.throughEventId} gives {got}, the entry records "
                f"{entry.reportDigest}",
            )
            return out
    return out
