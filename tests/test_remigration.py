"""A finished application is not cut over again by accident (`cutover run`, `wave run`).

The CLI runs as a real subprocess against a real Temporal dev server and a real vSphere
simulator. Test activities (tests/world.py) serve the steps, except `verify_not_migrated`,
which is the real one reading the simulator's VMs.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from activities.vsphere import VSphereActivities
from adapters.vsphere.client import ClientPool
from adapters.vsphere.inventory import read_inventory
from cutover.catalog import BUILTIN_CHECKS
from cutover.lab.vcsim import Vcsim
from cutover.models import CutoverResult, Outcome, StepContext, StepInput
from cutover.runbook import Runbook
from cutover.site import SiteConfig, VCenter
from tests.conftest import DevServer
from tests.factories import SEED, UNSIGNED, unique_app
from tests.site_refs import serve
from tests.world import World
from workers.worker import build_worker

CUTOVER = str(Path(sys.executable).parent / "cutover")
CHECKOUT = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
PASSWORD_ENV = "CUTOVER_TEST_VC_PASSWORD"


@pytest.fixture(scope="module")
def sim(
    vcsim_binary: Path, vcsim_cert: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Vcsim]:
    """This module's own simulator: its tests mark VMs migrated."""
    from cutover.lab import vcsim as vcsim_mod

    cert, key = vcsim_cert
    s = vcsim_mod.start(
        vcsim_binary,
        tmp_path_factory.mktemp("remigration"),
        cert=cert,
        key=key,
        clusters=0,
        hosts=0,
        vms=4,
        standalone_hosts=1,
    )
    yield s
    s.stop()


def vcenter(sim: Vcsim) -> VCenter:
    return VCenter.model_validate(
        {
            "host": sim.host,
            "port": sim.port,
            "user": sim.user,
            "passwordRef": {"env": PASSWORD_ENV},
            "caFile": str(sim.ca_file),
            "datacenter": "DC0",
        }
    )


def cli(server: DevServer, sim: Vcsim, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **CHECKOUT, "TEMPORAL_ADDRESS": server.address, PASSWORD_ENV: sim.password}
    return subprocess.run(
        [CUTOVER, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


async def acli(server: DevServer, sim: Vcsim, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, server, sim, *args)


def site_doc(tmp: Path, queue: str, vc: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "remigration-test",
        "taskQueue": queue,
        "checks": {n: {"type": "command", "argv": ["true"]} for n in BUILTIN_CHECKS},
        "access": UNSIGNED,
        # test activities stand in for the load balancer
        "loadBalancer": {"socket": str(tmp / "haproxy.sock")},
        "vcenter": vc,
    }


def runbook_doc(app: str, vm: str) -> dict[str, Any]:
    return {
        **SEED,
        "application": app,
        "vms": [vm],
        "rollbackWindowMinutes": 0.02,
        "checkIntervalSeconds": 0.3,
    }


def write_files(tmp: Path, sim: Vcsim, queue: str, vm: str) -> tuple[str, str, str]:
    app = unique_app("again")
    vc = vcenter(sim).model_dump(mode="json", exclude_none=True)
    (tmp / "site.yaml").write_text(yaml.safe_dump(site_doc(tmp, queue, vc)))
    (tmp / "runbook.yaml").write_text(yaml.safe_dump(runbook_doc(app, vm)))
    return app, str(tmp / "runbook.yaml"), serve(str(tmp / "site.yaml"))


def activities(sim: Vcsim, world: World) -> list[Callable[..., Any]]:
    """The test world's steps, with the real `verify_not_migrated` on the simulator."""
    real = VSphereActivities(ClientPool(password=lambda s: sim.password)).verify_not_migrated

    def named(fn: Callable[..., Any]) -> str | None:
        return activity._Definition.must_from_callable(fn).name

    return [a for a in world.activities() if named(a) != named(real)] + [real]


async def started_input(client: Client, wf_id: str, run_id: str) -> dict[str, Any]:
    """The input a run was started with, as recorded in its history."""
    history = await client.get_workflow_handle(wf_id, run_id=run_id).fetch_history()
    started = history.events[0]
    assert started.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
    payload = started.workflow_execution_started_event_attributes.input.payloads[0]
    data: dict[str, Any] = json.loads(payload.data)
    return data


async def test_a_second_run_of_a_completed_application_is_refused_naming_the_previous_cutover(
    client: Client, temporal_server: DevServer, sim: Vcsim, tmp_path: Path
) -> None:
    queue = f"again-{uuid.uuid4().hex[:8]}"
    app, runbook, site = write_files(tmp_path, sim, queue, "DC0_H0_VM0")
    world = World()
    async with build_worker(client, queue, activities=activities(sim, world)):
        done = await acli(temporal_server, sim, "run", runbook, "--site", site, "--wait")
        assert done.returncode == 0, done.stdout + done.stderr
        first = await client.get_workflow_handle(f"cutover-{app}").describe()
        assert first.status == WorkflowExecutionStatus.COMPLETED and first.close_time
        steps = len(world.calls)

        again = await acli(temporal_server, sim, "run", runbook, "--site", site)
        assert again.returncode == 1, again.stderr
        assert f"refused: {app} was already cut over" in again.stderr
        assert f"workflow cutover-{app} run {first.run_id}" in again.stderr
        closed = first.close_time.isoformat(timespec="seconds")
        assert f"finished COMPLETED at {closed}" in again.stderr
        assert "--remigrate REASON" in again.stderr and "Traceback" not in again.stderr
        # nothing was started: the last run is still the completed one, no step ran
        assert (await client.get_workflow_handle(f"cutover-{app}").describe()).run_id == (
            first.run_id
        )
        assert len(world.calls) == steps

        empty = await acli(temporal_server, sim, "run", runbook, "--site", site, "--remigrate", "")
        assert empty.returncode == 2 and "--remigrate: give the reason" in empty.stderr

        forced = await acli(
            temporal_server, sim, "run", runbook, "--site", site, "--remigrate", "restore drill"
        )
        assert forced.returncode == 0, forced.stderr
        assert "re-migrating (restore drill)" in forced.stderr
        handle = client.get_workflow_handle(f"cutover-{app}", result_type=CutoverResult)
        second = await handle.describe()
        assert second.run_id != first.run_id
        # the reason is in the run's history, for the workflow and the audit to record
        assert (await started_input(client, f"cutover-{app}", second.run_id))["remigrate"] == (
            "restore drill"
        )
        result = await asyncio.wait_for(handle.result(), 60)
        assert result.outcome == Outcome.COMPLETED, result.reason


async def test_a_source_marked_migrated_is_refused_before_any_workflow_starts(
    client: Client, temporal_server: DevServer, sim: Vcsim, tmp_path: Path
) -> None:
    queue = f"again-{uuid.uuid4().hex[:8]}"
    vm = "DC0_H0_VM1"
    app, runbook, site = write_files(tmp_path, sim, queue, vm)
    # An earlier cutover of the same VMs (here under another name) finalized and marked them.
    pool = ClientPool(password=lambda s: sim.password)
    earlier = unique_app("earlier")
    rb = Runbook.model_validate({**runbook_doc(earlier, vm)})
    ctx = StepContext(
        workflowId=f"cutover-{earlier}",
        application=earlier,
        wave="2",
        runbook=rb,
        site=SiteConfig(vcenter=vcenter(sim)),
    )
    VSphereActivities(pool).mark_source_migrated(
        StepInput(step="mark_source_migrated", context=ctx)
    )
    marks = read_inventory(pool.get(vcenter(sim))).vm(vm).customAttributes
    pool.close()

    refused = await acli(temporal_server, sim, "run", runbook, "--site", site)
    assert refused.returncode == 1, refused.stderr
    assert (
        f"source VM {vm} is marked migrated to {marks['cutover.migratedTo']} at "
        f"{marks['cutover.migratedAt']} by workflow cutover-{earlier}"
    ) in refused.stderr
    assert "warning" not in refused.stderr  # vCenter was read
    with pytest.raises(RPCError) as missing:  # no workflow was started
        await client.get_workflow_handle(f"cutover-{app}").describe()
    assert missing.value.status == RPCStatusCode.NOT_FOUND

    world = World()
    async with build_worker(client, queue, activities=activities(sim, world)):
        forced = await acli(
            temporal_server, sim, "run", runbook, "--site", site, "--remigrate", "vendor asked",
            "--wait",
        )  # fmt: skip
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert f"re-migrating (vendor asked): {app} was already cut over: source VM {vm}" in (
        forced.stderr
    )


async def test_run_without_access_to_vcenter_leaves_the_marks_to_the_workflow(
    client: Client, temporal_server: DevServer, sim: Vcsim, tmp_path: Path
) -> None:
    # An operator's machine often cannot reach vCenter: the CLI says so and starts; the
    # workflow's own verify_not_migrated runs first, before anything changes.
    queue = f"again-{uuid.uuid4().hex[:8]}"
    app = unique_app("novc")
    vc = {"host": "127.0.0.1", "port": 1, "user": "svc", "passwordRef": {"env": PASSWORD_ENV}}
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site_doc(tmp_path, queue, vc)))
    (tmp_path / "runbook.yaml").write_text(yaml.safe_dump(runbook_doc(app, "DC0_H0_VM2")))
    res = await acli(
        temporal_server, sim, "run", str(tmp_path / "runbook.yaml"),
        "--site", str(tmp_path / "site.yaml"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "could not read the migrated marks" in res.stderr
    assert "checks them itself before it changes anything" in res.stderr
    await client.get_workflow_handle(f"cutover-{app}").terminate("test: no worker serves it")


def write_wave(tmp: Path, sim: Vcsim, queue: str, apps: dict[str, str]) -> tuple[str, str, str]:
    name = f"again-{uuid.uuid4().hex[:6]}"
    vc = vcenter(sim).model_dump(mode="json", exclude_none=True)
    (tmp / "site.yaml").write_text(yaml.safe_dump(site_doc(tmp, queue, vc)))
    entries = [{"runbook": runbook_doc(app, vm)} for app, vm in apps.items()]
    (tmp / "wave.yaml").write_text(yaml.safe_dump({"wave": name, "applications": entries}))
    return name, str(tmp / "wave.yaml"), serve(str(tmp / "site.yaml"))


async def test_wave_run_refuses_a_wave_with_an_application_already_cut_over(
    client: Client, temporal_server: DevServer, sim: Vcsim, tmp_path: Path
) -> None:
    queue = f"again-{uuid.uuid4().hex[:8]}"
    done_app, fresh_app = unique_app("wdone"), unique_app("wfresh")
    apps = {done_app: "DC0_H0_VM2", fresh_app: "DC0_H0_VM3"}
    name, wave, site = write_wave(tmp_path, sim, queue, apps)
    (tmp_path / "done.yaml").write_text(yaml.safe_dump(runbook_doc(done_app, apps[done_app])))
    world = World()
    async with build_worker(client, queue, activities=activities(sim, world)):
        done = await acli(
            temporal_server, sim, "run", str(tmp_path / "done.yaml"), "--site", site, "--wait"
        )
        assert done.returncode == 0, done.stdout + done.stderr
        first = await client.get_workflow_handle(f"cutover-{done_app}").describe()

        refused = await acli(temporal_server, sim, "wave", "run", wave, "--site", site)
        assert refused.returncode == 1, refused.stderr
        assert f"refused: wave {name}: 1 application(s) already cut over" in refused.stderr
        assert f"{done_app} was already cut over" in refused.stderr
        assert f"workflow cutover-{done_app} run {first.run_id}" in refused.stderr
        assert fresh_app not in refused.stderr
        assert "--remigrate APP=REASON" in refused.stderr
        with pytest.raises(RPCError) as missing:  # the wave was not started
            await client.get_workflow_handle(f"wave-{name}").describe()
        assert missing.value.status == RPCStatusCode.NOT_FOUND

        for flag, says in (
            ("nobody=why", "'nobody' is not an application of this wave"),
            (done_app, "expected APP=REASON"),
            (f"{done_app}= ", "give the reason"),
        ):
            bad = await acli(
                temporal_server, sim, "wave", "run", wave, "--site", site, "--remigrate", flag
            )
            assert bad.returncode == 2 and says in bad.stderr, bad.stderr


async def test_wave_run_remigrate_passes_the_reason_to_that_cutover(
    client: Client, temporal_server: DevServer, sim: Vcsim, tmp_path: Path
) -> None:
    queue = f"again-{uuid.uuid4().hex[:8]}"
    done_app, fresh_app = unique_app("wdone"), unique_app("wfresh")
    apps = {done_app: "DC0_H0_VM2", fresh_app: "DC0_H0_VM3"}
    _, wave, site = write_wave(tmp_path, sim, queue, apps)
    (tmp_path / "done.yaml").write_text(yaml.safe_dump(runbook_doc(done_app, apps[done_app])))
    world = World()
    async with build_worker(client, queue, activities=activities(sim, world)):
        done = await acli(
            temporal_server, sim, "run", str(tmp_path / "done.yaml"), "--site", site, "--wait"
        )
        assert done.returncode == 0, done.stdout + done.stderr
        res = await acli(
            temporal_server, sim, "wave", "run", wave, "--site", site, "--wait",
            "--remigrate", f"{done_app}=restore drill",
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"re-migrating (restore drill): {done_app} was already cut over" in res.stderr
    for app, reason in ((done_app, "restore drill"), (fresh_app, None)):
        run_id = (await client.get_workflow_handle(f"cutover-{app}").describe()).run_id
        assert (await started_input(client, f"cutover-{app}", run_id)).get("remigrate") == reason
