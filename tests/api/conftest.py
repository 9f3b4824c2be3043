"""Fixtures for the api tests: the real api service (uvicorn on a free port) over a real
nats-server and a real history database (SQLite, and PostgreSQL when configured), driven with
httpx. (Litestar's AsyncTestClient runs the app on another thread's event loop, where the
NATS connection, bound to the test's loop, cannot be used.)"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import msgspec
import pytest
from nats.js.errors import NotFoundError
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.api.app import ApiService
from cronbus.api.auth import key_hash
from cronbus.api.domain import JobState, evolve
from cronbus.shared.bus import Bus
from cronbus.shared.events import decode_job_event
from cronbus.shared.history.schema import api_keys, jobs
from cronbus.shared.history.store import create_engine
from cronbus.shared.settings import Settings
from tests.support import wait_for

ADMIN_KEY = "test-admin-key-" + uuid.uuid4().hex


@dataclass
class Api:
    """One test's API: an HTTP client, plus the bus and database behind it."""

    client: httpx.AsyncClient
    bus: Bus
    engine: AsyncEngine
    settings: Settings

    def auth(self, key: str = ADMIN_KEY) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async def add_key(self, role: str, name: str | None = None) -> str:
        key = "k-" + uuid.uuid4().hex
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(api_keys).values(
                    id=str(uuid.uuid4()),
                    name=name or f"{role}-key",
                    role=role,
                    key_hash=key_hash(key),
                    created_at=datetime.now().astimezone(),
                )
            )
        return key

    async def project_jobs(self) -> None:
        """Stand in for the logs service: fold JOBS into the `jobs` table (test only)."""
        names = self.settings.names
        states: dict[str, JobState] = {}
        seq = 0
        while True:
            try:
                msg = await self.bus.js.get_msg(
                    names.jobs_stream, seq=seq + 1, subject=names.jobs_all, next=True
                )
            except NotFoundError:
                break
            assert msg.seq is not None
            seq = msg.seq
            event = decode_job_event(msg.data or b"")
            state = evolve(states.get(event.job_id), event)
            if state is not None:
                states[event.job_id] = state
        async with self.engine.begin() as conn:
            await conn.execute(delete(jobs))
            for s in states.values():
                await conn.execute(
                    insert(jobs).values(
                        id=s.id,
                        name=s.spec.name,
                        spec=msgspec.to_builtins(s.spec),
                        revision=s.revision,
                        paused=s.paused,
                        deleted=s.deleted,
                        created_at=s.created_at,
                        updated_at=s.updated_at,
                    )
                )


async def _api(settings: Settings, db_url: str) -> AsyncIterator[Api]:
    """The real service (uvicorn on a free port) and an httpx client; the test's own bus and
    engine look behind it."""
    settings = dataclasses.replace(settings, admin_key=ADMIN_KEY, database_url=db_url, api_port=0)
    service = ApiService(settings, revision_wait=1.0)
    stopping = asyncio.Event()
    serving = asyncio.create_task(service.run(stopping))
    bus = await Bus.open(settings, "api-test", bootstrap=False)
    engine = create_engine(settings.sql_url)
    try:
        await wait_for(lambda: service.ready.is_set() or serving.done(), timeout=20, what="api ready")
        if serving.done():
            await serving  # raises why it did not start
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            yield Api(client=client, bus=bus, engine=engine, settings=settings)
    finally:
        stopping.set()
        try:
            await asyncio.wait_for(serving, timeout=15)
        finally:
            await engine.dispose()
            await bus.close()


@pytest.fixture
async def api(settings: Settings, database_url: str) -> AsyncIterator[Api]:
    """The API on SQLite and on PostgreSQL."""
    async for value in _api(settings, database_url):
        yield value


@pytest.fixture
async def lite_api(settings: Settings, tmp_path: Path) -> AsyncIterator[Api]:
    """The API on SQLite only, for tests where the database does not matter (validation)."""
    async for value in _api(settings, f"sqlite:///{tmp_path / 'api.db'}"):
        yield value
