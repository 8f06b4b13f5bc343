"""Ctrl-C (and SIGTERM, where asked) that a C extension cannot lose.

Python runs a signal's handler at the next check in the main thread, and gRPC's C core makes such checks
inside its own calls, where the KeyboardInterrupt the handler raises can be dropped: the likely reason a
capacity search sent SIGINT mid-level ran on to the end and exited 0 (seen once in CI, not reproduced). The
handler here also records the signal, and the long loops (one send, one level, one trial) call `check()`, which
raises the KeyboardInterrupt again if it was lost."""

from __future__ import annotations

import signal
from contextlib import contextmanager

_pending: list[int] = []  # signals whose KeyboardInterrupt may not have reached the loop yet


def _handler(signum: int, frame: object) -> None:
    _pending.append(signum)
    raise KeyboardInterrupt


@contextmanager
def recorded(signals: tuple[int, ...] = (signal.SIGINT,)):
    """While inside, each of `signals` raises KeyboardInterrupt (SIGTERM so takes the Ctrl-C path) and is
    recorded for `check()`. Main thread only (Python's rule for signal handlers)."""
    old = {s: signal.signal(s, _handler) for s in signals}
    try:
        yield
        check()  # one lost in the block's last stretch still interrupts
    except KeyboardInterrupt:
        _pending.clear()  # delivered: a later block must not raise it again
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def check() -> None:
    """Raise the KeyboardInterrupt of a recorded signal (once), wherever the handler's own raise went."""
    if _pending:
        _pending.clear()
        raise KeyboardInterrupt
