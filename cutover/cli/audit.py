"""`cutover audit ID`: the audit report of a cutover (or a wave), from its Temporal history."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from cutover.cli.common import EXIT_FAILED, EXIT_OK, Group
from cutover.temporal import connect


async def cmd_audit(args: argparse.Namespace) -> int:
    from cutover.audit import AuditNotFound, audit, render  # the history reader: slow to import

    ident: str = args.id
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


def register(cli: Group) -> None:
    sp = cli.command(
        "audit",
        "Print the audit report of a cutover or a wave, read from its history.",
        cmd_audit,
        json_flag=False,
    )
    sp.add_argument("id", metavar="ID", help="workflow ID or application name")
    sp.add_argument("--run-id", default=None, help="a specific run (default: all runs)")
    sp.add_argument(
        "--format", choices=("json", "md", "html"), default="md", help="output format (md)"
    )
    sp.add_argument("--json", action="store_true", help="same as --format json")
    sp.add_argument("--output", "-o", default=None, help="write to this file, not stdout")
