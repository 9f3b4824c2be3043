"""The console in a real browser (Debian's Chromium through Playwright) against `cronbus up`:
what a person does with it, and that no page logs an error."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.console.conftest import Browser, Stack, sign_in
from tests.support import wait_for_sync

pytestmark = pytest.mark.usefixtures("chromium_required")


def make_job(stack: Stack, name: str, command: str, schedule: str = "0 0 1 1 *", **extra: object) -> dict:
    with stack.client() as client:
        answer = client.post(
            "/v1/jobs",
            json={
                "name": name,
                "schedule": schedule,
                "executor": {"type": "shell", "command": command},
                **extra,
            },
        )
        assert answer.status_code == 201, answer.text
        return answer.json()


async def test_sign_in_with_a_wrong_then_a_right_key_and_sign_out(stack: Stack, browser: Browser) -> None:
    from playwright.async_api import expect

    page = browser.page
    await page.goto(stack.api_url + "/")
    await page.get_by_label("API key").fill("not-a-key")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#key-error")).to_have_text("This key is unknown, expired or revoked.")
    browser.expect_http_error(401, "/v1/whoami")
    await browser.shot("sign-in")
    # From the keyboard alone: the key field has the focus, Enter signs in.
    await page.get_by_label("API key").fill("")
    await page.keyboard.type(stack.admin_key)
    await page.keyboard.press("Enter")
    await expect(page.locator("#who-name")).to_have_text("admin · admin")
    await expect(page.get_by_role("heading", name="Schedule")).to_be_visible()
    # The key is in this tab's session storage only: not in the URL, not in a cookie.
    assert stack.admin_key not in page.url
    assert await page.context.cookies() == []
    assert await page.evaluate("sessionStorage.getItem('cronbus.key')") == stack.admin_key
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("API key")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('cronbus.key')") is None


async def test_create_a_job_see_it_run_follow_its_live_log_pause_and_resume(
    stack: Stack, browser: Browser
) -> None:
    from playwright.async_api import expect

    page = browser.page
    await sign_in(browser, stack.admin_key)
    await page.get_by_role("link", name="New job").click()
    name = f"ticker-{uuid.uuid4().hex[:6]}"
    await page.get_by_label("Name", exact=True).fill(name)
    await page.get_by_label("Command").fill("echo tick-start; sleep 3; echo tick-end")
    await page.get_by_label("Overlap").select_option("skip")
    await page.get_by_label("Schedule", exact=True).fill("61 * * * *")
    # The preview refuses it as it is typed, at the field ...
    schedule_error = page.locator('[data-error-for="schedule"]')
    await expect(schedule_error).to_contain_text("61")
    browser.expect_http_error(422, "/v1/schedule/preview")
    # ... and so does the save, at the same field, with nothing created.
    await page.get_by_role("button", name="Create").click()
    await expect(page.get_by_label("Schedule", exact=True)).to_have_attribute("aria-invalid", "true")
    await expect(schedule_error).to_contain_text("61")
    browser.expect_http_error(422, "/v1/jobs")
    await browser.shot("editor-error")
    await page.get_by_label("Schedule", exact=True).fill("@every 5s")
    await expect(schedule_error).to_be_empty()
    await expect(page.locator(".preview li")).to_have_count(10)
    await browser.shot("editor")
    await page.get_by_role("button", name="Create").click()

    # The job page: the scheduler runs it, and the run shows up in its history.
    await expect(page.get_by_role("heading", name=re.compile(name))).to_be_visible()
    run_link = page.locator("tbody a[href^='#/runs/']").first
    await expect(run_link).to_be_visible(timeout=20_000)
    await run_link.click()

    # The run page follows the output live: the first line is there before the run ends.
    log = page.locator("#log")
    await expect(log).to_contain_text("tick-start", timeout=15_000)
    assert "tick-end" not in await log.inner_text()
    await expect(page.locator("h1 .badge")).to_have_text("running")
    await browser.shot("run-live")
    await expect(log).to_contain_text("tick-end", timeout=15_000)
    await expect(page.locator("h1 .badge")).to_have_text("succeeded", timeout=15_000)
    await browser.shot("run")

    # Pause and resume from the job page.
    await page.get_by_role("link", name=name).click()
    await page.get_by_role("button", name="Pause").click()
    await expect(page.locator("h1 .state")).to_have_text("paused")
    with stack.client() as client:
        job = client.get("/v1/jobs", params={"q": name}).json()["items"][0]
        # The history has the pause a moment after the answer the page showed.
        wait_for_sync(lambda: client.get(f"/v1/jobs/{job['id']}").json()["paused"], timeout=10, what="paused")
    await browser.shot("job")
    await page.get_by_role("button", name="Resume").click()
    await expect(page.locator("h1 .state")).not_to_have_text("paused")
    # Why didn't it run? The slots of the last hour, the dispatched ones with their runs.
    await page.get_by_role("button", name="Show slots").click()
    await expect(page.locator(".o-dispatched").first).to_be_visible()
    await browser.shot("job-slots")
    with stack.client() as client:
        wait_for_sync(
            lambda: not client.get(f"/v1/jobs/{job['id']}").json()["paused"], timeout=10, what="resumed"
        )
        client.post(f"/v1/jobs/{job['id']}/pause")  # quiet for the other tests


async def test_run_now_then_cancel_the_long_run(stack: Stack, browser: Browser) -> None:
    from playwright.async_api import expect

    job = make_job(stack, f"long-{uuid.uuid4().hex[:6]}", "echo long-start; sleep 120")
    page = browser.page
    await sign_in(browser, stack.admin_key)
    await page.goto(f"{stack.api_url}/#/jobs/{job['id']}")
    await page.get_by_role("button", name="Run now").click()
    await expect(page).to_have_url(re.compile(r"#/runs/"))
    await expect(page.locator("#log")).to_contain_text("long-start", timeout=20_000)
    await page.get_by_role("button", name="Cancel run").click()
    await expect(page.locator("h1 .badge")).to_have_text("cancelled", timeout=20_000)
    await expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    run_id = page.url.rsplit("/", 1)[1]
    with stack.client() as client:
        assert client.get(f"/v1/runs/{run_id}").json()["status"] == "cancelled"


async def test_a_viewer_sees_no_admin_or_operator_actions(stack: Stack, browser: Browser) -> None:
    from playwright.async_api import expect

    job = make_job(stack, f"watched-{uuid.uuid4().hex[:6]}", "echo hi")
    with stack.client() as client:
        made = client.post("/v1/keys", json={"name": "dashboard", "role": "viewer"})
        assert made.status_code == 201, made.text
        viewer = made.json()["key"]
    page = browser.page
    await sign_in(browser, viewer)
    await expect(page.locator("#who-name")).to_have_text("dashboard · viewer")
    await expect(page.get_by_role("heading", name="Schedule")).to_be_visible()
    await expect(page.locator(f"tr[data-job='{job['id']}']")).to_be_visible()
    for hidden in ("New job", "Keys", "Activity"):
        await expect(page.get_by_role("link", name=hidden)).to_have_count(0)
    await expect(page.get_by_role("button", name=re.compile("^(Pause|Resume) "))).to_have_count(0)
    await page.goto(f"{stack.api_url}/#/jobs/{job['id']}")
    await expect(page.get_by_role("heading", name="Definition")).to_be_visible()
    for action in ("Run now", "Pause", "Delete"):
        await expect(page.get_by_role("button", name=action)).to_have_count(0)
    for action in ("Edit", "Clone"):
        await expect(page.get_by_role("link", name=action)).to_have_count(0)


async def test_every_page_renders_without_errors_at_desktop_and_phone_width(
    stack: Stack, browser: Browser
) -> None:
    from playwright.async_api import expect

    job = make_job(
        stack, f"nightly-backup-{uuid.uuid4().hex[:4]}", "echo backing up; echo done >&2",
        schedule="30 2 * * *", timezone="Europe/Berlin", labels={"team": "data"},
    )  # fmt: skip
    with stack.client() as client:
        run = client.post(f"/v1/jobs/{job['id']}/runs").json()
    page = browser.page
    await sign_in(browser, stack.admin_key)
    pages = {
        "schedule": ("/#/", "Schedule"),
        "job-page": (f"/#/jobs/{job['id']}", job["name"]),
        "job-editor": (f"/#/jobs/{job['id']}/edit", f"Edit {job['name']}"),
        "run-page": (f"/#/runs/{run['id']}", "Run"),
        "cluster": ("/#/cluster", "Cluster"),
        "activity": ("/#/activity", "Activity"),
        "keys": ("/#/keys", "API keys"),
    }
    for width in (1280, 360):
        await page.set_viewport_size({"width": width, "height": 900})
        for name, (path, heading) in pages.items():
            await page.goto(stack.api_url + path)
            await expect(page.get_by_role("heading", level=1).first).to_contain_text(heading)
            if name == "schedule":
                await expect(page.locator(f"tr[data-job='{job['id']}']")).to_be_visible()
            if name == "cluster":
                await expect(page.locator("#leader")).not_to_be_empty()
                # A runner's load counts against all it may run, HTTP slots included.
                with stack.client() as client:
                    [runner] = client.get("/v1/status").json()["runners"]
                load = page.locator("td", has=page.get_by_label(f"load of {runner['id']}"))
                await expect(load).to_contain_text(f"/{runner['slots'] + runner['http_slots']}")
                await expect(load).to_have_attribute(
                    "title", f"{runner['slots']} slots + {runner['http_slots']} for HTTP runs"
                )
            if name == "run-page":
                await expect(page.locator("#log")).to_contain_text("backing up", timeout=20_000)
            if name == "job-editor":
                await expect(page.locator(".preview li").first).to_contain_text("02:30:00 GMT+1")
            await browser.shot(f"{name}-{width}")
            overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{name} is {overflow}px wider than a {width}px screen"
    # Dark mode follows the system's preference.
    await page.emulate_media(color_scheme="dark")
    await page.set_viewport_size({"width": 1280, "height": 900})
    await page.goto(f"{stack.api_url}/#/runs/{run['id']}")
    await expect(page.locator("#log")).to_contain_text("backing up")
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(18, 20, 24)", background
    await browser.shot("run-page-dark")


async def test_a_save_over_a_newer_revision_is_explained_and_keeps_the_edits(
    stack: Stack, browser: Browser
) -> None:
    from playwright.async_api import expect

    job = make_job(stack, f"shared-{uuid.uuid4().hex[:6]}", "echo v1")
    page = browser.page
    await sign_in(browser, stack.admin_key)
    await page.goto(f"{stack.api_url}/#/jobs/{job['id']}/edit")
    await page.get_by_label("Description").fill("mine")
    with stack.client() as client:  # someone else saves first
        theirs = client.patch(f"/v1/jobs/{job['id']}", json={"description": "theirs"})
        assert theirs.status_code == 200, theirs.text
    await page.get_by_role("button", name="Save").click()
    await expect(page.locator(".form-error")).to_contain_text("someone changed this job while you edited it")
    browser.expect_http_error(409, f"/v1/jobs/{job['id']}")
    await expect(page.get_by_label("Description")).to_have_value("mine")
    await browser.shot("editor-conflict")
    await page.get_by_role("button", name="Save mine over theirs").click()
    await expect(page.get_by_role("heading", name="Definition")).to_be_visible()
    await expect(page.locator("dd", has_text="mine")).to_be_visible()
    with stack.client() as client:
        saved = client.get(f"/v1/jobs/{job['id']}", params={"revision": 3}).json()
        assert (saved["revision"], saved["description"]) == (3, "mine")
