"""The start of a cutover or a wave as the CLI sends it: the site by reference, signed by the
operator's key (`--key FILE` or `$CUTOVER_KEY`) over the digest of exactly that input.

The workflow re-derives the digest from the input it receives (`workflows.trust.start_args`)
and verifies the signature against the public keys of its worker's own site; so the input is
complete (its `requestedBy` the signer, a scheduled wave's `startValidUntil`) before it is
signed, and nothing changes it after.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any, TypeVar

from cutover import signing
from cutover.cli.keys import ENV_KEY
from cutover.keyfiles import Key
from cutover.models import CutoverInput
from cutover.policy import authorize_all
from cutover.wave import WaveInput

In = TypeVar("In", CutoverInput, WaveInput)


def signed_start(
    inp: In,
    key: Key | None,
    workflow_id: str,
    command: str,
    *,
    valid_until: datetime | None = None,
) -> In:
    """`inp` as sent: by reference and, with a key, signed for `workflow_id`'s start by the
    key's principal (who it then names as `requestedBy`). Without a key: unsigned, and a
    warning on stderr (a site that requires signatures refuses the start, naming why)."""
    from workflows import trust
    from workflows.trust import start_args  # the workflow's own digest of what it receives

    sent = inp.by_reference()
    access = inp.resolved_site.access
    if key is None and (access is None or access.requireSignatures):
        print(
            f"cutover {command}: warning: the start is not signed (no --key FILE, no "
            f"${ENV_KEY}); a site that requires signatures refuses it",
            file=sys.stderr,
        )
    if key is None:
        return sent
    name, private = key
    if access is not None:
        # the workflow's own check, early: a start its policy refuses is not sent
        site = inp.resolved_site
        runbooks = [inp.runbook] if isinstance(inp, CutoverInput) else [a.runbook for a in inp.apps]
        apps = [trust.app_attributes(site, rb)[0] for rb in runbooks]
        why = authorize_all(access, name, "start", apps)
        if why is not None:
            raise ValueError(f"start refused by the access policy of site {site.name}: {why}")
    update: dict[str, Any] = {"requestedBy": name}
    if valid_until is not None:
        update["startValidUntil"] = valid_until
    # every field the digest covers is set before signing: it covers all but `signature`
    sent = type(sent).model_validate({**sent.model_dump(mode="json"), **_json(update)})
    sig = signing.sign(private, name, workflow_id, "start", start_args(sent))
    return sent.model_copy(update={"signature": sig})


def _json(update: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in update.items()}


def printable(sent: CutoverInput | WaveInput) -> dict[str, Any]:
    """The input as JSON for the Temporal UI's Start Workflow form: unset fields left out
    when the workflow's parse of that JSON has the same digest the signature covers (it
    always has: they parse back to their defaults), else every field."""
    from workflows.trust import start_args

    short = sent.model_dump(mode="json", exclude_none=True)
    back = type(sent).model_validate(json.loads(json.dumps(short)))
    if start_args(back) == start_args(sent):
        return short
    return sent.model_dump(mode="json")
