"""Service logs: lines for people by default, one JSON object per line with CRONBUS_LOG_FORMAT=json."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

import pytest

from cronbus.shared.natsd import EmbeddedNats
from cronbus.shared.runtime import JsonLogFormatter
from cronbus.shared.settings import SettingsError, build_settings
from tests.support import stop_process, wait_for


def test_a_json_line_carries_the_service_ids_and_the_trace() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    formatter = JsonLogFormatter("runner", "host-1")
    record = logging.LogRecord(
        "cronbus.runner", logging.WARNING, __file__, 1, "run %s: %s", ("r1", "late"), None
    )
    record.__dict__.update(run_id="r1", job_id="j1")
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("dispatch") as span:
        entry = json.loads(formatter.format(record))
        trace_id = format(span.get_span_context().trace_id, "032x")
    assert entry["service"] == "runner" and entry["instance"] == "host-1" and entry["level"] == "warning"
    assert entry["message"] == "run r1: late" and entry["run_id"] == "r1" and entry["job_id"] == "j1"
    assert entry["trace_id"] == trace_id and entry["time"].endswith("+00:00")
    assert trace.get_current_span().get_span_context().is_valid is False


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(SettingsError, match="CRONBUS_LOG_FORMAT"):
        build_settings(environ={"CRONBUS_LOG_FORMAT": "xml"})


async def test_a_service_logs_json_lines(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with EmbeddedNats(tmp_path / "nats") as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRONBUS_")}
        log = tmp_path / "scheduler.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cronbus.shared.cli", "scheduler", "--nats-url", server.url,
                "--instance-id", "s-json", "--log-format", "json",
                env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        try:
            await wait_for(
                lambda: b"lease acquired" in log.read_bytes(), timeout=30, what="the scheduler leading"
            )
        finally:
            assert await stop_process(proc) == 0
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        assert lines and all(e["service"] == "scheduler" and e["instance"] == "s-json" for e in lines)
        assert any("lease acquired" in e["message"] for e in lines)
