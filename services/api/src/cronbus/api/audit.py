"""The audit log: recording the actions that are not job events, and reading the log.

Job events (create, update, delete, pause, resume) carry their `actor` and are projected into
the `audit` table by the logs service with the job itself. Every other action the API takes
on someone's behalf is appended to the AUDIT stream as an `AuditRecorded`; the logs service
projects those too. The API never writes the table: it only reads it (`AuditReader`).

Action names are stable and documented in docs/api.md ("Audit").
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Final

import msgspec
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.api.domain import Cursor, FieldError, InvalidInput
from cronbus.api.validation import check_text
from cronbus.shared.bus import MSG_ID, Bus
from cronbus.shared.events import AuditRecorded, encode
from cronbus.shared.history.schema import audit
from cronbus.shared.tracing import inject_headers

log = logging.getLogger(__name__)

JOB_CREATED: Final = "job.created"
JOB_UPDATED: Final = "job.updated"
JOB_DELETED: Final = "job.deleted"
JOB_PAUSED: Final = "job.paused"
JOB_RESUMED: Final = "job.resumed"
RUN_REQUESTED: Final = "run.requested"
RUN_CANCEL_REQUESTED: Final = "run.cancel_requested"
JOB_BACKFILLED: Final = "job.backfilled"
KEY_CREATED: Final = "key.created"
KEY_REVOKED: Final = "key.revoked"
KEY_EXPIRED_USED: Final = "key.expired_used"
CRONTAB_IMPORTED: Final = "crontab.imported"
ACTIONS: Final = (
    JOB_CREATED,
    JOB_UPDATED,
    JOB_DELETED,
    JOB_PAUSED,
    JOB_RESUMED,
    RUN_REQUESTED,
    RUN_CANCEL_REQUESTED,
    JOB_BACKFILLED,
    KEY_CREATED,
    KEY_REVOKED,
    KEY_EXPIRED_USED,
    CRONTAB_IMPORTED,
)


class AuditEntry(msgspec.Struct, kw_only=True):
    """One audited action: when, who (the key's name), what, and on which job (null when the
    action is not about one job)."""

    at: datetime
    actor: str
    action: str
    job_id: str | None = None
    revision: int | None = None
    detail: dict[str, Any] = {}


class AuditPage(msgspec.Struct, kw_only=True):
    items: list[AuditEntry]
    next: str | None = msgspec.field(default=None)


class AuditLog:
    """Appends audit records to the AUDIT stream."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.names = bus.settings.names

    async def record(
        self,
        action: str,
        actor: str,
        *,
        job_id: str | None = None,
        revision: int | None = None,
        detail: dict[str, Any] | None = None,
        msg_id: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """Append one record. `msg_id` makes a repeat within the stream's dedupe window (a
        retried request, another replica seeing the same thing) count once.

        It never raises: it runs after the action itself succeeded, and failing the request
        then would make the caller believe the action did not happen. A record that could not
        be appended is logged as an error with everything it held.
        """
        event = AuditRecorded(
            action=action, actor=actor, job_id=job_id, revision=revision, detail=detail or {}
        )
        if at is not None:
            event.occurred_at = at
        headers = inject_headers({MSG_ID: msg_id} if msg_id else {})
        try:
            await self.bus.js.publish(self.names.audit_subject(action), encode(event), headers=headers)
        except Exception as exc:
            log.error(
                "audit record not stored (%s: %s): action=%s actor=%s job_id=%s detail=%s",
                type(exc).__name__, exc, action, actor, job_id, event.detail,
            )  # fmt: skip


def parse_time(field: str, value: str) -> datetime:
    """An ISO-8601 instant with an offset, or InvalidInput naming `field`."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            [FieldError(field=field, reason=f"{value!r} is not an ISO-8601 time (e.g. 2026-01-31T12:00:00Z)")]
        ) from None
    if when.tzinfo is None:
        raise InvalidInput([FieldError(field=field, reason=f"{value!r} has no UTC offset; add Z or +hh:mm")])
    return when


class AuditReader:
    """Reads the `audit` table the logs service projects."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def page(
        self,
        *,
        job_id: str | None,
        actor: str | None,
        action: str | None,
        since: str | None,
        cursor: str | None,
        limit: int,
    ) -> AuditPage:
        """Newest first; every filter given must match (`since` includes its instant)."""
        errors: list[FieldError] = []
        for field, value in (("job_id", job_id), ("actor", actor), ("action", action)):
            if value is not None:
                check_text(errors, field, value, max_chars=200)
        if errors:
            raise InvalidInput(errors)
        query = select(audit)
        if job_id is not None:
            query = query.where(audit.c.job_id == job_id)
        if actor is not None:
            query = query.where(audit.c.actor == actor)
        if action is not None:
            query = query.where(audit.c.action == action)
        if since is not None:
            query = query.where(audit.c.at >= parse_time("since", since))
        if cursor:
            after = Cursor.decode(cursor)
            query = query.where(
                or_(audit.c.at < after.at, and_(audit.c.at == after.at, audit.c.id < after.id))
            )
        query = query.order_by(audit.c.at.desc(), audit.c.id.desc()).limit(limit + 1)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        page = rows[:limit]
        next_cursor = Cursor(at=page[-1].at, id=page[-1].id).encode() if len(rows) > limit else None
        items = [
            AuditEntry(
                at=row.at,
                actor=row.actor,
                action=row.action,
                job_id=row.job_id,
                revision=row.revision,
                detail=dict(row.detail or {}),
            )
            for row in page
        ]
        return AuditPage(items=items, next=next_cursor)
