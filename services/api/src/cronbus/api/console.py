"""The web console: static HTML, CSS and ES modules served at `/` (same origin as `/v1`, which
they call with `fetch`), and the two endpoints the console needs that other clients may use too:
who the caller is, and a preview of a schedule's next fires. The console's files hold no data,
so they are public; every `/v1` path stays authenticated."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import JSONBody
from litestar.router import Router
from litestar.static_files import create_static_files_router

from cronbus.api.auth import CONSOLE_ASSETS, caller
from cronbus.api.controllers import PUBLIC, VIEWER, problems
from cronbus.api.preview import preview

FILES = Path(__file__).parent / "console"

# No inline script or style, nothing from another origin; the page may only call its own API.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_HTML_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class WhoAmI(msgspec.Struct, kw_only=True):
    """The caller's key: its `name` (the actor of what it does) and `role`."""

    name: str
    role: str


class PreviewIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/schedule/preview`: the next `count` fires of `schedule` in `timezone` after
    `after` (default: now); `anchor` places an `@every` grid as a job's `anchor` does."""

    schedule: str
    timezone: str = "UTC"
    count: int = 10
    anchor: datetime | None = None
    after: datetime | None = None


class FireOut(msgspec.Struct, kw_only=True):
    """`at` in UTC, `local` the same instant in the zone; `note` says how DST moved it."""

    at: datetime
    local: datetime
    note: str | None = None


class PreviewOut(msgspec.Struct, kw_only=True):
    timezone: str
    fires: list[FireOut]


class ConsoleController(Controller):
    tags = ["console"]

    @get("/v1/whoami", opt=VIEWER, responses=problems(403), summary="The caller's key: name and role")
    async def whoami(self, request: Request[Any, Any, Any]) -> WhoAmI:
        principal = caller(request)
        return WhoAmI(name=principal.name, role=principal.role.name)

    @post(
        "/v1/schedule/preview",
        opt=VIEWER,
        status_code=200,
        responses=problems(400, 403, 422),
        summary="The next fires of a schedule, with daylight saving time notes",
        description="Nothing is stored. A schedule or time zone that a job would refuse is the same "
        "422, naming the field. A wall time that does not exist (clocks go forward) or occurs twice "
        "(clocks go back) gets a `note` on the fire it moves.",
    )
    async def schedule_preview(self, data: JSONBody[PreviewIn]) -> PreviewOut:
        after = data.after or datetime.now(UTC)
        fires = preview(data.schedule, data.timezone, after, data.count, data.anchor)
        return PreviewOut(
            timezone=data.timezone,
            fires=[FireOut(at=f.at, local=f.local, note=f.note) for f in fires],
        )


@get("/", opt=PUBLIC, include_in_schema=False, media_type="text/html; charset=utf-8")
async def console_page() -> Response[bytes]:
    """The console's single page (it routes with the URL's fragment, so no other path is HTML)."""
    return Response((FILES / "index.html").read_bytes(), headers=_HTML_HEADERS)


async def _with_policy(response: Response[Any]) -> Response[Any]:
    # Every file gets the page's headers: /console/index.html is the same page as `/`.
    response.headers.update(_HTML_HEADERS)
    return response


def console_files() -> Router:
    """The console's CSS and ES modules under CONSOLE_ASSETS."""
    return create_static_files_router(
        path=CONSOLE_ASSETS,
        directories=[FILES],
        opt=PUBLIC,
        include_in_schema=False,
        after_request=_with_policy,
        name="console",
    )
