"""`cutover audit ID`: the audit report of a cutover (or a wave), from its Temporal history;
`cutover audit verify LOG --key-pub KEY`: check the tamper-evident audit log the workers
append to (cutover/audit/ledger.py) against its chain, its signatures and the histories."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cutover.cli.common import EXIT_FAILED, EXIT_OK, Failed, Group, emit
from cutover.signing import PUBLIC_KEY_PREFIX, load_public_key
from cutover.temporal import connect

#: `cutover audit verify LOG`: not a workflow ID (`cutover audit cutover-verify` is).
VERIFY = "verify"


async def cmd_audit(args: argparse.Namespace) -> int:
    from cutover.audit import AuditNotFound, audit, render  # the history reader: slow to import

    ident: str = args.id
    if ident == VERIFY:
        return await cmd_verify(args)
    if args.log or args.key_pub or args.no_history:
        raise ValueError(f"LOG, --key-pub and --no-history are for `cutover audit {VERIFY}`")
    client = await connect(wait_seconds=3)
    candidates = [ident] if ident.startswith("cutover-") else [ident, f"cutover-{ident}"]
    report = None
    for wf_id in candidates:
        try:
            report = await audit(client, wf_id, args.run_id)
            break
        except AuditNotFound:
            continue
    if report is None:
        print(
            f"cutover audit: no workflow with ID {' or '.join(candidates)} in namespace "
            f"{client.namespace} (it never existed, or its history is past retention)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    text = render(report, "json" if args.json else args.format)
    if args.output:
        await asyncio.to_thread(Path(args.output).write_text, text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def public_keys(values: list[str]) -> dict[str | None, Ed25519PublicKey]:
    """--key-pub FILE|TEXT: one key verifies every entry; several, each its signer's (by
    the file's stem: NAME.pub as `cutover keys create` writes it)."""
    keys: dict[str | None, Ed25519PublicKey] = {}
    for value in values:
        name: str | None = None
        if value.strip().startswith(PUBLIC_KEY_PREFIX):
            text = value
        else:
            path = Path(value)
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(
                    f"--key-pub {value}: neither a public key ({PUBLIC_KEY_PREFIX}...) nor a "
                    f"readable file ({getattr(exc, 'strerror', None) or exc})"
                ) from None
            name = path.stem
        try:
            key = load_public_key(text)
        except ValueError as exc:
            raise ValueError(f"--key-pub {value}: {exc}") from None
        keys[name if len(values) > 1 else None] = key
    return keys


async def cmd_verify(args: argparse.Namespace) -> int:
    from cutover.audit.ledger import check_chain, check_history  # the reader: slow to import

    if not args.log:
        raise ValueError(f"{VERIFY}: LOG: the audit log file to check")
    if not args.key_pub:
        raise ValueError(
            f"{VERIFY}: --key-pub FILE|TEXT: the worker's public key (its NAME.pub) that "
            "signs the log"
        )
    keys = public_keys(args.key_pub)
    path = Path(args.log)
    try:
        chain = await asyncio.to_thread(check_chain, path, keys)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if chain.problem is not None:
        raise Failed(f"{path}: {chain.problem}")
    head = chain.head
    found: dict[str, object] = {
        "log": str(path),
        "entries": len(chain.entries),
        "headSeq": head.seq if head else 0,
        "headHash": head.hash if head else None,
    }
    lines = [
        f"{path}: whole: {len(chain.entries)} entr{'y' if len(chain.entries) == 1 else 'ies'}"
        + (f", seq 1..{head.seq}, head {head.hash}" if head else "")
        + ": hashes, signatures and chain verified"
    ]
    if not args.no_history and chain.entries:
        client = await connect(wait_seconds=3)
        hist = await check_history(client, chain.entries)
        if hist.problem is not None:
            raise Failed(f"{path}: {hist.problem}")
        found |= {"reportsRederived": hist.checked, "historiesGone": len(hist.gone)}
        lines.append(f"  {hist.checked} report(s) derived again from their histories: equal")
        lines += [
            f"  line {n} (seq {e.seq}): {e.workflowId} run {e.runId}: history no longer "
            "retained, not derived again"
            for n, e in hist.gone
        ]
    lines.append(
        "  (entries cut from the end leave no trace in the chain: compare the head with a "
        "copy kept elsewhere)"
    )
    emit(found, args.json, "\n".join(lines))
    return EXIT_OK


def register(cli: Group) -> None:
    sp = cli.command(
        "audit",
        "Print the audit report of a cutover or a wave, read from its history; "
        f"`cutover audit {VERIFY} LOG --key-pub KEY` checks the tamper-evident audit log "
        "(exit 0 whole, 1 tampered, naming the first bad line; 2 unreadable input).",
        cmd_audit,
        json_flag=False,
    )
    sp.add_argument(
        "id", metavar="ID", help=f"workflow ID or application name; or `{VERIFY}` (then LOG)"
    )
    sp.add_argument("log", metavar="LOG", nargs="?", help=f"{VERIFY}: the audit log file")
    sp.add_argument(
        "--key-pub",
        action="append",
        metavar="FILE|TEXT",
        help=f"{VERIFY}: the worker's public key (NAME.pub, or its {PUBLIC_KEY_PREFIX}... "
        "line); repeat for several workers (each by its file's NAME)",
    )
    sp.add_argument(
        "--no-history",
        action="store_true",
        help=f"{VERIFY}: check the chain only, not each report against its history",
    )
    sp.add_argument("--run-id", default=None, help="a specific run (default: all runs)")
    sp.add_argument(
        "--format", choices=("json", "md", "html"), default="md", help="output format (md)"
    )
    sp.add_argument("--json", action="store_true", help="same as --format json")
    sp.add_argument("--output", "-o", default=None, help="write to this file, not stdout")
