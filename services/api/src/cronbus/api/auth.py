"""API keys and roles: who may call what.

A key is either the bootstrap admin key from the settings (compared in constant time) or a
row in `api_keys` holding the key's sha256 hex digest. `AuthenticateFirst` checks the key of
every request before routing, so a caller without a valid key learns nothing about which
paths or methods exist (401 everywhere); then each route's guard checks the role it declares
in its `opt` (`role`). The health endpoints, the OpenAPI document and the docs are public.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from datetime import datetime

from litestar.connection import ASGIConnection
from litestar.datastructures import Headers
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Receive, Scope, Send

from cronbus.api.domain import Principal, Role
from cronbus.api.history import History

# The docs UI and its copy of the schema: public like /v1/openapi.json (they hold no data).
DOCS_PATH = "/v1/docs"
OPENAPI_PATH = "/v1/openapi.json"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", OPENAPI_PATH, DOCS_PATH})


def is_public(path: str) -> bool:
    """Paths anyone may call: health, and the API's description (they hold no data)."""
    return path in PUBLIC_PATHS or path.startswith(DOCS_PATH + "/")


class Unauthenticated(Exception):
    """No key, a malformed Authorization header, or a key nobody issued."""


class Forbidden(Exception):
    """A valid key whose role does not allow the request."""


def key_hash(key: str) -> str:
    """How `api_keys.key_hash` stores a key: sha256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    def __init__(self, admin_key: str, history: History, clock: Callable[[], datetime]) -> None:
        self._admin = admin_key.encode()
        self.history = history
        self.clock = clock

    async def principal(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthenticated("send 'Authorization: Bearer <api key>'; `cronbus up` prints an admin key")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated("the Authorization header must read 'Bearer <api key>'")
        if self._admin and hmac.compare_digest(key.encode(), self._admin):
            return Principal(name="admin", role=Role.admin)
        found = await self.history.role_of_key(key_hash(key), self.clock())
        if found is not None:
            name, role_name = found
            role = Role.named(role_name)
            if role is not None:
                return Principal(name=name, role=role)
        raise Unauthenticated("this API key is unknown or revoked; check the key, or ask an admin for one")


# Answers an exception raised before routing as the app's exception handlers would.
ErrorAnswer = Callable[[Scope, Receive, Send, Exception], Awaitable[None]]


class AuthenticateFirst:
    """ASGI wrapper around the app's router: authenticates every non-public request before
    routing, so an unknown path or method without a valid key answers 401, not 404 or 405."""

    def __init__(self, app: ASGIApp, keys: KeyRing, answer: ErrorAnswer) -> None:
        self.app = app
        self.keys = keys
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_public(scope["path"]):
            try:
                principal = await self.keys.principal(Headers.from_scope(scope).get("authorization"))
            except Exception as exc:
                await self.answer(scope, receive, send, exc)
                return
            state = scope.setdefault("state", {})
            state["principal"] = principal
        await self.app(scope, receive, send)


async def authorize(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Guard for every route: check the route's role against the caller `AuthenticateFirst`
    found (authenticating here when the app runs without it), and remember the caller."""
    if handler.opt.get("public") or is_public(connection.scope["path"]):
        return
    principal = connection.state.get("principal")
    if not isinstance(principal, Principal):
        keys: KeyRing = connection.app.state.key_ring
        principal = await keys.principal(connection.headers.get("authorization"))
    # Litestar's automatic OPTIONS answers (the allowed methods) hold no data: any key will do.
    options_only = getattr(handler, "http_methods", None) == {"OPTIONS"}
    needed: Role = handler.opt.get("role", Role.viewer if options_only else Role.admin)
    if principal.role < needed:
        raise Forbidden(
            f"this needs the {needed.name} role; your key ({principal.name}) has {principal.role.name}"
        )
    connection.state.principal = principal


def caller(connection: ASGIConnection) -> Principal:
    """The principal `authorize` found (routes with a role always have one)."""
    principal: Principal = connection.state.principal
    return principal
