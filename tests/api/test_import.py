"""`POST /v1/import/crontab`: a crontab in, jobs and skipped lines out; twice creates nothing new."""

from __future__ import annotations

from tests.api.conftest import Api
from tests.api.test_crontab import EVERYTHING, KEEPALIVED


async def jobs_on_stream(api: Api) -> int:
    return (await api.bus.js.stream_info(api.settings.names.jobs_stream)).state.messages


async def post(api: Api, text: str | bytes, query: str = "", key: str | None = None):  # type: ignore[no-untyped-def]
    return await api.client.post(
        f"/v1/import/crontab{query}",
        content=text.encode() if isinstance(text, str) else text,
        headers={**api.auth(*([key] if key else [])), "Content-Type": "text/plain"},
    )


async def test_import_the_keepalived_crontab_twice(lite_api: Api) -> None:
    first = await post(lite_api, KEEPALIVED)
    assert first.status_code == 201, first.text
    [job] = first.json()["items"]
    assert first.json()["skipped"] == []
    assert job["schedule"] == "0 * * * *" and job["executor"]["command"] == './if_master.sh "./command.sh"'
    assert job["catchup"]["policy"] == "skip" and job["labels"]["source"] == "crontab"
    count = await jobs_on_stream(lite_api)

    again = await post(lite_api, "# moved down a line\n" + KEEPALIVED)
    assert again.status_code == 201, again.text
    assert [j["id"] for j in again.json()["items"]] == [job["id"]]
    assert await jobs_on_stream(lite_api) == count


async def test_preview_options_and_skipped_lines(lite_api: Api) -> None:
    before = await jobs_on_stream(lite_api)
    preview = await post(
        lite_api, EVERYTHING, "?dry_run=true&pool=batch&prefix=legacy-&timezone=America/New_York"
    )
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert len(body["items"]) == 4 and all(j["pool"] == "batch" for j in body["items"])
    assert all(j["name"].startswith("legacy-") for j in body["items"])
    assert {s["line"] for s in body["skipped"]} == {8, 12, 13, 14, 15}
    assert all(s["reason"] and s["text"] for s in body["skipped"])
    assert await jobs_on_stream(lite_api) == before


async def test_bad_crontab_requests(lite_api: Api) -> None:
    viewer = await lite_api.add_key("viewer")
    assert (await post(lite_api, KEEPALIVED, key=viewer)).status_code == 403
    not_utf8 = await post(lite_api, b"0 * * * * echo \xff\xfe\n")
    assert not_utf8.status_code == 400 and "UTF-8" in not_utf8.text
    bad_zone = await post(lite_api, KEEPALIVED, "?timezone=Mars/Olympus")
    assert bad_zone.status_code == 201 and bad_zone.json()["items"] == []
    assert "Mars/Olympus" in bad_zone.json()["skipped"][0]["reason"]
    empty = await post(lite_api, "")
    assert empty.status_code == 201 and empty.json() == {"items": [], "skipped": []}
