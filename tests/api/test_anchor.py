"""`@every` jobs are anchored within one interval of their creation time, at a phase taken from
their id (or where the client says), and `POST /v1/jobs?dry_run=true` checks input without
creating anything."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from cronbus.api.domain import phase_offset
from cronbus.shared.events import decode_job_event
from tests.api.conftest import Api


def every(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "schedule": "@every 1m", "executor": {"type": "shell", "command": "true"}, **fields}


async def jobs_stream_count(api: Api) -> int:
    return (await api.bus.js.stream_info(api.settings.names.jobs_stream)).state.messages


async def test_an_interval_job_first_fires_within_an_interval_of_its_creation_and_cron_is_left_alone(
    lite_api: Api,
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    answer = await lite_api.client.post("/v1/jobs", json=every("tick"), headers=lite_api.auth())
    assert answer.status_code == 201, answer.text
    job = answer.json()
    anchor = datetime.fromisoformat(job["anchor"])
    created = datetime.fromisoformat(job["created_at"])
    created_ms = created.replace(microsecond=created.microsecond // 1000 * 1000)
    assert anchor - created_ms == phase_offset(job["id"], 60.0)
    assert before <= anchor < datetime.now(UTC) + timedelta(minutes=1) and anchor.microsecond % 1000 == 0
    assert datetime.fromisoformat(job["next_fires"][0]) <= created + timedelta(minutes=1)
    fires = [datetime.fromisoformat(f) for f in job["next_fires"]]
    assert all((f - anchor) % timedelta(minutes=1) == timedelta(0) for f in fires)
    names = lite_api.settings.names
    stored = decode_job_event(
        (await lite_api.bus.js.get_last_msg(names.jobs_stream, names.job_subject(job["id"]))).data
    )
    assert stored.spec.anchor == anchor  # type: ignore[union-attr]

    cron = await lite_api.client.post(
        "/v1/jobs", json={**every("hourly"), "schedule": "0 * * * *"}, headers=lite_api.auth()
    )
    assert cron.json()["anchor"] is None
    assert all(datetime.fromisoformat(f).minute == 0 for f in cron.json()["next_fires"])


async def test_jobs_created_together_spread_over_their_interval(lite_api: Api) -> None:
    """A batch of 500 `@every 1m` jobs, created in one instant: no self-made herd."""
    batch = [every(f"herd-{i}") for i in range(500)]
    answer = await lite_api.client.post("/v1/jobs", json=batch, headers=lite_api.auth())
    assert answer.status_code == 201, answer.text
    seconds = Counter(datetime.fromisoformat(job["next_fires"][0]).second for job in answer.json()["items"])
    # Uniform would be ~8.3 a second; the same instant would be 500 in one.
    assert len(seconds) == 60 and max(seconds.values()) <= 25, seconds


def test_a_phase_offset_is_within_the_interval_and_the_same_everywhere() -> None:
    assert phase_offset("job-a", 60.0) == phase_offset("job-a", 60.0)
    offsets = {phase_offset(f"job-{i}", 1.5) for i in range(200)}
    assert all(timedelta(0) <= o < timedelta(seconds=1.5) for o in offsets) and len(offsets) > 150


async def test_an_explicit_anchor_aligns_to_round_times(lite_api: Api) -> None:
    answer = await lite_api.client.post(
        "/v1/jobs", json=every("round", anchor="2026-01-01T00:00:00Z"), headers=lite_api.auth()
    )
    assert answer.status_code == 201, answer.text
    assert all(datetime.fromisoformat(f).second == 0 for f in answer.json()["next_fires"])
    bad = await lite_api.client.post("/v1/jobs", json=every("naive", anchor="2026-01-01T00:00:00"),
                                     headers=lite_api.auth())  # fmt: skip
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "anchor"


async def test_changing_a_job_keeps_its_anchor(lite_api: Api) -> None:
    job = (await lite_api.client.post("/v1/jobs", json=every("keep"), headers=lite_api.auth())).json()
    changed = await lite_api.client.patch(
        f"/v1/jobs/{job['id']}", json={"description": "x"}, headers=lite_api.auth()
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["anchor"] == job["anchor"]


async def test_dry_run_checks_everything_and_appends_nothing(lite_api: Api) -> None:
    before = await jobs_stream_count(lite_api)
    one = await lite_api.client.post("/v1/jobs?dry_run=true", json=every("maybe"), headers=lite_api.auth())
    assert one.status_code == 200 and one.json()["name"] == "maybe" and one.json()["next_fires"]
    many = await lite_api.client.post(
        "/v1/jobs?dry_run=true", json=[every("a"), every("b")], headers=lite_api.auth()
    )
    assert many.status_code == 200 and [j["name"] for j in many.json()["items"]] == ["a", "b"]
    bad = await lite_api.client.post(
        "/v1/jobs?dry_run=true", json=[every("a"), every("b", schedule="61 * * * *")], headers=lite_api.auth()
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "[1].schedule"
    assert await jobs_stream_count(lite_api) == before
