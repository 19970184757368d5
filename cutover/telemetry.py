"""Traces and metrics for workers and workflows.

Traces: OpenTelemetry spans for every workflow and activity, through Temporal's tracing
interceptor, linked into one trace per cutover (the workflow's span parents its activities').
CUTOVER_OTEL_EXPORTER: `none` (default), `console`, or `otlp` (OTLP/HTTP; the endpoint comes
from the standard OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT variables,
default http://localhost:4318).

Metrics: the Temporal SDK's Prometheus endpoint on the worker (`/metrics`), off unless
CUTOVER_METRICS_ADDRESS (or `cutover worker --metrics-address`) names HOST:PORT to bind.
Besides the SDK's own metrics it carries ours, recorded by the workflow when a cutover ends
(replay-safe, through workflow.metric_meter()); the names are in `cutover.metrics`.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

# The metric names live in the domain: the workflow records them without loading the SDK.
from cutover.metrics import DOWNTIME, DOWNTIME_BUCKETS

_configured = False


def exporter_from_env() -> SpanExporter | None:
    kind = os.environ.get("CUTOVER_OTEL_EXPORTER", "none").lower()
    if kind not in ("none", "console", "otlp"):
        raise ValueError(f"CUTOVER_OTEL_EXPORTER={kind!r}: expected one of none, console, otlp")
    if kind == "console":
        return ConsoleSpanExporter()
    if kind == "otlp":
        # here, not at the top: only when asked for (it loads protobuf and requests)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    return None


def tracer_provider(exporter: SpanExporter | None) -> TracerProvider:
    """A provider for service `cutover` exporting (batched) to `exporter`, if any."""
    provider = TracerProvider(resource=Resource.create({"service.name": "cutover"}))
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def tracing_interceptor(provider: TracerProvider | None = None) -> TracingInterceptor:
    """The interceptor for workers and clients. Without `provider`, the process-wide one,
    configured once from CUTOVER_OTEL_EXPORTER; tests pass their own (in-memory export)."""
    global _configured
    if provider is None and not _configured:
        trace.set_tracer_provider(tracer_provider(exporter_from_env()))
        _configured = True
    tracer = (provider or trace.get_tracer_provider()).get_tracer("cutover")
    # Workflows started from the Temporal UI or a Schedule carry no parent span: trace them too.
    return TracingInterceptor(tracer, always_create_workflow_spans=True)


def flush() -> None:
    """Export the spans ended so far (a short-lived CLI process must not lose them)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(5_000)


def shutdown() -> None:
    """Flush and stop the tracer provider (the batch processor holds the last spans)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def metrics_runtime(address: str) -> Runtime:
    """A Temporal runtime serving Prometheus metrics on http://ADDRESS/metrics.

    Clients (and so workers) built on it report there; one per process is enough. Each
    Runtime owns its own core threads: do not replace the default one for other clients.
    """
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=address,
                histogram_bucket_overrides={DOWNTIME: DOWNTIME_BUCKETS},
            )
        )
    )


def metrics_address(flag: str | None) -> str | None:
    """The metrics bind address: the flag, else CUTOVER_METRICS_ADDRESS; None means off."""
    value = flag if flag is not None else os.environ.get("CUTOVER_METRICS_ADDRESS", "")
    value = value.strip()
    if not value or value.lower() in ("off", "none"):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"metrics address {value!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    return value if host else f"0.0.0.0:{port}"
