"""The service runtime: run services until SIGTERM/SIGINT, then stop them gracefully.

A service is anything with `name` and `async run(stopping)`. `run` starts its work, waits
for `stopping`, then stops taking work, lets in-flight work finish within the grace period,
hands the rest back and drains NATS before returning. The runtime bounds that: a service
still running `grace + 10 s` after the signal is cancelled. Exit code 0 after a clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Service(Protocol):
    """`ready` is set once the service is serving (consumers bound, port listening)."""

    name: str
    ready: asyncio.Event

    async def run(self, stopping: asyncio.Event) -> None: ...


def brief(exc: BaseException) -> str:
    """An error in one line: its type and the first line of its message (drivers add pages)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


async def stopped_within(stopping: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `stopping`; True when it is set (time to stop)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
    return stopping.is_set()


async def until_done(
    stopping: asyncio.Event,
    what: str,
    op: Callable[[], Awaitable[T]],
    *,
    first_delay: float = 0.1,
    max_delay: float = 5.0,
) -> T | None:
    """`op()` retried with backoff until it succeeds (its result) or `stopping` is set (None).

    For start-up work that may fail for a while (NATS or the database not up yet). Each
    failure is logged with its reason. `stopping` also interrupts an attempt in progress:
    nats-py keeps retrying a first connect by itself, so only `stopping` ends that wait.
    """
    delay = first_delay
    while not stopping.is_set():
        attempt = asyncio.ensure_future(op())
        stop_wait = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({attempt, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
            if not attempt.done():
                attempt.cancel()
                await asyncio.wait({attempt}, timeout=5.0)
        if attempt.cancelled():
            return None
        try:
            return attempt.result()
        except Exception as exc:
            log.warning("%s failed (%s); retrying in %.1fs", what, brief(exc), delay)
        if await stopped_within(stopping, delay):
            return None
        delay = min(delay * 2, max_delay)
    return None


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, for log shippers: time, level, service, instance, logger,
    message, the job and run ids a record carries (`extra={"run_id": ...}`), the current trace
    id, and the exception if any."""

    IDS = ("job_id", "run_id", "slot", "attempt", "pool")

    def __init__(self, service: str, instance: str) -> None:
        super().__init__()
        self.service = service
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        import json

        from opentelemetry import trace

        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "instance": self.instance,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in self.IDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = str(value)
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


LOG_FORMATS = ("text", "json")


def setup_logging(
    level: str = "INFO", fmt: str = "text", *, service: str = "cronbus", instance: str = ""
) -> None:
    """Log to stderr: lines for people (`text`, the default) or JSON objects (`json`)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLogFormatter(service, instance))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    # nats-py logs every reconnect attempt at ERROR; our callbacks say it once, better.
    logging.getLogger("nats.aio.client").setLevel(logging.CRITICAL)
    # Migrations say what they did at WARNING and above only; "nothing to do" is not news.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # The http executor's client would log every request at INFO: thousands a second under
    # load. A run's outcome is in its events; only problems belong in the service log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


class StartupError(RuntimeError):
    """A service cannot start for a reason its operator can fix (a taken port, say): the
    message says what to do, so it is logged as one line, without a traceback."""


class ServiceFailed(RuntimeError):
    """A service's run() raised before it was asked to stop."""


async def run_services(
    services: Sequence[Service],
    *,
    grace: float,
    stopping: asyncio.Event | None = None,
    install_signals: bool = True,
) -> None:
    """Run `services` together until a signal or `stopping` is set, or one of them fails.

    A failing service stops the others and ServiceFailed is raised after they finish.
    """
    stopping = stopping or asyncio.Event()
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, stopping, sig)
    tasks = {asyncio.create_task(s.run(stopping), name=f"service-{s.name}"): s for s in services}
    failed: list[str] = []
    stop_wait = asyncio.create_task(stopping.wait())
    try:
        pending = set(tasks)
        while pending and not stopping.is_set():
            done, _ = await asyncio.wait([*pending, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            for task in pending & done:
                pending.discard(task)
                _note_finished(task, tasks[task], failed, stopping)
        if pending:
            bound = grace + 10.0
            finished, still = await asyncio.wait(pending, timeout=bound)
            for task in finished:
                _note_finished(task, tasks[task], failed, stopping)
            for task in still:
                log.error("%s did not stop within %.0fs; cancelling it", tasks[task].name, bound)
                failed.append(f"{tasks[task].name} cancelled")
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=5.0)
    finally:
        stop_wait.cancel()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    if failed:
        raise ServiceFailed(", ".join(failed))


def _on_signal(stopping: asyncio.Event, sig: signal.Signals) -> None:
    if stopping.is_set():
        log.warning("%s again: still stopping (in-flight work gets its grace period)", sig.name)
        return
    log.info("%s: stopping", sig.name)
    stopping.set()


def _note_finished(
    task: asyncio.Task[None], service: Service, failed: list[str], stopping: asyncio.Event
) -> None:
    if task.cancelled():
        failed.append(f"{service.name} cancelled")
    elif isinstance(exc := task.exception(), StartupError):
        log.error("%s cannot start: %s", service.name, exc)
        failed.append(f"{service.name}: {exc}")
    elif exc is not None:
        log.error("%s failed: %r", service.name, exc, exc_info=exc)
        failed.append(f"{service.name}: {exc}")
    elif not stopping.is_set():
        log.error("%s returned before it was asked to stop", service.name)
        failed.append(f"{service.name} returned early")
    else:
        return
    stopping.set()


def serve(
    build: Callable[[], Awaitable[Sequence[Service]]],
    *,
    grace: float,
    log_level: str = "INFO",
    log_format: str = "text",
    service: str = "cronbus",
    instance: str = "",
) -> int:
    """`main()` helper: set up logging, build the services on a fresh loop, run them, exit code."""
    setup_logging(log_level, log_format, service=service, instance=instance)

    async def _main() -> int:
        from cronbus.shared.child import notify_ready

        services = await build()

        async def tell_parent() -> None:
            await asyncio.gather(*(s.ready.wait() for s in services))
            notify_ready()

        told = asyncio.create_task(tell_parent())
        try:
            await run_services(services, grace=grace)
        except ServiceFailed as exc:
            log.error("stopped after a failure: %s", exc)
            return 1
        finally:
            told.cancel()
        return 0

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_main())
    return 130
