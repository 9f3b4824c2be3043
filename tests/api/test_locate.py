"""Finding a run the history is projecting at that very moment (cancel or tail right after
"run now"): whatever the interleaving with the projector, the run is found."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert

from cronbus.api.history import History
from cronbus.api.journal import Journal
from cronbus.api.runs import Runs
from cronbus.shared.history.schema import projector_positions
from cronbus.shared.names import Names
from tests.api.conftest import Api
from tests.api.test_jobs import create
from tests.api.test_runs import LONG


class ProjectedMeanwhile(History):
    """A history whose projector commits the dispatch right after the run was looked up."""

    def __init__(self, api: Api) -> None:
        super().__init__(api.engine)
        self.api = api

    async def run(self, run_id: str) -> Any:
        found = await super().run(run_id)
        info = await self.api.bus.js.stream_info(self.api.settings.names.dispatch_stream)
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(projector_positions).values(
                    consumer=Names.logs_consumer("dispatch"),
                    stream_seq=info.state.last_seq,
                    updated_at=datetime.now(UTC),
                )
            )
        return found


async def test_a_run_projected_between_two_reads_is_found(lite_api: Api) -> None:
    job = await create(lite_api, LONG)
    accepted = await lite_api.client.post(f"/v1/jobs/{job['id']}/runs", headers=lite_api.auth())
    run_id = accepted.json()["id"]
    runs = Runs(Journal(lite_api.bus), ProjectedMeanwhile(lite_api))
    head = await runs.locate(run_id)
    assert head.identity.run_id == run_id
