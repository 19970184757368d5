"""Logs, traces and metrics of a cutover, against the real Temporal dev server."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio import activity, workflow
from temporalio.client import Client

from cutover import logs, telemetry
from cutover.audit import audit, to_json
from cutover.models import CutoverInput, Outcome
from cutover.temporal import connect
from tests.conftest import DevServer, free_port
from tests.factories import cutover_input, site
from tests.site_refs import SiteByReference
from tests.test_workflow import running, start
from tests.world import World
from workers.worker import build_worker

ROOT = Path(__file__).resolve().parents[1]
VC_SECRET = "vc-Pa55w0rd-" + uuid.uuid4().hex
TSIG_SECRET = "dHNpZy1zZWNyZXQt" + uuid.uuid4().hex[:16] + "=="


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """logs.configure() (as the worker does), at DEBUG, into a buffer; restored after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    wf_info, act_info = (
        workflow.logger.workflow_info_on_message,
        activity.logger.activity_info_on_message,
    )
    logs.configure("DEBUG")
    buf = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buf)
    try:
        yield buf
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()
        workflow.logger.workflow_info_on_message = wf_info
        activity.logger.activity_info_on_message = act_info


def secret_input(queue: str, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> CutoverInput:
    monkeypatch.setenv("CUTOVER_TEST_VC_PASSWORD", VC_SECRET)
    key = tmp / "tsig.key"
    key.write_text(f'key "cutover." {{ algorithm hmac-sha256; secret "{TSIG_SECRET}"; }};\n')
    inp = cutover_input(queue)
    with_secrets = site(
        taskQueue=queue,
        vcenter={
            "host": "vc.example",
            "user": "svc",
            "passwordRef": {"env": "CUTOVER_TEST_VC_PASSWORD"},
        },
        dns={"server": "127.0.0.1", "zone": "example.", "tsigKeyFile": str(key)},
    )
    return inp.model_copy(update={"site": with_secrets})


async def test_logs_are_bound_to_the_cutover_and_no_secret_reaches_logs_or_history(
    client: Client,
    captured_logs: io.StringIO,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = World(fail={"smoke_test"})
    async with running(client, world) as queue:
        inp = secret_input(queue, tmp_path, monkeypatch)
        handle = await start(client, inp)
        result = await handle.result()
    assert result.outcome == Outcome.ROLLED_BACK
    text = captured_logs.getvalue()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    app, wf, run = inp.runbook.application, handle.id, handle.result_run_id
    mine = [e for e in lines if e.get("workflow_id") == wf]
    assert mine, text[:2000]
    ours = {
        "activity started",
        "activity completed",
        "activity failed",
        "cutover started",
        "step failed",
        "rolling back",
        "cutover finished",
        "test step ran",
    }
    # every line we log for this cutover, workflow or activity, names its run, app, wave
    assert {e["event"] for e in mine} >= ours
    for e in mine:
        assert e["run_id"] == run, e
        if e["event"] in ours:
            assert e["application"] == app, e
    acts = [e for e in mine if e["event"] in ("activity completed", "activity failed")]
    steps = {e["step"] for e in acts}
    assert {"quiesce_application", "smoke_test", "restart_source", "dns_ttl_lowered"} <= steps
    for e in acts:
        assert e["attempt"] >= 1 and e["level"] in ("info", "warning")
        if e["activity"] != "run_check":
            assert e["wave"] == "2" and e["step"] == e["activity"]
    # an adapter's own line (activities.common.log()) inherits the same context
    ran = next(e for e in mine if e["event"] == "test step ran" and e["step"] == "smoke_test")
    assert (ran["application"], ran["wave"], ran["attempt"]) == (app, "2", 1)
    failed = next(e for e in acts if e["step"] == "smoke_test")
    assert failed["event"] == "activity failed" and "broke (test)" in failed["error"]
    events = {e["event"]: e for e in mine if "activity" not in e}
    assert events["cutover started"]["wave"] == "2"
    assert events["cutover started"]["requested_by"] == "pytest"
    assert events["step failed"]["step"] == "smoke_test"
    assert events["rolling back"]["reason"].startswith("step smoke_test failed")
    assert events["cutover finished"]["outcome"] == "ROLLED_BACK"
    # the secrets: referenced in the input, resolved by nobody here, found nowhere
    fetched = await handle.fetch_history()
    # The JSON form base64-encodes payloads: search the raw event bytes too, where every
    # payload's data (inputs, results, update arguments, failures) is plain.
    history_json = fetched.to_json()
    raw = b"".join(e.SerializeToString() for e in fetched.events)
    assert b"CUTOVER_TEST_VC_PASSWORD" in raw and b"tsig.key" in raw  # references only
    report = to_json(await audit(client, handle.id))
    for secret in (VC_SECRET, TSIG_SECRET):
        assert secret not in text
        assert secret not in history_json
        assert secret.encode() not in raw
        assert secret not in report


def test_redaction_of_secret_looking_fields(captured_logs: io.StringIO) -> None:
    logs.get_logger("t").info("connecting", password="hunter2", tsig_key="k", host="vc")
    line = json.loads(captured_logs.getvalue().splitlines()[-1])
    assert line["password"] == line["tsig_key"] == "[redacted]" and line["host"] == "vc"
    assert "hunter2" not in captured_logs.getvalue()


async def test_spans_of_the_workflow_and_its_activities_form_one_trace(client: Client) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = telemetry.tracing_interceptor(provider)
    config = client.config()  # the session client's connection, plus tracing
    config["interceptors"] = [SiteByReference(), tracing]
    starter = Client(**config)
    world = World()
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    async with build_worker(client, queue, activities=world.activities(), interceptors=[tracing]):
        inp = cutover_input(queue, dataSync={"warm": False})
        handle = await start(starter, inp)
        assert (await handle.result()).outcome == Outcome.COMPLETED
    spans = exporter.get_finished_spans()
    names = [s.name for s in spans]
    assert "StartWorkflow:AppCutover" in names
    assert "RunWorkflow:AppCutover" in names
    for step in ("quiesce_application", "update_load_balancer", "mark_source_migrated"):
        assert f"StartActivity:{step}" in names and f"RunActivity:{step}" in names
    assert names.count("RunActivity:run_check") >= 4
    assert len({s.context.trace_id for s in spans if s.context}) == 1  # one trace
    by_id = {s.context.span_id: s for s in spans if s.context}
    run_act = next(s for s in spans if s.name == "RunActivity:quiesce_application")
    assert run_act.parent is not None
    assert by_id[run_act.parent.span_id].name == "StartActivity:quiesce_application"
    root = next(s for s in spans if s.name == "StartWorkflow:AppCutover")
    assert root.parent is None
    assert (root.attributes or {}).get("temporalWorkflowID") == handle.id


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_spans_are_exported_over_otlp_http_when_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("CUTOVER_OTEL_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        provider = telemetry.tracer_provider(telemetry.exporter_from_env())
        with provider.get_tracer("t").start_as_current_span("RunActivity:otlp_probe"):
            pass
        assert provider.force_flush(10_000)
        provider.shutdown()
    finally:
        server.shutdown()
    [(path, ctype, body)] = _Collector.received
    assert path == "/v1/traces" and ctype == "application/x-protobuf"
    assert b"RunActivity:otlp_probe" in body and b"cutover" in body  # span and service name
    monkeypatch.setenv("CUTOVER_OTEL_EXPORTER", "jaeger")
    with pytest.raises(ValueError, match="none, console, otlp"):
        telemetry.exporter_from_env()


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def sample(metrics: str, name: str, **labels: str) -> float | None:
    """The value of the sample of `name` whose labels include `labels`."""
    for line in metrics.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    return None


async def test_prometheus_endpoint_has_sdk_and_cutover_metrics(
    temporal_server: DevServer,
) -> None:
    address = f"127.0.0.1:{free_port()}"
    # Its own Runtime and client: the session client's default runtime stays untouched.
    mclient = await connect(
        temporal_server.address,
        runtime=telemetry.metrics_runtime(address),
        interceptors=[SiteByReference()],
    )
    world = World(
        bytes_moved={"pre_copy": 5000, "incremental_sync": 300, "final_data_sync": 20},
        details={"commit_target_overlay": {"targetWrittenBytes": 4096}},
    )
    broken = World(fail={"convert_image"}, bytes_moved={"pre_copy": 7})
    wave = f"{uuid.uuid4().int % 10_000 + 100}"
    async with running(mclient, world) as queue, running(mclient, broken) as queue2:
        ok = cutover_input(queue, wave=int(wave))
        bad = cutover_input(queue2, wave=int(wave))
        results = await asyncio.gather(
            (await start(mclient, ok)).result(), (await start(mclient, bad)).result()
        )
    assert [r.outcome for r in results] == [Outcome.COMPLETED, Outcome.ROLLED_BACK]
    metrics = await asyncio.to_thread(scrape, address)
    assert sample(metrics, "cutover_cutovers", outcome="COMPLETED", wave=wave) == 1, metrics
    assert sample(metrics, "cutover_cutovers", outcome="ROLLED_BACK", wave=wave) == 1
    assert sample(metrics, "cutover_cutovers", workflow_type="AppCutover", task_queue=queue) == 1
    assert sample(metrics, "cutover_bytes_moved", outcome="COMPLETED", wave=wave) == 5320
    assert sample(metrics, "cutover_bytes_moved", outcome="ROLLED_BACK", wave=wave) == 7
    # what the target wrote in its window, merged at finalize
    assert (
        sample(metrics, "cutover_target_written_bytes", outcome="COMPLETED", fate="kept") == 4096
    ), metrics
    down = results[0].downtimeSeconds
    assert down is not None and down < 1
    assert sample(metrics, "cutover_downtime_seconds_count", outcome="COMPLETED", wave=wave) == 1
    total = sample(metrics, "cutover_downtime_seconds_sum", outcome="COMPLETED", wave=wave)
    assert total == pytest.approx(down)
    assert sample(metrics, "cutover_downtime_seconds_bucket", outcome="COMPLETED", le="1") == 1
    # and the SDK's own metrics, e.g. workflows completed and activity latencies
    assert "temporal_workflow_completed" in metrics
    assert "temporal_activity_execution_latency" in metrics


def test_metrics_address_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUTOVER_METRICS_ADDRESS", raising=False)
    assert telemetry.metrics_address(None) is None
    monkeypatch.setenv("CUTOVER_METRICS_ADDRESS", "127.0.0.1:9464")
    assert telemetry.metrics_address(None) == "127.0.0.1:9464"
    assert telemetry.metrics_address("off") is None
    assert telemetry.metrics_address(":9100") == "0.0.0.0:9100"
    with pytest.raises(ValueError, match="HOST:PORT"):
        telemetry.metrics_address("9464x")


async def test_worker_command_serves_metrics(temporal_server: DevServer, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "TEMPORAL_ADDRESS": temporal_server.address}
    log = tmp_path / "worker.log"
    (tmp_path / "site.yaml").write_text("name: metrics\n")
    with log.open("wb") as err:
        worker = subprocess.Popen(
            [sys.executable, "-m", "cutover.cli", "worker", "--site", str(tmp_path / "site.yaml"),
             "--task-queue",
             f"m-{uuid.uuid4().hex[:6]}", "--metrics-address", address],
            stderr=err,
            stdout=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            while b"worker started" not in log.read_bytes():
                assert worker.poll() is None, log.read_text()
                await asyncio.sleep(0.1)
        metrics = await asyncio.to_thread(scrape, address)
        assert "temporal_" in metrics
        started = next(
            json.loads(line) for line in log.read_text().splitlines() if "worker started" in line
        )
        assert started["metrics_address"] == address
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(20)
