"""End to end: `cronbus up` as a user runs it — start, schedule, watch runs, stop, start again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from cronbus.shared.up import HISTORY_NICENESS
from tests.support import wait_for

pytestmark = pytest.mark.slow


class Up:
    """One `cronbus up` process on a data directory, read through its stdout and state file."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: asyncio.subprocess.Process | None = None
        self.output: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self._up = asyncio.Event()

    async def start(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRONBUS_")}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cronbus.shared.cli", "up",
            "--data-dir", str(self.data_dir), "--api-port", "0",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group, like a shell job
        )  # fmt: skip
        self._up.clear()
        self._reader = asyncio.create_task(self._read())
        try:
            await asyncio.wait_for(self._up.wait(), timeout=60)
        except TimeoutError:
            raise AssertionError("cronbus up did not come up:\n" + "".join(self.output[-60:])) from None
        return json.loads((self.data_dir / "cronbus.json").read_text())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            self.output.append(line)
            if line.startswith("cronbus is up"):
                self._up.set()

    def children(self) -> list[psutil.Process]:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).children(recursive=True)

    async def stop(self, *, ctrl_c: bool = False) -> int:
        """SIGTERM to the process, or SIGINT to its whole group as a terminal's Ctrl-C sends it."""
        assert self.proc is not None
        if ctrl_c:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), timeout=60)
        if self._reader:
            await asyncio.wait_for(self._reader, timeout=10)
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            for child in self.children():
                child.kill()
            self.proc.kill()


async def succeeded_runs(client: httpx.AsyncClient, job_id: str) -> list[dict]:
    resp = await client.get(f"/v1/jobs/{job_id}/runs")
    assert resp.status_code == 200, resp.text
    return [r for r in resp.json()["items"] if r["status"] == "succeeded"]


async def test_up_runs_jobs_and_keeps_them_across_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "cb"
    up = Up(data_dir)
    try:
        state = await up.start()
        assert stat.S_IMODE((data_dir / "cronbus.json").stat().st_mode) == 0o600
        assert state["api_url"].startswith("http://127.0.0.1:")
        assert state["nats_url"].startswith("nats://127.0.0.1:")
        key = state["admin_key"]
        nats_pids = [p.pid for p in up.children() if "nats-server" in p.name()]
        assert len(nats_pids) == 1, "up starts exactly one nats-server of its own"
        # The history yields the cores to dispatch and runs when they are short.
        own = psutil.Process(up.proc.pid).nice()
        services = {p.cmdline()[-1]: p.nice() for p in up.children() if "cronbus.shared.cli" in p.cmdline()}
        assert services.pop("logs") == own + HISTORY_NICENESS
        assert services and set(services) == {"runner"} and set(services.values()) == {own}

        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=state["api_url"], headers=headers, timeout=10) as client:
            assert (
                await client.get("/v1/jobs", headers={"Authorization": "Bearer wrong"})
            ).status_code == 401
            created = await client.post(
                "/v1/jobs",
                json={
                    "name": "hello",
                    "schedule": "* * * * * *",
                    "executor": {"type": "shell", "command": "echo hello from $((40 + 2))"},
                },
            )
            assert created.status_code == 201, created.text
            job = created.json()
            assert job["revision"] == 1 and len(job["next_fires"]) > 0

            runs = await wait_for(
                lambda: _at_least(succeeded_runs(client, job["id"]), 3), timeout=30, what="3 succeeded runs"
            )
            for run in runs[:3]:
                log = await client.get(f"/v1/runs/{run['id']}/log")
                assert log.status_code == 200
                assert log.text == "hello from 42\n"
                assert run["exit_code"] == 0 and run["runner"]

        assert await up.stop() == 0, "".join(up.output[-40:])
        for pid in nats_pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        before = {r["id"] for r in runs}

        state2 = await up.start()
        assert state2["admin_key"] == key, "a second up keeps the admin key"
        async with httpx.AsyncClient(base_url=state2["api_url"], headers=headers, timeout=10) as client:
            got = await client.get(f"/v1/jobs/{job['id']}")
            assert got.status_code == 200, got.text
            assert got.json()["name"] == "hello"
            listed = await client.get("/v1/jobs")
            assert [j["id"] for j in listed.json()["items"]] == [job["id"]]
            history = await wait_for(
                lambda: _at_least(succeeded_runs(client, job["id"]), len(before)),
                timeout=30,
                what="history kept",
            )
            assert before <= {r["id"] for r in history}
        nats_pids = [p.pid for p in up.children() if "nats-server" in p.name()]
        assert await up.stop(ctrl_c=True) == 0, "".join(up.output[-40:])
        for pid in nats_pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        up.kill()


async def _at_least(items_coro, n: int) -> list[dict] | None:  # type: ignore[no-untyped-def]
    items = await items_coro
    return items if len(items) >= n else None


async def test_up_on_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cronbus.shared.cli", "up",
            "--data-dir", str(tmp_path / "cb"), "--api-port", str(port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    text = out.decode()
    assert proc.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in text
    assert "Traceback" not in text
