"""Spans leave over OTLP/HTTP when the standard OTEL_* variables say so, and one run's spans
chain across services: scheduler dispatch -> runner run (child) -> projection (linked).

A real OTLP/HTTP receiver (a small server decoding the protobuf export requests) listens on
loopback; `cronbus up` runs with OTEL_EXPORTER_OTLP_ENDPOINT pointing at it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from cronbus.shared.tracing import CountingExporter, otlp_wanted
from tests.support import running_up_async, wait_for

pytestmark = pytest.mark.slow


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    links: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Receiver:
    spans: list[Span] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                body = await reader.readexactly(length)
                if head.startswith(b"POST /v1/traces"):
                    self.take(body)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    self.spans.append(
                        Span(
                            service=attrs.get("service.name", ""),
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                        )
                    )


def chains(spans: list[Span]) -> list[tuple[Span, Span, Span]]:
    """(dispatch, run, projection) triples: the run is a child of the dispatch, and a
    projection of RUNS links to the run."""
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    linked_from: dict[tuple[str, str], list[Span]] = defaultdict(list)
    for s in spans:
        for link in s.links:
            linked_from[link].append(s)
    found = []
    for run in spans:
        if run.service != "cronbus-runner" or run.name != "run":
            continue
        parent = by_id.get((run.trace_id, run.parent_id))
        if parent is None or parent.service != "cronbus-scheduler":
            continue
        for projection in linked_from.get((run.trace_id, run.span_id), []):
            if projection.service == "cronbus-logs":
                found.append((parent, run, projection))
    return found


async def test_one_run_is_one_chain_of_spans_at_an_otlp_receiver(tmp_path: Path) -> None:
    receiver = Receiver()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    endpoint = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    job = {"name": "traced", "schedule": "* * * * * *", "executor": {"type": "shell", "command": "echo hi"}}
    try:
        async with (
            running_up_async(
                tmp_path / "data", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_BSP_SCHEDULE_DELAY="200"
            ) as state,
            httpx.AsyncClient(
                base_url=state["api_url"],
                headers={"Authorization": f"Bearer {state['admin_key']}"},
                timeout=10,
            ) as client,
        ):
            assert (await client.post("/v1/jobs", json=job)).status_code == 201
            found = await wait_for(
                lambda: chains(receiver.spans), timeout=60, what="a dispatch-run-projection chain"
            )
            # The run's answer names its trace: the trace of a runner span at the receiver.
            job_id = (await client.get("/v1/jobs")).json()["items"][0]["id"]
            runs = (await client.get(f"/v1/jobs/{job_id}/runs")).json()["items"]
            run_id = next(r["id"] for r in runs if r["status"] == "succeeded")
            trace_id = (await client.get(f"/v1/runs/{run_id}")).json()["trace_id"]
            assert trace_id and len(trace_id) == 32
            await wait_for(
                lambda: any(s.trace_id == trace_id and s.name == "run" for s in receiver.spans),
                timeout=30,
                what="the run's trace at the receiver",
            )
    finally:
        server.close()
    dispatch, _, projection = found[0]
    assert dispatch.name == "scheduler.dispatch" and projection.name.startswith("logs.project")
    # One run, one trace: every dispatch starts a trace of its own.
    dispatches = [s for s in receiver.spans if s.name == "scheduler.dispatch"]
    assert len({s.trace_id for s in dispatches}) == len(dispatches)
    assert all(not s.parent_id for s in dispatches)
    assert {s.service for s in receiver.spans} >= {"cronbus-scheduler", "cronbus-runner", "cronbus-logs"}


def test_otlp_follows_the_standard_variables() -> None:
    assert not otlp_wanted({})
    assert otlp_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert otlp_wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert not otlp_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"})
    assert not otlp_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"})


def test_a_collector_that_is_down_costs_dropped_spans_not_time() -> None:
    import time

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from cronbus.shared.natsd import free_port

    counting = CountingExporter(
        OTLPSpanExporter(endpoint=f"http://127.0.0.1:{free_port()}/v1/traces", timeout=1)
    )
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(counting, schedule_delay_millis=50))
    tracer = provider.get_tracer("test")
    began = time.monotonic()
    for i in range(200):
        with tracer.start_as_current_span(f"s{i}"):
            pass
    assert time.monotonic() - began < 1.0  # creating spans never waits on the exporter
    provider.force_flush(timeout_millis=20_000)
    provider.shutdown()
    assert counting.dropped > 0 and counting.exported == 0
