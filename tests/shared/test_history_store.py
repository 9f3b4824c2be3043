"""Migrations: idempotent, and safe when several services run them at the same moment."""

from __future__ import annotations

import asyncio

from sqlalchemy import inspect

from cronbus.shared.history.store import create_engine, migrate
from cronbus.shared.settings import async_database_url


async def test_concurrent_migrations_of_a_fresh_database_all_succeed(database_url, tmp_path):
    url = async_database_url(database_url, tmp_path)
    engines = [create_engine(url) for _ in range(3)]
    try:
        await asyncio.gather(*(migrate(e) for e in engines))
        await migrate(engines[0])  # and again: nothing to do
        async with engines[0].connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert {"jobs", "runs", "run_attempts", "log_chunks", "projector_positions", "api_keys"} <= tables
    finally:
        for e in engines:
            await e.dispose()
