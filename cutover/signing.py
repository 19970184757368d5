"""Signed operator actions: what an operator's Ed25519 key signs, and its verification.

Pure computation (no I/O, no clock, no randomness except in `sign`): the workflow's update
validators call `verify` inside the Temporal sandbox with `workflow.now()` and the public keys
of the worker's own site configuration, so a replay reaches the same verdict.

What is signed binds the workflow ID, the action, the request's arguments (every field but
`signature`), the signer's name, a time and a random nonce: a signature for one request
cannot be moved to another workflow, another action or other arguments, replayed (the
workflow keeps the nonces it accepted) or kept for later (it expires).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

#: What every signed payload starts with: a signature made for something else (another
#: program, another version of this format) never verifies here.
DOMAIN = "cutover.operator-action/v1"
PUBLIC_KEY_PREFIX = "ed25519:"
DEFAULT_MAX_AGE = timedelta(minutes=15)
DEFAULT_MAX_SKEW = timedelta(minutes=2)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("expected a timezone-aware time (UTC), e.g. 2025-01-01T12:00:00Z")
    return value.astimezone(UTC)


class Signature(BaseModel):
    """An operator's signature over one request; travels in the request's `signature`."""

    model_config = ConfigDict(extra="forbid")

    #: The principal's key name (`access.principals.<name>` in the site configuration).
    signer: Annotated[str, Field(min_length=1, max_length=200)]
    signedAt: Annotated[datetime, AfterValidator(_aware)]
    nonce: Annotated[str, Field(pattern=r"^[0-9a-f]{16,128}$")]
    #: base64 of the 64-byte Ed25519 signature over `payload(...)`.
    value: Annotated[str, Field(min_length=1, max_length=200)]


def canonical(obj: Any) -> bytes:
    """The one byte form of a JSON value: sorted keys, no spaces, UTF-8."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def digest(obj: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical(obj)).hexdigest()


def _iso(t: datetime) -> str:
    # microseconds always: the text the signer formats is the text the verifier formats
    return _aware(t).isoformat(timespec="microseconds")


def payload(
    workflow_id: str,
    action: str,
    args: Mapping[str, Any],
    signer: str,
    signed_at: datetime,
    nonce: str,
) -> bytes:
    """The bytes a signature covers."""
    return canonical(
        {
            "domain": DOMAIN,
            "workflowId": workflow_id,
            "action": action,
            "args": dict(args),
            "signer": signer,
            "signedAt": _iso(signed_at),
            "nonce": nonce,
        }
    )


def sign(
    private_key: Ed25519PrivateKey,
    signer: str,
    workflow_id: str,
    action: str,
    args: Mapping[str, Any],
    now: datetime | None = None,
) -> Signature:
    """Sign one request (never called in a workflow: it draws a random nonce)."""
    signed_at = _aware(now) if now is not None else datetime.now(UTC)
    nonce = secrets.token_hex(16)
    value = private_key.sign(payload(workflow_id, action, args, signer, signed_at, nonce))
    return Signature(
        signer=signer,
        signedAt=signed_at,
        nonce=nonce,
        value=base64.b64encode(value).decode("ascii"),
    )


def _minutes(d: timedelta) -> str:
    m = d.total_seconds() / 60
    return f"{m:g} min"


def _hint(action: str, workflow_id: str) -> str:
    if action == "start":
        return "sign it: cutover run RUNBOOK --key FILE (--print-input --key FILE for the UI)"
    wave = " --wave" if workflow_id.startswith("wave-") else ""
    return f"sign it: cutover sign {action} {workflow_id}{wave} --as NAME --key FILE"


def verify(
    sig: Signature | None,
    workflow_id: str,
    action: str,
    args: Mapping[str, Any],
    public_keys: Mapping[str, str],
    now: datetime,
    seen: Collection[str],
    max_age: timedelta = DEFAULT_MAX_AGE,
    max_skew: timedelta = DEFAULT_MAX_SKEW,
) -> str | None:
    """None when `sig` is a valid, fresh, first-use signature of exactly this request by a
    known principal; else one line saying what is wrong and what to do.

    `public_keys`: principal name -> `public_key_text`; `seen`: nonces already accepted.
    The signature is checked before its time and nonce: those are only trusted once signed.
    """
    what = f"the {action} request for {workflow_id}"
    if sig is None:
        return f"unsigned: {what} carries no signature; {_hint(action, workflow_id)}"
    text = public_keys.get(sig.signer)
    if text is None:
        known = ", ".join(sorted(public_keys)) or "none"
        return (
            f"unknown signer '{sig.signer}': the worker's configuration has public keys for "
            f"{known} (access.principals.NAME.publicKey)"
        )
    try:
        key = load_public_key(text)
    except ValueError as exc:
        return f"signer '{sig.signer}': its public key in the worker's configuration: {exc}"
    try:
        raw = base64.b64decode(sig.value, validate=True)
        key.verify(raw, payload(workflow_id, action, args, sig.signer, sig.signedAt, sig.nonce))
    except (InvalidSignature, binascii.Error, ValueError):
        return (
            f"bad signature by '{sig.signer}': {what} is not what was signed (its arguments, "
            "action or workflow ID differ, or another key signed it); " + _hint(action, workflow_id)
        )
    now = _aware(now)
    signed_at = sig.signedAt.astimezone(UTC)
    if now - signed_at > max_age:
        return (
            f"expired: signed at {_iso(signed_at)} by '{sig.signer}', older than "
            f"{_minutes(max_age)} (now {_iso(now)}); {_hint(action, workflow_id)}"
        )
    if signed_at - now > max_skew:
        return (
            f"from the future: signed at {_iso(signed_at)} by '{sig.signer}', beyond the "
            f"allowed clock skew of {_minutes(max_skew)} (now {_iso(now)}); check the "
            "signer's clock and sign again"
        )
    if sig.nonce in seen:
        return (
            f"replayed: this signature by '{sig.signer}' (nonce {sig.nonce}) was already used; "
            f"each request is signed anew: {_hint(action, workflow_id)}"
        )
    return None


def public_key_text(key: Ed25519PublicKey) -> str:
    """The one-line form of a public key (as `access.principals.NAME.publicKey`)."""
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def load_public_key(text: str) -> Ed25519PublicKey:
    expected = (
        f"expected '{PUBLIC_KEY_PREFIX}' followed by the base64 of a 32-byte Ed25519 public "
        "key (the line `cutover keys create` writes to NAME.pub)"
    )
    body = text.strip()
    if not body.startswith(PUBLIC_KEY_PREFIX):
        raise ValueError(f"{expected}; got '{body[:16]}...'")
    try:
        raw = base64.b64decode(body[len(PUBLIC_KEY_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError(f"{expected}; its base64 is malformed") from None
    if len(raw) != 32:
        raise ValueError(f"{expected}; got {len(raw)} bytes")
    return Ed25519PublicKey.from_public_bytes(raw)
