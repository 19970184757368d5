"""`cutover`: the operator's front door.

One module per command group, each with a `register(cli)` that adds its commands through
`common.Group.command` (the one way: a command carries its handler); `main` parses, fills in
the default site, runs the handler and turns any error into a message and an exit code.

Exit codes: 0 ok, 1 the operation failed (or the cutover did not complete), 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from cutover.cli import audit, keys, lab, plan, prepare, run, schedule, service, wave
from cutover.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, Group, Handler, explain
from cutover.config import ConfigError

#: The command groups, in the order `cutover --help` lists them.
GROUPS = (plan, prepare, run, service, audit, keys, lab, wave, schedule)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cutover",
        description="Durable, auditable application cutovers from vSphere to KVM, on Temporal.",
    )
    cli = Group(p.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    for group in GROUPS:
        group.register(cli)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.needs_site and not args.site:
            args.site = lab.default_site()
        handler: Handler = args.handler
        code = handler(args)
        return code if isinstance(code, int) else asyncio.run(code)
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as exc:
        print(f"cutover {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return EXIT_FAILED
    except Exception as exc:  # operator-facing: a message, never a traceback
        print(f"cutover {args.command}: {explain(exc)}", file=sys.stderr)
        return EXIT_FAILED


def entry() -> None:
    """Console-script entry: exit without interpreter finalization, which can abort while
    the Temporal core runtime's threads are still alive ("PyGILState_Release")."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
