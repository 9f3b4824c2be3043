"""Console benchmark: the web console in Debian's Chromium against a real `cronbus up`.

* the schedule page with 10,000 jobs: browser navigation to the first page of rows shown;
* live output: a line the job writes (it prints its own clock) to the line shown in the page;
* the run page of a run with 10 MB of output: navigation to its first screen of output.

Run with `./dev bench console` (not in the default set: it needs Chromium, `apt-get install
chromium`, or CRONBUS_CHROMIUM).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.bench.common import Figure, percentile
from tests.console.conftest import CHROMIUM, CHROMIUM_ARGS, browser_missing
from tests.support import running_up, wait_for_sync

JOBS = 10_000
BATCH = 1000
NAVIGATIONS = 10
SCHEDULE_TARGET = 1.0
LIVE_TARGET = 0.300
BIG_TARGET = 1.0
BIG_OUTPUT = 10_000_000
LIVE_LINES = 200

# The page records when each line "L<unix time>E" the job wrote appears in the log.
WATCH_LOG = """() => {
  window.__delays = [];
  let seen = 0;
  const log = document.getElementById("log");
  new MutationObserver(() => {
    const now = Date.now() / 1000;
    const text = log.textContent;
    const pattern = /L(\\d+\\.\\d+)E/g;
    pattern.lastIndex = seen;
    let m;
    while ((m = pattern.exec(text)) !== null) {
      window.__delays.push(now - Number(m[1]));
      seen = pattern.lastIndex;
    }
  }).observe(log, { childList: true, subtree: true, characterData: true });
}"""


def seed_jobs(client: httpx.Client) -> None:
    for start in range(0, JOBS, BATCH):
        batch = [
            {"name": f"bench-{i:05d}", "schedule": "0 0 1 1 *", "labels": {"team": f"t{i % 10}"},
             "executor": {"type": "shell", "command": "true"}}
            for i in range(start, start + BATCH)
        ]  # fmt: skip
        answer = client.post("/v1/jobs", json=batch, timeout=120)
        answer.raise_for_status()
    last = f"bench-{JOBS - 1:05d}"
    wait_for_sync(
        lambda: client.get("/v1/jobs", params={"q": last}).json()["items"],
        timeout=300, interval=1.0, what="the history has every job",
    )  # fmt: skip


def run_of(client: httpx.Client, name: str, command: str | list[str]) -> str:
    job = client.post(
        "/v1/jobs",
        json={"name": name, "schedule": "0 0 1 1 *", "executor": {"type": "shell", "command": command}},
    ).json()
    return str(client.post(f"/v1/jobs/{job['id']}/runs").json()["id"])


def finished(client: httpx.Client, run_id: str) -> bool:
    answer = client.get(f"/v1/runs/{run_id}")
    return answer.status_code == 200 and answer.json()["status"] == "succeeded"


async def measure(url: str, key: str, client: httpx.Client, profile: Path) -> list[Figure]:
    from playwright.async_api import async_playwright

    figures: list[Figure] = []
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 900},
        )  # fmt: skip
        context.set_default_timeout(30_000)
        page = context.pages[0] if context.pages else await context.new_page()
        await page.goto(url + "/")
        await page.get_by_label("API key").fill(key)
        await page.get_by_role("button", name="Sign in").click()
        await page.locator("tr[data-job]").first.wait_for()

        # 1. The schedule page with 10,000 jobs: a fresh navigation to its first rows.
        times = []
        for _ in range(NAVIGATIONS):
            await page.goto("about:blank")
            began = time.perf_counter()
            await page.goto(url + "/#/")
            await page.locator("tr[data-job]").first.wait_for()
            times.append(time.perf_counter() - began)
        rows = await page.locator("tr[data-job]").count()
        median = statistics.median(times)
        figures.append(
            Figure(
                "schedule page, 10k jobs: navigation to first rows (median)",
                median * 1000,
                "ms",
                f"<= {SCHEDULE_TARGET * 1000:.0f} ms",
                median <= SCHEDULE_TARGET,
                f"{rows} rows shown; worst of {NAVIGATIONS}: {max(times) * 1000:.0f} ms",
            )
        )

        # 2. Live output: each line carries the time the job wrote it.
        writer = (
            "import time\n"
            f"for _ in range({LIVE_LINES}):\n"
            "    print(f'L{time.time():.6f}E', flush=True)\n"
            "    time.sleep(0.05)\n"
        )
        run_id = run_of(client, "bench-live", ["python3", "-c", f"import time; time.sleep(2)\n{writer}"])
        wait_for_sync(
            lambda: client.get(f"/v1/runs/{run_id}").status_code == 200, timeout=30, what="run recorded"
        )
        await page.goto(f"{url}/#/runs/{run_id}")
        await page.locator("#log").wait_for()
        await page.evaluate(WATCH_LOG)
        wait_for_sync(lambda: finished(client, run_id), timeout=120, what="live run finished")
        delays: list[float] = await page.evaluate("window.__delays")
        p99 = percentile(delays, 99)
        figures.append(
            Figure(
                "live log: written -> shown, p99",
                p99 * 1000,
                "ms",
                f"<= {LIVE_TARGET * 1000:.0f} ms",
                p99 <= LIVE_TARGET and len(delays) >= LIVE_LINES * 0.9,
                f"{len(delays)} of {LIVE_LINES} lines seen live; p50 {percentile(delays, 50) * 1000:.0f} ms",
            )
        )

        # 3. A run with 10 MB of output: navigation to its first screen of output.
        big = run_of(
            client, "bench-big",
            ["python3", "-c", f"import sys; sys.stdout.write(('x' * 99 + chr(10)) * {BIG_OUTPUT // 100})"],
        )  # fmt: skip
        wait_for_sync(lambda: finished(client, big), timeout=120, what="10 MB run finished")
        await page.goto("about:blank")
        began = time.perf_counter()
        await page.goto(f"{url}/#/runs/{big}")
        await page.locator("#log span").first.wait_for()  # the first screen of output
        usable = time.perf_counter() - began
        await page.locator("#log-state", has_text="ended").wait_for(timeout=120_000)
        whole = time.perf_counter() - began
        shown = await page.evaluate("document.getElementById('log').textContent.length")
        figures.append(
            Figure(
                "run page, 10 MB output: navigation to first screen",
                usable * 1000,
                "ms",
                f"<= {BIG_TARGET * 1000:.0f} ms",
                usable <= BIG_TARGET,
                f"whole output replayed in {whole * 1000:.0f} ms ({shown} characters)",
            )
        )
        await context.close()
    return figures


async def main() -> list[Figure]:
    reason = browser_missing()
    if reason is not None:
        print(f"console benchmark skipped: {reason}", file=sys.stderr)
        return [Figure("console benchmark", float("nan"), "", "", None, f"skipped: {reason}")]
    with tempfile.TemporaryDirectory(prefix="cronbus-bench-console-") as tmp:
        data_dir = Path(tmp) / "data"
        with (
            running_up(data_dir) as state,
            httpx.Client(base_url=state["api_url"], headers=auth(state), timeout=30) as client,
        ):
            seed_jobs(client)
            return await measure(state["api_url"], state["admin_key"], client, Path(tmp) / "profile")


def auth(state: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {state['admin_key']}"}
