"""The api service as the `cronbus` command runs it: OpenAPI, port handling, stopping."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path

import httpx
import pytest

from cronbus.shared.cli import create_service
from cronbus.shared.listen import PortInUse
from cronbus.shared.settings import Settings
from tests.api.conftest import Api
from tests.support import wait_for


async def test_openapi_and_docs_are_served(lite_api: Api) -> None:
    response = await lite_api.client.get("/v1/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.")
    for path in (
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/runs",
        "/v1/runs/{run_id}",
        "/v1/runs/{run_id}/log",
    ):
        assert path in doc["paths"], sorted(doc["paths"])
    assert doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    create = doc["paths"]["/v1/jobs"]["post"]
    assert {"201", "401", "403", "422"} <= set(create["responses"])
    assert "application/problem+json" in create["responses"]["422"]["content"]
    docs = await lite_api.client.get("/v1/docs")
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]


async def test_service_contract_and_graceful_stop(settings: Settings, tmp_path: Path) -> None:
    settings = dataclasses.replace(
        settings, api_port=0, admin_key="k", database_url=f"sqlite:///{tmp_path / 'h.db'}"
    )
    service = create_service("api", settings)
    assert service.name == "api"
    stopping = asyncio.Event()
    task = asyncio.create_task(service.run(stopping))
    try:
        await wait_for(lambda: service.ready.is_set() or task.done(), timeout=20, what="ready")
        assert not task.done()
        url: str = service.url  # type: ignore[attr-defined]
        assert url.startswith("http://127.0.0.1:")
        assert not url.endswith(":0")
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=15)
    # The port is free again once run() returned.
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


async def test_taken_port_is_a_clear_error(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        service = create_service("api", dataclasses.replace(settings, api_port=port))
        with pytest.raises(PortInUse) as raised:
            await asyncio.wait_for(service.run(asyncio.Event()), timeout=10)
    message = str(raised.value)
    assert f"port {port} on 127.0.0.1 is already in use" in message
    assert "--api-port 0" in message
    assert not service.ready.is_set()


async def test_waits_for_nats_that_is_not_there_yet(settings: Settings, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"nats://127.0.0.1:{s.getsockname()[1]}"
    service = create_service("api", dataclasses.replace(settings, nats_url=dead, api_port=0))
    stopping = asyncio.Event()
    task = asyncio.create_task(service.run(stopping))
    try:
        # It keeps trying (and says so in the log) instead of failing...
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), timeout=1.0)
        assert not service.ready.is_set()
    finally:
        # ...and stops promptly when asked.
        stopping.set()
        await asyncio.wait_for(task, timeout=10)
