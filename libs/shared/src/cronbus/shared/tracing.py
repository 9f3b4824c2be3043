"""OpenTelemetry setup and W3C trace context carried in NATS headers.

A publisher injects `traceparent`/`tracestate` into the message headers; a consumer
extracts them and starts its span as a child, so one run is one trace across services.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
_configured = False


def setup_tracing(service: str, instance_id: str) -> None:
    """Install a tracer provider once per process. Spans are exported only when asked
    (CRONBUS_TRACE_CONSOLE=1 prints them); context still propagates either way."""
    global _configured
    if _configured:
        return
    _configured = True
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"cronbus-{service}", "service.instance.id": instance_id})
    )
    if os.environ.get("CRONBUS_TRACE_CONSOLE") == "1":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    propagate.set_global_textmap(_propagator)


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """`headers` plus the current span's trace context (when there is one)."""
    out = dict(headers or {})
    _propagator.inject(out)
    return out


def extract_context(headers: Mapping[str, str] | None) -> context.Context:
    """The trace context a message carries, to parent a consumer's span on."""
    return _propagator.extract(dict(headers or {}))
