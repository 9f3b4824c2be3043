"""HTTP runs against a local server: status checks, retries, timeouts, caps, redirects."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cronbus.runner import executors
from cronbus.shared.bus import Bus
from cronbus.shared.events import HttpExecutor, Retries, RunFinished, RunStarted, ShellExecutor
from cronbus.shared.settings import Settings
from tests.bench.seed import Receiver
from tests.runner.support import dispatch, final_outcome, output_of, run_events, running
from tests.support import wait_for


class LocalServer:
    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        # Requests being answered right now, and the most there were at once.
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()
        self.bodies: list[bytes] = []
        self.release = threading.Event()
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.httpd is not None
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server() -> Iterator[LocalServer]:
    state = LocalServer()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            with state.lock:
                state.hits[self.path] = state.hits.get(self.path, 0) + 1
                state.in_flight += 1
                state.most_in_flight = max(state.most_in_flight, state.in_flight)
            try:
                self._answer_get()
            finally:
                with state.lock:
                    state.in_flight -= 1

        def _answer_get(self) -> None:
            if self.path.startswith("http://"):
                # An absolute URL in the request line: this server is being used as a proxy.
                self._reply(200, f"proxied {self.path}".encode())
            elif self.path == "/flaky":
                if state.hits[self.path] == 1:
                    self._reply(500, b"broken")
                else:
                    self._reply(200, b"fine")
            elif self.path == "/hang":
                state.release.wait(30)
                self._reply(200, b"late")
            elif self.path == "/big":
                self._reply(200, b"x" * 100_000)
            elif self.path == "/moved":
                self._reply(302, b"", {"Location": "/ok"})
            elif self.path == "/ok":
                self._reply(200, b"ok")
            elif self.path == "/set-cookie":
                self._reply(200, b"set", {"Set-Cookie": "session=abc; Path=/"})
            elif self.path == "/cookie":
                self._reply(200, (self.headers.get("Cookie") or "none").encode())
            else:
                self._reply(404, b"no such path")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            state.bodies.append(self.rfile.read(length))
            self._reply(204 if self.headers.get("X-Token") == "secret" else 401, b"")

    state.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.httpd.daemon_threads = True
    thread = threading.Thread(target=state.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        state.httpd.shutdown()
        state.httpd.server_close()
        thread.join(timeout=10)


async def test_http_runs(settings: Settings, server: LocalServer):
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings):
            flaky = await dispatch(
                bus.js,
                settings,
                HttpExecutor(url=f"{server.url}/flaky"),
                retries=Retries(max_attempts=2, backoff=0.1),
            )
            hang = await dispatch(bus.js, settings, HttpExecutor(url=f"{server.url}/hang"), timeout=0.5)
            big = await dispatch(bus.js, settings, HttpExecutor(url=f"{server.url}/big", max_body_bytes=1000))
            post = await dispatch(
                bus.js,
                settings,
                HttpExecutor(
                    url=f"{server.url}/hook",
                    method="POST",
                    headers={"X-Token": "secret"},
                    body='{"a": 1}',
                    expect_status=[204],
                ),
            )
            moved = await dispatch(bus.js, settings, HttpExecutor(url=f"{server.url}/moved"))
            unfollowed = await dispatch(
                bus.js, settings, HttpExecutor(url=f"{server.url}/moved", follow_redirects=False)
            )
            nowhere = await dispatch(bus.js, settings, HttpExecutor(url="http://no-such-host.invalid/x"))

            result = await final_outcome(bus.js, settings, flaky.run_id)
            assert (result.status, result.attempt, result.exit_code) == ("succeeded", 2, 200)
            assert await output_of(bus.js, settings, flaky.run_id, attempt=1) == (
                f"HTTP 500 Internal Server Error from GET {server.url}/flaky\n".encode() + b"broken"
            )
            assert (await output_of(bus.js, settings, flaky.run_id, attempt=2)).endswith(b"fine")

            result = await final_outcome(bus.js, settings, hang.run_id)
            assert result.status == "timed_out"
            assert "timed out after 0.5s" in result.error

            result = await final_outcome(bus.js, settings, big.run_id)
            assert result.status == "succeeded"
            out = await output_of(bus.js, settings, big.run_id)
            assert out.count(b"x") == 1000
            assert b"truncated after 1000 bytes" in out

            assert (await final_outcome(bus.js, settings, post.run_id)).exit_code == 204
            assert server.bodies == [b'{"a": 1}']

            result = await final_outcome(bus.js, settings, moved.run_id)
            assert (result.status, result.exit_code) == ("succeeded", 200)
            result = await final_outcome(bus.js, settings, unfollowed.run_id)
            assert (result.status, result.exit_code) == ("failed", 302)
            assert "expected any 2xx" in result.error

            result = await final_outcome(bus.js, settings, nowhere.run_id)
            assert result.status == "failed"
            assert "could not connect to http://no-such-host.invalid/x" in result.error
    finally:
        await bus.close()


async def test_http_runs_do_not_share_cookies(settings: Settings, server: LocalServer):
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings):
            setter = await dispatch(bus.js, settings, HttpExecutor(url=f"{server.url}/set-cookie"))
            assert (await final_outcome(bus.js, settings, setter.run_id)).status == "succeeded"
            reader = await dispatch(bus.js, settings, HttpExecutor(url=f"{server.url}/cookie"))
            assert (await final_outcome(bus.js, settings, reader.run_id)).status == "succeeded"
            assert (await output_of(bus.js, settings, reader.run_id)).endswith(b"none")
    finally:
        await bus.close()


async def test_an_http_run_without_a_timeout_ends_when_the_server_stops_answering(
    settings: Settings, server: LocalServer, monkeypatch: pytest.MonkeyPatch
):
    # The default read limit is 5 minutes; the test shortens it (the job sets no timeout).
    assert (executors.HTTP_CONNECT_TIMEOUT, executors.HTTP_READ_TIMEOUT) == (30.0, 300.0)
    monkeypatch.setattr(executors, "HTTP_READ_TIMEOUT", 0.5)
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings):
            hang = await dispatch(bus.js, settings, HttpExecutor(url=f"{server.url}/hang"))
            result = await final_outcome(bus.js, settings, hang.run_id, timeout=20)
            assert result.status == "timed_out"
            assert f"GET {server.url}/hang timed out: no progress for 0.5s" in result.error
            assert server.hits["/hang"] == 1
    finally:
        await bus.close()


async def test_secret_header_values_are_masked_in_the_response_body(settings: Settings, server: LocalServer):
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings):
            # The server echoes the Cookie header, which is secret by its name.
            d = await dispatch(
                bus.js,
                settings,
                HttpExecutor(url=f"{server.url}/cookie", headers={"Cookie": "session=topsecret-1234"}),
            )
            result = await final_outcome(bus.js, settings, d.run_id)
            assert result.status == "succeeded"
            output = await output_of(bus.js, settings, d.run_id)
            assert output == f"HTTP 200 OK from GET {server.url}/cookie\n".encode() + b"***"
            # A short call's output rides in its outcome: the status line, then the body.
            assert [p.stream for p in result.output] == ["system", "stdout"]
    finally:
        await bus.close()


async def test_http_runs_are_not_limited_by_the_slots(settings: Settings, server: LocalServer):
    # One slot (for processes), four HTTP runs in flight at once: they have capacity of their own.
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings, concurrency=1, http_concurrency=4):
            runs = [
                await dispatch(bus.js, settings, HttpExecutor(url=f"{server.url}/hang")) for _ in range(4)
            ]
            await wait_for(lambda: server.in_flight == 4, timeout=15, what="4 HTTP runs in flight at once")
            server.release.set()
            for run in runs:
                assert (await final_outcome(bus.js, settings, run.run_id)).status == "succeeded"
            assert server.most_in_flight == 4
    finally:
        await bus.close()


async def test_http_runs_beyond_their_capacity_use_the_slots(settings: Settings, server: LocalServer):
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings, concurrency=2, http_concurrency=1):
            runs = [
                await dispatch(bus.js, settings, HttpExecutor(url=f"{server.url}/hang")) for _ in range(5)
            ]
            await wait_for(lambda: server.in_flight == 3, timeout=15, what="3 HTTP runs in flight at once")
            server.release.set()
            for run in runs:
                assert (await final_outcome(bus.js, settings, run.run_id)).status == "succeeded"
            # Never more than the HTTP capacity plus the slots.
            assert server.most_in_flight == 3
    finally:
        await bus.close()


async def test_http_runs_go_through_the_proxy_named_in_the_environment(
    settings: Settings, server: LocalServer, monkeypatch: pytest.MonkeyPatch
):
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.url)
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings):
            url = "http://callback.invalid/hook"
            d = await dispatch(bus.js, settings, HttpExecutor(url=url))
            assert (await final_outcome(bus.js, settings, d.run_id)).status == "succeeded"
            assert (await output_of(bus.js, settings, d.run_id)).endswith(f"proxied {url}".encode())
    finally:
        await bus.close()


@pytest.mark.parametrize(
    ("host", "no_proxy", "bypasses"),
    [
        ("example.com", "", False),
        ("example.com", "*", True),
        ("example.com", "example.com", True),
        ("api.example.com", ".example.com", True),
        ("api.example.com", "other.org, example.com", True),
        ("notexample.com", "example.com", False),
        ("EXAMPLE.com", "example.COM", True),
    ],
)
def test_no_proxy_names_hosts_and_the_domains_under_them(host: str, no_proxy: str, bypasses: bool):
    assert executors._bypasses(host, no_proxy) is bypasses


async def test_a_run_writes_no_info_line(
    settings: Settings, server: LocalServer, caplog: pytest.LogCaptureFixture
):
    # A busy runner does thousands of runs a second: one INFO line each would drown the log.
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings):
            with caplog.at_level(logging.INFO, logger="cronbus.runner"):
                d = await dispatch(bus.js, settings, HttpExecutor(url=f"{server.url}/ok"))
                assert (await final_outcome(bus.js, settings, d.run_id)).status == "succeeded"
            lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
            assert not [line for line in lines if d.run_id in line], lines
    finally:
        await bus.close()


async def test_runs_fetched_for_the_http_capacity_never_exceed_the_slots(
    settings: Settings, server: LocalServer
):
    # The first fetch (one slot) takes the HTTP run; after that batch of only HTTP runs the
    # runner fetches for its HTTP capacity too and gets the four shell runs at once: those beyond
    # the one slot go back to the pool instead of running.
    bus = await Bus.open(settings, "test")
    try:
        first = await dispatch(bus.js, settings, HttpExecutor(url=f"{server.url}/ok"))
        shell = [await dispatch(bus.js, settings, ShellExecutor(command="sleep 0.3")) for _ in range(4)]
        async with running(settings, concurrency=1, http_concurrency=4):
            assert (await final_outcome(bus.js, settings, first.run_id)).status == "succeeded"
            edges: list[tuple[datetime, int]] = []
            for d in shell:
                assert (await final_outcome(bus.js, settings, d.run_id)).status == "succeeded"
                for e in await run_events(bus.js, settings, d.run_id):
                    if isinstance(e, RunStarted):
                        edges.append((e.occurred_at, 1))
                    elif isinstance(e, RunFinished):
                        edges.append((e.occurred_at, -1))
            in_flight = peak = 0
            for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):
                in_flight += step
                peak = max(peak, in_flight)
            assert peak == 1
    finally:
        await bus.close()


async def test_cancelling_an_http_run_abandons_the_call(settings: Settings, server: LocalServer):
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings):
            d = await dispatch(bus.js, settings, HttpExecutor(url=f"{server.url}/hang"))
            await wait_for(lambda: server.in_flight == 1, timeout=15, what="the call under way")
            await bus.nc.publish(settings.names.cancel_subject(d.run_id), b"")
            result = await final_outcome(bus.js, settings, d.run_id)
            assert (result.status, result.final, result.error) == ("cancelled", True, "cancelled on request")
    finally:
        await bus.close()


async def test_a_stopping_runner_hands_back_an_http_call_under_way(settings: Settings, server: LocalServer):
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings, grace_period=0.2):
            d = await dispatch(bus.js, settings, HttpExecutor(url=f"{server.url}/hang"))
            await wait_for(lambda: server.in_flight == 1, timeout=15, what="the call under way")
        # The block's end stopped the runner: the call was abandoned and the run handed back.
        finishes = [e for e in await run_events(bus.js, settings, d.run_id) if isinstance(e, RunFinished)]
        assert [(f.status, f.final, f.handed_back) for f in finishes] == [("lost", False, True)]
        # It went back to the pool: the next runner makes the call again.
        server.release.set()
        async with running(settings):
            result = await final_outcome(bus.js, settings, d.run_id)
        assert (result.status, result.attempt) == ("succeeded", 2)
        assert await output_of(bus.js, settings, d.run_id, attempt=2) == (
            f"HTTP 200 OK from GET {server.url}/hang\n".encode() + b"late"
        )
    finally:
        await bus.close()


async def test_a_callback_that_starts_refusing_fails_only_its_own_runs(
    settings: Settings, server: LocalServer
):
    """A job's callback server dies between two runs: the runner's kept-alive connection to it
    is reset and its port refuses new ones. That job's run fails, truthfully, after every
    attempt its policy gives it; a run to a healthy server next to it succeeds."""
    receiver = Receiver()  # keep-alive, answers 200, can cut its connections
    dying = await asyncio.get_running_loop().create_server(receiver.connection, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{dying.sockets[0].getsockname()[1]}/hit/0"
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings):
            before = await dispatch(bus.js, settings, HttpExecutor(url=url))
            assert (await final_outcome(bus.js, settings, before.run_id)).status == "succeeded"
            assert receiver.hits[0] and receiver.connections, "the runner kept no connection open"
            dying.close()
            receiver.cut()
            dead = await dispatch(
                bus.js, settings, HttpExecutor(url=url), retries=Retries(max_attempts=2, backoff=0.1)
            )
            fine = await dispatch(bus.js, settings, HttpExecutor(url=f"{server.url}/ok"))

            result = await final_outcome(bus.js, settings, dead.run_id)
            assert (result.status, result.attempt, result.exit_code) == ("failed", 2, None)
            events = await run_events(bus.js, settings, dead.run_id)
            attempts = [e for e in events if isinstance(e, RunFinished)]
            assert [(e.attempt, e.status, e.final) for e in attempts] == [
                (1, "failed", False),
                (2, "failed", True),
            ]
            assert attempts[0].retry_at is not None
            assert all((e.error or "").startswith(f"could not connect to {url}: ") for e in attempts)
            assert (await final_outcome(bus.js, settings, fine.run_id)).status == "succeeded"
    finally:
        await bus.close()
