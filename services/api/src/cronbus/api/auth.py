"""API keys and roles: who may call what.

A key is either the bootstrap admin key from the settings (compared in constant time) or a
row in `api_keys` holding the key's sha256 hex digest. Each route declares the role it needs
in its `opt` (`role`); health routes are `public`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import datetime

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from cronbus.api.domain import Principal, Role
from cronbus.api.history import History

# The docs UI and its copy of the schema: public like /v1/openapi.json (they hold no data).
DOCS_PATH = "/v1/docs"


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


async def authorize(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Guard for every route: authenticate, check the route's role, remember the caller."""
    path = connection.scope["path"]
    if handler.opt.get("public") or path == DOCS_PATH or path.startswith(DOCS_PATH + "/"):
        return
    keys: KeyRing = connection.app.state.key_ring
    principal = await keys.principal(connection.headers.get("authorization"))
    needed: Role = handler.opt.get("role", Role.admin)
    if principal.role < needed:
        raise Forbidden(
            f"this needs the {needed.name} role; your key ({principal.name}) has {principal.role.name}"
        )
    connection.state.principal = principal


def caller(connection: ASGIConnection) -> Principal:
    """The principal `authorize` found (routes with a role always have one)."""
    principal: Principal = connection.state.principal
    return principal
