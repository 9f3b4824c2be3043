"""Migrations: idempotent, and safe when several services run them at the same moment."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, insert, inspect, select

from cronbus.shared.history.schema import log_chunks, output_sizes
from cronbus.shared.history.store import (
    MIGRATIONS,
    WAL_CHECKPOINT_PAGES,
    WRITER_CACHE_MIB,
    create_engine,
    migrate,
)
from cronbus.shared.settings import async_database_url


async def test_concurrent_migrations_of_a_fresh_database_all_succeed(database_url, tmp_path):
    url = async_database_url(database_url, tmp_path)
    engines = [create_engine(url) for _ in range(3)]
    try:
        await asyncio.gather(*(migrate(e) for e in engines))
        await migrate(engines[0])  # and again: nothing to do
        async with engines[0].connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert {
            "jobs", "runs", "run_attempts", "log_chunks", "output_sizes", "projector_positions", "api_keys",
        } <= tables  # fmt: skip
    finally:
        for e in engines:
            await e.dispose()


async def test_upgrading_a_database_with_output_fills_in_output_sizes(database_url, tmp_path):
    """0002 adds `output_sizes` and fills it from the output already stored."""
    url = async_database_url(database_url, tmp_path)
    engine = create_engine(url)

    def upgrade_to_0001(connection: Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "0001")

    at = datetime(2026, 1, 1, tzinfo=UTC)
    chunks = [
        {"run_id": "r1", "attempt": 1, "seq": 0, "data": b"x" * 100},
        {"run_id": "r1", "attempt": 1, "seq": 1, "data": b"\x00" * 50},
        {"run_id": "r1", "attempt": 2, "seq": 0, "data": b""},
        {"run_id": "r2", "attempt": 1, "seq": 0, "data": "\u00e9t\u00e9\n".encode()},
    ]
    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade_to_0001)
            await conn.execute(insert(log_chunks), [{**c, "stream": "stdout", "at": at} for c in chunks])
        await migrate(engine)
        async with engine.connect() as conn:
            sizes = {row.run_id: row.bytes for row in await conn.execute(select(output_sizes))}
        assert sizes == {"r1": 150, "r2": 6}
    finally:
        await engine.dispose()


async def test_a_sqlite_history_writes_ahead_checkpoints_every_ten_thousand_pages_and_caches(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/history.db"
    names = ("journal_mode", "synchronous", "wal_autocheckpoint", "cache_size")
    found = []
    for engine in (create_engine(url), create_engine(url, cache_mib=WRITER_CACHE_MIB)):
        try:
            async with engine.connect() as conn:
                found.append([(await conn.exec_driver_sql(f"PRAGMA {name}")).scalar() for name in names])
            # The connection given back last is the next one handed out (its cache is warm).
            async with engine.connect() as outer:
                async with engine.connect() as inner:
                    other = (await inner.get_raw_connection()).driver_connection
                last = (await outer.get_raw_connection()).driver_connection
            async with engine.connect() as again:
                assert (await again.get_raw_connection()).driver_connection is last is not other
        finally:
            await engine.dispose()
    # synchronous 1 = NORMAL: a commit is durable across a crash of the process; the streams
    # still hold what the last commits before a power loss wrote. A negative cache_size is KiB.
    assert found == [
        ["wal", 1, WAL_CHECKPOINT_PAGES, -2000],
        ["wal", 1, WAL_CHECKPOINT_PAGES, -WRITER_CACHE_MIB * 1024],
    ]
    assert (WAL_CHECKPOINT_PAGES, WRITER_CACHE_MIB) == (10_000, 64)
