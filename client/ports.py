"""Local TCP ports: one free-port helper for the servers tests and load tests start and for DDP's rendezvous,
and the in-use check `tdet serve` runs before it starts Triton."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing on 127.0.0.1 uses now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """Whether a server could bind `port` on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR like Triton's own bind: TIME-WAIT sockets (left by metrics scrapes) do not block a
        # restart, while on Linux a socket that LISTENs on the port still refuses the bind.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
