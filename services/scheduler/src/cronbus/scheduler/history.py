"""Reading recent DISPATCH history: which slots a previous leader already dispatched.

A new leader skips those, so exactly-once does not rest on the stream's dedupe window alone.
Reading needs a consumer, and creating one needs the JetStream meta leader: while a NATS
cluster elects a new one (seconds), the read fails. A takeover whose slots are all inside the
dedupe window then goes on without it (`dedupe_covers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import FetchTimeoutError

from cronbus.shared.bus import MSG_ID
from cronbus.shared.names import Names

log = logging.getLogger(__name__)


def dedupe_covers(since: float, now: float, window: float, *, margin: float) -> bool:
    """Whether every DISPATCH message stored since `since` is still in the stream's dedupe
    window (`window` seconds) at `now` and for `margin` seconds more: then a slot published
    again is dropped by JetStream even without reading the history first."""
    return now - since + margin < window


async def dispatched_since(
    js: JetStreamContext, names: Names, since: datetime, *, timeout: float = 10.0, batch: int = 1000
) -> set[str]:
    """The `Nats-Msg-Id`s of every DISPATCH message stored at or after `since` (server time).

    A slot after the watermark is published no earlier than the slot itself, so reading from a
    little before the watermark finds every one of them.
    """
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=since,
        ack_policy=AckPolicy.NONE,
        headers_only=True,
        inactive_threshold=30.0,
        mem_storage=True,
    )
    sub = await js.pull_subscribe(names.dispatch_all, stream=names.dispatch_stream, config=config)
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
                raise TimeoutError(f"read {len(seen)} of DISPATCH since {since}, {remaining} left")
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
