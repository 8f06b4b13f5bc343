"""Spread requests over several servers (`--url a,b`): round-robin, failover, per-server counts.

Pure python over a per-server callable, so it works for gRPC and HTTP clients alike and imports no torch.
Not yet wired into `tdet infer/eval/loadtest` (see issue 22 item 5).
"""
from __future__ import annotations

import itertools
import threading
from collections import Counter
from typing import Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def split_urls(url: str) -> list[str]:
    """'a:1, b:2' -> ['a:1', 'b:2']; parse after server_url() returns. Empty entries and duplicates are errors."""
    urls = [u.strip() for u in url.split(",")]
    if any(not u for u in urls):
        raise ValueError(f"--url {url!r}: empty server in the comma-separated list")
    dupes = sorted(u for u, n in Counter(urls).items() if n > 1)
    if dupes:
        raise ValueError(f"--url {url!r}: server listed twice: {', '.join(dupes)}")
    return urls


class AllServersFailed(RuntimeError):
    """Every server raised for one request; the message names each server's error."""


class Fleet(Generic[T]):
    """Round-robin over `clients` (one per url); a failing server's request is retried on the others."""

    def __init__(self, urls: Sequence[str], clients: Sequence[T]):
        if len(urls) != len(clients) or not urls:
            raise ValueError("Fleet needs one client per url, at least one")
        self.urls, self.clients = list(urls), list(clients)
        self._next = itertools.count()
        self._lock = threading.Lock()
        self.ok: Counter[str] = Counter()      # requests answered, per server
        self.failed: Counter[str] = Counter()  # requests that raised, per server

    def call(self, fn: Callable[[T], R]) -> R:
        with self._lock:
            start = next(self._next) % len(self.clients)
        errors = []
        for i in range(len(self.clients)):
            k = (start + i) % len(self.clients)
            try:
                result = fn(self.clients[k])
            except Exception as e:  # noqa: BLE001 - any server error means: try the next one
                with self._lock:
                    self.failed[self.urls[k]] += 1
                errors.append(f"{self.urls[k]}: {e}")
                continue
            with self._lock:
                self.ok[self.urls[k]] += 1
            return result
        raise AllServersFailed("all servers failed: " + "; ".join(errors))

    def summary(self) -> dict[str, dict[str, int]]:
        """Per-server counts for reports: {url: {'ok': n, 'failed': m}}."""
        return {u: {"ok": self.ok[u], "failed": self.failed[u]} for u in self.urls}
