"""The tamper-evident audit log: records appended by the real activity from real histories
(Temporal dev server), checked by `cutover audit verify`; every kind of tampering named."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from temporalio import activity
from temporalio.client import Client

from cutover.audit import audit
from cutover.audit.ledger import (
    GENESIS,
    LedgerError,
    append,
    check_chain,
    entry_hash,
    report_digest,
)
from cutover.audit.log_activity import AuditLogActivities
from cutover.catalog import APPEND_AUDIT_RECORD
from cutover.models import AuditAppend, AuditAppended
from cutover.signing import canonical, public_key_text
from tests.conftest import DevServer
from tests.ledger_workflow import LedgerPlan, LedgerTestWorkflow, ledger_test_step
from workers.worker import build_worker

ROOT = Path(__file__).resolve().parents[1]
KEY = Ed25519PrivateKey.generate()
PUB = public_key_text(KEY.public_key())


@asynccontextmanager
async def worker(
    client: Client, log: Path, appender: Any = None
) -> AsyncIterator[tuple[str, AuditLogActivities]]:
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    real = AuditLogActivities(client, log, "worker-1", KEY)
    acts = [ledger_test_step, *(appender(real).activities() if appender else real.activities())]
    async with build_worker(client, queue, activities=acts, workflows=[LedgerTestWorkflow]):
        yield queue, real


async def run(client: Client, queue: str, **plan: Any) -> tuple[str, AuditAppended]:
    wf_id = f"ledger-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        LedgerTestWorkflow.run, LedgerPlan(**plan), id=wf_id, task_queue=queue
    )
    result = await handle.result()
    assert result is not None
    return wf_id, result


def lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in log.read_text().splitlines()]


async def verify(server: DevServer, *argv: str) -> tuple[int, str]:
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cutover.cli", "audit", "verify", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "TEMPORAL_ADDRESS": server.address},
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
async def ledger(client: Client, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five records from five real runs: a plain one, one continued as new, a wave-like one
    with a child, a rolled-back one, a wave-like one whose child finishes after the record."""
    log = tmp_path_factory.mktemp("ledger") / "audit.jsonl"
    async with worker(client, log) as (queue, _):
        for plan in (
            {},
            {"continues": 1},
            {"kind": "wave", "child": True},
            {"outcome": "ROLLED_BACK"},
            {"kind": "wave", "child_running": True},
        ):
            await run(client, queue, **plan)
    return log


async def test_records_appended_from_histories_verify_whole(
    client: Client, temporal_server: DevServer, ledger: Path
) -> None:
    entries = lines(ledger)
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(entries))
    assert [e["kind"] for e in entries] == ["cutover", "cutover", "wave", "cutover", "wave"]
    assert entries[3]["outcome"] == "ROLLED_BACK"
    assert {e["signer"] for e in entries} == {"worker-1"}
    # the record is the report as of the append's scheduled event, all runs of the chain
    continued = entries[1]
    report = await audit(
        client, continued["workflowId"], continued["runId"],
        through_event_id=continued["throughEventId"],
    )  # fmt: skip
    assert len(report.runIds) == 2 and report.runIds[-1] == continued["runId"]
    # the record's own activity is not a step of the report; the report ends before it
    assert APPEND_AUDIT_RECORD not in {s.name for s in report.steps}
    assert report.steps[-1].scheduledEventId < continued["throughEventId"]
    assert report_digest(report) == continued["reportDigest"]
    [child] = (
        await audit(client, entries[2]["workflowId"], entries[2]["runId"],
                    through_event_id=entries[2]["throughEventId"])
    ).children  # fmt: skip
    assert child.status == "COMPLETED"
    # the child still ran when its parent's record was taken: it is read as of then
    late = entries[4]
    [running] = (
        await audit(client, late["workflowId"], late["runId"],
                    through_event_id=late["throughEventId"])
    ).children  # fmt: skip
    [closed] = (await audit(client, late["workflowId"])).children
    assert running.status == "RUNNING" and len(running.steps) < len(closed.steps) == 2
    assert closed.status == "COMPLETED"

    code, said = await verify(temporal_server, str(ledger), "--key-pub", PUB)
    assert code == 0, said
    assert "whole: 5 entries, seq 1..5" in said
    assert "5 report(s) derived again from their histories: equal" in said


def tampered(tmp_path: Path, ledger: Path, edit: Any) -> Path:
    rows = ledger.read_text().splitlines(keepends=True)
    out = tmp_path / "tampered.jsonl"
    out.write_text("".join(edit(rows)))
    return out


def _edit_outcome(rows: list[str]) -> list[str]:
    entry = json.loads(rows[1])
    entry["outcome"] = "COMPLETED" if entry["outcome"] != "COMPLETED" else "ROLLED_BACK"
    return [rows[0], canonical(entry).decode() + "\n", *rows[2:]]


async def test_an_edited_entry_is_named(
    temporal_server: DevServer, ledger: Path, tmp_path: Path
) -> None:
    log = tampered(tmp_path, ledger, _edit_outcome)
    code, said = await verify(temporal_server, str(log), "--key-pub", PUB, "--no-history")
    assert code == 1, said
    assert "line 2 (seq 2): edited: its content does not match its hash" in said


async def test_an_inserted_entry_is_named(
    temporal_server: DevServer, ledger: Path, tmp_path: Path
) -> None:
    # a genuine entry copied in again (hash and signature valid): the chain gives it away
    log = tampered(tmp_path, ledger, lambda r: [r[0], r[1], r[2], r[1], r[3]])
    code, said = await verify(temporal_server, str(log), "--key-pub", PUB, "--no-history")
    assert code == 1, said
    assert "line 4 (seq 2): inserted: seq 2 after line 3 (seq 3)" in said

    # a new entry made to fit the chain: it lacks the worker's signature
    def forge(rows: list[str]) -> list[str]:
        first = json.loads(rows[0])
        fake = {**json.loads(rows[1]), "outcome": "COMPLETED", "workflowId": "cutover-x"}
        fake |= {"prev": first["hash"], "seq": 2}
        fake["hash"] = entry_hash(fake)
        other = Ed25519PrivateKey.generate().sign(fake["hash"].encode())
        fake["signature"] = base64.b64encode(other).decode()
        return [rows[0], canonical(fake).decode() + "\n", *rows[1:]]

    log = tampered(tmp_path, ledger, forge)
    code, said = await verify(temporal_server, str(log), "--key-pub", PUB, "--no-history")
    assert code == 1, said
    assert "line 2 (seq 2): its signature does not verify against the worker key" in said


async def test_a_deleted_entry_is_named(
    temporal_server: DevServer, ledger: Path, tmp_path: Path
) -> None:
    log = tampered(tmp_path, ledger, lambda r: [r[0], *r[2:]])
    code, said = await verify(temporal_server, str(log), "--key-pub", PUB, "--no-history")
    assert code == 1, said
    assert "line 2 (seq 3): deleted: seq 2 missing after line 1 (seq 1)" in said
    log = tampered(tmp_path, ledger, lambda r: r[1:])
    code, said = await verify(temporal_server, str(log), "--key-pub", PUB, "--no-history")
    assert code == 1 and "line 1 (seq 2): the log starts at seq 2" in said, said


async def test_a_record_rewritten_with_the_worker_key_differs_from_its_history(
    client: Client, temporal_server: DevServer, ledger: Path, tmp_path: Path
) -> None:
    # whoever holds the worker's key can rebuild a consistent chain; not the histories
    log = tmp_path / "rewritten.jsonl"
    for i, entry in enumerate(lines(ledger)):
        digest = entry["reportDigest"] if i != 2 else "sha256:" + "1" * 64
        record = {**entry, "reportDigest": digest}
        append(log, record, "worker-1", KEY)
    code, said = await verify(temporal_server, str(log), "--key-pub", PUB, "--no-history")
    assert code == 0, said
    code, said = await verify(temporal_server, str(log), "--key-pub", PUB)
    assert code == 1, said
    assert "line 3 (seq 3): the report differs from its history" in said


async def test_unreadable_input_exits_2(
    temporal_server: DevServer, ledger: Path, tmp_path: Path
) -> None:
    code, said = await verify(temporal_server, str(tmp_path / "none.jsonl"), "--key-pub", PUB)
    assert code == 2 and "cannot read it" in said, said
    code, said = await verify(temporal_server, str(ledger), "--key-pub", "ed25519:AAAA")
    assert code == 2 and "--key-pub ed25519:AAAA: expected 'ed25519:'" in said, said
    code, said = await verify(temporal_server, str(ledger))
    assert code == 2 and "--key-pub FILE|TEXT" in said, said


class CrashAfterAppend:
    """The worker dies after the line is written, before the activity's completion is
    recorded: Temporal retries the activity (same run, same scheduled event)."""

    def __init__(self, real: AuditLogActivities) -> None:
        self.real = real
        self.attempts: list[AuditAppended] = []

    def activities(self) -> list[Any]:
        return [self.append]

    @activity.defn(name=APPEND_AUDIT_RECORD)
    async def append(self, req: AuditAppend) -> AuditAppended:
        got = await self.real.append_audit_record(req)
        self.attempts.append(got)
        if activity.info().attempt == 1:
            raise RuntimeError("the worker died after the append")
        return got


async def test_a_retried_append_does_not_duplicate(client: Client, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    crashing: list[CrashAfterAppend] = []

    def appender(real: AuditLogActivities) -> CrashAfterAppend:
        crashing.append(CrashAfterAppend(real))
        return crashing[0]

    async with worker(client, log, appender) as (queue, _):
        _, first = await run(client, queue)
        _, second = await run(client, queue)
    assert len(crashing[0].attempts) == 4  # two runs, each appended twice
    assert [e["seq"] for e in lines(log)] == [1, 2]
    assert (first.seq, second.seq) == (1, 2)
    assert first.hash == lines(log)[0]["hash"]


def test_concurrent_appends_chain_one_after_another(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"

    def one(i: int) -> None:
        record = {
            "workflowId": f"cutover-app{i}", "runId": f"run-{i}", "kind": "cutover",
            "throughEventId": 5, "reportDigest": "sha256:" + "2" * 64, "outcome": "COMPLETED",
        }  # fmt: skip
        append(log, record, "worker-1", KEY)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(40)))
    check = check_chain(log, {None: KEY.public_key()})
    assert check.problem is None
    assert [e.seq for _, e in check.entries] == list(range(1, 41))
    assert len({e.workflowId for _, e in check.entries}) == 40


def test_a_torn_last_line_is_named_and_never_extended(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    record = {
        "workflowId": "cutover-a", "runId": "r1", "kind": "cutover", "throughEventId": 5,
        "reportDigest": "sha256:" + "2" * 64, "outcome": "COMPLETED",
    }  # fmt: skip
    append(log, record, "worker-1", KEY)
    whole = log.stat().st_size
    partial = b'{"seq":2,"time":"2025-'  # a crash mid-line
    with log.open("ab") as f:
        f.write(partial)
    with pytest.raises(LedgerError, match=rf"line 2: torn .*truncate -s {whole} "):
        append(log, {**record, "runId": "r2"}, "worker-1", KEY)
    assert log.stat().st_size == whole + len(partial)  # nothing appended after it
    check = check_chain(log, {None: KEY.public_key()})
    assert check.problem is not None and str(check.problem).startswith("line 2: torn")
    os.truncate(log, whole)
    entry, appended = append(log, {**record, "runId": "r2"}, "worker-1", KEY)
    assert appended and entry.seq == 2
