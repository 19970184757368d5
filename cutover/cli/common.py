"""What every command group shares: exit codes, the one way to register a command, the one
output-and-error helper, and the one way to send an update to a running workflow."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from cutover.temporal import why_finished

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
SITE_HELP = "site config YAML file (default: $CUTOVER_SITE, else the lab's when it is up)"

#: A command's handler: returns the exit code, directly or as a coroutine (run with asyncio).
Handler = Callable[[argparse.Namespace], int | Coroutine[Any, Any, int]]


class Failed(Exception):
    """An operation that was refused or failed: message for stderr, exit code 1."""


def emit(obj: BaseModel | dict[str, Any] | list[Any], as_json: bool, text: str) -> None:
    """The one output helper: the object as JSON with --json, else the text."""
    if as_json:
        data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text)


def explain(exc: BaseException) -> str:
    """The one error helper: an exception as the sentence an operator reads (no traceback)."""
    if isinstance(exc, Failed):
        return str(exc)
    if isinstance(exc, ApplicationError):
        return f"{exc.type}: {exc.message}" if exc.type else exc.message
    if isinstance(exc, WorkflowFailureError) and exc.cause is not None:
        return f"the workflow failed: {exc.cause}"
    if isinstance(exc, RPCError):
        if exc.status == RPCStatusCode.NOT_FOUND:
            return f"no such running cutover ({exc.message})"
        if exc.status == RPCStatusCode.UNAVAILABLE:
            return f"cannot reach Temporal ({exc.message}); is `cutover server` running?"
        return f"Temporal refused: {exc.message}"
    if isinstance(exc, RuntimeError) and "Failed client connect" in str(exc):
        return f"cannot reach Temporal: {exc}"
    return f"{type(exc).__name__}: {exc}"


async def send_update(
    handle: WorkflowHandle[Any, Any],
    send: Callable[[], Awaitable[str]],
    *,
    command: str,
    what: str,
    as_json: bool,
) -> int:
    """The one way to send an update (cutover or wave): prints the workflow's answer; a
    refusal (the update handler raised) or a finished workflow becomes a message, exit 1."""
    try:
        msg = await send()
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        if cause is None:
            raise
        raise Failed(str(cause.message if hasattr(cause, "message") else cause)) from None
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        raise Failed(await why_finished(handle, command, what)) from None
    emit({"workflowId": handle.id, "message": msg}, as_json, msg)
    return EXIT_OK


@dataclass
class Group:
    """A level of subcommands: the one way to register a command (`cutover X`, `cutover
    wave X`, ...). Each parsed command carries its handler and whether it needs a site."""

    subparsers: Any  # argparse's _SubParsersAction (private type)

    def command(
        self,
        name: str,
        help_: str,
        handler: Handler,
        *,
        json_flag: bool = True,
        site: bool = False,
    ) -> argparse.ArgumentParser:
        """Register `name`; `site=True` adds --site, defaulted by main() when absent."""
        sp: argparse.ArgumentParser = self.subparsers.add_parser(
            name, help=help_, description=help_
        )
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print machine-readable JSON")
        if site:
            sp.add_argument("--site", help=SITE_HELP)
        sp.set_defaults(handler=handler, needs_site=site)
        return sp

    def group(self, name: str, help_: str, dest: str, metavar: str, **kw: Any) -> Group:
        """Register `name` as a group of subcommands (their name lands in `dest`)."""
        sp = self.subparsers.add_parser(name, help=help_, description=kw.pop("description", help_))
        return Group(sp.add_subparsers(dest=dest, required=True, metavar=metavar))


def workflow_id(ident: str) -> str:
    """A cutover's workflow ID, given it or its application's name."""
    from workflows.cutover import workflow_id_for  # the workflow module: slow to import

    return ident if ident.startswith("cutover-") else workflow_id_for(ident)
