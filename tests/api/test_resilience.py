"""The API under concurrent writers and outages: conflicts are 409s; a database or NATS that
cannot be reached is a 503 with Retry-After on every endpoint, never a 500; the API serves
again once they are back."""

from __future__ import annotations

import asyncio
import errno
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec
import nats.errors
import nats.js.errors
import pytest
from litestar.types import Message
from nats.errors import MaxPayloadError
from sqlalchemy import exc as sa_exc
from sqlalchemy import insert

from cronbus.api.app import create_app
from cronbus.api.problems import answer_exception, outage
from cronbus.shared.history.schema import runs
from cronbus.shared.natsd import EmbeddedNats
from cronbus.shared.settings import Settings
from tests.api.conftest import Api, _api
from tests.api.test_jobs import BACKUP, create
from tests.api.test_runs import T0
from tests.support import wait_for


async def test_concurrent_writers_cannot_both_win(lite_api: Api) -> None:
    api = lite_api
    job = await create(api)
    url = f"/v1/jobs/{job['id']}"
    for round_ in range(5):
        answers = await asyncio.gather(
            *(
                api.client.patch(url, json={"description": f"{round_}-{i}"}, headers=api.auth())
                for i in range(4)
            )
        )
        codes = sorted(a.status_code for a in answers)
        assert codes.count(200) >= 1, codes
        assert set(codes) <= {200, 409}, [a.text for a in answers]
    names = api.settings.names
    info = await api.bus.js.stream_info(names.jobs_stream)
    last = await api.bus.js.get_last_msg(names.jobs_stream, names.job_subject(job["id"]))
    # Every accepted write is exactly one event, and revisions have no gaps or repeats.
    head = await api.client.post(f"{url}/pause", headers=api.auth())
    assert head.json()["revision"] == info.state.messages + 1
    assert last.seq == info.state.messages


async def test_nats_restart_gives_503_then_recovers(lite_api: Api, nats_server: EmbeddedNats) -> None:
    api = lite_api
    await create(api)
    await nats_server.stop()

    ready = await wait_for(
        lambda: _status(api, "/readyz", 503), timeout=10, what="readyz to report NATS down"
    )
    assert ready["checks"]["nats"] != "ok"
    down = await api.client.post("/v1/jobs/00000000-0000-4000-8000-000000000000/pause", headers=api.auth())
    assert down.status_code == 503, down.text
    assert down.headers["content-type"].startswith("application/problem+json")

    await nats_server.start()
    await wait_for(lambda: _status(api, "/readyz", 200), timeout=20, what="readyz after restart")
    await create(api)


async def _status(api: Api, path: str, code: int) -> dict[str, object] | None:
    response = await api.client.get(path)
    return response.json() if response.status_code == code else None  # type: ignore[no-any-return]


class LoopbackProxy:
    """A TCP proxy on loopback in front of PostgreSQL: `stop()` is an outage the test causes
    (listener closed, every connection through it cut) without touching the server itself."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if self._pipes:
            await asyncio.wait(self._pipes, timeout=5)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, server_w}
        for reader, writer in ((client_r, server_w), (server_r, client_w)):
            task = asyncio.create_task(self._pipe(reader, writer))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)


@pytest.fixture
async def proxied_postgres(postgres_url: str) -> AsyncIterator[tuple[str, LoopbackProxy]]:
    """A fresh PostgreSQL database, reached through a proxy the test can stop and start."""
    url = urlsplit(postgres_url)
    proxy = LoopbackProxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    user = f"{url.username}@" if url.username else ""
    try:
        yield urlunsplit(url._replace(netloc=f"{user}127.0.0.1:{proxy.port}")), proxy
    finally:
        await proxy.stop()


@pytest.fixture
async def pg_outage_api(
    settings: Settings, proxied_postgres: tuple[str, LoopbackProxy]
) -> AsyncIterator[tuple[Api, LoopbackProxy]]:
    url, proxy = proxied_postgres
    async for api in _api(settings, url):
        yield api, proxy


def _assert_unavailable(response: httpx.Response, what: str) -> None:
    assert response.status_code == 503, (response.request.method, response.request.url, response.text)
    assert response.headers["retry-after"].isdigit(), response.headers
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 503
    assert what in problem["detail"] and "retry" in problem["detail"], problem


@pytest.mark.postgres
async def test_postgres_outage_answers_503_with_retry_after(
    pg_outage_api: tuple[Api, LoopbackProxy],
) -> None:
    api, proxy = pg_outage_api
    viewer = await api.add_key("viewer")
    job = await create(api)
    await api.project_jobs()
    run_id = str(uuid.uuid4())
    async with api.engine.begin() as conn:
        await conn.execute(
            insert(runs).values(
                id=run_id, job_id=job["id"], slot=T0, attempt=1, status="succeeded", trigger="manual",
                pool="default", output_bytes=0, truncated=False,
            )
        )  # fmt: skip
    reads = [
        "/v1/jobs",
        f"/v1/jobs/{job['id']}",
        f"/v1/jobs/{job['id']}/runs",
        f"/v1/runs/{run_id}",
        f"/v1/runs/{run_id}/log",
    ]
    for path in reads:
        assert (await api.client.get(path, headers=api.auth())).status_code == 200, path

    await proxy.stop()
    await api.engine.dispose()  # the test's own engine: its pooled connections were cut too
    # The admin key needs no database; each read does. A key from the table needs the database
    # to authenticate at all, so with it even NATS-only endpoints answer 503.
    answers: list[httpx.Response] = []
    for _round in range(3):  # pooled connections that were cut, then refused new ones
        for path in reads:
            answers.append(await api.client.get(path, headers=api.auth()))
        for path in [*reads, "/v1/status", "/v1/nowhere"]:
            answers.append(await api.client.get(path, headers=api.auth(viewer)))
        answers.append(await api.client.post("/v1/jobs", json=BACKUP, headers=api.auth(viewer)))
        answers.append(await api.client.post(f"/v1/runs/{run_id}/cancel", headers=api.auth()))
    for response in answers:
        _assert_unavailable(response, "history database")
    ready = await api.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.headers["retry-after"].isdigit()
    assert ready.json()["checks"]["database"] != "ok"
    # Writes go to NATS, which is up: creating a job does not need the database.
    assert (await api.client.post("/v1/jobs", json=BACKUP, headers=api.auth())).status_code == 201

    await proxy.start()
    await wait_for(lambda: _status(api, "/readyz", 200), timeout=20, what="readyz after the outage")
    for path in reads:
        assert (await api.client.get(path, headers=api.auth(viewer))).status_code == 200, path


async def test_nats_outage_answers_503_with_retry_after(lite_api: Api, nats_server: EmbeddedNats) -> None:
    api = lite_api
    job = await create(api)
    await api.project_jobs()
    await nats_server.stop()
    await wait_for(lambda: _status(api, "/readyz", 503), timeout=10, what="readyz to report NATS down")
    ready = await api.client.get("/readyz")
    assert ready.headers["retry-after"].isdigit()

    url = f"/v1/jobs/{job['id']}"
    requests = [
        ("POST", "/v1/jobs", BACKUP),
        ("PATCH", url, {"description": "changed"}),
        ("POST", f"{url}/pause", None),
        ("POST", f"{url}/runs", None),
        ("DELETE", url, None),
        ("GET", "/v1/status", None),
        ("GET", f"/v1/runs/{uuid.uuid4()}/log/stream", None),
        ("POST", f"/v1/runs/{uuid.uuid4()}/cancel", None),
    ]
    for method, path, body in requests:
        response = await api.client.request(method, path, json=body, headers=api.auth())
        _assert_unavailable(response, "NATS")
    # Reads of the history need only the database.
    assert (await api.client.get(url, headers=api.auth())).status_code == 200

    await nats_server.start()
    await wait_for(lambda: _status(api, "/readyz", 200), timeout=20, what="readyz after restart")
    assert (await api.client.get("/v1/status", headers=api.auth())).status_code == 200


async def test_a_message_larger_than_nats_carries_is_413_not_an_outage(lite_api: Api) -> None:
    api = lite_api
    limit = api.bus.nc.max_payload
    with pytest.raises(MaxPayloadError) as raised:
        await api.bus.nc.publish(api.settings.names.cancel_subject("x"), b"x" * (limit + 1))
    app = create_app(api.settings, bus=api.bus, engine=api.engine)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    scope: dict[str, Any] = {
        "type": "http", "method": "POST", "path": "/v1/jobs", "raw_path": b"/v1/jobs", "root_path": "",
        "scheme": "http", "query_string": b"", "headers": [], "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1), "litestar_app": app, "app": app, "state": {},
    }  # fmt: skip
    await answer_exception(scope, receive, send, raised.value)
    assert sent[0]["status"] == 413
    problem = msgspec.json.decode(sent[1]["body"])
    assert str(limit) in problem["detail"], problem
    assert outage(raised.value) is None


def _wrapped(orig: BaseException) -> sa_exc.DBAPIError:
    """What SQLAlchemy raises for a driver error: the driver's exception as `orig` and cause."""
    try:
        try:
            raise orig
        except BaseException as exc:
            raise sa_exc.DBAPIError.instance("SELECT 1", None, exc, Exception) from exc  # type: ignore[arg-type]
    except sa_exc.DBAPIError as wrapped:
        return wrapped


def _raised_by_asyncpg() -> BaseException:
    """A refused connection as asyncpg raises it (unwrapped, from inside asyncpg)."""

    async def connect() -> None:
        await asyncpg.connect(host="127.0.0.1", port=_closed_port(), timeout=5)

    try:
        asyncio.run(connect())
    except BaseException as exc:
        return exc
    raise AssertionError("connected to a closed port")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_raised_by_asyncpg, "the history database"),
        (lambda: _wrapped(sqlite3.OperationalError("database is locked")), "the history database"),
        (lambda: _wrapped(sqlite3.OperationalError("unable to open database file")), "the history database"),
        (
            lambda: _wrapped(asyncpg.ConnectionDoesNotExistError("connection was closed")),
            "the history database",
        ),
        (
            lambda: _wrapped(asyncpg.CannotConnectNowError("the database system is starting up")),
            "the history database",
        ),
        (lambda: sa_exc.TimeoutError("QueuePool limit reached"), "the history database"),
        (lambda: nats.errors.TimeoutError(), "NATS"),
        (lambda: nats.errors.NoRespondersError(), "NATS"),
        (lambda: nats.errors.ConnectionClosedError(), "NATS"),
        (lambda: nats.errors.ConnectionReconnectingError(), "NATS"),
        (lambda: nats.js.errors.NoStreamResponseError(), "NATS"),
        (lambda: nats.js.errors.ServiceUnavailableError(code=503), "NATS"),
        # Not outages: bugs and bad input stay 500 or their own 4xx.
        (lambda: MaxPayloadError(), None),
        (lambda: nats.js.errors.BadRequestError(code=400), None),
        (lambda: _wrapped(sqlite3.OperationalError("no such table: jobs")), None),
        (lambda: _wrapped(asyncpg.DataError("invalid input for query argument $1")), None),
        (lambda: _wrapped(sqlite3.IntegrityError("UNIQUE constraint failed")), None),
        (lambda: OSError(errno.ENAMETOOLONG, "File name too long"), None),
        (lambda: OverflowError("Python int too large to convert to SQLite INTEGER"), None),
        (lambda: ValueError("boom"), None),
    ],
)
def test_what_counts_as_an_outage(make: Any, expected: str | None) -> None:
    assert outage(make()) == expected
