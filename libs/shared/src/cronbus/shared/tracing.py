"""OpenTelemetry setup and W3C trace context carried in NATS headers.

A publisher injects `traceparent`/`tracestate` into the message headers; a consumer
extracts them and starts its span as a child, so one run is one trace across services.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
_configured = False
_exporting = False


class CountingExporter(SpanExporter):
    """Forwards to `inner` and counts the spans it could not deliver (a collector that is down
    costs dropped spans, never a slower service: export runs on the processor's thread)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.exported = 0
        self.dropped = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:  # an exporter must never raise into the SDK's worker
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.dropped += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


# The OTLP exporter of this process, when one is configured (its counts feed the metrics).
otlp: CountingExporter | None = None


def otlp_wanted(environ: Mapping[str, str]) -> bool:
    """The standard variables ask for OTLP: an endpoint is set and the exporter is not "none"."""
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").lower() in ("none", ""):
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def setup_tracing(service: str, instance_id: str) -> None:
    """Install a tracer provider once per process. Context propagates always; spans are
    exported over OTLP/HTTP when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
    `..._TRACES_ENDPOINT`) is set -- the exporter reads the other `OTEL_*` variables itself
    (headers, timeout, protocol paths) -- and printed with CRONBUS_TRACE_CONSOLE=1.
    `OTEL_SERVICE_NAME` overrides the service name `cronbus-<service>`."""
    global _configured, otlp
    if _configured:
        return
    _configured = True
    attributes = {"service.name": f"cronbus-{service}", "service.instance.id": instance_id}
    if os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = os.environ["OTEL_SERVICE_NAME"]
    provider = TracerProvider(resource=Resource.create(attributes))
    global _exporting
    _exporting = otlp_wanted(os.environ) or os.environ.get("CRONBUS_TRACE_CONSOLE") == "1"
    if otlp_wanted(os.environ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        otlp = CountingExporter(OTLPSpanExporter())
        provider.add_span_processor(BatchSpanProcessor(otlp))
    if os.environ.get("CRONBUS_TRACE_CONSOLE") == "1":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    propagate.set_global_textmap(_propagator)


def exporting() -> bool:
    """Whether this process sends spans anywhere (OTLP or the console)."""
    return _exporting


def new_trace_headers() -> dict[str, str]:
    """Headers that start a new trace without a span object: a fresh W3C `traceparent` (trace
    and parent ids random, sampled). For work that must carry a trace id of its own even when
    no span is exported, at the cost of a couple of random numbers."""
    trace_id = random.getrandbits(128) or 1
    span_id = random.getrandbits(64) or 1
    return {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-01"}


def trace_id_of(headers: Mapping[str, str] | None) -> str | None:
    """The trace id a message's `traceparent` names, as 32 hex digits (None without one)."""
    parent = (headers or {}).get("traceparent", "")
    parts = parent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


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
