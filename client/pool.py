"""Bounded fan-out for the commands that send many images (eval, infer): only a few requests are queued,
so Ctrl-C or a dead server never waits for thousands of them, and results are handled as they finish."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def finished_batches(pool: Executor, fn: Callable[[T], R], items: Iterable[T], in_flight: int
                     ) -> Iterator[list[tuple[T, Future[R]]]]:
    """Run fn(item) on `pool` with at most `in_flight` submitted at once; yield each round of finished
    (item, future) pairs. Close the generator (contextlib.closing) to cancel what is still queued."""
    todo = iter(items)
    pending: dict[Future[R], T] = {}
    try:
        while True:
            for item in todo:
                pending[pool.submit(fn, item)] = item
                if len(pending) >= in_flight:
                    break
            if not pending:
                return
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            yield [(pending.pop(fut), fut) for fut in finished]
    finally:
        for fut in pending:
            fut.cancel()
