"""Fixtures for the logs service: settings pointing at the test database, a publishing bus,
a running service, and a way to read the history back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.shared.bus import Bus
from cronbus.shared.history.store import create_engine, migrate
from cronbus.shared.settings import Settings


@pytest.fixture
def history_settings(settings: Settings, database_url: str) -> Settings:
    """The test's settings with the history on SQLite or PostgreSQL, retention passes off."""
    return replace(settings, database_url=database_url, history_retention_interval=0.0)


@pytest.fixture
async def history(history_settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine on the test's history database, migrated, for reading what was projected."""
    engine = create_engine(history_settings.sql_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
async def bus(history_settings: Settings) -> AsyncIterator[Bus]:
    bus = await Bus.open(history_settings, "test")
    yield bus
    await bus.close()
