"""Workers act only on their own site configs (issue 13): an input names its site and digest.

Against a real Temporal dev server. `raw_client` sends inputs as given (the Temporal UI's
and API's path: anyone with namespace access); `client` sends them as `cutover run` does.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle

from cutover.catalog import RESOLVE_SITE
from cutover.models import CutoverInput, CutoverResult, Outcome
from cutover.site import CommandProbe, SiteConfig, SiteRef, site_ref
from tests.factories import cutover_input
from tests.world import World
from workers.sites import SiteStore, shared
from workers.worker import build_worker, default_activities
from workflows.cutover import AppCutoverWorkflow, workflow_id_for


def _name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__temporal_activity_definition").name)


def real_checks_on_world(world: World) -> list[Callable[..., Any]]:
    """The world's steps, with the real `run_check` (which runs `command` probes)."""
    real = [fn for fn in default_activities() if _name(fn) == "run_check"]
    return [*(fn for fn in world.activities() if _name(fn) != "run_check"), *real]


async def scheduled(handle: WorkflowHandle[Any, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every activity the workflow scheduled: (type, its decoded input)."""
    out = []
    async for e in handle.fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            a = e.activity_task_scheduled_event_attributes
            out.append((a.activity_type.name, json.loads(a.input.payloads[0].data)))
    return out


async def failure_of(handle: WorkflowHandle[Any, Any]) -> str:
    with pytest.raises(WorkflowFailureError) as err:
        await handle.result()
    return str(err.value.cause)


def evil(inp: CutoverInput, marker: Path) -> CutoverInput:
    """The input with a pre-check redefined as a program of the sender's choosing."""
    site = inp.resolved_site
    checks = {**site.checks, "evil": CommandProbe(type="command", argv=["touch", str(marker)])}
    runbook = inp.runbook.model_copy(update={"preChecks": ["evil", *inp.runbook.preChecks]})
    return inp.model_copy(
        update={"runbook": runbook, "site": site.model_copy(update={"checks": checks})}
    )


async def test_an_input_carrying_a_site_body_runs_nothing(
    raw_client: Client, tmp_path: Path
) -> None:
    queue = f"ref-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "marker"
    inp = evil(cutover_input(queue), marker)
    world = World()
    async with build_worker(raw_client, queue, activities=real_checks_on_world(world)):
        handle = await raw_client.start_workflow(
            AppCutoverWorkflow.run,
            inp,
            id=workflow_id_for(inp.runbook.application),
            task_queue=queue,
        )
        why = await failure_of(handle)
    assert "carries a site body" in why and "siteRef" in why
    assert not marker.exists(), "a probe from the input ran on the worker"
    assert await scheduled(handle) == [] and world.calls == []


async def test_the_workers_own_probe_runs_whatever_the_input_says(
    raw_client: Client, tmp_path: Path
) -> None:
    """The reference names the worker's site: the sender's probe is nowhere to be run."""
    queue = f"ref-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "marker"
    own = cutover_input(queue)
    shared().add(own.resolved_site)
    inp = evil(own, marker)
    # the UI's path: a raw JSON mapping, the site named, the evil runbook kept
    body = inp.by_reference().model_dump(mode="json", exclude_none=True)
    body["siteRef"] = site_ref(own.resolved_site).model_dump()
    world = World()
    async with build_worker(raw_client, queue, activities=real_checks_on_world(world)):
        handle = await raw_client.start_workflow(
            "AppCutover",
            body,
            id=workflow_id_for(inp.runbook.application),
            task_queue=queue,
            result_type=CutoverResult,
        )
        why = await failure_of(handle)
    assert "without a probe in the site config: evil" in why
    assert not marker.exists()
    assert [t for t, _ in await scheduled(handle)] == [RESOLVE_SITE]


@pytest.mark.parametrize("wrong", ["name", "digest"])
async def test_a_site_or_version_the_worker_lacks_is_refused_before_any_step(
    raw_client: Client, wrong: str
) -> None:
    queue = f"ref-{uuid.uuid4().hex[:8]}"
    inp = cutover_input(queue)
    served = shared().add(inp.resolved_site)
    ref = (
        SiteRef(name=f"nowhere-{uuid.uuid4().hex[:6]}", digest=served.digest)
        if wrong == "name"
        else SiteRef(name=served.name, digest="sha256:" + "0" * 64)
    )
    world = World()
    async with build_worker(raw_client, queue, activities=world.activities()):
        handle = await raw_client.start_workflow(
            AppCutoverWorkflow.run,
            inp.model_copy(update={"site": None, "siteRef": ref}),
            id=workflow_id_for(inp.runbook.application),
            task_queue=queue,
        )
        why = await failure_of(handle)
    if wrong == "name":
        assert f"site '{ref.name}' is not one this worker serves" in why
    else:
        assert f"{ref.digest} is not a version this worker has" in why
        assert served.digest in why  # what it has instead
    assert [t for t, _ in await scheduled(handle)] == [RESOLVE_SITE] and world.calls == []


async def test_steps_carry_the_reference_not_the_site(client: Client) -> None:
    queue = f"ref-{uuid.uuid4().hex[:8]}"
    inp = cutover_input(queue)
    world = World()
    async with build_worker(client, queue, activities=world.activities()):
        handle = await client.start_workflow(
            AppCutoverWorkflow.run,
            inp,
            id=workflow_id_for(inp.runbook.application),
            task_queue=queue,
        )
        result = await handle.result()
    assert result.outcome == Outcome.COMPLETED, result.reason
    ref = site_ref(inp.resolved_site).model_dump()
    steps = [(t, doc) for t, doc in await scheduled(handle) if "context" in doc]
    assert len(steps) >= 10
    for name, doc in steps:
        ctx = doc["context"]
        if ctx is None:
            continue  # a check without context
        assert ctx.get("site") is None and ctx["siteRef"] == ref, name
    # ... and the steps did get the worker's site (World records what each step saw)
    assert world.calls


def test_a_worker_keeps_the_versions_it_served(tmp_path: Path) -> None:
    """A site file edited while a cutover runs: the cutover finishes on its version, also
    after the worker restarts on the new file."""
    archive = tmp_path / "archive"
    v1 = SiteConfig.model_validate({"name": "dc1", "stagingDir": "/srv/v1"})
    v2 = SiteConfig.model_validate({"name": "dc1", "stagingDir": "/srv/v2"})
    ref1 = SiteStore(archive).add(v1)
    restarted = SiteStore(archive)
    ref2 = restarted.add(v2)
    assert ref1 != ref2 and restarted.current("dc1") == ref2
    assert restarted.resolve(ref1).stagingDir == "/srv/v1"
    assert restarted.resolve(ref2).stagingDir == "/srv/v2"
    # a name that does not match its digest's site is not that site
    with pytest.raises(Exception, match="not one this worker serves"):
        restarted.resolve(SiteRef(name="dc2", digest=ref1.digest))


def test_a_site_archived_before_a_new_site_field_still_resolves_by_its_digest(
    tmp_path: Path,
) -> None:
    """A cutover started on the previous release names its site by the digest that release
    computed (before `fleet` existed); the upgraded worker must still find that version."""
    archive = tmp_path / "archive"
    archive.mkdir()
    site = SiteConfig.model_validate({"name": "dc1", "stagingDir": "/srv/v1"})
    before = {k: v for k, v in site.model_dump(mode="json").items() if k != "fleet"}
    text = json.dumps(before, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    (archive / f"{digest.removeprefix('sha256:')}.json").write_text(json.dumps(before))
    assert site_ref(site).digest == digest  # unchanged while the new field is unset
    assert SiteStore(archive).resolve(SiteRef(name="dc1", digest=digest)).stagingDir == "/srv/v1"
    with_fleet = SiteConfig.model_validate(
        {"name": "dc1", "stagingDir": "/srv/v1", "fleet": {"dataHosts": [{"name": "h1"}]}}
    )
    assert site_ref(with_fleet).digest != digest  # set, it is part of the site's identity
