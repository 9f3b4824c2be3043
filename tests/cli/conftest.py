"""A real `cronbus up` for the command-line client's tests, shared by a module's tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import running_up


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
    with running_up(data_dir) as state:
        yield Stack(data_dir=data_dir, api_url=state["api_url"], admin_key=state["admin_key"])
