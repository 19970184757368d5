"""Signed operator actions, the access policy and workload policies, enforced by the
workflows against a real Temporal server (issue 13).

Requests go through `raw_client`: the Temporal API as anyone with namespace access uses it.
A refused update is absent from the history; a refused start fails before any step.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError

from cutover.audit import audit
from cutover.models import (
    ApprovalRequest,
    CutoverInput,
    CutoverResult,
    ExtendRequest,
    FinalizeRequest,
    Outcome,
    Phase,
    RollbackRequest,
)
from cutover.signing import Signature, public_key_text, sign
from cutover.site import SiteConfig
from tests.factories import cutover_input, site
from tests.world import World
from workers.audit import audit_log
from workers.sites import shared
from workers.worker import build_worker
from workflows.cutover import AppCutoverWorkflow, workflow_id_for
from workflows.trust import start_args

NAMES = ("alice", "ops-lead", "bob", "mallory-finance", "auditor1", "worker")
KEYS = {n: Ed25519PrivateKey.generate() for n in NAMES}


def access(**kw: Any) -> dict[str, Any]:
    """Retail's operator (alice) and approver (ops-lead), finance's approver, an auditor;
    the same-tenant rule."""
    who = {
        "alice": (["operator"], "retail"),
        "ops-lead": (["approver"], "retail"),
        "bob": (["operator", "approver"], "retail"),
        "mallory-finance": (["approver", "operator"], "finance"),
        "auditor1": (["auditor"], None),
    }
    principals = {
        n: {
            "publicKey": public_key_text(KEYS[n].public_key()),
            "roles": roles,
            **({"tenant": t} if t else {}),
        }
        for n, (roles, t) in who.items()
    }
    return {
        "principals": principals,
        "rules": [
            {
                "effect": "allow",
                "actions": [
                    *("start", "approve", "rollback", "extend", "finalize", "resume"),
                    *("pause", "cancel"),
                ],
                "principal": {"tenant": "$app.tenant"},
            }
        ],
        **kw,
    }


def signed_site(queue: str, app: str, **extra: Any) -> SiteConfig:
    base = site(taskQueue=queue)
    return SiteConfig.model_validate(
        {
            **base.model_dump(mode="json"),
            "access": access(),
            "applications": {app: {"labels": {"tenant": "retail", "criticality": "high"}}},
            **extra,
        }
    )


def signed(req: BaseModel, wf_id: str, action: str, who: str, **kw: Any) -> Any:
    args = req.model_dump(mode="json", exclude={"signature"})
    return req.model_copy(update={"signature": sign(KEYS[who], who, wf_id, action, args, **kw)})


def start_input(inp: CutoverInput, who: str | None, **kw: Any) -> CutoverInput:
    """What `cutover run --key` sends: the site by reference (served by this process's
    worker), the start signed over the input as sent."""
    shared().add(inp.resolved_site)
    sent = inp.by_reference().model_copy(update={"requestedBy": who or "nobody"})
    if who is None:
        return sent
    wf_id = workflow_id_for(inp.runbook.application)
    return sent.model_copy(
        update={"signature": sign(KEYS[who], who, wf_id, "start", start_args(sent), **kw)}
    )


@asynccontextmanager
async def worker(client: Client, world: World, queue: str) -> AsyncIterator[None]:
    async with build_worker(client, queue, activities=world.activities()):
        yield


async def begin(
    client: Client, inp: CutoverInput, who: str | None = "alice"
) -> WorkflowHandle[AppCutoverWorkflow, CutoverResult]:
    return await client.start_workflow(
        AppCutoverWorkflow.run,
        start_input(inp, who),
        id=workflow_id_for(inp.runbook.application),
        task_queue=inp.resolved_site.taskQueue,
    )


async def phase_of(handle: WorkflowHandle[Any, Any], phase: Phase) -> None:
    for _ in range(400):
        try:
            if (await handle.query(AppCutoverWorkflow.status)).phase == phase:
                return
        except RPCError:
            pass  # not started yet (a wave's cutover)
        await _sleep()
    raise AssertionError(f"never reached {phase}")


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.05)


async def refused(send: Callable[[], Any]) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as err:
        await send()
    return str(getattr(err.value.cause, "message", err.value.cause))


async def accepted_updates(handle: WorkflowHandle[Any, Any]) -> list[dict[str, Any]]:
    out = []
    async for e in handle.fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            req = e.workflow_execution_update_accepted_event_attributes.accepted_request
            out.append(json.loads(req.input.args.payloads[0].data))
    return out


def gated(queue: str, *, early: bool = True, **rb: Any) -> tuple[CutoverInput, str]:
    approvers = ["ops-lead", "bob", "mallory-finance"]
    inp = cutover_input(
        queue, approval={"required": True, "approvers": approvers, "allowEarlyFinalize": early},
        rollbackWindowMinutes=5, checkIntervalSeconds=0.3, **rb,
    )  # fmt: skip
    app = inp.runbook.application
    inp = inp.model_copy(update={"site": signed_site(queue, app)})
    return inp, workflow_id_for(app)


async def test_a_raw_approve_without_a_valid_signature_is_refused_and_absent_from_history(
    raw_client: Client,
) -> None:
    queue = f"trust-{uuid.uuid4().hex[:8]}"
    world = World()
    inp, wf = gated(queue)
    async with worker(raw_client, world, queue):
        handle = await begin(raw_client, inp)
        await phase_of(handle, Phase.AWAITING_APPROVAL)
        # a listed approver's name, typed: what the Temporal UI's Send an Update does
        why = await refused(
            lambda: handle.execute_update(
                AppCutoverWorkflow.approve, ApprovalRequest(approver="ops-lead")
            )
        )
        assert "unsigned" in why and "cutover sign approve" in why
        # signed by someone else but naming ops-lead
        why = await refused(
            lambda: handle.execute_update(
                AppCutoverWorkflow.approve,
                signed(ApprovalRequest(approver="ops-lead"), wf, "approve", "alice"),
            )
        )
        assert "signed by 'alice' but the request names 'ops-lead'" in why
        # ops-lead's signature for another cutover, or of other arguments
        other = signed(ApprovalRequest(approver="ops-lead"), "cutover-other", "approve", "ops-lead")
        why = await refused(lambda: handle.execute_update(AppCutoverWorkflow.approve, other))
        assert "bad signature" in why
        # expired (signed 20 minutes ago) and from the future
        old = datetime.now(UTC) - timedelta(minutes=20)
        stale = signed(ApprovalRequest(approver="ops-lead"), wf, "approve", "ops-lead", now=old)
        why = await refused(lambda: handle.execute_update(AppCutoverWorkflow.approve, stale))
        assert why.startswith("approve refused: expired")
        late = datetime.now(UTC) + timedelta(minutes=10)
        future = signed(ApprovalRequest(approver="ops-lead"), wf, "approve", "ops-lead", now=late)
        why = await refused(lambda: handle.execute_update(AppCutoverWorkflow.approve, future))
        assert "from the future" in why
        # finance's approver on retail's application: the tenant boundary
        cross = signed(
            ApprovalRequest(approver="mallory-finance"), wf, "approve", "mallory-finance"
        )
        why = await refused(lambda: handle.execute_update(AppCutoverWorkflow.approve, cross))
        assert "mallory-finance (tenant finance) may not approve" in why and "tenant retail" in why
        # the auditor may not roll back
        rb = signed(
            RollbackRequest(reason="no", requestedBy="auditor1"), wf, "rollback", "auditor1"
        )
        why = await refused(lambda: handle.execute_update(AppCutoverWorkflow.rollback, rb))
        assert "auditor1" in why and "no role of theirs grants rollback" in why
        assert await accepted_updates(handle) == []  # none of them entered the history
        # the real one, then the same signed request again (a replay)
        good = signed(ApprovalRequest(approver="ops-lead"), wf, "approve", "ops-lead")
        await handle.execute_update(AppCutoverWorkflow.approve, good)
        status = await handle.query(AppCutoverWorkflow.status)
        assert status.approvedBy == "ops-lead"
        await phase_of(handle, Phase.ROLLBACK_WINDOW)
        again = signed(ExtendRequest(minutes=1, requestedBy="alice"), wf, "extend", "alice")
        await handle.execute_update(AppCutoverWorkflow.extend, again)
        why = await refused(lambda: handle.execute_update(AppCutoverWorkflow.extend, again))
        assert "replayed" in why
        fin = signed(FinalizeRequest(requestedBy="alice"), wf, "finalize", "alice")
        await handle.execute_update("finalize", fin, result_type=str)
        result = await handle.result()
    assert result.outcome == Outcome.COMPLETED, result.reason
    assert [u.get("signature", {}).get("signer") for u in await accepted_updates(handle)] == [
        "ops-lead",
        "alice",
        "alice",
    ]
    report = await audit(raw_client, handle.id)
    assert [a.signedBy for a in report.approvals] == ["ops-lead"]
    assert [u.signedBy for u in report.updates] == ["alice", "alice"]


async def test_separation_of_duties_whoever_started_may_not_approve(raw_client: Client) -> None:
    queue = f"trust-{uuid.uuid4().hex[:8]}"
    inp, wf = gated(queue)
    async with worker(raw_client, World(), queue):
        handle = await begin(raw_client, inp, who="bob")  # bob: operator and approver
        await phase_of(handle, Phase.AWAITING_APPROVAL)
        mine = signed(ApprovalRequest(approver="bob"), wf, "approve", "bob")
        why = await refused(lambda: handle.execute_update(AppCutoverWorkflow.approve, mine))
        assert "bob started it" in why and "separationOfDuties" in why
        ok = signed(ApprovalRequest(approver="ops-lead"), wf, "approve", "ops-lead")
        await handle.execute_update(AppCutoverWorkflow.approve, ok)
        stop = signed(RollbackRequest(reason="test over", requestedBy="bob"), wf, "rollback", "bob")
        await handle.execute_update(AppCutoverWorkflow.rollback, stop)
        assert (await handle.result()).outcome == Outcome.ROLLED_BACK


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        (None, "unsigned"),
        ("auditor1", "no role of theirs grants start"),
        ("mallory-finance", "may not start"),
    ],
)
async def test_a_start_not_signed_by_someone_allowed_runs_nothing(
    raw_client: Client, who: str | None, expected: str
) -> None:
    queue = f"trust-{uuid.uuid4().hex[:8]}"
    world = World()
    inp, _ = gated(queue)
    async with worker(raw_client, world, queue):
        handle = await begin(raw_client, inp, who=who)
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
    assert "start refused" in str(err.value.cause) and expected in str(err.value.cause)
    assert world.calls == [] and world.guard_calls == []


async def test_a_replayed_start_signature_is_refused_once_expired(raw_client: Client) -> None:
    queue = f"trust-{uuid.uuid4().hex[:8]}"
    world = World()
    inp, wf = gated(queue)
    shared().add(inp.resolved_site)
    sent = inp.by_reference().model_copy(update={"requestedBy": "alice"})
    old = datetime.now(UTC) - timedelta(hours=1)
    stale = sent.model_copy(
        update={"signature": sign(KEYS["alice"], "alice", wf, "start", start_args(sent), now=old)}
    )
    async with worker(raw_client, world, queue):
        handle = await raw_client.start_workflow(
            AppCutoverWorkflow.run, stale, id=wf, task_queue=queue
        )
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
    assert "expired" in str(err.value.cause) and world.calls == []


def _policy(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "policy.virtualmachine.space/v1",
        "kind": "WorkloadPolicy",
        "metadata": {"name": "regulated-tier"},
        "spec": {"selector": {"matchLabels": {"criticality": "high"}}, **spec},
    }


@pytest.mark.parametrize(
    ("spec", "mappings", "expected"),
    [
        ({"allowedPlatforms": ["openstack"]}, [], "spec.allowedPlatforms"),
        (
            {"compliance": {"residency": ["zone-a"]}},
            [{"sourceDatastore": "ds1", "targetPool": "p1", "zone": "zone-b"}],
            "spec.compliance.residency",
        ),
        (
            {"compliance": {"residency": ["zone-a"]}},
            [{"sourceDatastore": "ds1", "targetPool": "p1"}],
            "no zone",
        ),
    ],
)
async def test_a_workload_policy_refuses_at_start_before_any_step(
    raw_client: Client, spec: dict[str, Any], mappings: list[Any], expected: str
) -> None:
    queue = f"trust-{uuid.uuid4().hex[:8]}"
    world = World()
    inp, _ = gated(queue)
    app = inp.runbook.application
    s = signed_site(queue, app, workloadPolicies=[_policy(**spec)], storageMappings=mappings)
    async with worker(raw_client, world, queue):
        handle = await begin(raw_client, inp.model_copy(update={"site": s}))
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
    why = str(err.value.cause)
    assert "regulated-tier" in why and expected in why, why
    assert world.calls == [] and world.guard_calls == []


async def test_a_gpu_mode_the_policy_does_not_allow_is_refused_before_any_change(
    raw_client: Client,
) -> None:
    queue = f"trust-{uuid.uuid4().hex[:8]}"
    world = World(details={"verify_not_migrated": {"deviceModes": "web-1:vgpu+sriov"}})
    inp, _ = gated(queue)
    app = inp.runbook.application
    policy = _policy(gpuScheduling={"allowModes": ["passthrough", "sriov"]})
    s = signed_site(queue, app, workloadPolicies=[policy])
    async with worker(raw_client, world, queue):
        handle = await begin(raw_client, inp.model_copy(update={"site": s}))
        result = await handle.result()
    assert result.outcome == Outcome.FAILED
    assert "spec.gpuScheduling" in result.reason and "vgpu" in result.reason, result.reason
    assert world.guard_calls and world.calls == []  # read only, nothing changed


async def test_requires_approval_holds_the_gate_the_runbook_left_open_and_audit_before_finalize(
    raw_client: Client,
) -> None:
    queue = f"trust-{uuid.uuid4().hex[:8]}"
    world = World()
    inp = cutover_input(queue, rollbackWindowMinutes=0.02, checkIntervalSeconds=0.3)
    assert not inp.runbook.approval.required
    app, wf = inp.runbook.application, workflow_id_for(inp.runbook.application)
    policy = _policy(requiresApproval=True, compliance={"immutableAuditLog": True})
    inp = inp.model_copy(update={"site": signed_site(queue, app, workloadPolicies=[policy])})
    async with worker(raw_client, world, queue):
        handle = await begin(raw_client, inp)
        await phase_of(handle, Phase.AWAITING_APPROVAL)
        ok = signed(ApprovalRequest(approver="ops-lead"), wf, "approve", "ops-lead")
        await handle.execute_update(AppCutoverWorkflow.approve, ok)
        result = await handle.result()
    assert result.outcome == Outcome.COMPLETED, result.reason
    entries = [
        json.loads(line)
        for line in Path(audit_log()).read_text().splitlines()
        if json.loads(line)["workflowId"] == wf
    ]
    # the record before finalize, then the cutover's end
    assert [e["outcome"] for e in entries] == ["FINALIZING", "COMPLETED"]
    finalize_steps = [s for s in result.steps if s.kind == "finalize"]
    assert finalize_steps and all(s.startedAt is not None for s in finalize_steps)
    first_finalize = min(s.startedAt for s in finalize_steps if s.startedAt is not None)
    history = await handle.fetch_history()
    at = {e.event_id: e.event_time.ToDatetime(tzinfo=UTC) for e in history.events}
    assert at[entries[0]["throughEventId"]] <= first_finalize


def test_signatures_bind_the_signer() -> None:
    """The helper above signs as who it says (so the tests' refusals are real)."""
    sig: Signature = signed(ApprovalRequest(approver="x"), "w", "approve", "alice").signature
    assert sig.signer == "alice"


async def test_a_wave_takes_only_signed_requests_and_its_relayed_rollbacks_are_signed(
    raw_client: Client,
) -> None:
    """A wave's start and cancel are verified like a cutover's; the rollbacks its cancel
    sends its cutovers are signed by the worker's key, which the site names."""
    from activities.wave import WaveActivities
    from cutover.wave import CancelRequest, WaveInput, WaveOutcome, workflow_id_for_wave
    from tests.test_wave import wave_input
    from workers.audit import worker_key
    from workflows.wave import WaveWorkflow

    queue = f"trust-{uuid.uuid4().hex[:8]}"
    world = World()
    names = [f"w{i}-{uuid.uuid4().hex[:6]}" for i in range(2)]
    key = worker_key()
    pol = access()
    pol["principals"][key[0]] = {
        "publicKey": public_key_text(key[1].public_key()),
        "roles": ["worker"],
    }
    pol["roles"] = {
        "operator": ["start", "rollback", "extend", "finalize", "resume", "pause", "cancel"],
        "approver": ["approve", "rollback", "extend"],
        "auditor": [],
        "wave-runner": ["start", "cancel"],
        "worker": ["rollback"],
    }
    pol["rules"].append(
        {"effect": "allow", "actions": ["rollback"], "principal": {"roles": ["worker"]}}
    )
    labels = {n: {"labels": {"tenant": "retail"}} for n in names}
    site_ = SiteConfig.model_validate(
        {**site(taskQueue=queue).model_dump(mode="json"), "access": pol, "applications": labels}
    )
    plain = wave_input(
        queue, names, onCancel="rollback", concurrency=2,
        runbook={"approval": {"required": True, "approvers": ["ops-lead"]}},
    )  # fmt: skip
    wave = plain.model_copy(update={"site": site_})
    shared().add(site_)
    sent = wave.by_reference().model_copy(update={"requestedBy": "alice"})
    wid = workflow_id_for_wave(wave.name)

    def start(inp: WaveInput) -> Any:
        return raw_client.start_workflow(WaveWorkflow.run, inp, id=wid, task_queue=queue)

    acts = [*world.activities(), *WaveActivities(raw_client, signer=key).activities()]
    async with build_worker(raw_client, queue, activities=acts):
        # unsigned: refused before any cutover starts
        unsigned = await start(sent)
        with pytest.raises(WorkflowFailureError) as err:
            await unsigned.result()
        assert "start refused: unsigned" in str(err.value.cause)
        sig = sign(KEYS["alice"], "alice", wid, "start", start_args(sent))
        handle = await start(sent.model_copy(update={"signature": sig}))
        cutovers = [
            raw_client.get_workflow_handle(workflow_id_for(n), result_type=CutoverResult)
            for n in names
        ]
        for c in cutovers:
            await phase_of(c, Phase.AWAITING_APPROVAL)
        # typed names are not senders
        why = await refused(
            lambda: handle.execute_update(
                WaveWorkflow.cancel, CancelRequest(requestedBy="alice", reason="typed")
            )
        )
        assert "unsigned" in why
        stop = signed(
            CancelRequest(requestedBy="alice", reason="test over"), wid, "cancel", "alice"
        )
        await handle.execute_update(WaveWorkflow.cancel, stop)
        result = await handle.result()
    assert result.outcome == WaveOutcome.CANCELLED
    for c in cutovers:
        done = await c.result()
        assert done.outcome == Outcome.ROLLED_BACK, done.reason
        relayed = [u for u in await accepted_updates(c) if "signature" in u]
        assert [u["signature"]["signer"] for u in relayed] == [key[0]]
        assert "asked by alice" in relayed[0]["reason"]
