"""The API under concurrent writers and a NATS restart: conflicts are 409s, outages 503s,
and it serves again once NATS is back."""

from __future__ import annotations

import asyncio

from cronbus.shared.natsd import EmbeddedNats
from tests.api.conftest import Api
from tests.api.test_jobs import create
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
