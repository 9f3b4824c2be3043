"""What the bus records about a job's slots: its dispatches on DISPATCH, its own events on
JOBS, and the schedulers' terms of leadership. Backfill and "why didn't it run?" read these;
the SQL history (runs) is read through History.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timedelta

import msgspec
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from cronbus.api.domain import Interval
from cronbus.api.schemas import LeaderGap
from cronbus.shared.bus import Bus, dispatch_msg_ids
from cronbus.shared.events import (
    JobCreated,
    JobDeleted,
    JobEvents,
    JobPaused,
    JobResumed,
    MalformedEvent,
    decode_job_event,
)
from cronbus.shared.status import TERMS_KEY, decode_scheduler_status, decode_terms

log = logging.getLogger(__name__)

# A slot is published no earlier than itself; reading DISPATCH from a little before the first
# slot of a range finds every dispatch of the range.
_PUBLISH_MARGIN = timedelta(minutes=1)
# A term that began this long after its watermark had a leader gap before it (a failover
# inside it is only late: the late slots are dispatched, so they show as dispatched).
GAP_MIN = timedelta(seconds=1)
# No status from a leader for this long: nobody is leading now.
LEADERLESS_AFTER = timedelta(seconds=30)


class Timeline:
    def __init__(self, bus: Bus, *, timeout: float = 10.0) -> None:
        self.bus = bus
        self.names = bus.settings.names
        self.timeout = timeout

    async def dispatched(self, job_id: str, since: datetime) -> set[str]:
        """The `Nats-Msg-Id`s of the job's DISPATCH messages stored since a little before
        `since` (any pool: the job may have moved). Headers only; bounded by `timeout`."""
        return await dispatch_msg_ids(
            self.bus.js,
            self.names,
            since=since - _PUBLISH_MARGIN,
            subject=f"{self.names.prefix}.dispatch.*.{job_id}",
            timeout=self.timeout,
        )

    async def job_events(self, job_id: str) -> list[JobEvents]:
        """The job's events on JOBS, in order."""
        stream, subject = self.names.jobs_stream, self.names.job_subject(job_id)
        events: list[JobEvents] = []
        seq = 0
        while True:
            try:
                msg = await self.bus.js.get_msg(stream, seq=seq + 1, subject=subject, next=True)
            except NotFoundError:
                return events
            assert msg.seq is not None
            seq = msg.seq
            try:
                events.append(decode_job_event(msg.data or b""))
            except MalformedEvent as exc:
                log.warning("skipping malformed event %s seq %d: %s", subject, seq, exc)

    async def leader_gaps(self, now: datetime) -> list[LeaderGap]:
        """Times no scheduler was leading, oldest first, from the terms the leaders recorded;
        the last one has no end while no leader reports (LEADERLESS_AFTER)."""
        try:
            kv = await self.bus.js.key_value(self.names.scheduler_bucket)
        except BucketNotFoundError:
            return []
        gaps: list[LeaderGap] = []
        with contextlib.suppress(KeyNotFoundError):
            entry = await kv.get(TERMS_KEY)
            try:
                terms = decode_terms(entry.value or b"{}").terms
            except msgspec.DecodeError as exc:
                log.warning("unreadable scheduler terms: %s", exc)
                terms = []
            gaps += [
                LeaderGap(from_=t.watermark, to=t.started_at)
                for t in terms
                if t.started_at - t.watermark >= GAP_MIN
            ]
        with contextlib.suppress(KeyNotFoundError):
            entry = await kv.get("status")
            try:
                status = decode_scheduler_status(entry.value or b"")
            except msgspec.DecodeError as exc:
                log.warning("unreadable scheduler status: %s", exc)
                return gaps
            if now - status.updated_at > LEADERLESS_AFTER:
                gaps.append(LeaderGap(from_=status.watermark or status.updated_at, to=None))
        return gaps


def pauses_and_deletion(events: list[JobEvents]) -> tuple[datetime | None, list[Interval], datetime | None]:
    """From a job's events: when it was created, the times it was paused, when it was deleted."""
    created: datetime | None = None
    paused: list[Interval] = []
    since: datetime | None = None
    deleted: datetime | None = None
    for event in events:
        match event:
            case JobCreated():
                created = event.occurred_at
                since = event.occurred_at if event.paused else None
            case JobPaused():
                if since is None:
                    since = event.occurred_at
            case JobResumed():
                if since is not None:
                    paused.append(Interval(since, event.occurred_at))
                    since = None
            case JobDeleted():
                deleted = event.occurred_at
    if since is not None:
        paused.append(Interval(since, None))
    return created, paused, deleted
