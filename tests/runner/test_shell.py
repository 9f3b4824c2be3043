"""Shell runs end to end through a real nats-server: lifecycle events, output, outcomes."""

from __future__ import annotations

import signal
import sys
import uuid

import psutil

from cronbus.runner.output import truncation_marker
from cronbus.shared.bus import Bus
from cronbus.shared.events import INLINE_OUTPUT_LIMIT, RunFinished, RunStarted, ShellExecutor
from cronbus.shared.settings import Settings
from tests.runner.support import (
    dispatch,
    final_outcome,
    log_chunks,
    output_of,
    output_parts,
    run_events,
    running,
)
from tests.support import wait_for


async def test_a_shell_run_reports_started_output_and_finished_then_is_acked(settings: Settings):
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings):
            d = await dispatch(
                bus.js,
                settings,
                ShellExecutor(command="echo hello; echo oops >&2; echo $GREETING", env={"GREETING": "hi"}),
            )
            finished = await final_outcome(bus.js, settings, d.run_id)
            assert finished.status == "succeeded"
            assert finished.exit_code == 0
            assert finished.attempt == 1
            assert finished.runner == settings.instance_id
            events = await run_events(bus.js, settings, d.run_id)
            assert [type(e) for e in events] == [RunStarted, RunFinished]
            started = events[0]
            assert isinstance(started, RunStarted)
            assert (started.job_id, started.slot, started.attempt) == (d.job_id, d.slot, 1)
            assert started.pid is not None
            # Short output of a short run: inline in its RunFinished, nothing on LOGS.
            assert await log_chunks(bus.js, settings, d.run_id) == []
            chunks = finished.output
            assert [c.seq for c in chunks] == list(range(len(chunks)))
            assert b"".join(c.data for c in chunks if c.stream == "stdout") == b"hello\nhi\n"
            assert b"".join(c.data for c in chunks if c.stream == "stderr") == b"oops\n"
            assert finished.output_bytes == len(b"hello\nhi\noops\n")
            consumer = await bus.js.consumer_info(settings.names.dispatch_stream, "runner-default")
            assert consumer.num_ack_pending == 0
            assert consumer.num_pending == 0
    finally:
        await bus.close()


async def test_exit_status_argv_commands_and_missing_commands(settings: Settings):
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings):
            failing = await dispatch(bus.js, settings, ShellExecutor(command="exit 3"))
            argv = await dispatch(bus.js, settings, ShellExecutor(command=["printf", "%s-%s", "a b", "c"]))
            missing = await dispatch(bus.js, settings, ShellExecutor(command=["/no/such/program", "x"]))
            in_sh = await dispatch(bus.js, settings, ShellExecutor(command="no-such-command-xyz"))
            bad_cwd = await dispatch(bus.js, settings, ShellExecutor(command="true", cwd="/no/such/dir"))

            result = await final_outcome(bus.js, settings, failing.run_id)
            assert (result.status, result.exit_code) == ("failed", 3)
            result = await final_outcome(bus.js, settings, argv.run_id)
            assert result.status == "succeeded"
            assert await output_of(bus.js, settings, argv.run_id) == b"a b-c"
            result = await final_outcome(bus.js, settings, missing.run_id)
            assert result.status == "failed"
            assert "/no/such/program" in result.error
            assert "No such file" in result.error
            assert b"/no/such/program" in await output_of(bus.js, settings, missing.run_id)
            result = await final_outcome(bus.js, settings, in_sh.run_id)
            assert (result.status, result.exit_code) == ("failed", 127)
            assert b"not found" in await output_of(bus.js, settings, in_sh.run_id)
            result = await final_outcome(bus.js, settings, bad_cwd.run_id)
            assert result.status == "failed"
            assert "working directory" in result.error
    finally:
        await bus.close()


async def test_output_is_capped_with_a_marker_and_binary_bytes_survive(settings: Settings):
    bus = await Bus.open(settings, "test")
    cap = 1024 * 1024
    try:
        async with running(settings, output_cap=cap):
            # 50 MB: far past the cap; the job must still finish (the pipe keeps draining).
            big = await dispatch(
                bus.js, settings, ShellExecutor(command="head -c 50000000 /dev/zero; echo done >&2")
            )
            binary = await dispatch(bus.js, settings, ShellExecutor(command=r"printf '\377\376\000\200ok'"))
            result = await final_outcome(bus.js, settings, big.run_id, timeout=60)
            assert result.status == "succeeded"
            assert result.truncated
            assert result.output_bytes == 50_000_000 + len(b"done\n")
            chunks = await output_parts(bus.js, settings, big.run_id)
            assert not any(c.inline for c in chunks)
            kept = sum(len(c.data) for c in chunks if c.stream != "system")
            assert kept == cap
            assert [c.data for c in chunks if c.stream == "system"] == [truncation_marker(cap)]
            assert max(len(c.data) for c in chunks) <= 64 * 1024

            result = await final_outcome(bus.js, settings, binary.run_id)
            assert result.status == "succeeded"
            assert await output_of(bus.js, settings, binary.run_id) == b"\xff\xfe\x00\x80ok"
    finally:
        await bus.close()


async def test_short_output_goes_inline_in_the_outcome_and_longer_or_later_output_to_logs(
    settings: Settings,
):
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings):
            at_limit = await dispatch(
                bus.js, settings, ShellExecutor(command=f"head -c {INLINE_OUTPUT_LIMIT} /dev/zero")
            )
            over = await dispatch(
                bus.js, settings, ShellExecutor(command=f"head -c {INLINE_OUTPUT_LIMIT + 1} /dev/zero")
            )
            # Published once the first flush is due, long before the run ends: all of it on LOGS.
            late = await dispatch(bus.js, settings, ShellExecutor(command="echo early; sleep 0.5; echo late"))

            result = await final_outcome(bus.js, settings, at_limit.run_id)
            assert await log_chunks(bus.js, settings, at_limit.run_id) == []
            assert [(p.seq, p.stream) for p in result.output] == [(0, "stdout")]
            assert result.output[0].data == bytes(INLINE_OUTPUT_LIMIT)
            assert result.output_bytes == INLINE_OUTPUT_LIMIT

            result = await final_outcome(bus.js, settings, over.run_id)
            assert result.output == []
            assert result.output_bytes == INLINE_OUTPUT_LIMIT + 1
            assert await output_of(bus.js, settings, over.run_id) == bytes(INLINE_OUTPUT_LIMIT + 1)

            result = await final_outcome(bus.js, settings, late.run_id)
            assert result.output == []
            chunks = await log_chunks(bus.js, settings, late.run_id)
            assert [c.seq for c in chunks] == list(range(len(chunks)))
            assert b"".join(c.data for c in chunks) == b"early\nlate\n"
    finally:
        await bus.close()


async def test_an_inline_output_keeps_the_cap_and_its_marker(settings: Settings):
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings, output_cap=10):
            d = await dispatch(bus.js, settings, ShellExecutor(command="echo 0123456789abcdef"))
            result = await final_outcome(bus.js, settings, d.run_id)
            assert result.truncated
            assert result.output_bytes == 17
            assert [(p.stream, p.data) for p in result.output] == [
                ("stdout", b"0123456789"),
                ("system", truncation_marker(10)),
            ]
            assert await log_chunks(bus.js, settings, d.run_id) == []
    finally:
        await bus.close()


def _processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if marker in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


async def test_a_timeout_ends_the_whole_process_tree(settings: Settings):
    bus = await Bus.open(settings, "test")
    marker = f"1000.{uuid.uuid4().int % 10**6}"
    try:
        async with running(settings):
            d = await dispatch(
                bus.js,
                settings,
                ShellExecutor(command=f"sleep {marker} & sleep {marker} & echo started; wait"),
                timeout=1.0,
            )
            # Both grandchildren exist while it runs (so the check below can fail).
            await wait_for(lambda: len(_processes_with(marker)) >= 2, what="grandchildren running")
            result = await final_outcome(bus.js, settings, d.run_id)
            assert result.status == "timed_out"
            assert "timed out after 1s" in result.error
            assert _processes_with(marker) == []
            assert b"started" in await output_of(bus.js, settings, d.run_id)
    finally:
        for proc in _processes_with(marker):
            proc.kill()
        await bus.close()


async def test_a_process_that_ignores_sigterm_is_killed_and_leftovers_are_ended(settings: Settings):
    bus = await Bus.open(settings, "test")
    marker = f"1000.{uuid.uuid4().int % 10**6}"
    try:
        async with running(settings):
            stubborn = await dispatch(
                bus.js,
                settings,
                ShellExecutor(command=f"trap '' TERM; sleep {marker}; sleep {marker}"),
                timeout=0.5,
            )
            # The command exits at once but leaves a background process behind.
            leftover = await dispatch(
                bus.js, settings, ShellExecutor(command=f"sleep {marker}.5 > /dev/null 2>&1 & echo bye")
            )
            result = await final_outcome(bus.js, settings, stubborn.run_id, timeout=20)
            assert result.status == "timed_out"
            assert result.exit_code == 128 + signal.SIGKILL
            result = await final_outcome(bus.js, settings, leftover.run_id, timeout=20)
            assert result.status == "succeeded"
            assert _processes_with(marker) == []
    finally:
        for proc in _processes_with(marker):
            proc.kill()
        await bus.close()


async def test_cpu_time_and_peak_memory_are_measured(settings: Settings):
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings):
            d = await dispatch(
                bus.js,
                settings,
                ShellExecutor(
                    command=[
                        sys.executable,
                        "-c",
                        "import time\nx = bytearray(60_000_000)\nfor i in range(60):\n    x[i] = 1\n"
                        "end = time.process_time() + 0.4\nwhile time.process_time() < end: pass\n",
                    ]
                ),
            )
            result = await final_outcome(bus.js, settings, d.run_id)
            assert result.status == "succeeded"
            assert result.cpu_ms is not None
            assert result.cpu_ms >= 200
            assert result.peak_rss_bytes is not None
            assert result.peak_rss_bytes >= 60_000_000
            assert result.duration_ms >= 400
    finally:
        await bus.close()


async def test_peak_memory_is_the_jobs_own_not_the_runners(settings: Settings):
    """A child's `ru_maxrss` starts at the runner's peak; it must not be reported as the job's."""
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings):
            tiny = await dispatch(bus.js, settings, ShellExecutor(command="echo hi"))
            small = await dispatch(bus.js, settings, ShellExecutor(command="sleep 0.4; echo hi"))
            big = await dispatch(
                bus.js,
                settings,
                ShellExecutor(
                    command=[
                        sys.executable,
                        "-c",
                        "import time\nb = bytearray(100_000_000)\ntime.sleep(0.6)\nprint(len(b))\n",
                    ]
                ),
            )
            runner_peak = psutil.Process().memory_info().rss
            assert runner_peak > 40_000_000
            # Ended before it could be sampled: no figure rather than the runner's.
            result = await final_outcome(bus.js, settings, tiny.run_id)
            assert result.status == "succeeded"
            assert result.peak_rss_bytes is None or result.peak_rss_bytes < 20_000_000
            result = await final_outcome(bus.js, settings, small.run_id)
            assert result.status == "succeeded"
            assert result.peak_rss_bytes is not None
            assert 0 < result.peak_rss_bytes < 20_000_000
            result = await final_outcome(bus.js, settings, big.run_id)
            assert result.status == "succeeded"
            assert result.peak_rss_bytes is not None
            assert 90_000_000 <= result.peak_rss_bytes < 200_000_000
    finally:
        await bus.close()
