"""Signed operator actions: sign/verify (pure), and the CLI that makes keys and signs."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowUpdateFailedError

from cutover.signing import (
    Signature,
    canonical,
    digest,
    load_public_key,
    public_key_text,
    sign,
    verify,
)
from tests.signing_workflow import SigningSandboxTest
from workers.worker import build_worker

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
WF = "cutover-shop"
ARGS: dict[str, Any] = {"approver": "ops-lead", "comment": "go"}
KEY = Ed25519PrivateKey.generate()
KEYS = {"ops-lead": public_key_text(KEY.public_key())}


def check(sig: Signature | None, **kw: Any) -> str | None:
    base: dict[str, Any] = dict(
        workflow_id=WF, action="approve", args=ARGS, public_keys=KEYS, now=T0, seen=()
    )
    return verify(sig, **(base | kw))


def test_a_fresh_signature_of_this_request_verifies() -> None:
    sig = sign(KEY, "ops-lead", WF, "approve", ARGS, now=T0)
    assert check(sig) is None
    # as the request travels: JSON and back (the UI's paste, the data converter)
    again = Signature.model_validate_json(sig.model_dump_json())
    assert check(again, args=dict(reversed(ARGS.items()))) is None


def test_unsigned_refused_naming_how_to_sign() -> None:
    reason = check(None)
    assert reason is not None and reason.startswith("unsigned:")
    assert "cutover sign approve cutover-shop --as NAME --key FILE" in reason
    wave = check(None, workflow_id="wave-w1")
    assert wave is not None and "cutover sign approve wave-w1 --wave" in wave


def test_unknown_signer_refused_naming_the_known_ones() -> None:
    other = Ed25519PrivateKey.generate()
    sig = sign(other, "mallory", WF, "approve", ARGS, now=T0)
    reason = check(sig, public_keys={**KEYS, "auditor": KEYS["ops-lead"]})
    assert reason is not None and reason.startswith("unknown signer 'mallory'")
    assert "auditor, ops-lead" in reason


@pytest.mark.parametrize(
    "change",
    [
        {"args": {**ARGS, "comment": "changed"}},
        {"args": {**ARGS, "approver": "someone-else"}},
        {"workflow_id": "cutover-other"},
        {"action": "finalize"},
    ],
    ids=["comment", "approver", "other-workflow", "other-action"],
)
def test_a_signature_does_not_cover_another_request(change: dict[str, Any]) -> None:
    sig = sign(KEY, "ops-lead", WF, "approve", ARGS, now=T0)
    reason = check(sig, **change)
    assert reason is not None and reason.startswith("bad signature by 'ops-lead'")
    assert "is not what was signed" in reason


def test_a_key_posing_as_another_principal_is_a_bad_signature() -> None:
    forged = sign(Ed25519PrivateKey.generate(), "ops-lead", WF, "approve", ARGS, now=T0)
    reason = check(forged)
    assert reason is not None and reason.startswith("bad signature")
    garbage = forged.model_copy(update={"value": "not base64!"})
    reason = check(garbage)
    assert reason is not None and reason.startswith("bad signature")


def test_a_signed_field_edited_after_signing_is_a_bad_signature() -> None:
    sig = sign(KEY, "ops-lead", WF, "approve", ARGS, now=T0)
    later = sig.model_copy(update={"signedAt": T0 + timedelta(minutes=1)})
    reason = check(later)
    assert reason is not None and reason.startswith("bad signature")
    renonced = sig.model_copy(update={"nonce": "0" * 32})
    reason = check(renonced)
    assert reason is not None and reason.startswith("bad signature")


def test_replayed_nonce_refused() -> None:
    sig = sign(KEY, "ops-lead", WF, "approve", ARGS, now=T0)
    reason = check(sig, seen={sig.nonce})
    assert reason is not None and reason.startswith("replayed:")
    assert sig.nonce in reason


def test_expired_refused_naming_when_it_was_signed() -> None:
    sig = sign(KEY, "ops-lead", WF, "approve", ARGS, now=T0)
    assert check(sig, now=T0 + timedelta(minutes=15)) is None  # the limit itself: fresh
    reason = check(sig, now=T0 + timedelta(minutes=15, seconds=1))
    assert reason is not None and reason.startswith("expired: signed at 2025-03-01T12:00:00")
    assert "older than 15 min" in reason
    assert check(sig, now=T0 + timedelta(minutes=20), max_age=timedelta(minutes=30)) is None


def test_from_the_future_refused_beyond_the_skew() -> None:
    sig = sign(KEY, "ops-lead", WF, "approve", ARGS, now=T0 + timedelta(minutes=2))
    assert check(sig) is None  # a clock 2 minutes ahead is tolerated
    sig = sign(KEY, "ops-lead", WF, "approve", ARGS, now=T0 + timedelta(minutes=3))
    reason = check(sig)
    assert reason is not None and reason.startswith("from the future:")
    assert "clock skew of 2 min" in reason


def test_signature_model_refuses_naive_times_and_short_nonces() -> None:
    good = sign(KEY, "ops-lead", WF, "approve", ARGS, now=T0).model_dump(mode="json")
    with pytest.raises(ValueError, match="timezone-aware"):
        Signature.model_validate({**good, "signedAt": "2025-03-01T12:00:00"})
    with pytest.raises(ValueError, match="nonce"):
        Signature.model_validate({**good, "nonce": "abc"})
    with pytest.raises(ValueError, match="extra"):
        Signature.model_validate({**good, "by": "x"})


def test_canonical_and_digest_are_order_free() -> None:
    assert canonical({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()
    assert digest({"b": 1, "a": 2}) == digest({"a": 2, "b": 1})
    assert digest({"a": 1}).startswith("sha256:") and len(digest({})) == 7 + 64


def test_public_key_text_round_trips_and_bad_text_names_the_form() -> None:
    text = KEYS["ops-lead"]
    assert text.startswith("ed25519:")
    assert public_key_text(load_public_key(text)) == text
    for bad in ("ssh-ed25519 AAAA", "ed25519:???", "ed25519:" + base64.b64encode(b"x").decode()):
        with pytest.raises(ValueError, match="expected 'ed25519:' followed by the base64"):
            load_public_key(bad)


async def test_verify_runs_in_the_workflow_sandbox_and_refusals_stay_out_of_history(
    client: Client,
) -> None:
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    wf_id = f"sign-{uuid.uuid4().hex[:8]}"
    async with build_worker(client, queue, activities=[], workflows=[SigningSandboxTest]):
        handle = await client.start_workflow(
            SigningSandboxTest.run, KEYS, id=wf_id, task_queue=queue
        )
        with pytest.raises(WorkflowUpdateFailedError) as unsigned:
            await handle.execute_update(SigningSandboxTest.approve, ARGS)
        assert "unsigned" in str(unsigned.value.cause)
        sig = sign(KEY, "ops-lead", wf_id, "approve", ARGS)
        req = {**ARGS, "signature": sig.model_dump(mode="json")}
        assert await handle.execute_update(SigningSandboxTest.approve, req) == (
            "approved by ops-lead"
        )
        assert await handle.result() == ["ops-lead"]
    history = await handle.fetch_history()
    accepted = [
        e for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    ]  # fmt: skip
    assert len(accepted) == 1  # the unsigned request never entered the history
