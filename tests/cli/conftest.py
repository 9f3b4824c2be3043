"""A real `cronbus up` for the command-line client's tests, shared by a module's tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import wait_for_sync


@dataclass(frozen=True)
class Stack:
    data_dir: Path
    api_url: str
    admin_key: str

    def env(self, **extra: str) -> dict[str, str]:
        """A client's environment: no CRONBUS_* of the test's own, the data dir of this stack."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRONBUS_")}
        env["CRONBUS_DATA_DIR"] = str(self.data_dir)
        env.update(extra)
        return env

    def cli(self, *args: str, input: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run the real `cronbus` command."""
        return subprocess.run(
            [sys.executable, "-m", "cronbus.shared.cli", *args],
            input=input,
            capture_output=True,
            text=True,
            env=env or self.env(),
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("cli") / "data"
    log = (data_dir.parent / "up.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRONBUS_")}
    env["CRONBUS_PROCESSES"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cronbus.shared.cli", "up", "--data-dir", str(data_dir), "--api-port", "0"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        state_file = data_dir / "cronbus.json"
        wait_for_sync(lambda: state_file.exists() or proc.poll() is not None, timeout=60, what="cronbus up")
        assert proc.poll() is None, f"cronbus up exited; see {log.name}"
        state = json.loads(state_file.read_text())

        def ready() -> bool:
            try:
                return httpx.get(state["api_url"] + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for_sync(ready, timeout=60, what="API ready")
        yield Stack(data_dir=data_dir, api_url=state["api_url"], admin_key=state["admin_key"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
