"""The worker's identity for the audit log: its Ed25519 key and the log it appends to.

`cutover worker --key FILE --audit-log FILE`; by default $CUTOVER_WORKER_KEY and
$CUTOVER_AUDIT_LOG, else under the worker's state directory (the key is created there at its
first start, 0600; its public key goes in the log's verifier: `cutover audit verify LOG
--key-pub worker-HOST.pub`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from temporalio.client import Client

from cutover.audit.log_activity import AuditLogActivities
from cutover.keyfiles import Key, create_key, load_private_key


def state_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "cutover"


def worker_key(path: str | None = None) -> Key:
    """--key FILE, else $CUTOVER_WORKER_KEY, else the state directory's own key (created
    once: a worker always signs its records)."""
    chosen = path or os.environ.get("CUTOVER_WORKER_KEY")
    if chosen:
        return load_private_key(chosen)
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
    name = f"worker-{host}"
    own = state_dir() / "keys" / f"{name}.key"
    if not own.exists():
        # another worker process of this host may create it meanwhile
        with contextlib.suppress(ValueError):
            create_key(name, own.parent)
    return load_private_key(own)


def audit_log(path: str | None = None) -> Path:
    """--audit-log FILE, else $CUTOVER_AUDIT_LOG, else the state directory's audit.jsonl."""
    chosen = path or os.environ.get("CUTOVER_AUDIT_LOG")
    return Path(chosen) if chosen else state_dir() / "audit.jsonl"


def audit_activities(
    client: Client, key: Key | None = None, log: Path | None = None
) -> AuditLogActivities:
    name, private = key or worker_key()
    return AuditLogActivities(client, log or audit_log(), name, private)
