"""`cutover keys create NAME` (an operator's Ed25519 key pair) and `cutover sign ACTION ID`
(a signed request to paste into the Temporal UI's Send an Update); the signing every
steering command shares (`--key FILE` or `$CUTOVER_KEY`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cutover.cli.common import EXIT_OK, Group
from cutover.keyfiles import Key, check_name, create_key, load_private_key
from cutover.signing import DEFAULT_MAX_AGE, Signature, sign

ENV_KEY = "CUTOVER_KEY"
ENV_KEYS_DIR = "CUTOVER_KEYS_DIR"
#: What `cutover sign` signs, by the kind of workflow (a wave's resume is its pause's undo).
CUTOVER_ACTIONS = ("approve", "rollback", "extend", "finalize", "resume")
WAVE_ACTIONS = ("approve", "pause", "resume", "cancel")


def keys_dir(arg: str | None = None) -> Path:
    """--dir, else $CUTOVER_KEYS_DIR, else ~/.config/cutover/keys."""
    if arg:
        return Path(arg)
    env = os.environ.get(ENV_KEYS_DIR)
    return Path(env) if env else Path.home() / ".config" / "cutover" / "keys"


def operator_key(path: str | None) -> Key | None:
    """The key the steering commands sign with: --key FILE, else $CUTOVER_KEY, else none
    (the request goes unsigned and the workflow says why it refuses it)."""
    chosen = path or os.environ.get(ENV_KEY)
    return load_private_key(chosen) if chosen else None


def signer_name(key: Key | None, as_: str | None, flag: str = "--as") -> str | None:
    """Who the request names: the key's name when signed (`--as`, if given, must match)."""
    if key is None:
        return as_
    if as_ is not None and as_ != key[0]:
        raise ValueError(
            f"{flag} {as_}: the key signs as '{key[0]}' (its file name); a signed request "
            f"names its signer: drop {flag}, or use {as_}'s key"
        )
    return key[0]


def request_fields(req: BaseModel) -> dict[str, Any]:
    """What a signature covers: the request's fields except `signature` (as the workflow
    computes them: `req.model_dump(mode="json", exclude={"signature"})`)."""
    return req.model_dump(mode="json", exclude={"signature"})


def signed(key: Key | None, workflow_id: str, action: str, req: BaseModel) -> Any:
    """The request to send: as is without a key, else with its `signature`."""
    if key is None:
        return req
    name, private = key
    fields = request_fields(req)
    sig = sign(private, name, workflow_id, action, fields)
    if "signature" in type(req).model_fields:
        return type(req).model_validate({**fields, "signature": sig})
    # until the request models carry `signature`: the same JSON, as a mapping
    return {**fields, "signature": sig.model_dump(mode="json")}


def request_for(
    action: str, wave: bool, name: str, args: argparse.Namespace
) -> tuple[str, BaseModel]:
    """The request model of ACTION (cutover or wave), named for NAME: (update name, request)."""
    from cutover.models import (
        ApprovalRequest,
        ExtendRequest,
        FinalizeRequest,
        ResumeRequest,
        RollbackRequest,
    )

    allowed = WAVE_ACTIONS if wave else CUTOVER_ACTIONS
    if action not in allowed:
        what = "a wave (--wave)" if wave else "a cutover (a wave: --wave)"
        raise ValueError(f"{action}: not an action of {what}; expected one of {', '.join(allowed)}")
    if action == "approve":
        return action, ApprovalRequest(approver=name, comment=args.comment)
    if wave:
        from cutover.wave import CancelRequest, PauseRequest

        if action == "cancel":
            return action, CancelRequest(requestedBy=name, reason=args.reason, policy=args.policy)
        return action, PauseRequest(requestedBy=name, reason=args.reason)
    if action == "rollback":
        if not args.reason.strip():
            raise ValueError("rollback: --reason is required (it is recorded in the history)")
        return action, RollbackRequest(reason=args.reason, requestedBy=name)
    if action == "extend":
        if args.minutes is None or not args.minutes > 0:
            raise ValueError("extend: --minutes: expected a positive number")
        return action, ExtendRequest(minutes=args.minutes, requestedBy=name)
    if action == "finalize":
        return action, FinalizeRequest(requestedBy=name)
    discard = args.discard_target_writes is not None
    if discard and not args.discard_target_writes.strip():
        raise ValueError("--discard-target-writes: expected a reason (it is recorded)")
    return action, ResumeRequest(
        requestedBy=name,
        reason=args.discard_target_writes if discard else args.reason,
        discardTargetWrites=discard,
    )


def _sign_key(args: argparse.Namespace) -> Key:
    """--key FILE, else $CUTOVER_KEY, else the keys directory's NAME.key for --as NAME."""
    key = operator_key(args.key)
    if key is not None:
        return key
    if args.as_:
        default = keys_dir() / f"{check_name(args.as_)}.key"
        if default.exists():
            return load_private_key(default)
    raise ValueError(
        f"no key to sign with: pass --key FILE or set ${ENV_KEY}"
        + (f" (or create {keys_dir()}/{args.as_}.key)" if args.as_ else "")
    )


def cmd_sign(args: argparse.Namespace) -> int:
    key = _sign_key(args)
    name = signer_name(key, args.as_)
    assert name is not None
    if args.wave:
        from cutover.wave import workflow_id_for_wave

        wf_id = args.id if args.id.startswith("wave-") else workflow_id_for_wave(args.id)
    else:
        from cutover.cli.common import workflow_id

        wf_id = workflow_id(args.id)
    update, req = request_for(args.action, args.wave, name, args)
    out = signed(key, wf_id, args.action, req)
    data = out.model_dump(mode="json") if isinstance(out, BaseModel) else out
    print(json.dumps(data, indent=2))
    sig = Signature.model_validate(data["signature"])
    until = (sig.signedAt + DEFAULT_MAX_AGE).astimezone(UTC).strftime("%H:%M:%S UTC")
    print(
        f"Send an Update: Workflow ID {wf_id}, Update name {update}, Input: the JSON above "
        f"(encoding json/plain); signed by {name}, valid once, until {until}",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_keys_create(args: argparse.Namespace) -> int:
    private, public, text = create_key(args.name, keys_dir(args.dir))
    print(text)
    print(
        f"wrote {private} (private: keep it secret; sign with --key {private} or "
        f"${ENV_KEY}) and {public}.\nIn the worker's site config:\n"
        f"  access:\n    principals:\n      {args.name}:\n        publicKey: {text}",
        file=sys.stderr,
    )
    return EXIT_OK


def add_key_option(sp: argparse.ArgumentParser) -> None:
    """--key on a steering command (cutover or wave): sign the request."""
    sp.add_argument(
        "--key",
        metavar="FILE",
        help=f"sign the request with this private key (default: ${ENV_KEY}; neither: "
        "unsigned, which a workflow requiring signatures refuses)",
    )


def register(cli: Group) -> None:
    keys = cli.group("keys", "Operators' signing keys (Ed25519).", "keys_command", "KEYS_COMMAND")
    sp = keys.command(
        "create",
        "Write a key pair NAME.key (private, 0600) and NAME.pub; print the public key for "
        "the site config's access.principals.NAME.publicKey.",
        cmd_keys_create,
        json_flag=False,
    )
    sp.add_argument("name", metavar="NAME", help="the principal's name (e.g. ops-lead)")
    sp.add_argument(
        "--dir", help=f"where to write (default: ${ENV_KEYS_DIR}, else ~/.config/cutover/keys)"
    )

    sp = cli.command(
        "sign",
        "Print a signed request (JSON) to paste into the Temporal UI's Send an Update.",
        cmd_sign,
        json_flag=False,
    )
    sp.add_argument(
        "action",
        metavar="ACTION",
        choices=sorted({*CUTOVER_ACTIONS, *WAVE_ACTIONS}),
        help=f"cutover: {', '.join(CUTOVER_ACTIONS)}; wave (--wave): {', '.join(WAVE_ACTIONS)}",
    )
    sp.add_argument(
        "id",
        metavar="ID",
        help="workflow ID or application name (with --wave: wave workflow ID or wave name; a "
        "scheduled wave's run: its workflow ID)",
    )
    sp.add_argument(
        "--as",
        dest="as_",
        metavar="NAME",
        help="who signs: the key's name (default: the key's; without --key/$CUTOVER_KEY, "
        "the keys directory's NAME.key)",
    )
    sp.add_argument("--key", metavar="FILE", help=f"private key (default: ${ENV_KEY})")
    sp.add_argument("--wave", action="store_true", help="ID is a wave")
    sp.add_argument("--reason", default="", help="rollback, resume, pause, cancel: why")
    sp.add_argument("--minutes", type=float, help="extend: minutes to add")
    sp.add_argument("--comment", default="", help="approve: recorded with the approval")
    sp.add_argument(
        "--discard-target-writes",
        metavar="REASON",
        help="resume (cutover): go on without writing the target's writes back",
    )
    sp.add_argument(
        "--policy", choices=["finish", "rollback"], help="cancel (wave): override onCancel"
    )
