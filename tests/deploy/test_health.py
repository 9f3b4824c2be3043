"""`cronbus health --service NAME`, the readiness check of the scheduler, runner and logs images,
against real services on a real nats-server."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from cronbus.shared.natsd import EmbeddedNats, free_port
from tests.support import service_command, stop_process, wait_for


async def health(service: str, nats_url: str, prefix: str, instance_id: str = "x") -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "cronbus.shared.cli", "health", "--service", service, "--timeout", "2"],
        *["--nats-url", nats_url, "--prefix", prefix, "--instance-id", instance_id],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode()


async def start(
    service: str, nats_url: str, prefix: str, instance_id: str, tmp_path: Path
) -> asyncio.subprocess.Process:
    argv = service_command(service, nats_url=nats_url, prefix=prefix, instance_id=instance_id)
    if service == "logs":
        argv += ["--data-dir", str(tmp_path / instance_id)]
    log = (tmp_path / f"{instance_id}.log").open("wb")
    return await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log)


async def test_health_reflects_each_service(nats_server: EmbeddedNats, prefix: str, tmp_path: Path) -> None:
    url = nats_server.url
    for service in ("scheduler", "runner", "logs"):
        code, text = await health(service, url, prefix)
        assert code == 1, text
        assert f"{service} is not ready" in text
    procs = {
        name: await start(name.split("-")[0], url, prefix, name, tmp_path)
        for name in ("scheduler-1", "runner-1", "logs-1")
    }
    try:

        async def ready(service: str, instance_id: str = "x") -> bool:
            return (await health(service, url, prefix, instance_id))[0] == 0

        async def not_ready(service: str, instance_id: str) -> bool:
            return (await health(service, url, prefix, instance_id))[0] == 1

        await wait_for(lambda: ready("scheduler"), timeout=30, interval=0.2, what="scheduler ready")
        await wait_for(lambda: ready("runner", "runner-1"), timeout=30, interval=0.2, what="runner ready")
        await wait_for(lambda: ready("logs"), timeout=30, interval=0.2, what="logs ready")
        code, text = await health("runner", url, prefix, "runner-2")
        assert code == 1 and "runner-2 has no presence" in text, text
        # A runner that stops is no longer ready (its presence goes with it).
        assert await stop_process(procs.pop("runner-1")) == 0
        await wait_for(lambda: not_ready("runner", "runner-1"), timeout=30, interval=0.2, what="runner gone")
    finally:
        for proc in procs.values():
            await stop_process(proc)


async def test_health_without_nats_is_a_clear_failure(prefix: str) -> None:
    code, text = await health("scheduler", f"nats://127.0.0.1:{free_port()}", prefix)
    assert code == 1
    assert "scheduler is not ready: NATS at nats://127.0.0.1:" in text and "unreachable" in text, text
