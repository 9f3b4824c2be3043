"""API keys and roles: who may call what.

A key is the bootstrap admin key from the settings (compared in constant time), a key made
through `POST /v1/keys` (kept in the KV bucket every replica mirrors, see `keys`), or a row in
the `api_keys` table holding the key's sha256 hex digest. A revoked or expired key is refused
with a detail that says so; using an expired one is audited. `AuthenticateFirst` checks the key of
every request before routing, so a caller without a valid key learns nothing about which
paths or methods exist (401 everywhere); then each route's guard checks the role it declares
in its `opt` (`role`). The health endpoints, the OpenAPI document and the docs are public.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from litestar.connection import ASGIConnection
from litestar.datastructures import Headers
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Receive, Scope, Send

from cronbus.api.audit import KEY_EXPIRED_USED, AuditLog
from cronbus.api.domain import Principal, Role
from cronbus.api.history import History
from cronbus.api.keys import ApiKey, KeyStore, key_hash

# The docs UI and its copy of the schema: public like /v1/openapi.json (they hold no data).
DOCS_PATH = "/v1/docs"
OPENAPI_PATH = "/v1/openapi.json"
# The web console: its page at "/" and its files below CONSOLE_ASSETS hold no data either.
CONSOLE_ASSETS = "/console"
# /metrics holds counts and durations only (no ids, no names), for Prometheus to scrape.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", OPENAPI_PATH, DOCS_PATH, "/", "/metrics"})


def is_public(path: str) -> bool:
    """Paths anyone may call: health, and the API's description (they hold no data)."""
    return path in PUBLIC_PATHS or path.startswith((DOCS_PATH + "/", CONSOLE_ASSETS + "/"))


class Unauthenticated(Exception):
    """No key, a malformed Authorization header, or a key nobody issued."""


class Forbidden(Exception):
    """A valid key whose role does not allow the request."""


# An expired key used again and again is audited at most once a minute per replica (and the
# AUDIT stream's dedupe drops the other replicas' records of the same minute).
_EXPIRED_AUDIT_EVERY = 60.0


class KeyRing:
    def __init__(
        self,
        admin_key: str,
        history: History,
        clock: Callable[[], datetime],
        *,
        keys: KeyStore | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self._admin = admin_key.encode()
        self.history = history
        self.clock = clock
        self.keys = keys
        self.audit = audit
        self._expired_audited: dict[str, float] = {}

    async def principal(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthenticated("send 'Authorization: Bearer <api key>'; `cronbus up` prints an admin key")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated("the Authorization header must read 'Bearer <api key>'")
        if self._admin and hmac.compare_digest(key.encode(), self._admin):
            return Principal(name="admin", role=Role.admin)
        digest = key_hash(key)
        made = self.keys.find(digest) if self.keys is not None else None
        if made is not None:
            return await self._made_key(made)
        found = await self.history.role_of_key(digest, self.clock())
        if found is not None:
            name, role_name = found
            role = Role.named(role_name)
            if role is not None:
                return Principal(name=name, role=role)
        raise Unauthenticated("this API key is unknown or revoked; check the key, or ask an admin for one")

    async def _made_key(self, key: ApiKey) -> Principal:
        """The principal of a key from the bucket, unless it is revoked or expired."""
        now = self.clock()
        if key.revoked_at is not None:
            raise Unauthenticated(
                f"this API key ({key.name}) was revoked at {key.revoked_at.isoformat()}; "
                "ask an admin for a new one"
            )
        if key.expires_at is not None and key.expires_at <= now:
            await self._audit_expired(key, key.expires_at, now)
            raise Unauthenticated(
                f"this API key ({key.name}) expired at {key.expires_at.isoformat()}; "
                "ask an admin for a new one"
            )
        role = Role.named(key.role)
        if role is None:
            raise Unauthenticated(f"this API key ({key.name}) has an unknown role {key.role!r}")
        return Principal(name=key.name, role=role)

    async def _audit_expired(self, key: ApiKey, expired_at: datetime, now: datetime) -> None:
        if self.audit is None:
            return
        last = self._expired_audited.get(key.id)
        tick = time.monotonic()
        if last is not None and tick - last < _EXPIRED_AUDIT_EVERY:
            return
        self._expired_audited[key.id] = tick
        minute = int(now.timestamp() // _EXPIRED_AUDIT_EVERY)
        await self.audit.record(
            KEY_EXPIRED_USED,
            key.name,
            detail={"key_id": key.id, "name": key.name, "expires_at": expired_at.isoformat()},
            msg_id=f"{KEY_EXPIRED_USED}:{key.id}:{minute}",
            at=now,
        )


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
