"""Executors: how a run's work is done. Each turns a spec into an `Outcome`.

An executor gets a `RunControl`: the job's timeout, the live output and an interrupt (cancel
or hand-back). It never raises for the job's own failures; those become outcomes with an
error a person can act on. Add an executor by implementing `Execution` and extending
`execution_for`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp
import certifi

from cronbus.runner.output import LiveOutput
from cronbus.runner.processes import ChildProcess, Reaper, TreeUsage, end_group, group_alive, stop_task
from cronbus.shared.events import Executor, HttpExecutor, RunStatus, ShellExecutor

log = logging.getLogger(__name__)

InterruptReason = Literal["cancelled", "handed_back"]

# Limits of every HTTP call, job timeout or not: an endpoint that never answers (or stops
# sending) must not hold a run, and a slot, forever. The job's `timeout` bounds the whole call.
HTTP_CONNECT_TIMEOUT = 30.0
HTTP_READ_TIMEOUT = 300.0
HTTP_MAX_REDIRECTS = 20
# Connections kept per origin (scheme, host, port); runs beyond it wait for a free one.
HTTP_CONNECTIONS_PER_ORIGIN = 100


def tls_context() -> ssl.SSLContext:
    """Certificates are checked against `SSL_CERT_FILE` or `SSL_CERT_DIR` when set, else certifi's."""
    if cafile := os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=cafile)
    if capath := os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=capath)
    return ssl.create_default_context(cafile=certifi.where())


@dataclass(slots=True)
class HttpClient:
    """The pooled session every HTTP run of a runner shares, and the proxies to use.

    Proxies come from `HTTP_PROXY` / `HTTPS_PROXY` / `NO_PROXY`, read once when the runner
    starts (reading them, and `.netrc`, on every request would cost more than the request).
    """

    session: aiohttp.ClientSession
    proxies: dict[str, str] = field(default_factory=dict)

    def proxy_for(self, url: str) -> str | None:
        if not self.proxies:
            return None
        parts = urllib.parse.urlsplit(url)
        proxy = self.proxies.get(parts.scheme.lower())
        if proxy is None or _bypasses(parts.hostname or "", self.proxies.get("no", "")):
            return None
        return proxy

    async def close(self) -> None:
        await self.session.close()


def _bypasses(host: str, no_proxy: str) -> bool:
    """Whether `NO_PROXY` names `host`: `*`, the host itself, or a domain it is under."""
    host = host.lower().rstrip(".")
    for entry in no_proxy.replace(" ", "").lower().split(","):
        entry = entry.lstrip(".").rstrip(".")
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return True
    return False


def http_client(connections: int) -> HttpClient:
    """The one pooled client every HTTP run of a runner shares; call it inside the event loop.

    It keeps connections alive per origin, up to `connections` in all, so a busy runner does
    not reconnect for every call.
    """
    proxies = {
        k: v for k, v in urllib.request.getproxies_environment().items() if k in {"http", "https", "no"}
    }
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=connections, limit_per_host=min(connections, HTTP_CONNECTIONS_PER_ORIGIN), ssl=tls_context()
        ),
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=HTTP_CONNECT_TIMEOUT, sock_read=HTTP_READ_TIMEOUT
        ),
        # Jobs share the client but must not share state: keep no cookies between runs.
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    return HttpClient(session, proxies)


@dataclass(slots=True)
class Outcome:
    status: RunStatus
    exit_code: int | None = None
    error: str = ""
    cpu_ms: float | None = None
    peak_rss_bytes: int | None = None


@dataclass(slots=True)
class RunControl:
    """What an execution needs besides its spec, and how the runner interrupts it."""

    output: LiveOutput
    timeout: float | None = None
    # The complete environment of a shell run (see cronbus.runner.environment).
    env: dict[str, str] = field(default_factory=dict)
    # Told about the run's process group, so the group ends even if the runner dies.
    reaper: Reaper | None = None
    # SIGTERM -> SIGKILL grace when a process group is ended.
    kill_grace: float = 5.0
    interrupted: asyncio.Event = field(default_factory=asyncio.Event)
    reason: InterruptReason | None = None
    # The run's task while it makes an HTTP call: an interrupt cancels it (once), so no extra
    # task per run waits for one.
    cancel_on_interrupt: asyncio.Task[Any] | None = None
    # Whether an interrupt did cancel it: that cancellation is the interrupt, not a shutdown.
    cancelled_call: bool = False

    def interrupt(self, reason: InterruptReason) -> None:
        if self.reason is None:
            self.reason = reason
        self.interrupted.set()
        if self.cancel_on_interrupt is not None and not self.cancelled_call:
            self.cancelled_call = True
            self.cancel_on_interrupt.cancel()


class Execution(Protocol):
    async def execute(self, control: RunControl) -> Outcome: ...


class UnknownExecutor(ValueError):
    pass


def execution_for(executor: Executor, http: HttpClient) -> Execution:
    match executor:
        case ShellExecutor():
            return ShellExecution(executor)
        case HttpExecutor():
            return HttpExecution(executor, http)
    raise UnknownExecutor(f"this runner cannot execute {type(executor).__name__}")


def _interrupted_outcome(control: RunControl) -> Outcome:
    if control.reason == "handed_back":
        return Outcome("cancelled", error="the runner stopped before the run finished; handed back")
    return Outcome("cancelled", error="cancelled on request")


def _describe_exit(code: int) -> tuple[int, str]:
    """(shell-style exit code, error text) for a process's return code."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return 128 - code, f"killed by {name}"
    return code, "" if code == 0 else f"exited with status {code}"


class ShellExecution:
    """A command in its own session: `/bin/sh -c` for a string, exec'd directly for a list."""

    def __init__(self, spec: ShellExecutor) -> None:
        self.spec = spec

    def argv(self) -> list[str]:
        if isinstance(self.spec.command, str):
            return ["/bin/sh", "-c", self.spec.command]
        return list(self.spec.command)

    async def execute(self, control: RunControl) -> Outcome:
        if control.interrupted.is_set():
            return _interrupted_outcome(control)
        argv = self.argv()
        if not argv:
            await control.output.note("cronbus: the command is empty")
            return Outcome("failed", error="the command is empty")
        try:
            proc = await ChildProcess.start(argv, env=control.env, cwd=self.spec.cwd, reaper=control.reaper)
        except OSError as exc:
            what = exc.filename if exc.filename else argv[0]
            reason = exc.strerror or str(exc)
            if self.spec.cwd and exc.filename == self.spec.cwd:
                error = f"cannot start the command: working directory {what!r}: {reason}"
            else:
                error = f"cannot start the command {what!r}: {reason}"
            await control.output.note(f"cronbus: {error}")
            return Outcome("failed", error=error)

        usage = TreeUsage(proc.pid)
        sampler = asyncio.create_task(usage.follow(), name=f"usage-{proc.pid}")
        pumps = [
            asyncio.create_task(_pump(proc.stdout, "stdout", control.output)),
            asyncio.create_task(_pump(proc.stderr, "stderr", control.output)),
        ]
        exited = asyncio.create_task(proc.wait())
        interrupted = asyncio.create_task(control.interrupted.wait())
        status: RunStatus
        try:
            done, _ = await asyncio.wait(
                {exited, interrupted}, timeout=control.timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if exited in done:
                status = "succeeded" if proc.returncode == 0 else "failed"
            elif interrupted in done:
                status = "cancelled"
                await end_group(proc.pid, grace=control.kill_grace)
            else:
                status = "timed_out"
                await control.output.note(
                    f"cronbus: timed out after {control.timeout:g}s; terminating the process group"
                )
                await end_group(proc.pid, grace=control.kill_grace)
            await asyncio.wait_for(exited, timeout=control.kill_grace + 5.0)
            # Background processes the command left behind belong to the run: end them too,
            # or they would keep its pipes (and this run) open forever.
            if group_alive(proc.pid):
                await control.output.note("cronbus: ending processes the command left running")
                await end_group(proc.pid, grace=control.kill_grace)
            _, stuck = await asyncio.wait(pumps, timeout=5.0)
            for pump in stuck:
                await stop_task(pump)
        finally:
            leftovers: list[asyncio.Task[Any]] = [interrupted, sampler, exited, *pumps]
            for task in leftovers:
                if not task.done():
                    await stop_task(task)
            if proc.returncode is None:
                # Only on an unexpected error above: never leave the group behind.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.close()
        if proc.rusage is not None:
            usage.include(proc.rusage)
        code, exit_error = _describe_exit(proc.returncode if proc.returncode is not None else -9)
        if status == "cancelled":
            outcome = _interrupted_outcome(control)
            outcome.exit_code = code
        elif status == "timed_out":
            outcome = Outcome("timed_out", exit_code=code, error=f"timed out after {control.timeout:g}s")
        else:
            outcome = Outcome(status, exit_code=code, error=exit_error)
        outcome.cpu_ms = usage.cpu_ms
        outcome.peak_rss_bytes = usage.peak_rss_bytes
        return outcome


async def _pump(pipe: asyncio.StreamReader, stream: Literal["stdout", "stderr"], output: LiveOutput) -> None:
    # Reads until EOF even past the output cap, so a chatty job never blocks on a full pipe.
    while data := await pipe.read(65536):
        await output.write(stream, data)


class HttpExecution:
    """One HTTP request; the response body (up to `max_body_bytes`) is the run's output.

    `exit_code` of an HTTP run is the response status code.
    """

    def __init__(self, spec: HttpExecutor, client: HttpClient) -> None:
        self.spec = spec
        self.client = client

    def expected(self, status: int) -> bool:
        if self.spec.expect_status:
            return status in self.spec.expect_status
        return 200 <= status < 300

    async def execute(self, control: RunControl) -> Outcome:
        if control.interrupted.is_set():
            return _interrupted_outcome(control)
        # The call runs in the run's own task (a task per call would cost more than the call):
        # an interrupt cancels that task while the call is under way, and only then.
        task = asyncio.current_task()
        assert task is not None
        deadline = asyncio.timeout(control.timeout)
        control.cancel_on_interrupt = task
        try:
            try:
                async with deadline:
                    return await self._call(control)
            finally:
                control.cancel_on_interrupt = None
        except asyncio.CancelledError:
            if not control.cancelled_call:
                raise
            task.uncancel()
            return _interrupted_outcome(control)
        except TimeoutError:
            if not deadline.expired():
                raise
        error = f"timed out after {control.timeout:g}s waiting for {self.spec.method} {self.spec.url}"
        await control.output.note(f"cronbus: {error}")
        return Outcome("timed_out", error=error)

    async def _call(self, control: RunControl) -> Outcome:
        spec = self.spec
        method = spec.method.upper()
        try:
            async with self.client.session.request(
                method,
                spec.url,
                proxy=self.client.proxy_for(spec.url),
                headers=spec.headers,
                data=spec.body.encode() if spec.body is not None else None,
                # The body goes as the job gives it: no Content-Type unless the job sets one.
                skip_auto_headers=("Content-Type",),
                allow_redirects=spec.follow_redirects,
                max_redirects=HTTP_MAX_REDIRECTS,
            ) as response:
                await control.output.note(
                    f"HTTP {response.status} {response.reason or ''} from {method} {response.url}"
                )
                kept = 0
                async for part in response.content.iter_any():
                    room = spec.max_body_bytes - kept
                    if len(part) > room:
                        await control.output.write("stdout", part[:room])
                        await control.output.note(
                            f"cronbus: response body truncated after {spec.max_body_bytes} bytes"
                        )
                        break
                    await control.output.write("stdout", part)
                    kept += len(part)
                status = response.status
        except aiohttp.NonHttpUrlClientError as exc:
            return await _http_failure(control, f"unsupported URL {spec.url!r}: {exc}")
        except aiohttp.InvalidURL as exc:
            return await _http_failure(control, f"invalid URL {spec.url!r}: {exc}")
        except aiohttp.ClientConnectorError as exc:
            return await _http_failure(control, f"could not connect to {spec.url}: {_reason(exc)}")
        except aiohttp.ServerTimeoutError as exc:
            # The client's own limits (HTTP_CONNECT_TIMEOUT, HTTP_READ_TIMEOUT), not the job's.
            error = (
                f"{method} {spec.url} timed out: no progress for "
                f"{_client_limit(self.client.session, exc):g}s ({type(exc).__name__})"
            )
            await control.output.note(f"cronbus: {error}")
            return Outcome("timed_out", error=error)
        except aiohttp.TooManyRedirects as exc:
            return await _http_failure(
                control, f"too many redirects from {spec.url}: more than {HTTP_MAX_REDIRECTS} ({exc})"
            )
        except (aiohttp.ClientError, ValueError) as exc:
            # ValueError: a header value the client refuses to send (a newline in it, say).
            return await _http_failure(control, f"{method} {spec.url} failed: {_reason(exc)}")
        if self.expected(status):
            return Outcome("succeeded", exit_code=status)
        wanted = ", ".join(map(str, spec.expect_status)) if spec.expect_status else "any 2xx"
        return Outcome("failed", exit_code=status, error=f"HTTP status {status}, expected {wanted}")


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _client_limit(client: aiohttp.ClientSession, exc: aiohttp.ServerTimeoutError) -> float:
    timeout = client.timeout
    limit = timeout.sock_connect if isinstance(exc, aiohttp.ConnectionTimeoutError) else timeout.sock_read
    return limit if limit is not None else 0.0


async def _http_failure(control: RunControl, error: str) -> Outcome:
    await control.output.note(f"cronbus: {error}")
    return Outcome("failed", error=error)
