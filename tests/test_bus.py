"""The embedded server and the idempotent bootstrap, against a real nats-server."""

from __future__ import annotations

import os
from dataclasses import replace

import nats
import pytest

from cronbus.shared.bus import Bus, ensure_topology
from cronbus.shared.natsd import EmbeddedNats
from cronbus.shared.settings import Settings


async def test_embedded_server_starts_on_loopback_and_stops_without_leaving_a_process(tmp_path):
    server = EmbeddedNats(tmp_path / "store")
    await server.start()
    pid = server.pid
    assert server.url.startswith("nats://127.0.0.1:")
    assert server.port > 0
    nc = await nats.connect(server.url)
    assert nc.is_connected
    await nc.close()
    await server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # type: ignore[arg-type]
    await server.stop()  # twice is harmless


async def test_bootstrap_is_idempotent_and_applies_changed_limits(settings: Settings):
    bus = await Bus.open(settings, "test")
    try:
        n = settings.names
        await ensure_topology(bus.js, settings)  # again: no error
        info = await bus.js.stream_info(n.dispatch_stream)
        assert info.config.subjects == [n.dispatch_all]
        changed = replace(settings, dispatch_max_age=3600.0, lease_ttl=3.0)
        await ensure_topology(bus.js, changed)
        info = await bus.js.stream_info(n.dispatch_stream)
        assert info.config.max_age == 3600.0
        kv = await bus.js.key_value(n.leader_bucket)
        assert (await kv.status()).ttl == pytest.approx(3.0)
        for stream in (n.jobs_stream, n.runs_stream, n.logs_stream):
            assert (await bus.js.stream_info(stream)).config.name == stream
    finally:
        await bus.close()


async def test_bootstrap_shortens_a_bucket_ttl(settings: Settings):
    """A shorter TTL than the bucket has (e.g. a lower CRONBUS_LEASE_TTL or CRONBUS_HEARTBEAT)
    shortens its dedupe window too: the server refuses a window longer than the max age."""
    bus = await Bus.open(settings, "test")
    try:
        await ensure_topology(bus.js, replace(settings, lease_ttl=1.0))
        kv = await bus.js.key_value(settings.names.leader_bucket)
        assert (await kv.status()).ttl == pytest.approx(1.0)
    finally:
        await bus.close()
