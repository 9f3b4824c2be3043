"""Listening sockets bound by cronbus itself, so a taken port is a clear error, not a traceback."""

from __future__ import annotations

import errno
import socket

from cronbus.shared.runtime import StartupError


class PortInUse(StartupError):
    """The port is taken; the message says what to do."""


def bind_listener(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """A listening, non-blocking TCP socket on host:port (0 = any free port), or PortInUse."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says TCP, and without it keep-alive responses wait ~40 ms on Nagle.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"port {port} on {host} is already in use; pass --api-port 0 (or CRONBUS_API_PORT=0) to pick "
                "a free port, or stop whatever listens there",
            ) from None
        raise
    sock.listen(backlog)
    sock.setblocking(False)
    return sock
