"""Request bodies: every endpoint answers 400 for a body that cannot be read as JSON at all,
and the job endpoints read theirs strictly before Litestar converts them.

Litestar converts a handler's `data` leniently (the string "3" becomes the integer 3) and
lets `RecursionError` (JSON nested a thousand deep) and `UnicodeDecodeError` (invalid UTF-8
in a string) escape as 500s. `JsonRequest` turns the last two into Litestar's own
"cannot deserialize" error, which it answers 400; `strict_jobs`/`strict_patch` run before
the handler and reject what a strict reading rejects, naming each field.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import ClientException, SerializationException

from cronbus.api.domain import InvalidInput
from cronbus.api.validation import BodyError, BodyInvalid, decode_jobs, decode_patch


class JsonRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise SerializationException("the request body is nested too deeply to read as JSON") from None
        except UnicodeDecodeError:
            raise SerializationException(
                "the request body is not valid UTF-8 (inside a JSON string); send UTF-8 text"
            ) from None


async def _json_body(request: Request[Any, Any, Any]) -> bytes:
    """The body, once it is known to be JSON at all (Litestar keeps what it read)."""
    try:
        await request.json()
    except SerializationException as exc:
        raise ClientException(str(exc)) from None
    return await request.body()


async def strict_jobs(request: Request[Any, Any, Any]) -> None:
    """Before `POST /v1/jobs`: a job object or an array of them, read strictly."""
    try:
        decode_jobs(await _json_body(request))
    except BodyError as exc:
        raise ClientException(str(exc)) from None
    except BodyInvalid as exc:
        raise InvalidInput(exc.errors) from None


async def strict_patch(request: Request[Any, Any, Any]) -> None:
    """Before `PATCH /v1/jobs/{id}`: the changes, read strictly."""
    try:
        decode_patch(await _json_body(request))
    except BodyError as exc:
        raise ClientException(str(exc)) from None
    except BodyInvalid as exc:
        raise InvalidInput(exc.errors) from None
