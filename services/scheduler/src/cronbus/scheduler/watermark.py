"""The watermark: every slot at or before it is dispatched (or deliberately skipped).

The leader persists it about once a second in the KV bucket `<p>_scheduler`, with the time it
wrote it. A new leader starts from it: it queues the slots after it that are still owed, and
from when it was written, and whether its leader stopped on purpose, it tells a failover (the
slots since then are only late) from downtime (the slots since then were missed and follow
each job's catch-up policy).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import msgspec
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from cronbus.scheduler.domain import to_datetime
from cronbus.shared import metrics
from cronbus.shared.status import MAX_TERMS, TERMS_KEY, LeaderTerm, LeaderTerms, decode_terms, encode_terms

log = logging.getLogger(__name__)

WATERMARK_KEY = "watermark"
# A leader that did not stop on purpose and last wrote the watermark at most this long ago
# failed over (a scheduler died; a NATS node died and its streams elected new leaders, which
# takes JetStream up to about ten seconds, more when a takeover has to be retried): the slots
# that fell due since then are late, not missed. A longer gap, or one after a deliberate stop,
# is downtime: the catch-up policies decide.
FAILOVER_LIMIT = 60.0


class Watermark(msgspec.Struct, kw_only=True):
    """Every slot at or before `at` is dispatched (or deliberately skipped); `written` is when
    the leader named in `leader` wrote it (None from versions that did not say), `stopped`
    whether it was written by a leader stopping on purpose."""

    at: datetime
    leader: str = ""
    written: datetime | None = None
    stopped: bool = False


_decoder = msgspec.json.Decoder(Watermark)


@dataclass(frozen=True, slots=True)
class Start:
    """Where a takeover starts: the watermark (seconds), when it was written (None: unknown) and
    whether the leader that wrote it was stopping on purpose."""

    at: float
    written: float | None
    stopped: bool = False


def failover_grace(start: Start, now: float, grace: float) -> float:
    """How late a slot may be at `now` and still be dispatched as scheduled, for a takeover from
    `start`: `grace`, stretched back to `grace` before the watermark was written when that was
    a failover ago (see FAILOVER_LIMIT). A NATS node's death costs the lease stream an election
    of several seconds; slots due meanwhile are not "missed" because of it."""
    if start.written is None or start.stopped:
        return grace
    outage = now - start.written
    if outage < 0 or outage > FAILOVER_LIMIT:
        return grace
    return grace + outage


async def read_watermark(kv: KeyValue) -> Start | None:
    """The persisted watermark; None when there is none (a fresh installation) or it cannot be
    read (logged: the caller starts afresh)."""
    try:
        entry = await kv.get(WATERMARK_KEY)
    except KeyNotFoundError:
        return None
    if not entry.value:
        return None
    try:
        mark = _decoder.decode(entry.value)
    except msgspec.DecodeError:
        log.error("unreadable watermark %r: treating it as absent", entry.value[:100])
        return None
    written = mark.written.timestamp() if mark.written else None
    return Start(at=mark.at.timestamp(), written=written, stopped=mark.stopped)


async def write_watermark(kv: KeyValue, at: float, *, leader: str, now: float, stopped: bool = False) -> None:
    value = Watermark(at=to_datetime(at), leader=leader, written=to_datetime(now), stopped=stopped)
    await kv.put(WATERMARK_KEY, msgspec.json.encode(value))
    metrics.WATERMARK_AGE.set(max(0.0, now - at))


async def record_term(kv: KeyValue, term: LeaderTerm) -> None:
    """Add `term` to the terms of leadership (the last MAX_TERMS), from which the API tells when
    no scheduler was leading. Only a leader writes it, once per term."""
    terms: list[LeaderTerm] = []
    try:
        entry = await kv.get(TERMS_KEY)
        terms = decode_terms(entry.value or b"{}").terms
    except KeyNotFoundError:
        pass
    except msgspec.DecodeError:
        log.error("unreadable terms of leadership: starting them afresh")
    terms = [t for t in terms if t.lease_revision != term.lease_revision or t.leader != term.leader]
    terms.append(term)
    await kv.put(TERMS_KEY, encode_terms(LeaderTerms(terms=terms[-MAX_TERMS:])))
