"""Connecting to NATS and creating (or updating) cronbus's streams and buckets idempotently."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BucketNotFoundError, FetchTimeoutError, NotFoundError
from nats.js.kv import KeyValue

from cronbus.shared.names import Names
from cronbus.shared.runtime import until_done
from cronbus.shared.settings import Settings

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"


class ApiErrorWire(msgspec.Struct):
    """The `error` of a JetStream API reply, decoded by msgspec (for code that reads replies
    itself instead of through nats-py's JetStream context)."""

    code: int = 0
    err_code: int | None = None
    description: str = ""


class PubAckWire(msgspec.Struct):
    """JetStream's acknowledgement of a publish (`PubAck`), or the error that refused it."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    domain: str | None = None
    error: ApiErrorWire | None = None


# How long the AUDIT stream keeps a record (the SQL `audit` table keeps it for good).
AUDIT_MAX_AGE = 400 * 86400.0


async def connect(settings: Settings, name: str, **options: Any) -> NATS:
    """A NATS connection that reconnects forever and logs its state changes."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats %s: %s", name, exc)

    async def on_disconnect() -> None:
        log.info("nats %s: disconnected", name)

    async def on_reconnect() -> None:
        log.info("nats %s: reconnected", name)

    return await nats.connect(
        # A cluster is named as a comma-separated list of URLs.
        [url.strip() for url in settings.nats_url.split(",") if url.strip()],
        name=f"cronbus-{name}-{settings.instance_id}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        connect_timeout=5,
        allow_reconnect=True,
        # Notice a half-open connection in ~30 s, not the client's default of minutes.
        ping_interval=10,
        max_outstanding_pings=3,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        **options,
    )


def stream_configs(settings: Settings) -> list[StreamConfig]:
    n = settings.names
    common = {
        "retention": RetentionPolicy.LIMITS,
        "storage": StorageType.FILE,
        "num_replicas": settings.replicas,
    }
    return [
        StreamConfig(
            name=n.jobs_stream,
            subjects=[n.jobs_all],
            description="cronbus job definitions (source of truth)",
            duplicate_window=120.0,
            **common,  # type: ignore[arg-type]
        ),
        StreamConfig(
            name=n.dispatch_stream,
            subjects=[n.dispatch_all],
            description="cronbus runs to execute, one message per slot",
            max_age=settings.dispatch_max_age,
            duplicate_window=settings.dedupe_window,
            **common,  # type: ignore[arg-type]
        ),
        StreamConfig(
            name=n.runs_stream,
            subjects=[n.runs_all],
            description="cronbus run lifecycle events",
            max_age=settings.runs_max_age,
            duplicate_window=120.0,
            **common,  # type: ignore[arg-type]
        ),
        StreamConfig(
            name=n.logs_stream,
            subjects=[n.logs_all],
            description="cronbus run output chunks",
            max_age=settings.logs_max_age,
            max_bytes=settings.logs_max_bytes,
            discard=DiscardPolicy.OLD,
            duplicate_window=120.0,
            **common,  # type: ignore[arg-type]
        ),
        StreamConfig(
            name=n.audit_stream,
            subjects=[n.audit_all],
            description="cronbus audit records of actions that are not job events",
            max_age=AUDIT_MAX_AGE,
            duplicate_window=120.0,
            **common,  # type: ignore[arg-type]
        ),
    ]


def bucket_configs(settings: Settings) -> list[KeyValueConfig]:
    n = settings.names
    return [
        KeyValueConfig(bucket=n.leader_bucket, ttl=settings.lease_ttl, history=1, replicas=settings.replicas),
        KeyValueConfig(
            bucket=n.runners_bucket,
            ttl=max(3 * settings.heartbeat, 5.0),
            history=1,
            replicas=settings.replicas,
        ),
        KeyValueConfig(bucket=n.scheduler_bucket, history=1, replicas=settings.replicas),
        KeyValueConfig(bucket=n.running_bucket, history=1, replicas=settings.replicas),
        KeyValueConfig(bucket=n.keys_bucket, history=1, replicas=settings.replicas),
    ]


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except nats.js.errors.BadRequestError:
            # Another service created it between our look and our add: fall through to update.
            info = await js.stream_info(config.name)
    current = info.config
    if (
        current.subjects != config.subjects
        or current.max_age != config.max_age
        or current.max_bytes != config.max_bytes
        or current.duplicate_window != config.duplicate_window
    ):
        await js.update_stream(config)


async def _ensure_bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    try:
        kv = await js.key_value(config.bucket)
    except BucketNotFoundError:
        return await js.create_key_value(config)
    status = await kv.status()
    if config.ttl and abs((status.ttl or 0) - config.ttl) > 0.001:
        info = await js.stream_info(f"KV_{config.bucket}")
        info.config.max_age = config.ttl
        # The server refuses a dedupe window longer than the max age (a shorter TTL than before).
        info.config.duplicate_window = min(info.config.duplicate_window or config.ttl, config.ttl)
        await js.update_stream(info.config)
    return kv


async def ensure_topology(js: JetStreamContext, settings: Settings) -> None:
    """Create or update every stream and bucket. Safe to run from every service at once."""
    for attempt in range(5):
        try:
            for stream in stream_configs(settings):
                await _ensure_stream(js, stream)
            for bucket in bucket_configs(settings):
                await _ensure_bucket(js, bucket)
            return
        except (nats.errors.TimeoutError, nats.js.errors.APIError) as exc:
            if attempt == 4:
                raise
            log.info("bootstrap retry after %s", exc)
            await asyncio.sleep(0.2 * (attempt + 1))


async def dispatch_msg_ids(
    js: JetStreamContext,
    names: Names,
    *,
    since: datetime,
    subject: str | None = None,
    timeout: float = 10.0,
    batch: int = 1000,
) -> set[str]:
    """The `Nats-Msg-Id` of every DISPATCH message on `subject` (default: every dispatch)
    stored at or after `since` (server time): headers only, through one ephemeral in-memory
    consumer that is deleted afterwards, all within `timeout` (TimeoutError otherwise)."""
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=since,
        ack_policy=AckPolicy.NONE,
        headers_only=True,
        inactive_threshold=30.0,
        mem_storage=True,
    )
    subject = subject or names.dispatch_all
    sub = await js.pull_subscribe(subject, stream=names.dispatch_stream, config=config)
    seen: set[str] = set()
    consumer = ""
    try:
        info = await sub.consumer_info()
        consumer = info.name
        remaining = info.num_pending or 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while remaining > 0:
            if loop.time() > deadline:
                raise TimeoutError(
                    f"read {len(seen)} DISPATCH messages on {subject} since {since}, {remaining} left"
                )
            try:
                msgs = await sub.fetch(min(batch, remaining), timeout=max(0.1, deadline - loop.time()))
            except FetchTimeoutError:
                continue
            for msg in msgs:
                remaining -= 1
                msg_id = (msg.headers or {}).get(MSG_ID)
                if msg_id:
                    seen.add(msg_id)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        if consumer:
            with contextlib.suppress(Exception):
                await js.delete_consumer(names.dispatch_stream, consumer)
    return seen


@dataclass(slots=True)
class Bus:
    """One service's NATS connection and JetStream context."""

    nc: NATS
    js: JetStreamContext
    settings: Settings

    @classmethod
    async def open(
        cls, settings: Settings, service: str, *, bootstrap: bool = True, **connect_options: Any
    ) -> Bus:
        """Connect (`connect_options` go to nats-py, e.g. `pending_size=0`) and, by default,
        create or update the streams and buckets."""
        nc = await connect(settings, service, **connect_options)
        js = nc.jetstream(timeout=5.0)
        if bootstrap:
            try:
                await ensure_topology(js, settings)
            except BaseException:
                await nc.close()
                raise
        return cls(nc=nc, js=js, settings=settings)

    @classmethod
    async def open_when_ready(
        cls, settings: Settings, service: str, stopping: asyncio.Event, **connect_options: Any
    ) -> Bus | None:
        """`open`, retried until NATS answers; None when asked to stop first."""
        return await until_done(
            stopping,
            f"{service}: connecting to NATS at {settings.nats_url}",
            lambda: cls.open(settings, service, **connect_options),
        )

    async def close(self) -> None:
        """Flush what is pending and close; never raises (it runs on the way out)."""
        if self.nc.is_closed:
            return
        try:
            await asyncio.wait_for(self.nc.drain(), timeout=5.0)
        except Exception as exc:
            log.warning("nats drain failed (%s); closing", exc)
            await self.nc.close()
