"""Signed operator actions: sign/verify (pure), and the CLI that makes keys and signs."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowUpdateFailedError

from cutover.cli import main
from cutover.keyfiles import create_key, load_private_key
from cutover.models import (
    ApprovalRequest,
    ExtendRequest,
    FinalizeRequest,
    ResumeRequest,
    RollbackRequest,
)
from cutover.signing import (
    Signature,
    canonical,
    digest,
    load_public_key,
    public_key_text,
    sign,
    verify,
)
from cutover.wave import CancelRequest
from tests.conftest import DevServer
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


# ------------------------------------------------------------------------------- the CLI


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def keydir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CUTOVER_KEYS_DIR", str(tmp_path / "keys"))
    monkeypatch.delenv("CUTOVER_KEY", raising=False)
    return tmp_path / "keys"


def test_keys_create_writes_a_private_key_0600_and_the_public_line(
    keydir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "keys", "create", "ops-lead")
    assert code == 0, err
    private, public = keydir / "ops-lead.key", keydir / "ops-lead.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert out.strip() == public.read_text().strip()
    assert "access.principals" not in out and "publicKey: " + out.strip() in err
    name, key = load_private_key(private)
    assert name == "ops-lead" and public_key_text(key.public_key()) == out.strip()
    before = private.read_bytes()
    code, out, err = cli(capsys, "keys", "create", "ops-lead")
    assert code == 2 and f"{private} exists: refusing to overwrite" in err
    assert private.read_bytes() == before
    code, _, err = cli(capsys, "keys", "create", "../evil")
    assert code == 2 and "key name '../evil'" in err


def test_load_private_key_errors_name_the_file(keydir: Path) -> None:
    create_key("alice", keydir)
    with pytest.raises(ValueError, match=r"key file .*alice\.pub: not a PEM private key"):
        load_private_key(keydir / "alice.pub")
    with pytest.raises(ValueError, match=r"key file .*bob\.key: cannot read it"):
        load_private_key(keydir / "bob.key")


SIGN_CASES: list[tuple[list[str], str, type[BaseModel], dict[str, Any]]] = [
    (["approve", "shop", "--comment", "go"], "cutover-shop", ApprovalRequest,
     {"approver": "ops-lead", "comment": "go"}),
    (["rollback", "shop", "--reason", "slow"], "cutover-shop", RollbackRequest,
     {"reason": "slow", "requestedBy": "ops-lead"}),
    (["extend", "cutover-shop", "--minutes", "30"], "cutover-shop", ExtendRequest,
     {"minutes": 30.0, "requestedBy": "ops-lead"}),
    (["finalize", "shop"], "cutover-shop", FinalizeRequest, {"requestedBy": "ops-lead"}),
    (["resume", "shop", "--reason", "fixed"], "cutover-shop", ResumeRequest,
     {"requestedBy": "ops-lead", "reason": "fixed", "discardTargetWrites": False}),
    (["approve", "w1", "--wave"], "wave-w1", ApprovalRequest,
     {"approver": "ops-lead", "comment": ""}),
    (["cancel", "wave-w1", "--wave", "--policy", "rollback"], "wave-w1", CancelRequest,
     {"requestedBy": "ops-lead", "reason": "", "policy": "rollback"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "wf_id", "model", "fields"), SIGN_CASES, ids=[" ".join(c[0]) for c in SIGN_CASES]
)
def test_sign_prints_the_request_the_workflow_verifies(
    keydir: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    wf_id: str,
    model: type[BaseModel],
    fields: dict[str, Any],
) -> None:
    _, _, text = create_key("ops-lead", keydir)
    code, out, err = cli(capsys, "sign", *argv, "--as", "ops-lead")
    assert code == 0, err
    data = json.loads(out)
    assert {k: v for k, v in data.items() if k != "signature"} == fields
    assert f"Workflow ID {wf_id}, Update name {argv[0]}" in err
    # what the workflow computes: the request decoded, its fields but the signature
    req = model.model_validate(fields)
    sig = Signature.model_validate(data["signature"])
    args = req.model_dump(mode="json", exclude={"signature"})
    keys = {"ops-lead": text}
    assert verify(sig, wf_id, argv[0], args, keys, datetime.now(UTC), ()) is None
    assert verify(sig, "cutover-other", argv[0], args, keys, datetime.now(UTC), ()) is not None


def test_sign_takes_the_key_from_the_environment_and_refuses_a_mismatched_name(
    keydir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    private, _, _ = create_key("alice", keydir)
    code, _, err = cli(capsys, "sign", "approve", "shop")
    assert code == 2 and "pass --key FILE or set $CUTOVER_KEY" in err
    monkeypatch.setenv("CUTOVER_KEY", str(private))
    code, out, err = cli(capsys, "sign", "finalize", "shop")
    assert code == 0, err
    assert json.loads(out)["signature"]["signer"] == "alice"
    code, _, err = cli(capsys, "sign", "approve", "shop", "--as", "ops-lead")
    assert code == 2 and "--as ops-lead: the key signs as 'alice'" in err
    code, _, err = cli(capsys, "sign", "pause", "shop")
    assert code == 2 and "pause: not an action of a cutover" in err
    code, _, err = cli(capsys, "sign", "rollback", "shop")
    assert code == 2 and "--reason is required" in err


async def acli(server: DevServer, *argv: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cutover.cli", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "TEMPORAL_ADDRESS": server.address, **env},
        cwd=Path(__file__).resolve().parents[1],
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("kind", ["cutover", "wave"])
async def test_steering_commands_sign_with_the_key_and_send_unsigned_without(
    client: Client, temporal_server: DevServer, tmp_path: Path, kind: str
) -> None:
    private, _, text = create_key("ops-lead", tmp_path)
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    wf_id = f"{kind}-signcli-{uuid.uuid4().hex[:8]}"
    approve = ["approve"] if kind == "cutover" else ["wave", "approve"]
    async with build_worker(client, queue, activities=[], workflows=[SigningSandboxTest]):
        handle = await client.start_workflow(
            SigningSandboxTest.run, {"ops-lead": text}, id=wf_id, task_queue=queue
        )
        # no key: sent unsigned (not blocked client-side); the workflow says why it refuses
        code, said = await acli(temporal_server, *approve, wf_id, "--as", "ops-lead", env={})
        assert code == 1 and "unsigned" in said, said
        code, said = await acli(
            temporal_server, *approve, wf_id, "--as", "bob", "--key", str(private), env={}
        )
        assert code == 2 and "the key signs as 'ops-lead'" in said, said
        code, said = await acli(temporal_server, *approve, wf_id, env={"CUTOVER_KEY": str(private)})
        assert code == 0 and "approved by ops-lead" in said, said
        assert await handle.result() == ["ops-lead"]
