"""Spread requests over several servers (`--url a,b`): round-robin, failover, per-server counts.

Pure python over a per-server callable, so it works for gRPC and HTTP clients alike and imports no torch.
`tdet infer` and `tdet eval` use it through connect_fleet (issue 22 item 5).
"""
from __future__ import annotations

import contextlib
import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from .connection import address_key, strip_scheme
from .errors import RequestTimeoutError, ServerUnavailableError, UserError, repeated

T = TypeVar("T")
R = TypeVar("R")

# a server that is down or does not answer: the request goes to another one. A bad request (INVALID_ARGUMENT,
# HTTP 4xx) or a server-side fault would fail the same way anywhere, so it is raised at once.
FAILOVER_ERRORS = (ServerUnavailableError, RequestTimeoutError, ConnectionError, TimeoutError)


def split_urls(url: str) -> list[str]:
    """'a:1, b:2' -> ['a:1', 'b:2']; parse after server_url() returns. Empty entries, entries that are not host:port
    (connection.strip_scheme) and one server listed twice (grpc://a:1 and a:1, localhost and 127.0.0.1) are errors."""
    urls = [u.strip() for u in url.split(",")]
    if any(not u for u in urls):
        raise UserError(f"--url {url!r}: empty server in the comma-separated list")
    keys = [address_key(strip_scheme(u)) for u in urls]
    dupes = repeated(keys)
    if dupes:
        raise UserError(f"--url {url!r}: server listed twice: {', '.join(dupes)}")
    return urls


class AllServersFailed(ServerUnavailableError):
    """Every server is down for one request; the message names each server's error."""


class Fleet(Generic[T]):
    """Round-robin over `clients` (one per url). A server that fails with a connection/unavailable error is
    marked down (named in summary()) and its request goes to the others; other errors are raised at once.
    down: servers already known down (url -> error), e.g. unreachable when the clients were made."""

    def __init__(self, urls: Sequence[str], clients: Sequence[T | None], down: dict[str, str] | None = None):
        if len(urls) != len(clients) or not urls:
            raise ValueError("Fleet needs one client per url, at least one")
        self.urls, self.clients = list(urls), list(clients)
        self.down: dict[str, str] = dict(down or {})
        self._next = itertools.count()
        self._lock = threading.Lock()
        self.ok: Counter[str] = Counter()      # requests answered, per server
        self.failed: Counter[str] = Counter()  # requests that failed over to another server, per server

    @property
    def first(self) -> T:
        """A client of a server not known down (for what every server answers alike: config, class names)."""
        for url, client in zip(self.urls, self.clients):
            if url not in self.down and client is not None:
                return client
        raise AllServersFailed("all servers down: " + "; ".join(f"{u}: {e}" for u, e in self.down.items()))

    def call(self, fn: Callable[[T], R]) -> R:
        with self._lock:
            start = next(self._next) % len(self.clients)
        errors = []
        for i in range(len(self.clients)):
            k = (start + i) % len(self.clients)
            url, client = self.urls[k], self.clients[k]
            if url in self.down or client is None:
                continue
            try:
                result = fn(client)
            except FAILOVER_ERRORS as e:
                with self._lock:
                    self.failed[url] += 1
                    self.down.setdefault(url, str(e))
                errors.append(f"{url}: {e}")
                continue
            with self._lock:
                self.ok[url] += 1
            return result
        errors += [f"{u}: {e}" for u, e in self.down.items() if not any(x.startswith(f"{u}: ") for x in errors)]
        raise AllServersFailed("all servers failed: " + "; ".join(errors))

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per-server counts for reports: {url: {'ok': n, 'failed': m, 'down': error or None}}."""
        return {u: {"ok": self.ok[u], "failed": self.failed[u], "down": self.down.get(u)} for u in self.urls}

    def format_summary(self) -> str:
        """One line per server, e.g. 'server a:8001: 12 answered' / 'server b:8001: DOWN (...), 1 failed over'."""
        lines = []
        for url, s in self.summary().items():
            line = f"server {url}: {s['ok']} answered"
            if s["down"]:
                line += f", DOWN ({s['down']})" + (f", {s['failed']} failed over" if s["failed"] else "")
            lines.append(line)
        return "\n".join(lines)


@contextlib.contextmanager
def connect_fleet(url: str, model: str, protocol: str = "grpc", **kw: Any) -> Iterator[Fleet]:
    """A Fleet of connect(u, model, protocol, **kw) for each url of the comma-separated `url`. A server that
    cannot be reached is marked down; when none can, its ServerUnavailableError is raised (one server: as is)."""
    from .triton import connect

    urls = split_urls(url)
    clients: list[Any] = []
    down: dict[str, str] = {}
    try:
        for u in urls:
            try:
                clients.append(connect(u, model, protocol, **kw))
            except ServerUnavailableError as err:
                if len(urls) == 1:
                    raise
                clients.append(None)
                down[u] = str(err)
        fleet = Fleet(urls, clients, down)
        fleet.first  # noqa: B018 - raises AllServersFailed when no server could be reached
        yield fleet
    finally:
        for c in clients:
            if c is not None:
                c.close()
