"""OpenTelemetry tracing for workflows and activities, through Temporal's interceptor.

CUTOVER_OTEL_EXPORTER: `none` (default), `console`, or `otlp` (OTLP/HTTP; the endpoint comes
from the standard OTEL_EXPORTER_OTLP_ENDPOINT variable).
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from temporalio.contrib.opentelemetry import TracingInterceptor

_configured = False


def tracing_interceptor() -> TracingInterceptor:
    global _configured
    if not _configured:
        kind = os.environ.get("CUTOVER_OTEL_EXPORTER", "none").lower()
        if kind not in ("none", "console", "otlp"):
            raise ValueError(f"CUTOVER_OTEL_EXPORTER={kind!r}: expected one of none, console, otlp")
        provider = TracerProvider(resource=Resource.create({"service.name": "cutover"}))
        exporter: SpanExporter | None = None
        if kind == "console":
            exporter = ConsoleSpanExporter()
        elif kind == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _configured = True
    # Workflows started from the Temporal UI or a Schedule carry no parent span: trace them too.
    return TracingInterceptor(always_create_workflow_spans=True)


def shutdown() -> None:
    """Flush and stop the tracer provider (the batch processor holds the last spans)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
