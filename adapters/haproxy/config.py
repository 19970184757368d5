"""The HAProxy config file on disk: finalize writes the switch into it (checked by
`haproxy -c`, the previous file kept, put in place atomically), so a reload keeps it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cutover.errors import ErrorKind, error
from cutover.traffic import Address

log = logging.getLogger(__name__)

# ------------------------------------------------------------- the config on disk

#: Keywords that open a section of an HAProxy config.
_SECTIONS = frozenset(
    {
        "global",
        "defaults",
        "frontend",
        "backend",
        "listen",
        "peers",
        "resolvers",
        "userlist",
        "program",
        "http-errors",
        "ring",
        "mailers",
        "cache",
        "fcgi-app",
        "log-forward",
        "crt-store",
        "traces",
    }
)
_COMMENT = re.compile(r"(^|\s)#")


@dataclass(frozen=True)
class ConfigEdit:
    changed: bool
    backup: str | None
    note: str


def retire_in_config(
    text: str, backend: str, source: str, target: str, target_addr: Address, why: str
) -> str:
    """The config with, in section `backend`, the target's server line at `target_addr`
    without `disabled` and the source's with `disabled` (and a comment above it saying
    why). Everything else stays byte for byte; already so: returned unchanged."""
    out: list[str] = []
    section: tuple[str, str] | None = None
    found: set[str] = set()
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        ending = line[len(body) :]
        m = _COMMENT.search(body)
        code, comment = (body[: m.start()], body[m.start() :]) if m else (body, "")
        tokens = code.split()
        if tokens and tokens[0] in _SECTIONS:
            section = (tokens[0], tokens[1] if len(tokens) > 1 else "")
        mine = section is not None and section[0] in ("backend", "listen")
        if mine and section is not None and section[1] == backend and len(tokens) >= 3:
            indent = code[: len(code) - len(code.lstrip())]
            if tokens[0] == "server" and tokens[1] == target:
                found.add(target)
                wanted = ["server", target, str(target_addr)]
                wanted += [t for t in tokens[3:] if t != "disabled"]
                if wanted != tokens:
                    line = f"{indent}{' '.join(wanted)}{' ' + comment.strip() if comment else ''}"
                    line += ending
            elif tokens[0] == "server" and tokens[1] == source:
                found.add(source)
                if "disabled" not in tokens[3:]:
                    out.append(f"{indent}# {why}{ending or os.linesep}")
                    line = f"{indent}{' '.join([*tokens, 'disabled'])}"
                    line += f"{' ' + comment.strip() if comment else ''}{ending}"
        out.append(line)
    missing = [n for n in (target, source) if n not in found]
    if missing:
        raise error(
            ErrorKind.CONFIG_ERROR,
            f"the HAProxy config has no `server {' / '.join(missing)}` line in backend "
            f"'{backend}': cannot write the switch into it",
        )
    return "".join(out)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer at a time (two finalizes on one HAProxy would lose an edit)."""
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _haproxy_binary() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None
    )
    if found is None:
        raise error(
            ErrorKind.CONFIG_ERROR,
            "no `haproxy` executable on this worker to check the edited config with "
            "`haproxy -c`: install it (the worker runs beside HAProxy, on its socket)",
        )
    return found


def write_atomically(path: Path, text: str, like: Path | None = None) -> Path:
    """Write `text` to a temporary file beside `path` (same mode and owner as `like`),
    fsynced; the caller renames it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if like is not None:
                st = like.stat()
                os.fchmod(f.fileno(), st.st_mode & 0o7777)
                with contextlib.suppress(PermissionError):
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def persist_retirement(
    path: Path, backend: str, source: str, target: str, target_addr: Address, why: str
) -> ConfigEdit:
    """Write the retirement into the HAProxy config file: checked with `haproxy -c`
    before it replaces the file (atomically); the file as it was is kept beside it."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    why = " ".join(why.split())  # one comment line, whatever the workflow ID holds
    comment = f"{source} retired by {why} at {stamp}: {target} at {target_addr} serves"
    try:
        with _locked(path.with_name(f".{path.name}.cutover-lock")):
            text = path.read_text(encoding="utf-8")
            edited = retire_in_config(text, backend, source, target, target_addr, comment)
            if edited == text:
                return ConfigEdit(False, None, f"{path} already says so")
            tmp = write_atomically(path, edited, like=path)
            try:
                check = subprocess.run(
                    [_haproxy_binary(), "-c", "-q", "-f", str(tmp)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                    cwd=path.parent,  # relative paths in the config resolve as HAProxy's
                )
                if check.returncode != 0:
                    why_not = (check.stderr or check.stdout).strip()[-800:]
                    raise error(
                        ErrorKind.CONFIG_ERROR,
                        f"`haproxy -c` rejects {path} with the switch written in; the file "
                        f"is left as it was: {why_not}",
                    )
                backup = path.with_name(f"{path.name}.before-retire-{backend}")
                write_atomically(backup, text, like=path).replace(backup)
                tmp.replace(path)
            finally:
                tmp.unlink(missing_ok=True)
            sync_dir(path.parent)
    except FileNotFoundError:
        raise error(
            ErrorKind.CONFIG_ERROR,
            f"the HAProxy config {path} (site loadBalancer.configFile) is missing",
        ) from None
    except PermissionError as exc:
        raise error(
            ErrorKind.CONFIG_ERROR, f"this worker may not write the HAProxy config: {exc}"
        ) from None
    return ConfigEdit(
        True,
        str(backup),
        f"written into {path} (previous version: {backup}); a config generated elsewhere "
        "(configuration management) needs the same change at its source",
    )
