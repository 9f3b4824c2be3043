"""HTTP controllers of the admin endpoints: API keys (`/v1/keys`) and the audit log
(`/v1/audit`). Like `controllers`, they only translate HTTP; `keys` and `audit` do the work."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_204_NO_CONTENT

from cronbus.api.audit import ACTIONS, AuditPage, AuditReader
from cronbus.api.auth import caller
from cronbus.api.controllers import ADMIN, Limit, PageCursor, problems
from cronbus.api.keys import KeyCreated, KeyIn, KeyPage, KeyStore

KeyId = Annotated[str, PathParameter(description="the key's id", format="uuid")]


class KeyController(Controller):
    path = "/v1/keys"
    tags = ["keys"]

    @post(
        "/",
        status_code=201,
        opt=ADMIN,
        responses=problems(400, 403, 422),
        summary="Make an API key",
        description="The answer holds the key's secret (`key`): it is shown only here, and stored "
        "only as a SHA-256 digest. `role` is viewer, operator or admin; `expires_at` (optional) is "
        "an ISO-8601 time with an offset, in the future. Every API replica knows the key at once.",
    )
    async def create(
        self, request: Request[Any, Any, Any], data: JSONBody[KeyIn], keys: NamedDependency[KeyStore]
    ) -> KeyCreated:
        return await keys.create(data, caller(request))

    @get("/", opt=ADMIN, responses=problems(403, 422), summary="List API keys (oldest first, no secrets)")
    async def list_keys(
        self, keys: NamedDependency[KeyStore], cursor: PageCursor = None, limit: Limit = 50
    ) -> KeyPage:
        return keys.list(cursor=cursor, limit=limit)

    @delete(
        "/{key_id:str}",
        opt=ADMIN,
        status_code=HTTP_204_NO_CONTENT,
        responses=problems(403, 404, 422),
        summary="Revoke an API key",
        description="Every replica refuses the key within about a second (usually milliseconds). "
        "Revoking a revoked key again is fine.",
    )
    async def revoke(
        self, request: Request[Any, Any, Any], key_id: KeyId, keys: NamedDependency[KeyStore]
    ) -> None:
        await keys.revoke(key_id, caller(request))


class AuditController(Controller):
    path = "/v1/audit"
    tags = ["audit"]

    @get(
        "/",
        opt=ADMIN,
        responses=problems(403, 422),
        summary="The audit log (newest first)",
        description="Who did what: " + ", ".join(f"`{a}`" for a in ACTIONS) + ". Filters combine; "
        "`since` is an ISO-8601 time with an offset (records at or after it).",
    )
    async def audit(
        self,
        audit_reader: NamedDependency[AuditReader],
        job_id: Annotated[str | None, QueryParameter(description="only this job's records")] = None,
        actor: Annotated[str | None, QueryParameter(description="only this actor's (a key's name)")] = None,
        action: Annotated[
            str | None, QueryParameter(description="only this action, e.g. `job.created`")
        ] = None,
        since: Annotated[str | None, QueryParameter(description="only records at or after this time")] = None,
        cursor: PageCursor = None,
        limit: Limit = 50,
    ) -> AuditPage:
        return await audit_reader.page(
            job_id=job_id, actor=actor, action=action, since=since, cursor=cursor, limit=limit
        )
