"""Exceptions to RFC 9457 problem details (`application/problem+json`).

Every error the API answers goes through here, so clients always get the same shape:
`type`, `title`, `status`, `detail` and, for invalid input, `errors: [{field, reason}]`.
One handler takes every exception that has no more specific one (`_failure`): it tells an
outage (NATS or the database cannot be reached: 503 with `Retry-After`, whatever the
endpoint) from a message too large for NATS (413) and from a bug (500, logged with its
traceback here and answered without one). Requests refused before routing (auth.py) are
answered by the same handlers (`answer_exception`).
"""

from __future__ import annotations

import errno
import logging
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap, Receive, Scope, Send
from nats.errors import (
    BadHeaderError,
    BadSubjectError,
    JsonParseError,
    MaxPayloadError,
    MsgAlreadyAckdError,
    NotJSMessageError,
)
from nats.errors import Error as NatsError
from nats.js.errors import BadRequestError
from sqlalchemy import exc as sa_exc

from cronbus.api.auth import Forbidden, Unauthenticated
from cronbus.api.domain import (
    InvalidInput,
    JobIsPaused,
    JobNotFound,
    ProjectionBehind,
    RevisionConflict,
    RunNotFound,
)
from cronbus.api.schemas import FieldError, Problem

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
_TYPE = "urn:cronbus:problem:"
_encoder = msgspec.json.Encoder()


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(
        content=_encoder.encode(problem),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _problem(
    request: Request[Any, Any, Any],
    status: int,
    slug: str,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
) -> Problem:
    return Problem(
        type=_TYPE + slug,
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path,
        errors=errors or [],
    )


def _invalid(request: Request[Any, Any, Any], exc: InvalidInput) -> Response[bytes]:
    return problem_response(_problem(request, 422, "invalid-input", "Invalid input", exc.detail, exc.errors))


# msgspec says e.g. "Object missing required field `name` - at `$.executor`".
_MISSING = re.compile(r"Object missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]+)`")
_AT = re.compile(r" - at `\$\.?([^`]*)`")


def _field_error(message: str, key: str) -> FieldError:
    """Litestar/msgspec decoding messages rewritten into what a person should do."""
    path = key.removeprefix("data").lstrip(".")
    if (at := _AT.search(message)) is not None:
        path = ".".join(p for p in (path, at.group(1)) if p)
        message = message[: at.start()]
    if (m := _MISSING.search(message)) is not None:
        field = ".".join(p for p in (path, m.group(1)) if p)
        return FieldError(field=field, reason="missing; this field is required")
    if (m := _UNKNOWN.search(message)) is not None:
        field = ".".join(p for p in (path, m.group(1)) if p)
        return FieldError(field=field, reason="unknown field; remove it or check its spelling")
    if path.endswith("executor.type") or (path.endswith("executor") and "type" in message):
        return FieldError(
            field="executor.type", reason=f"{message}; the executor type must be 'shell' or 'http'"
        )
    return FieldError(field=path or "body", reason=message)


def _validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    extra = exc.extra if isinstance(exc.extra, list) else []
    errors = [
        _field_error(str(item.get("message", "")), str(item.get("key", "")))
        for item in extra
        if isinstance(item, dict)
    ]
    if not errors:
        # No per-field detail: the body is not JSON at all, or a parameter is unreadable.
        reason = str(exc.detail)
        if "json" in reason.lower() or "decode" in reason.lower() or "malformed" in reason.lower():
            reason = "the request body is not valid JSON"
        return problem_response(_problem(request, 400, "bad-request", "Bad request", reason))
    detail = "; ".join(f"{e.field}: {e.reason}" for e in errors)
    return problem_response(_problem(request, 422, "invalid-input", "Invalid input", detail, errors))


def _unauthenticated(request: Request[Any, Any, Any], exc: Unauthenticated) -> Response[bytes]:
    return problem_response(
        _problem(request, 401, "unauthenticated", "Missing or wrong API key", str(exc)),
        headers={"WWW-Authenticate": 'Bearer realm="cronbus"'},
    )


def _forbidden(request: Request[Any, Any, Any], exc: Forbidden) -> Response[bytes]:
    return problem_response(_problem(request, 403, "forbidden", "Not allowed for this role", str(exc)))


def _not_found(request: Request[Any, Any, Any], exc: LookupError) -> Response[bytes]:
    return problem_response(_problem(request, 404, "not-found", "Not found", str(exc)))


def _conflict(request: Request[Any, Any, Any], exc: RevisionConflict) -> Response[bytes]:
    return problem_response(_problem(request, 409, "revision-conflict", "Revision conflict", str(exc)))


def _paused(request: Request[Any, Any, Any], exc: JobIsPaused) -> Response[bytes]:
    return problem_response(_problem(request, 409, "job-paused", "Job is paused", str(exc)))


def _behind(request: Request[Any, Any, Any], exc: ProjectionBehind) -> Response[bytes]:
    return problem_response(_problem(request, 504, "history-behind", "History not caught up", str(exc)))


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    detail = str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such endpoint {request.method} {request.url.path}; see /v1/openapi.json"
    problem = _problem(request, exc.status_code, slug, _title(exc.status_code), detail)
    headers = dict(exc.headers or {})
    for name in [h for h in headers if h.lower() == "allow"]:
        # The same order every time: Litestar joins a set.
        headers[name] = ", ".join(sorted(m.strip() for m in headers[name].split(",")))
    return problem_response(problem, headers=headers or None)


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# Seconds a client should wait before retrying after an outage answer (503).
RETRY_AFTER = 5

# errno values of a network path that is down, as opposed to a local programming or file error.
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ETIMEDOUT,
        errno.EPIPE,
    }
)

# NATS errors that are the request's fault or a bug, not a server that cannot be reached.
_NATS_NOT_OUTAGE: tuple[type[Exception], ...] = (
    MaxPayloadError,
    BadSubjectError,
    BadHeaderError,
    JsonParseError,
    NotJSMessageError,
    MsgAlreadyAckdError,
    BadRequestError,
)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps: `__cause__`/`__context__` and SQLAlchemy's `orig` (bounded)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 16:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for inner in (getattr(current, "orig", None), current.__cause__, current.__context__):
            if isinstance(inner, BaseException):
                todo.append(inner)


def _database_down(exc: BaseException) -> bool:
    match exc:
        case asyncpg.PostgresConnectionError() | asyncpg.CannotConnectNowError():
            return True
        case asyncpg.AdminShutdownError() | asyncpg.CrashShutdownError() | asyncpg.TooManyConnectionsError():
            return True
        case asyncpg.InterfaceError() if not isinstance(exc, ValueError):
            # "connection is closed" and the like; its DataError (a ValueError) is a bad value.
            return True
        case sa_exc.TimeoutError() | sa_exc.DisconnectionError():
            return True
        case sa_exc.OperationalError():
            # SQLite says "database is locked" or "unable to open database file" when it cannot
            # serve, but also "no such table" for a schema that is not there: that is a bug.
            return not str(exc.orig).startswith(("no such", "syntax error"))
        case sa_exc.DBAPIError() if exc.connection_invalidated:
            return True
    return False


def _network_down(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | socket.gaierror | TimeoutError):
        return True
    return isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS


def outage(exc: BaseException) -> str | None:
    """What is down when `exc` means NATS or the database cannot be reached: "NATS", "the
    history database", or None when `exc` is something else (a bug, bad input)."""
    causes = list(_causes(exc))
    if any(isinstance(c, NatsError) and not isinstance(c, _NATS_NOT_OUTAGE) for c in causes):
        return "NATS"
    if any(
        isinstance(c, sa_exc.SQLAlchemyError | asyncpg.PostgresError | asyncpg.InterfaceError) for c in causes
    ):
        return "the history database" if any(_database_down(c) or _network_down(c) for c in causes) else None
    if any(_network_down(c) for c in causes):
        # A bare socket error or timeout (asyncpg connects outside SQLAlchemy's wrapping): the
        # code it was raised in says which connection it was.
        return _raised_in(causes) or "NATS or the history database"
    return None


def _raised_in(causes: list[BaseException]) -> str | None:
    for cause in causes:
        tb = cause.__traceback__
        while tb is not None:
            module = str(tb.tb_frame.f_globals.get("__name__", ""))
            if module.startswith(("asyncpg", "sqlalchemy", "aiosqlite", "cronbus.api.history")):
                return "the history database"
            if module.startswith(("nats", "cronbus.api.journal")):
                return "NATS"
            tb = tb.tb_next
    return None


def unavailable_problem(what: str, instance: str) -> Problem:
    return Problem(
        type=_TYPE + "unavailable",
        title="Service unavailable",
        status=503,
        detail=f"{what} is not reachable right now; retry in a few seconds. "
        "GET /readyz shows what is down; the server log has the cause",
        instance=instance,
    )


def _too_large(request: Request[Any, Any, Any]) -> Response[bytes]:
    nc = getattr(getattr(request.app.state, "bus", None), "nc", None)
    max_payload = getattr(nc, "max_payload", 0) or 0
    said = f" ({max_payload} bytes)" if max_payload else ""
    return problem_response(
        _problem(
            request,
            413,
            "too-large",
            "Request too large",
            f"the request makes a message larger than NATS carries{said}; "
            "shorten the largest fields (command, description, env, headers, Idempotency-Key)",
        )
    )


def _failure(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Every exception without a more specific handler: an outage (503), a message too large
    for NATS (413), or a bug (500)."""
    if any(isinstance(c, MaxPayloadError) for c in _causes(exc)):
        return _too_large(request)
    what = outage(exc)
    if what is not None:
        log.warning("%s %s: %s unavailable: %r", request.method, request.url.path, what, exc)
        return problem_response(
            unavailable_problem(what, request.url.path), headers={"Retry-After": str(RETRY_AFTER)}
        )
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return problem_response(
        _problem(
            request,
            500,
            "internal",
            "Internal error",
            "the API failed unexpectedly; the server log has details",
        )
    )


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    InvalidInput: _invalid,
    ValidationException: _validation,
    Unauthenticated: _unauthenticated,
    Forbidden: _forbidden,
    JobNotFound: _not_found,
    RunNotFound: _not_found,
    RevisionConflict: _conflict,
    JobIsPaused: _paused,
    ProjectionBehind: _behind,
    HTTPException: _http,
    Exception: _failure,
}


def _handler_for(exc: Exception) -> Callable[[Request[Any, Any, Any], Any], Response[bytes]]:
    for kind in type(exc).__mro__:
        handler = EXCEPTION_HANDLERS.get(kind)
        if handler is not None:
            return handler
    return _failure


async def answer_exception(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    """Answer `exc` as the exception handlers above would, for code that runs before routing."""
    request: Request[Any, Any, Any] = Request(scope, receive)
    response = _handler_for(exc)(request, exc)
    await response.to_asgi_response(app=None, request=request)(scope, receive, send)
