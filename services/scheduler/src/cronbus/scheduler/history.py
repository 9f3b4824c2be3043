"""Reading recent DISPATCH history: which slots a previous leader already dispatched.

A new leader skips those, so exactly-once does not rest on the stream's dedupe window alone.
Reading needs a consumer, and creating one needs the JetStream meta leader: while a NATS
cluster elects a new one (seconds), the read fails. A takeover whose slots are all inside the
dedupe window then goes on without it (`dedupe_covers`).
"""

from __future__ import annotations

import logging
from datetime import datetime

from nats.js import JetStreamContext

from cronbus.shared.bus import dispatch_msg_ids
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
    return await dispatch_msg_ids(js, names, since=since, timeout=timeout, batch=batch)
