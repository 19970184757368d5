"""Target platforms are bound by the site (issue 15): a runbook whose `targetPlatform` its
site does not bind is refused by `cutover validate --site`, by `cutover run` before anything
starts, and by the workflow before any step, each naming the platforms the site binds;
never run against whatever adapter happens to be there. Load balancers and DNS are tagged
unions in the site the same way (HAProxy and RFC 2136 the one implementation of each)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.libvirt_target import LibvirtTarget
from adapters.libvirt.connection import open_connection
from cutover.catalog import BUILTIN_CHECKS, Compensation, Step
from cutover.config import ConfigError
from cutover.disknames import volume_name
from cutover.facts import CONVERTED_PATH, per_disk
from cutover.models import CutoverInput, StepContext, StepInput, StepResult
from cutover.runbook import Runbook
from cutover.site import DEFAULT_LIBVIRT_PLATFORMS, SiteConfig, load_runbook
from cutover.wave import WaveApp, WaveInput
from tests.conftest import DevServer
from tests.factories import SEED, cutover_input, site, unique_app
from tests.world import World
from workers import registry
from workers.worker import build_worker, default_activities

CUTOVER = str(Path(sys.executable).parent / "cutover")
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "customer-analytics-api.yaml"
#: The console script runs this checkout's code (also from a git worktree).
CHECKOUT = {"PYTHONPATH": str(ROOT)}
LEGACY = ", ".join(DEFAULT_LIBVIRT_PLATFORMS)


def cutover(*args: str, address: str = "127.0.0.1:1") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **CHECKOUT, "TEMPORAL_ADDRESS": address}
    proc = subprocess.run(
        [CUTOVER, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def write_site(tmp: Path, **extra: Any) -> Path:
    data: dict[str, Any] = {
        "name": "kvm-only",
        "checks": {n: {"type": "command", "argv": ["true"]} for n in BUILTIN_CHECKS},
        # what the seed's steps need (the vCenter is never reached: nothing runs)
        "vcenter": {"host": "127.0.0.1", "user": "svc", "passwordRef": {"env": "UNUSED"}},
        "loadBalancer": {"socket": str(tmp / "haproxy.sock")},
        **extra,
    }
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def write_runbook(tmp: Path, **fields: Any) -> tuple[str, Path]:
    app = unique_app("plat")
    path = tmp / "runbook.yaml"
    path.write_text(yaml.safe_dump({**SEED, "application": app, **fields}), encoding="utf-8")
    return app, path


KVM_ONLY = {"targetPlatforms": {"kvm-libvirt": {"type": "libvirt", "uri": "qemu:///system"}}}


# ------------------------------------------------------------------ cutover validate


def test_validate_refuses_a_platform_the_site_does_not_bind_naming_what_it_binds(
    tmp_path: Path,
) -> None:
    site_file = write_site(tmp_path, **KVM_ONLY)
    res = cutover("validate", str(EXAMPLE), "--site", str(site_file))  # pextra-cloud
    assert res.returncode == 2, res.stdout + res.stderr
    [line] = res.stderr.splitlines()
    assert line.startswith(f"{EXAMPLE}: targetPlatform: target platform 'pextra-cloud'")
    assert "not bound by site 'kvm-only' (it binds: kvm-libvirt)" in line


def test_validate_refuses_proxmox_at_a_site_that_binds_only_its_libvirt_section(
    tmp_path: Path,
) -> None:
    # A site written before `targetPlatforms`: its `libvirt` serves the libvirt family only.
    site_file = write_site(tmp_path, libvirt={"uri": "qemu:///system"})
    _, runbook = write_runbook(tmp_path, targetPlatform="proxmox")
    res = cutover("validate", str(runbook), "--site", str(site_file))
    assert res.returncode == 2
    assert f"target platform 'proxmox' is not bound by site 'kvm-only' (it binds: {LEGACY})" in (
        res.stderr
    )


def test_the_seed_runbook_validates_against_a_site_that_binds_pextra_cloud(
    tmp_path: Path,
) -> None:
    binding = {"pextra-cloud": {"type": "libvirt", "uri": "qemu+ssh://pextra-01/system"}}
    site_file = write_site(tmp_path, targetPlatforms=binding)
    res = cutover("validate", str(EXAMPLE), "--site", str(site_file))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1 runbook(s) valid"


# ------------------------------------------------------------------ cutover run


async def test_run_refuses_an_unbound_platform_before_starting_anything(
    client: Client, temporal_server: DevServer, tmp_path: Path
) -> None:
    queue = f"plat-{uuid.uuid4().hex[:8]}"
    site_file = write_site(tmp_path, taskQueue=queue, **KVM_ONLY)
    app, runbook = write_runbook(tmp_path, rollbackWindowMinutes=0.05)
    world = World()
    async with build_worker(client, queue, activities=world.activities()):
        res = await asyncio.to_thread(
            cutover, "run", str(runbook), "--site", str(site_file), address=temporal_server.address
        )
    assert res.returncode == 2, res.stdout + res.stderr
    assert "target platform 'pextra-cloud' is not bound" in res.stderr
    assert "(it binds: kvm-libvirt)" in res.stderr
    with pytest.raises(RPCError) as missing:  # no workflow was started
        await client.get_workflow_handle(f"cutover-{app}").describe()
    assert missing.value.status == RPCStatusCode.NOT_FOUND
    assert world.calls == [] and world.check_calls == [] and world.guard_calls == []


# ------------------------------------------------------------------ the workflow


async def test_the_workflow_refuses_an_unbound_platform_from_the_ui_before_any_step(
    client: Client,
) -> None:
    # The Temporal UI's start form sends raw JSON, which no CLI has validated.
    world = World()
    queue = f"ui-{uuid.uuid4().hex[:8]}"
    raw = cutover_input(queue).model_dump(mode="json")
    raw["runbook"]["targetPlatform"] = "proxmox"
    app = raw["runbook"]["application"]
    async with build_worker(client, queue, activities=world.activities()):
        handle = await client.start_workflow(
            "AppCutover", raw, id=f"cutover-{app}", task_queue=queue
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), 30)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ConfigError"
    assert cause.non_retryable
    assert cause.message.startswith("invalid cutover input: runbook.targetPlatform: ")
    assert f"'proxmox' is not bound by site 'test' (it binds: {LEGACY})" in cause.message
    assert world.calls == [] and world.check_calls == [] and world.guard_calls == []


# ------------------------------------------------------------------ the models


def test_a_site_without_target_platforms_binds_its_libvirt_section_to_the_libvirt_family() -> None:
    legacy = SiteConfig.model_validate({"libvirt": {"uri": "qemu+ssh://kvm-01/system"}})
    assert legacy.bound_platforms() == ["kvm-libvirt", "libvirt", "pextra-cloud"]
    binding = legacy.target_binding("pextra-cloud")
    assert binding is not None and binding.uri == "qemu+ssh://kvm-01/system"
    assert legacy.target_binding("proxmox") is None and legacy.target_binding("openstack") is None


def test_bound_platforms_are_exactly_the_ones_listed_and_reach_the_site_libvirt() -> None:
    bound = SiteConfig.model_validate(
        {"targetPlatforms": {"proxmox": {"type": "libvirt", "uri": "qemu+ssh://pve/system"}}}
    )
    assert bound.bound_platforms() == ["proxmox"]
    # the libvirt adapter connects to `libvirt.uri`: a binding-only site gets it
    assert bound.libvirt is not None and bound.libvirt.uri == "qemu+ssh://pve/system"
    assert bound.platform_problem("kvm-libvirt") is not None
    assert bound.platform_problem("proxmox") is None


@pytest.mark.parametrize(
    ("site_data", "where", "says"),
    [
        ({"targetPlatforms": {"proxmox": {"uri": "x"}}}, ("targetPlatforms", "proxmox"), "`type`"),
        ({"targetPlatforms": {"proxmox": {"type": "ssh"}}}, ("targetPlatforms", "proxmox"), "ssh"),
        (
            {"targetPlatforms": {"vmware": {"type": "libvirt"}}},
            ("targetPlatforms", "vmware", "[key]"),
            "'proxmox'",
        ),
    ],
)
def test_a_binding_names_a_known_platform_and_an_implementation(
    site_data: dict[str, Any], where: tuple[str, ...], says: str
) -> None:
    with pytest.raises(ValidationError) as bad:
        SiteConfig.model_validate(site_data)
    [err] = bad.value.errors()
    assert err["loc"] == where and says in str(bad.value)


def test_load_balancer_and_dns_are_tagged_with_their_one_implementation() -> None:
    written_before = SiteConfig.model_validate(
        {
            "loadBalancer": {"socket": "/run/haproxy.sock"},
            "dns": {"server": "10.0.0.53", "zone": "example.com", "tsigKeyFile": "/k"},
        }
    )
    assert written_before.loadBalancer is not None and written_before.loadBalancer.type == "haproxy"
    assert written_before.dns is not None and written_before.dns.type == "rfc2136"
    for field, value, kind in (
        ("loadBalancer", {"type": "nginx", "socket": "/s"}, "haproxy"),
        ("dns", {"type": "route53", "server": "s", "zone": "z", "tsigKeyFile": "k"}, "rfc2136"),
    ):
        with pytest.raises(ValidationError) as bad:
            SiteConfig.model_validate({field: value})
        assert f"`type` must name an implementation: {kind}" in str(bad.value)


def test_every_path_to_a_cutover_refuses_an_unbound_platform(tmp_path: Path) -> None:
    runbook = Runbook.model_validate({**SEED, "targetPlatform": "openstack"})
    at = site(
        vcenter={"host": "vc", "user": "svc", "passwordRef": {"env": "UNUSED"}},
        loadBalancer={"socket": "/run/haproxy.sock"},
    )
    # the runbook file against the site (`validate --site`, `run`, `lower-ttl`, waves' files)
    path = tmp_path / "rb.yaml"
    path.write_text(yaml.safe_dump({**SEED, "targetPlatform": "openstack"}), encoding="utf-8")
    with pytest.raises(ConfigError) as bad_file:
        load_runbook(path, at, "site.yaml")
    assert [p.path for p in bad_file.value.problems] == ["targetPlatform"]
    # the workflow's input, built from models (`cutover run`, waves) or decoded
    with pytest.raises(ValidationError) as bad_input:
        CutoverInput(runbook=runbook, site=at)
    assert [e["loc"] for e in bad_input.value.errors()] == [("runbook", "targetPlatform")]
    # a wave's input: the application's field is named
    app = WaveApp(application=runbook.application, runbook=runbook)
    with pytest.raises(ValidationError) as bad_wave:
        WaveInput(name="w", site=at, apps=[app])
    assert "apps[0].runbook.targetPlatform" in str(bad_wave.value)
    assert f"(it binds: {LEGACY})" in str(bad_wave.value)


# ------------------------------------------------------------------ routing per binding

#: libvirt's test driver from a file: a private in-process host (no libvirtd), whose
#: `default` pool holds the one volume named in it.
HOST_B = """<node><pool type='dir'><name>default</name><target><path>/b</path></target>
<volume type='file'><name>{volume}</name><capacity>1048576</capacity>
<target><path>/b/{volume}</path></target></volume></pool></node>"""


def detach_input(at: SiteConfig, platform: str, app: str) -> StepInput:
    runbook = Runbook.model_validate({**SEED, "application": app, "targetPlatform": platform})
    facts = {per_disk(CONVERTED_PATH, "web-2000"): f"/staging/{app}.web-2000.qcow2"}
    ctx = StepContext(
        workflowId=f"cutover-{app}", application=app, wave="w", runbook=runbook, site=at,
        facts=facts,
    )  # fmt: skip
    return StepInput(step=Compensation.DETACH_TARGET_STORAGE, context=ctx)


def test_each_platform_bound_to_its_own_libvirt_uri_runs_against_that_uri(tmp_path: Path) -> None:
    app = unique_app("route")
    host_b = tmp_path / "b.xml"
    host_b.write_text(HOST_B.format(volume=volume_name(app, "web-2000", "qcow2")), "utf-8")
    uri_a, uri_b = "test:///default", f"test://{host_b}"
    # two platforms on two endpoints: a site may bind them so (no one-endpoint rule)
    at = site(
        targetPlatforms={
            "pextra-cloud": {"type": "libvirt", "uri": uri_a},
            "kvm-libvirt": {"type": "libvirt", "uri": uri_b},
        }
    )
    opened: list[str] = []

    def connect(uri: str) -> Any:  # the real connection, its URI recorded
        opened.append(uri)
        return open_connection(uri)

    target = LibvirtTarget(connect=connect)
    try:
        on_a = target.detach_target_storage(detach_input(at, "pextra-cloud", app))
        assert opened == [uri_a]
        assert not on_a.changed  # host A has no pool `default`: nothing of the app's there
        on_b = target.detach_target_storage(detach_input(at, "kvm-libvirt", app))
        assert opened == [uri_a, uri_b]
        assert on_b.changed and on_b.details["removed"] == f"default/{app}.web-2000.target.qcow2"
    finally:
        target.close()


def test_a_run_whose_platform_the_site_no_longer_binds_uses_the_site_libvirt_uri() -> None:
    # a run in flight when its binding went: the activity never refuses, validation does
    at = site(libvirt={"uri": "test:///default"})
    opened: list[str] = []

    def connect(uri: str) -> Any:
        opened.append(uri)
        return open_connection(uri)

    target = LibvirtTarget(connect=connect)
    try:
        target.detach_target_storage(detach_input(at, "proxmox", unique_app("route")))
    finally:
        target.close()
    assert opened == ["test:///default"]


def test_the_worker_runs_the_target_steps_on_the_platform_registered_for_the_binding_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Adding a platform is registering it under its binding's `type`: the shipped worker's
    # target activities reach whatever the registry holds for the runbook's binding.
    reached: list[tuple[str, str]] = []

    class Recorder:
        def __getattr__(self, step: str) -> Any:
            def run(inp: StepInput) -> StepResult:
                reached.append((step, inp.context.runbook.targetPlatform))
                return StepResult(step=inp.step)

            return run

    monkeypatch.setitem(registry.TARGET_PLATFORMS, "libvirt", Recorder)
    by_name = {a.__name__: a for a in default_activities()}
    at = site(targetPlatforms={"pextra-cloud": {"type": "libvirt", "uri": "test:///default"}})
    for step in sorted(TARGET_STEPS):
        by_name[step](detach_input(at, "pextra-cloud", unique_app("reg")))
    assert reached == [(step, "pextra-cloud") for step in sorted(TARGET_STEPS)]
    assert len([n for n in by_name if n in TARGET_STEPS]) == len(TARGET_STEPS)


TARGET_STEPS = {
    Step.ATTACH_TARGET_STORAGE_PROFILE,
    Step.VALIDATE_GUEST_TOOLS_AND_DRIVERS,
    Step.POWER_ON_TARGET,
    Compensation.DETACH_TARGET_STORAGE,
    Compensation.REMOVE_TARGET_DOMAIN,
    Compensation.FENCE_TARGET,
    Compensation.UNFENCE_TARGET,
}
