"""Exceptions to RFC 9457 problem details (`application/problem+json`).

Every error the API answers goes through here, so clients always get the same shape:
`type`, `title`, `status`, `detail` and, for invalid input, `errors: [{field, reason}]`.
Unexpected failures are logged with their traceback here and answered without one.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap
from nats.errors import Error as NatsError
from sqlalchemy.exc import DBAPIError, OperationalError

from cronbus.api.auth import Forbidden, Unauthenticated
from cronbus.api.domain import InvalidInput, JobNotFound, ProjectionBehind, RevisionConflict, RunNotFound
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


def _behind(request: Request[Any, Any, Any], exc: ProjectionBehind) -> Response[bytes]:
    return problem_response(_problem(request, 504, "history-behind", "History not caught up", str(exc)))


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    detail = str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such endpoint {request.method} {request.url.path}; see /v1/openapi.json"
    problem = _problem(request, exc.status_code, slug, _title(exc.status_code), detail)
    return problem_response(problem, headers=exc.headers)


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    what = "NATS" if isinstance(exc, NatsError | TimeoutError) else "the history database"
    log.warning("%s %s: %s unavailable: %r", request.method, request.url.path, what, exc)
    return problem_response(
        _problem(
            request,
            503,
            "unavailable",
            "Service unavailable",
            f"{what} is not reachable right now; retry shortly (see GET /readyz)",
        ),
        headers={"Retry-After": "2"},
    )


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
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
    ProjectionBehind: _behind,
    HTTPException: _http,
    NatsError: _unavailable,
    TimeoutError: _unavailable,
    OperationalError: _unavailable,
    DBAPIError: _unavailable,
    Exception: _internal,
}
