"""Engine creation and schema migration (Alembic, run programmatically)."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import weakref
from pathlib import Path
from typing import IO, Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant: serialises concurrent migrations from several services on PostgreSQL.
_MIGRATION_LOCK = 0x63726F6E


# See create_engine.
WAL_CHECKPOINT_PAGES = 10_000
# The SQLite page cache of the history's writer: the indexes of ~200,000 runs. Smaller, most
# index pages a batch updates are read back from the file first (at 2,000 runs a second with
# SQLite's 2 MiB, about 14 reads per run; with this, 3).
WRITER_CACHE_MIB = 64


class DatabaseUnavailable(RuntimeError):
    """The history database cannot be reached or used; the message says which URL."""


def create_engine(url: str, *, cache_mib: int | None = None) -> AsyncEngine:
    """An async engine; SQLite gets WAL and a busy timeout so readers and the writer coexist.

    `cache_mib`: SQLite's page cache per connection, when not its default of 2 MiB (the logs
    service's writer takes WRITER_CACHE_MIB).
    """
    if url.startswith("sqlite"):
        # A connection's page cache lasts from one transaction to the next unless another
        # connection wrote in between; handing out the connection used last keeps the
        # writer on one connection and its cache warm (a queue would rotate through all).
        engine = create_async_engine(url, connect_args={"timeout": 30}, pool_use_lifo=True)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            # Checkpoint the WAL every 10,000 pages (~40 MiB) instead of 1,000: the history's
            # inserts dirty pages all over its indexes (run ids are random), and a page written
            # by many commits is copied back once per checkpoint; about a fifth of the
            # projection's SQLite time at a live pace of small batches.
            cur.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            if cache_mib is not None:
                cur.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")
            cur.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _alembic_config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
    command.upgrade(_alembic_config(connection), "head")


# Alembic's migration context is process-global: one migration at a time per process
# (a lock per event loop, since a loop's lock cannot be awaited from another loop).
_in_process: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _lock_sqlite_file(database: str) -> IO[str]:
    """Serialise migrations of one SQLite file across processes (PostgreSQL uses an advisory
    lock). Blocks: call it on a worker thread. Closing the handle releases the lock."""
    handle = open(f"{database}.migrate-lock", "a")  # noqa: SIM115 - held across awaits, closed below
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision. Idempotent; safe from several services at once."""
    database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if database == ":memory:":
        database = None
    if database:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    lock = _in_process.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:
        try:
            handle = await asyncio.to_thread(_lock_sqlite_file, database) if database else None
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(_upgrade)
            finally:
                if handle is not None:
                    handle.close()
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot reach {engine.url.render_as_string()}: {exc}") from exc
