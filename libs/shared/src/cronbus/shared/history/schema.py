"""Tables of the history store. One schema for PostgreSQL and SQLite."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("paused", Boolean, nullable=False, default=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index(None, "name"),
    # GET /v1/jobs pages in creation order (migration 0005).
    Index(None, "created_at", "id"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("job_id", String(64), nullable=False),
    Column("slot", UTCDateTime, nullable=False),
    Column("attempt", Integer, nullable=False, default=1),
    # dispatched, running, retrying, then one of the outcomes in events.RunStatus
    Column("status", String(16), nullable=False),
    Column("trigger", String(16), nullable=False, default="schedule"),
    Column("pool", String(128), nullable=False, default="default"),
    Column("runner", String(200), nullable=True),
    Column("dispatched_at", UTCDateTime, nullable=True),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("duration_ms", Float, nullable=True),
    Column("lateness_ms", Float, nullable=True),
    Column("error", Text, nullable=True),
    Column("cpu_ms", Float, nullable=True),
    Column("peak_rss_bytes", BigInteger, nullable=True),
    Column("output_bytes", BigInteger, nullable=False, default=0),
    Column("truncated", Boolean, nullable=False, default=False),
    Index(None, "job_id", "slot"),
    Index(None, "status"),
)

run_attempts = Table(
    "run_attempts",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("status", String(16), nullable=False),
    Column("runner", String(200), nullable=True),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("duration_ms", Float, nullable=True),
    Column("error", Text, nullable=True),
)

log_chunks = Table(
    "log_chunks",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("stream", String(8), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("at", UTCDateTime, nullable=False),
)

# Bytes of output stored per run (the sum of its log_chunks' data), kept by the LOGS projector
# in the transaction that stores the chunks, so retention's byte budgets need not scan output.
# A run without stored output has no row.
output_sizes = Table(
    "output_sizes",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("bytes", BigInteger, nullable=False),
)

# The last stream sequence each projector applied, committed with the rows it wrote.
projector_positions = Table(
    "projector_positions",
    metadata,
    Column("consumer", String(64), primary_key=True),
    Column("stream_seq", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Events a projector could not apply (or applied only after cleaning them), for operators:
# one row per stream message, written in the transaction that moves the position past it.
# `sanitized` is true when a cleaned copy was applied (NUL characters removed), false when
# the event was set aside. `data` is the message as it was on the stream.
rejected_events = Table(
    "rejected_events",
    metadata,
    Column("stream", String(64), primary_key=True),
    Column("stream_seq", BigInteger, primary_key=True),
    Column("consumer", String(64), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("reason", Text, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("sanitized", Boolean, nullable=False, default=False),
    Column("rejected_at", UTCDateTime, nullable=False),
    Index(None, "rejected_at"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("role", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
)

# The audit log, newest first by (at, id). Job events are projected here by the JOBS projector
# in the transaction that writes `jobs` (id = the event's id); the other actions come from the
# AUDIT stream (events.AuditRecorded). Written only by the logs service; never pruned.
audit = Table(
    "audit",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(64), nullable=False),
    Column("job_id", String(64), nullable=True),
    Column("revision", Integer, nullable=True),
    Column("detail", JSON, nullable=False),
    Index(None, "at", "id"),
    Index(None, "job_id", "at"),
    Index(None, "actor", "at"),
    Index(None, "action", "at"),
)
