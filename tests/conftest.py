"""Fixtures: a real nats-server per test (from the wheel, free port, temp store), settings
with a unique prefix, and history databases on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cronbus.shared.natsd import EmbeddedNats
from cronbus.shared.settings import Settings, build_settings

PG_ENV = "CRONBUS_TEST_DATABASE_URL"


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats(tmp_path / "nats", log_file=tmp_path / "nats-server.log") as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def settings(nats_server: EmbeddedNats, prefix: str, tmp_path: Path) -> Settings:
    """Settings for one test: its own server, prefix and data dir; fast leases and acks."""
    return build_settings(
        environ={},
        nats_url=nats_server.url,
        prefix=prefix,
        instance_id=f"test-{prefix}",
        data_dir=tmp_path / "data",
        lease_ttl=2.0,
        lease_renew=0.3,
        lease_margin=0.5,
        ack_wait=5.0,
        heartbeat=1.0,
        grace_period=5.0,
    )


def _pg_url() -> str | None:
    return os.environ.get(PG_ENV) or None


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    url = _pg_url()
    if not url:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    return url


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import asyncio

    import asyncpg

    name = "cronbus_t_" + uuid.uuid4().hex[:12]
    admin = postgres_admin_url.replace("postgresql+asyncpg://", "postgresql://")

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    base = admin.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs on SQLite and on PostgreSQL (skipped, with the reason, without it)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.db'}"
    return str(request.getfixturevalue("postgres_url"))
