"""The api service's composition root: `create_app` wires the Litestar app, `create_service`
builds the service the `cronbus` command runs (uvicorn on a socket it binds itself)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TypeVar

import uvicorn
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar.types import Message, Scope
from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.api.admin import AuditController, KeyController
from cronbus.api.audit import AuditLog, AuditReader
from cronbus.api.auth import DOCS_PATH, AuthenticateFirst, KeyRing, authorize, is_public
from cronbus.api.body import JsonRequest
from cronbus.api.console import ConsoleController, console_files, console_page
from cronbus.api.controllers import (
    HealthController,
    ImportController,
    JobController,
    RunController,
    StatusController,
    openapi_json,
)
from cronbus.api.history import History
from cronbus.api.jobs import Jobs
from cronbus.api.journal import Journal
from cronbus.api.keys import KeyStore
from cronbus.api.problems import EXCEPTION_HANDLERS, answer_exception
from cronbus.api.runs import Runs
from cronbus.shared.bus import Bus
from cronbus.shared.history.store import create_engine, migrate
from cronbus.shared.listen import bind_listener
from cronbus.shared.metrics import register_collectors
from cronbus.shared.runtime import until_done
from cronbus.shared.settings import Settings
from cronbus.shared.tracing import setup_tracing

log = logging.getLogger(__name__)

T = TypeVar("T")
_STARTUP_TIMEOUT = 30.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MetricsController(PrometheusController):
    """`/metrics` for Prometheus: public, and not part of the API's description."""

    include_in_schema = False


# Request durations by route template and status, at /metrics beside every metric of the process.
_PROMETHEUS = PrometheusConfig(
    app_name="cronbus", prefix="cronbus_api", group_path=True, exclude=["/metrics"]
)


def create_app(
    settings: Settings,
    *,
    bus: Bus,
    engine: AsyncEngine,
    stopping: asyncio.Event | None = None,
    clock: Callable[[], datetime] = _utcnow,
    revision_wait: float = 5.0,
) -> Litestar:
    """The Litestar app over an open bus and engine (the caller owns and closes both)."""
    register_collectors()
    history = History(engine)
    journal = Journal(bus)
    jobs = Jobs(journal, history, clock=clock, revision_wait=revision_wait)
    runs = Runs(journal, history)
    audit_log = AuditLog(bus)
    keys = KeyStore(bus, audit_log, clock)
    key_ring = KeyRing(settings.admin_key, history, clock, keys=keys, audit=audit_log)
    state = State({"bus": bus, "key_ring": key_ring, "stopping": stopping or asyncio.Event()})
    app = Litestar(
        route_handlers=[
            JobController,
            RunController,
            ImportController,
            StatusController,
            HealthController,
            KeyController,
            AuditController,
            openapi_json,
            ConsoleController,
            console_page,
            console_files(),
            MetricsController,
        ],
        middleware=[_PROMETHEUS.middleware],
        dependencies={
            "jobs": Provide(lambda: jobs, sync_to_thread=False),
            "runs": Provide(lambda: runs, sync_to_thread=False),
            "history": Provide(lambda: history, sync_to_thread=False),
            "keys": Provide(lambda: keys, sync_to_thread=False),
            "audit_log": Provide(lambda: audit_log, sync_to_thread=False),
            "audit_reader": Provide(lambda: AuditReader(engine), sync_to_thread=False),
        },
        # The API keys bucket is mirrored before the first request is served.
        on_startup=[keys.start],
        on_shutdown=[keys.stop],
        guards=[authorize],
        before_send=[_AllowEveryMethod()],
        request_class=JsonRequest,
        exception_handlers=EXCEPTION_HANDLERS,
        state=state,
        openapi_config=OpenAPIConfig(
            title="cronbus",
            version="1",
            description="A distributed cron. Authenticate with `Authorization: Bearer <api key>`.",
            # The docs UI (Swagger; Scalar at /v1/docs/scalar) is not rooted at /v1 itself because it
            # answers every unknown path below its root with an HTML page, and /v1 answers problem
            # details. The schema is at /v1/openapi.json (and /v1/docs/openapi.json).
            path=DOCS_PATH,
            render_plugins=[SwaggerRenderPlugin(path="/"), ScalarRenderPlugin(path="/scalar")],
            components=Components(
                security_schemes={
                    "apiKey": SecurityScheme(type="http", scheme="bearer", description="an API key")
                }
            ),
            security=[{"apiKey": []}],
        ),
        debug=False,
        # Logging belongs to the cronbus runtime; Litestar's default would reconfigure the root logger.
        logging_config=None,
    )
    # Authenticate before routing: without a valid key, every path answers 401 (not 404/405).
    app.asgi_handler = AuthenticateFirst(app.asgi_handler, key_ring, answer_exception)
    _public_in_schema(app)
    return app


def _public_in_schema(app: Litestar) -> None:
    """The OpenAPI document says the public endpoints need no key (an empty requirement list
    overrides the global one)."""
    paths = app.openapi_schema.paths or {}
    for path, item in paths.items():
        if is_public(path):
            for operation in (item.get, item.head, item.options):
                if operation is not None:
                    operation.security = []


class _AllowEveryMethod:
    """A before-send hook that makes the `Allow` of Litestar's automatic OPTIONS answers list
    every method of the path (it lists only those of one handler group when several share it)."""

    def __init__(self) -> None:
        self._methods: dict[str, set[str]] | None = None

    def _of(self, app: Litestar) -> dict[str, set[str]]:
        if self._methods is None:
            methods: dict[str, set[str]] = {}
            for route in app.routes:
                for handler in getattr(route, "route_handlers", []):
                    for path in {route.path, route.path_format}:
                        methods.setdefault(path, set()).update(handler.http_methods)
            self._methods = methods
        return self._methods

    def __call__(self, message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
            return
        allowed = self._of(scope["litestar_app"]).get(str(scope.get("path_template", "")))
        if allowed:
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
            headers.append((b"allow", ", ".join(sorted(allowed)).encode()))
            message["headers"] = headers


async def _migrated(engine: AsyncEngine) -> bool:
    await migrate(engine)
    return True


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the cronbus runtime owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiService:
    """Serves the API until asked to stop. `url` is valid once `ready` is set."""

    name = "api"

    def __init__(self, settings: Settings, *, revision_wait: float = 5.0) -> None:
        self.settings = settings
        self.revision_wait = revision_wait
        self.ready = asyncio.Event()
        self.url = ""

    async def run(self, stopping: asyncio.Event) -> None:
        settings = self.settings
        sock = bind_listener(settings.api_host, settings.api_port)
        try:
            setup_tracing("api", settings.instance_id)
            bus = await Bus.open_when_ready(settings, "api", stopping)
            if bus is None:
                return
            try:
                engine = create_engine(settings.sql_url)
                try:
                    migrated = await until_done(
                        stopping, f"api: migrating {engine.url.render_as_string()}", lambda: _migrated(engine)
                    )
                    if not migrated:
                        return
                    app = create_app(
                        settings, bus=bus, engine=engine, stopping=stopping, revision_wait=self.revision_wait
                    )
                    await self._serve(app, sock, stopping)
                finally:
                    await engine.dispose()
            finally:
                await bus.close()
        finally:
            sock.close()

    async def _serve(self, app: Litestar, sock: socket.socket, stopping: asyncio.Event) -> None:
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=int(max(1, self.settings.grace_period)),
        )
        server = _EmbeddedServer(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="api-uvicorn")
        try:
            deadline = asyncio.get_running_loop().time() + _STARTUP_TIMEOUT
            while not server.started:
                if serving.done():
                    await serving  # it failed to start: raise its error
                    raise RuntimeError("the API server stopped before it started")
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"the API server did not start within {_STARTUP_TIMEOUT:.0f}s")
                await asyncio.sleep(0.02)
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            self.url = f"http://{shown}:{port}"
            log.info(
                "api listening on %s (OpenAPI at %s/v1/openapi.json, docs at %s%s)",
                self.url,
                self.url,
                self.url,
                DOCS_PATH,
            )
            self.ready.set()
            stop_wait = asyncio.create_task(stopping.wait())
            try:
                await asyncio.wait({serving, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop_wait.cancel()
            if serving.done():
                await serving
                if not stopping.is_set():
                    raise RuntimeError("the API server stopped on its own")
                return
        finally:
            server.should_exit = True
            if not serving.done():
                try:
                    await asyncio.wait_for(asyncio.shield(serving), timeout=self.settings.grace_period + 2)
                except TimeoutError:
                    log.warning("api: connections still open after the grace period; closing them")
                    server.force_exit = True
                    await asyncio.wait({serving}, timeout=5.0)
                    if not serving.done():
                        serving.cancel()


def create_service(settings: Settings) -> ApiService:
    return ApiService(settings)
