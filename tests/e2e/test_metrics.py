"""Prometheus metrics of every service of `cronbus up`, scraped as Prometheus would, and a
metrics port already in use as a clear start-up error."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import running_up_async, wait_for

pytestmark = pytest.mark.slow


def samples(text: str) -> dict[str, float]:
    """`name{label="v",...}` -> value for every sample (labels sorted)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def total(found: dict[str, float], name: str, **labels: str) -> float:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in found.items() if k.startswith(name + "{") and all(w in k for w in wanted))


async def scrape(url: str) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.get(url)
        assert answer.status_code == 200, (url, answer.status_code)
        assert answer.headers["content-type"].startswith("text/plain")
        return samples(answer.text)


async def test_every_process_of_up_serves_its_metrics(tmp_path: Path) -> None:
    async with running_up_async(tmp_path / "data") as state:
        urls: dict[str, str] = state["metrics"]  # type: ignore[assignment]  # a mapping in cronbus.json
        assert set(urls) >= {"api+scheduler"} and len(urls) == 3, urls  # api+scheduler, logs, one runner
        runner_url = next(u for k, u in urls.items() if k.endswith("-1"))
        logs_url = next(u for k, u in urls.items() if k.endswith("-logs"))
        headers = {"Authorization": f"Bearer {state['admin_key']}"}
        async with httpx.AsyncClient(base_url=state["api_url"], headers=headers, timeout=10) as client:
            job = {
                "name": "counted",
                "schedule": "* * * * * *",
                "executor": {"type": "shell", "command": "echo hi"},
            }
            assert (await client.post("/v1/jobs", json=job)).status_code == 201

        async def all_counted() -> bool:
            api, runner, logs = (
                await scrape(urls["api+scheduler"]),
                await scrape(runner_url),
                await scrape(logs_url),
            )
            return (
                total(api, "cronbus_dispatch_lateness_seconds_count") >= 2
                and total(api, "cronbus_slots_total", outcome="dispatched") >= 2
                and total(api, "cronbus_scheduler_lease_held") == 1
                and total(api, "cronbus_api_request_duration_seconds_count", path="/v1/jobs") >= 1
                and total(runner, "cronbus_runs_total", outcome="succeeded", pool="default") >= 2
                and total(runner, "cronbus_run_duration_seconds_count") >= 2
                and total(runner, "cronbus_runner_capacity") > 0
                and total(runner, "cronbus_run_output_bytes_total") >= 6
                and total(logs, "cronbus_projection_events_total") >= 4
                and total(logs, "cronbus_projection_batch_duration_seconds_count") >= 1
                and any(k.startswith("cronbus_consumer_pending_messages{") for k in logs)
            )

        await wait_for(all_counted, timeout=60, interval=0.5, what="every metric counting")


async def test_a_metrics_port_in_use_is_a_clear_start_up_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cronbus.shared.cli", "scheduler", "--nats-url", "nats://127.0.0.1:1",
            "--metrics-port", str(port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 2
    assert (
        f"cannot serve metrics on 127.0.0.1:{port}" in err.decode() and "CRONBUS_METRICS_PORT" in err.decode()
    )
