"""What the console needs from the API: its page and files without a key (with a strict
Content-Security-Policy), `/v1/whoami`, and `/v1/schedule/preview`."""

from __future__ import annotations

from tests.api.conftest import Api, api, lite_api  # noqa: F401  (fixtures)


async def test_the_page_and_its_files_are_public_and_strict(lite_api: Api) -> None:  # noqa: F811
    page = await lite_api.client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert '<script type="module" src="/console/app.js">' in page.text
    script = await lite_api.client.get("/console/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert script.headers["content-security-policy"] == policy
    # Only the console's own paths are open: the rest still answers 401 before routing.
    for path in ("/v1/jobs", "/v1/whoami", "/nowhere", "/console-not", "/index.html"):
        assert (await lite_api.client.get(path)).status_code == 401, path
    assert (await lite_api.client.get("/console/nothing.js")).status_code == 404
    assert (await lite_api.client.get("/console/%2E%2E/auth.py")).status_code != 200


async def test_whoami_names_the_key_and_its_role(api: Api) -> None:  # noqa: F811
    viewer = await api.add_key("viewer", name="grafana")
    answer = await api.client.get("/v1/whoami", headers=api.auth(viewer))
    assert answer.json() == {"name": "grafana", "role": "viewer"}
    assert (await api.client.get("/v1/whoami", headers=api.auth())).json() == {
        "name": "admin",
        "role": "admin",
    }
    assert (await api.client.get("/v1/whoami", headers=api.auth("wrong"))).status_code == 401


async def test_preview_lists_fires_with_dst_notes(lite_api: Api) -> None:  # noqa: F811
    viewer = await lite_api.add_key("viewer")
    answer = await lite_api.client.post(
        "/v1/schedule/preview",
        json={
            "schedule": "30 2 * * *",
            "timezone": "Europe/Berlin",
            "count": 2,
            "after": "2027-03-27T00:00:00Z",
        },
        headers=lite_api.auth(viewer),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "timezone": "Europe/Berlin",
        "fires": [
            {"at": "2027-03-27T01:30:00Z", "local": "2027-03-27T02:30:00+01:00", "note": None},
            {
                "at": "2027-03-28T01:00:00Z",
                "local": "2027-03-28T03:00:00+02:00",
                "note": "02:30 does not exist on 2027-03-28 (clocks go forward), fires at 03:00",
            },
        ],
    }


async def test_preview_refuses_bad_input_at_the_field(lite_api: Api) -> None:  # noqa: F811
    for body, field in [
        ({"schedule": "0 0 30 2 *"}, "schedule"),
        ({"schedule": "0 3 * * *", "timezone": "Mars/Olympus"}, "timezone"),
        ({"schedule": "0 3 * * *", "count": 0}, "count"),
        ({"schedule": "0 3 * * *", "shedule": "x"}, None),
    ]:
        answer = await lite_api.client.post("/v1/schedule/preview", json=body, headers=lite_api.auth())
        assert answer.status_code == 422, (body, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        if field:
            assert [e["field"] for e in answer.json()["errors"]] == [field], answer.text
