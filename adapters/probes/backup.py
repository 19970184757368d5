"""The `restic-backup` probe: a restic repository's last snapshot age, or a backup of a
file that is restored and compared by SHA-256.

restic gets the repository's password in its environment (`RESTIC_PASSWORD`), read from
the probe's `passwordRef` by the worker; never on a command line, never in a result.
A snapshot exists in restic only once its backup completed, so the newest matching
snapshot is the last successful backup.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from adapters.probes.result import check_result
from cutover.models import CheckInput, CheckResult
from cutover.site import ResticBackupProbe

#: The tag every snapshot this probe makes carries (so it is told apart from real ones).
PROBE_TAG = "cutover-probe"
CHUNK = 1 << 20


class _Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


class _Failed(Exception):
    """The probe ran and saw a problem: (measured, detail)."""

    def __init__(self, measured: str, detail: str) -> None:
        super().__init__(detail)
        self.measured, self.detail = measured, detail


def _env(probe: ResticBackupProbe) -> dict[str, str]:
    try:
        password = probe.passwordRef.read()
    except (LookupError, OSError) as exc:
        raise _Failed("not run", f"passwordRef: {exc}") from None
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RESTIC_PASSWORD_FILE", "RESTIC_PASSWORD_COMMAND", "RESTIC_REPOSITORY")
    }
    env["RESTIC_PASSWORD"] = password
    return env


def _restic(
    probe: ResticBackupProbe, args: list[str], env: dict[str, str], deadline: float,
    stdin: _Readable | None = None,
) -> str:  # fmt: skip
    """Run restic (output through files: a chatty restic never blocks on a full pipe);
    its stdout, or _Failed with its error."""
    argv = [probe.resticBinary, "--repo", probe.repository, *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                    stdout=out, stderr=err, env=env)  # fmt: skip
        except OSError as exc:
            raise _Failed("not run", f"{probe.resticBinary}: {exc.strerror}") from None
        try:
            if stdin is not None:
                _feed(proc, stdin, deadline)
            proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            what = f"restic {args[0]} ran out of {probe.timeoutSeconds:g}s"
            raise _Failed("timed out", what) from None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        if proc.returncode != 0:
            tail = " ".join(err.read().decode(errors="replace").split())[-400:]
            raise _Failed(f"restic {args[0]} failed", f"exit {proc.returncode}: {tail}")
        return stdout


def _feed(proc: subprocess.Popen[bytes], src: _Readable, deadline: float) -> None:
    assert proc.stdin is not None
    try:
        while chunk := src.read(CHUNK):
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(proc.args, 0)
            proc.stdin.write(chunk)
    except BrokenPipeError:
        pass  # restic stopped reading: its exit status and stderr say why
    finally:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()


class _Hashing:
    """A file read once: what is read is hashed on the way (and counted)."""

    def __init__(self, f: _Readable) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data


def _parse_time(text: str) -> datetime:
    """restic's snapshot time (RFC 3339 with nanoseconds) as an aware datetime."""
    m = re.fullmatch(r"(.*?T[\d:]+)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if m is None:
        raise ValueError(f"not a snapshot time: {text!r}")
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(f"{m.group(1)}.{frac}{zone}")


def _filters(probe: ResticBackupProbe) -> list[str]:
    args = []
    if probe.host is not None:
        args += ["--host", probe.host]
    if probe.tags:
        args += ["--tag", ",".join(probe.tags)]  # one --tag: all of them
    if probe.path is not None:
        args += ["--path", probe.path]
    return args


def _describe_filters(probe: ResticBackupProbe) -> str:
    parts = [f"host {probe.host}"] if probe.host else []
    parts += [f"tags {','.join(probe.tags)}"] if probe.tags else []
    parts += [f"path {probe.path}"] if probe.path else []
    return f" ({', '.join(parts)})" if parts else ""


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h"


def last_snapshot_age(
    inp: CheckInput, probe: ResticBackupProbe, now: datetime | None = None
) -> CheckResult:
    which = _describe_filters(probe)
    threshold = f"newest snapshot{which} younger than {probe.maxAgeHours:g} h"
    deadline = time.monotonic() + probe.timeoutSeconds
    try:
        raw = _restic(probe, ["snapshots", "--json", *_filters(probe)], _env(probe), deadline)
        snaps: list[dict[str, Any]] = json.loads(raw) or []
    except _Failed as f:
        return check_result(inp, False, f.measured, threshold, f"{probe.repository}: {f.detail}")
    except ValueError:
        return check_result(inp, False, "unreadable", threshold, "restic printed no JSON list")
    if not snaps:
        detail = f"{probe.repository} has no snapshot{which}"
        return check_result(inp, False, "no snapshot", threshold, detail)
    newest = max(snaps, key=lambda s: _parse_time(s["time"]))
    at = _parse_time(newest["time"])
    age = ((now or datetime.now(UTC)) - at).total_seconds()
    passed = age < probe.maxAgeHours * 3600
    detail = (
        f"snapshot {newest.get('short_id', newest.get('id', '?'))} of "
        f"{', '.join(newest.get('paths', []))} on {newest.get('hostname', '?')} at "
        f"{at.isoformat(timespec='seconds')}"
    )
    if not passed:
        detail = f"too old: {detail} is {_hours(age)} old (limit {probe.maxAgeHours:g} h)"
    return check_result(inp, passed, f"age {_hours(age)}", threshold, detail)


def backup_and_restore(inp: CheckInput, probe: ResticBackupProbe) -> CheckResult:
    assert probe.path is not None
    threshold = (
        f"backup of {probe.path} into {probe.repository} succeeds and its restore has the "
        "same SHA-256"
    )
    deadline = time.monotonic() + probe.timeoutSeconds
    started = time.monotonic()
    scratch = None
    try:
        env = _env(probe)
        args = ["backup", "--json", "--quiet", "--stdin", "--stdin-filename", probe.path,
                "--tag", ",".join([PROBE_TAG, *probe.tags])]  # fmt: skip
        if probe.host is not None:
            args += ["--host", probe.host]
        try:
            src = open(probe.path, "rb")  # noqa: SIM115 (closed below; read while restic runs)
        except OSError as exc:
            raise _Failed("no source", f"{probe.path}: {exc.strerror}") from None
        with src:
            hashing = _Hashing(src)
            out = _restic(probe, args, env, deadline, stdin=hashing)
        source_digest = hashing.sha.hexdigest()
        snap = _snapshot_id(out)
        backed = time.monotonic() - started
        scratch = Path(tempfile.mkdtemp(prefix="cutover-restore-", dir=probe.restoreDir))
        _restic(probe, ["restore", snap, "--target", str(scratch)], env, deadline)
        restored = scratch / probe.path.lstrip("/")
        try:
            restored_digest, restored_size = _digest(restored)
        except OSError as exc:
            raise _Failed("not restored", f"snapshot {snap}: {exc}") from None
    except _Failed as f:
        return check_result(inp, False, f.measured, threshold, f.detail)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    took = time.monotonic() - started
    measured = (
        f"snapshot {snap}: {hashing.size} bytes backed up in {backed:.1f} s, restored in "
        f"{took - backed:.1f} s, "
        + ("digests equal" if restored_digest == source_digest else "digests differ")
    )
    detail = f"sha256 {source_digest}"
    if restored_digest != source_digest:
        detail = (
            f"the restore of snapshot {snap} differs: sha256 {restored_digest} "
            f"({restored_size} bytes), backed up {source_digest} ({hashing.size} bytes)"
        )
    return check_result(inp, restored_digest == source_digest, measured, threshold, detail)


def _snapshot_id(out: str) -> str:
    for line in reversed(out.splitlines()):
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict) and doc.get("message_type") == "summary":
                return str(doc["snapshot_id"])
    raise _Failed("restic backup failed", f"no snapshot in restic's summary: {out[-300:]!r}")


def _digest(path: Path) -> tuple[str, int]:
    sha, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def restic_probe(inp: CheckInput, probe: ResticBackupProbe) -> CheckResult:
    if probe.mode == "last-snapshot-age":
        return last_snapshot_age(inp, probe)
    return backup_and_restore(inp, probe)
