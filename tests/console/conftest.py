"""A real `cronbus up` and Debian's Chromium driven by Playwright, for the console's tests.

Without Chromium (or Playwright) the browser tests skip and say why; with CI=true they fail
instead, so CI cannot pass without having run them."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import running_up

CHROMIUM = os.environ.get("CRONBUS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (uv sync installs it)"
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM}: apt-get install chromium (or set CRONBUS_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def chromium_required() -> None:
    reason = browser_missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run in CI: {reason}")
    pytest.skip(reason)


@dataclass(frozen=True)
class Stack:
    data_dir: Path
    api_url: str
    admin_key: str

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {key or self.admin_key}"},
            timeout=10,
        )


@pytest.fixture(scope="module")
def stack(chromium_required: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`cronbus up` with one process per service kind, as a new user starts it."""
    data_dir = tmp_path_factory.mktemp("console") / "data"
    with running_up(data_dir) as state:
        yield Stack(data_dir=data_dir, api_url=state["api_url"], admin_key=state["admin_key"])


@dataclass
class Browser:
    """One test's browser page, and what went wrong in it: console errors, uncaught exceptions
    and HTTP errors (each test names the few it provokes on purpose)."""

    page: Any
    url: str
    shots: Path
    errors: list[str] = field(default_factory=list)
    http_errors: list[tuple[int, str]] = field(default_factory=list)
    expected: list[int] = field(default_factory=list)

    async def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    def expect_http_error(self, status: int, path: str) -> None:
        """A response the test provoked on purpose: it must have happened, and neither it nor
        the browser's console line about it counts as an error."""
        assert (status, path) in self.http_errors, (status, path, self.http_errors)
        self.expected.append(status)

    def unexpected(self) -> list[str]:
        """Errors not explained by the responses the test provoked (Chromium may log one
        failed response more than once; the responses themselves are counted exactly)."""
        explained = tuple(f"status of {status} " for status in self.expected)
        return [
            e
            for e in self.errors
            if not (e.startswith("console: Failed to load resource") and any(x in e for x in explained))
        ]


@pytest.fixture
async def browser(stack: Stack, tmp_path: Path) -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile: nothing from another run
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(15_000)
        page = context.pages[0] if context.pages else await context.new_page()
        seen = Browser(page=page, url=stack.api_url, shots=shots)

        def on_console(message: Any) -> None:
            if message.type == "error":
                seen.errors.append(f"console: {message.text}")

        def on_response(response: Any) -> None:
            if response.status >= 400:
                seen.http_errors.append((response.status, httpx.URL(response.url).path))

        page.on("console", on_console)
        page.on("pageerror", lambda exc: seen.errors.append(f"page error: {exc}"))
        page.on("response", on_response)
        try:
            yield seen
        finally:
            await context.close()
    errors = seen.unexpected()
    assert not errors, "errors in the browser:\n" + "\n".join(errors) + f"\nHTTP errors: {seen.http_errors}"
    surprises = list(seen.http_errors)
    for status in seen.expected:
        surprises.remove(next(e for e in surprises if e[0] == status))
    assert not surprises, f"HTTP errors the test did not expect: {surprises}"


async def sign_in(browser: Browser, key: str) -> None:
    page = browser.page
    await page.goto(browser.url + "/")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await page.locator("#who-name").wait_for(state="visible")
