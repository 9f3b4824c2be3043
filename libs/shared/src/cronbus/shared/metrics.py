"""Prometheus metrics: what every service exposes at `/metrics` (docs/observability.md).

The metrics live in prometheus_client's process registry, as that library intends; a process
running several services (`cronbus up` runs the scheduler beside the API) reports them all at
one endpoint. The API serves `/metrics` on its own port; the scheduler, runner and logs
services serve it on `CRONBUS_METRICS_PORT` when that is set (`cronbus up` sets it for its
child processes and writes where in `cronbus.json`).

Names and units follow Prometheus conventions: base units (seconds, bytes), `_total` for
counters, labels with small fixed value sets (never a job or run id).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily
from prometheus_client.registry import Collector

from cronbus.shared.runtime import StartupError

log = logging.getLogger(__name__)

# Lateness and durations: from a millisecond to an hour.
_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

# --- scheduler --------------------------------------------------------------------------------
DISPATCH_LATENESS = Histogram(
    "cronbus_dispatch_lateness_seconds",
    "How long after its fire time (slot plus jitter) a slot was published to DISPATCH.",
    buckets=_SECONDS,
)
SLOTS = Counter(
    "cronbus_slots_total",
    "Slots the leading scheduler decided on, by outcome (dispatched, skipped, missed) and reason.",
    ["outcome", "reason"],
)
LEASE_HELD = Gauge("cronbus_scheduler_lease_held", "1 while this scheduler holds the lease and may publish.")
LEASE_CHANGES = Counter(
    "cronbus_scheduler_lease_changes_total",
    "Terms this scheduler began or ended, by what happened.",
    ["change"],
)
WATERMARK_AGE = Gauge(
    "cronbus_scheduler_watermark_age_seconds", "How far the persisted watermark is behind now (leader only)."
)

# --- runner -----------------------------------------------------------------------------------
RUNS = Counter("cronbus_runs_total", "Finished run attempts, by outcome and pool.", ["outcome", "pool"])
RUN_DURATION = Histogram(
    "cronbus_run_duration_seconds", "How long run attempts took, by pool.", ["pool"], buckets=_SECONDS
)
RUNS_IN_FLIGHT = Gauge("cronbus_runs_in_flight", "Runs this runner process is executing now.")
RUNNER_CAPACITY = Gauge("cronbus_runner_capacity", "Runs this runner process may execute at once.")
RUNNER_POOLS = Gauge(
    "cronbus_runner_pool_serving", "1 for each pool this runner process takes work from.", ["pool"]
)
OUTPUT_BYTES = Counter("cronbus_run_output_bytes_total", "Bytes of output runs wrote, by pool.", ["pool"])

# --- logs (projection) ------------------------------------------------------------------------
PROJECTION_LAG = Gauge(
    "cronbus_projection_lag_events", "Events in a stream not yet applied to the history.", ["stream"]
)
PROJECTION_BATCH = Histogram(
    "cronbus_projection_batch_duration_seconds",
    "How long applying one batch to the history took, by stream.",
    ["stream"],
    buckets=_SECONDS,
)
PROJECTION_EVENTS = Counter("cronbus_projection_events_total", "Events applied to the history.", ["stream"])
PROJECTION_REJECTED = Counter(
    "cronbus_projection_rejected_events_total", "Events set aside as poison (never applicable).", ["stream"]
)

# --- api --------------------------------------------------------------------------------------
# The API's request metrics come from Litestar's Prometheus middleware (cronbus.api.app):
# cronbus_api_request_duration_seconds{method, path (the route template), status_code},
# cronbus_api_requests_total, cronbus_api_requests_in_progress.

# --- NATS consumers ---------------------------------------------------------------------------
CONSUMER_PENDING = Gauge(
    "cronbus_consumer_pending_messages",
    "Messages a durable consumer has yet to deliver (num_pending), by stream and consumer.",
    ["stream", "consumer"],
)


class _TracingCollector(Collector):
    """Spans exported and dropped by this process's OTLP exporter (when one is configured)."""

    def collect(self) -> Iterable[CounterMetricFamily]:
        from cronbus.shared import tracing

        exporter = tracing.otlp
        family = CounterMetricFamily(
            "cronbus_spans",
            "Spans handed to the OTLP exporter, by result (exported, dropped).",
            labels=["result"],
        )
        family.add_metric(["exported"], exporter.exported if exporter else 0)
        family.add_metric(["dropped"], exporter.dropped if exporter else 0)
        yield family


_registered = False
_lock = threading.Lock()


def register_collectors() -> None:
    """Add the collectors computed at scrape time (once per process)."""
    global _registered
    with _lock:
        if not _registered:
            REGISTRY.register(_TracingCollector())
            _registered = True


class MetricsServer:
    """`/metrics` on `host:port` in a daemon thread (prometheus_client's own server)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(host: str, port: int) -> MetricsServer:
    """Start serving `/metrics`; a port already in use is a StartupError an operator can fix."""
    register_collectors()
    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as exc:
        raise StartupError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); pick another "
            "CRONBUS_METRICS_PORT / --metrics-port, or 0 to turn metrics off"
        ) from None
    log.info("metrics at http://%s:%d/metrics", host, server.server_address[1])
    return MetricsServer(server, thread)
