"""The CLI signs the starts it sends (issue 13): `cutover run`, `run --print-input`, `wave run`
and `schedule create` with `--key FILE` or `$CUTOVER_KEY`, against a real Temporal server
and a worker whose site requires signatures. Unsigned starts are refused by the workflow
(the CLI warns); signed ones run, recorded as started by the key's principal."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError

from cutover.catalog import BUILTIN_CHECKS
from cutover.keyfiles import create_key
from cutover.models import CutoverInput, CutoverResult, Outcome
from cutover.wave import WaveInput, WaveOutcome, WaveResult
from tests.conftest import DevServer
from tests.factories import SEED, unique_app
from tests.site_refs import serve
from tests.world import World
from workers.worker import build_worker

CUTOVER = str(Path(sys.executable).parent / "cutover")
ROOT = str(Path(__file__).resolve().parents[1])


def cli(server: DevServer, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH: this checkout's packages, also when another one is installed editable
    full = {k: v for k, v in os.environ.items() if k != "CUTOVER_KEY"}
    full |= {"TEMPORAL_ADDRESS": server.address, "PYTHONPATH": ROOT, **env}
    return subprocess.run(
        [CUTOVER, *args], capture_output=True, text=True, env=full, timeout=60, check=False
    )


async def acli(server: DevServer, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, server, *args, **env)


def write_site(tmp: Path, queue: str, apps: list[str]) -> tuple[str, str]:
    """A site whose access policy requires signatures (retail's operator `alice`, the
    same-tenant rule) and a runbook per app; returns (site file, alice's key file)."""
    key, _, public = create_key("alice", tmp / "keys")
    checks = {n: {"type": "command", "argv": ["true"]} for n in BUILTIN_CHECKS}
    site = {
        "name": "signed-start-test",
        "taskQueue": queue,
        "checks": checks,
        "loadBalancer": {"socket": str(tmp / "haproxy.sock")},
        "vcenter": {"host": "127.0.0.1", "user": "svc", "passwordRef": {"env": "UNUSED"}},
        "applications": {a: {"labels": {"tenant": "retail"}} for a in apps},
        "access": {
            "principals": {
                "alice": {"publicKey": public, "roles": ["operator"], "tenant": "retail"}
            },
            "rules": [
                {"effect": "allow", "actions": ["start"], "principal": {"tenant": "$app.tenant"}}
            ],
        },
    }
    for a in apps:
        rb = {**SEED, "application": a, "rollbackWindowMinutes": 0.01, "checkIntervalSeconds": 0.3}
        (tmp / f"{a}.yaml").write_text(yaml.safe_dump(rb))
    (tmp / "site.yaml").write_text(yaml.safe_dump(site))
    return serve(str(tmp / "site.yaml")), str(key)


def write_wave(tmp: Path, apps: list[str]) -> tuple[str, str]:
    """A wave of `apps` (their runbooks written by write_site): (name, file)."""
    name = f"signed-{uuid.uuid4().hex[:6]}"
    wave = {"wave": name, "applications": [{"runbook": f"{a}.yaml"} for a in apps]}
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(wave))
    return name, str(tmp / f"{name}.yaml")


async def test_cli_run_signs_its_start_with_the_key_and_unsigned_is_refused(
    client: Client, temporal_server: DevServer, tmp_path: Path
) -> None:
    queue = f"signed-{uuid.uuid4().hex[:8]}"
    app = unique_app("signed")
    site, key = write_site(tmp_path, queue, [app])
    runbook = str(tmp_path / f"{app}.yaml")
    async with build_worker(client, queue, activities=World().activities()):
        unsigned = await acli(temporal_server, "run", runbook, "--site", site)
        assert unsigned.returncode == 0, unsigned.stderr
        assert "warning: the start is not signed" in unsigned.stderr
        assert "--key FILE" in unsigned.stderr and "$CUTOVER_KEY" in unsigned.stderr
        handle = client.get_workflow_handle(f"cutover-{app}", result_type=CutoverResult)
        with pytest.raises(WorkflowFailureError) as refused:
            await asyncio.wait_for(handle.result(), 30)
        assert "start refused: unsigned" in str(refused.value.cause)

        # $CUTOVER_KEY, as --key: the key's principal starts it and is recorded
        signed = await acli(temporal_server, "run", runbook, "--site", site, "--wait", "--json",
                            CUTOVER_KEY=key)  # fmt: skip
        assert signed.returncode == 0, signed.stderr
        assert "not signed" not in signed.stderr
        assert json.loads(signed.stdout)["outcome"] == Outcome.COMPLETED.value
        desc = await handle.describe()
        sent = CutoverInput.model_validate(
            json.loads(await _first_input(client, desc.id, desc.run_id))
        )
        assert sent.signature is not None and sent.signature.signer == "alice"
        assert sent.requestedBy == "alice" and sent.site is None and sent.siteRef is not None


async def _first_input(client: Client, wf_id: str, run_id: str | None) -> str:
    """The start's input as the history holds it (JSON)."""
    history = await client.get_workflow_handle(wf_id, run_id=run_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    return started.input.payloads[0].data.decode()


async def test_cli_print_input_with_a_key_prints_a_signed_start_the_ui_form_takes(
    client: Client, raw_client: Client, temporal_server: DevServer, tmp_path: Path
) -> None:
    queue = f"signed-{uuid.uuid4().hex[:8]}"
    app = unique_app("signed")
    site, key = write_site(tmp_path, queue, [app])
    runbook = str(tmp_path / f"{app}.yaml")
    # no server needed: it starts nothing
    res = await acli(temporal_server, "run", runbook, "--site", site, "--print-input",
                     "--key", key, TEMPORAL_ADDRESS="127.0.0.1:1")  # fmt: skip
    assert res.returncode == 0, res.stderr
    printed = json.loads(res.stdout)
    assert printed["signature"]["signer"] == "alice" and printed["requestedBy"] == "alice"
    assert "signed by alice, start it before" in res.stderr
    # started as the UI starts it: the JSON as is, by workflow type name
    async with build_worker(client, queue, activities=World().activities()):
        handle = await raw_client.start_workflow(
            "AppCutover", printed, id=f"cutover-{app}", task_queue=queue, result_type=CutoverResult
        )
        result = await asyncio.wait_for(handle.result(), 30)
        assert result.outcome == Outcome.COMPLETED, result.reason
        # the signature covers the whole input: an edited one is refused
        edited = {**printed, "runbook": {**printed["runbook"], "rollbackWindowMinutes": 5}}
        again = await raw_client.start_workflow(
            "AppCutover", edited, id=f"cutover-{app}", task_queue=queue, result_type=CutoverResult
        )
        with pytest.raises(WorkflowFailureError) as refused:
            await asyncio.wait_for(again.result(), 30)
        assert "bad signature by 'alice'" in str(refused.value.cause)


async def test_cli_wave_run_and_schedule_create_sign_the_wave_start(
    client: Client, temporal_server: DevServer, tmp_path: Path
) -> None:
    queue = f"signed-{uuid.uuid4().hex[:8]}"
    names = [unique_app("sw") for _ in range(4)]
    site, key = write_site(tmp_path, queue, names)
    _, wave = write_wave(tmp_path, names[:2])
    name, scheduled = write_wave(tmp_path, names[2:])  # their own apps: not migrated yet
    async with build_worker(client, queue, activities=World().activities()):
        unsigned = await acli(temporal_server, "wave", "run", wave, "--site", site, "--wait")
        assert unsigned.returncode == 1
        assert "warning: the start is not signed" in unsigned.stderr
        assert "start refused: unsigned" in unsigned.stderr, unsigned.stderr

        res = await acli(temporal_server, "wave", "run", wave, "--site", site, "--key", key,
                         "--wait", "--json")  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["outcome"] == WaveOutcome.COMPLETED.value

        # a schedule's runs start with the signature made when it was created
        before = datetime.now(UTC)
        res = await acli(temporal_server, "schedule", "create", scheduled, "--site", site,
                         "--cron", "0 3 1 1 *", "--key", key, "--valid-days", "2",
                         "--json")  # fmt: skip
        assert res.returncode == 0, res.stderr
        made = json.loads(res.stdout)
        assert made["signedBy"] == "alice"
        until = datetime.fromisoformat(made["startValidUntil"])
        assert timedelta(days=2) <= until - before < timedelta(days=2, minutes=1)
        sched = client.get_schedule_handle(f"wave-{name}")
        desc = await sched.describe()
        end = desc.schedule.spec.end_at
        assert end is not None and end < until  # no run starts with an expired signature
        res = await acli(temporal_server, "schedule", "trigger", name)
        assert res.returncode == 0, res.stderr
        async with asyncio.timeout(30):
            while not (await sched.describe()).info.recent_actions:
                await asyncio.sleep(0.1)
        action = (await sched.describe()).info.recent_actions[-1].action
        run_id = getattr(action, "workflow_id", "")
        assert run_id.startswith(f"wave-{name}-")  # not the ID it was signed for: the base
        run = client.get_workflow_handle(run_id, result_type=WaveResult)
        assert (await asyncio.wait_for(run.result(), 60)).outcome == WaveOutcome.COMPLETED
        sent = WaveInput.model_validate(json.loads(await _first_input(client, run_id, None)))
        assert sent.startValidUntil == until and sent.signature is not None
        await sched.delete()


async def test_cli_run_refuses_early_a_start_the_access_policy_refuses(
    client: Client, temporal_server: DevServer, tmp_path: Path
) -> None:
    """The CLI runs the workflow's own access check before it sends the start: a signer the
    site does not allow is told why (exit 2) and nothing starts."""
    queue = f"signed-{uuid.uuid4().hex[:8]}"
    app = unique_app("early")
    site, _ = write_site(tmp_path, queue, [app])
    mallory, _, _ = create_key("mallory", tmp_path / "other-keys")
    res = await acli(temporal_server, "run", str(tmp_path / f"{app}.yaml"), "--site", site,
                     "--key", str(mallory))  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "start refused by the access policy of site signed-start-test" in res.stderr
    assert "'mallory' may not start" in res.stderr and "not a principal" in res.stderr
    with pytest.raises(RPCError):
        await client.get_workflow_handle(f"cutover-{app}").describe()
