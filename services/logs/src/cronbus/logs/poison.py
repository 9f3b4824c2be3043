"""Poison events: messages a projector can never apply, told apart from passing trouble.

A *poison* event fails because of what it carries: bytes that are not an event of the
stream, or values the database refuses (a NUL character on PostgreSQL, a number out of a
column's range, a constraint its content breaks). Applying it again fails again, so it is
set aside: recorded in `rejected_events` with its stream, sequence and the reason, in the
transaction that moves the projector's position past it. Everything else (the database
is down, a connection dropped, a lock timed out, a deadlock) is *transient*: the batch is
retried until it applies and nothing is acknowledged meanwhile.

One cleaning is applied before anything else: NUL characters (U+0000) are removed from
every string of an event. SQLite stores them but PostgreSQL cannot, and a NUL is never
meaningful in a name, a label or an error text; removing it keeps the event in the history
on both databases alike. A cleaned event is recorded too, with `sanitized` set.

Pure apart from reading exception attributes: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import exc as sa_exc

from cronbus.shared.events import AnyEvent, MalformedEvent

# How much of a reason and a subject is kept in `rejected_events` (the columns' sizes).
REASON_MAX = 2000
SUBJECT_MAX = 255

# SQLSTATE classes that describe the data of a statement, not the state of the server:
# 22 data exception (NUL in text, numeric value out of range, invalid datetime, ...) and
# 23 integrity constraint violation.
_POISON_SQLSTATE_CLASSES = ("22", "23")

# Python errors raised while binding a value (before the database sees it), e.g. SQLite's
# "Python int too large to convert to SQLite INTEGER" or a naive datetime for a UTC column.
_BIND_ERRORS = (OverflowError, ValueError, TypeError, UnicodeError)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message set aside (or applied only after cleaning), as `rejected_events` keeps it."""

    stream: str
    seq: int
    subject: str
    reason: str
    data: bytes
    sanitized: bool = False

    def row(self, consumer: str) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "stream_seq": self.seq,
            "consumer": consumer,
            "subject": self.subject.replace("\x00", "")[:SUBJECT_MAX],
            "reason": self.reason.replace("\x00", "")[:REASON_MAX],
            "data": self.data,
            "sanitized": self.sanitized,
        }


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one stream message became: an event to apply (`event`), a rejection to record, or
    both (an event that was cleaned before it could be applied)."""

    event: AnyEvent | None
    rejection: Rejection | None


def read_message(
    decode: Callable[[bytes], AnyEvent], stream: str, seq: int, subject: str, data: bytes
) -> Decoded:
    """Decode one message of `stream`, cleaning NUL characters out of its strings."""
    try:
        event = decode(data)
    except MalformedEvent as exc:
        return Decoded(None, Rejection(stream, seq, subject, f"malformed: {exc}", data))
    # JSON carries a NUL only as the escape \u0000; without one the event needs no cleaning.
    if b"\\u0000" not in data:
        return Decoded(event, None)
    cleaned = without_nul(event)
    if cleaned is event:
        return Decoded(event, None)
    reason = "NUL characters removed from its strings before it was applied"
    return Decoded(cleaned, Rejection(stream, seq, subject, reason, data, sanitized=True))


def without_nul(event: AnyEvent) -> AnyEvent:
    """`event` with U+0000 removed from every string in it (the same object if it has none)."""
    plain = msgspec.to_builtins(event)
    cleaned, changed = _strip(plain)
    if not changed:
        return event
    result: AnyEvent = msgspec.convert(cleaned, type(event))
    return result


def _strip(value: Any) -> tuple[Any, bool]:
    if isinstance(value, str):
        return (value.replace("\x00", ""), True) if "\x00" in value else (value, False)
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        changed = False
        for k, v in value.items():
            k2, kc = _strip(k)
            v2, vc = _strip(v)
            out[k2] = v2
            changed = changed or kc or vc
        return out, changed
    if isinstance(value, list):
        items = [_strip(v) for v in value]
        return [v for v, _ in items], any(c for _, c in items)
    return value, False


def is_poison(exc: BaseException) -> bool:
    """Whether writing failed because of the data written (retrying cannot help).

    Errors the database reports are judged by their SQLSTATE class where the driver gives
    one (PostgreSQL); SQLite's data errors arrive as sqlalchemy's DataError/IntegrityError or
    as a Python error raised while binding a value. Connection, timeout, lock, deadlock and
    programming errors are not poison: they are retried until they go away.
    """
    if isinstance(exc, sa_exc.DBAPIError):
        state = _sqlstate(exc)
        if state is not None:
            return state[:2] in _POISON_SQLSTATE_CLASSES
        if exc.connection_invalidated:
            return False
        if isinstance(exc, sa_exc.DataError | sa_exc.IntegrityError):
            return True
        # asyncpg refuses a value it cannot encode (an int beyond int32 for an INTEGER
        # column) with a DataError that is also a ValueError, before sending anything.
        return any(isinstance(e, _BIND_ERRORS) for e in _chain(exc.orig))
    if isinstance(exc, sa_exc.StatementError):
        # Not from the database: a bind parameter could not be processed.
        return isinstance(exc.orig, _BIND_ERRORS)
    return isinstance(exc, _BIND_ERRORS)


def _chain(exc: BaseException | None) -> list[BaseException]:
    """`exc` and the exceptions it was raised from (a driver wraps its own errors)."""
    out: list[BaseException] = []
    while exc is not None and len(out) < 5:
        out.append(exc)
        exc = exc.__cause__
    return out


def _sqlstate(exc: sa_exc.DBAPIError) -> str | None:
    """The SQLSTATE of a database error, looked up through the driver's exception chain."""
    for e in _chain(exc.orig):
        state = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(state, str) and len(state) == 5:
            return state
    return None


def describe(exc: BaseException) -> str:
    """One line naming the error, for logs and `rejected_events.reason`."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
