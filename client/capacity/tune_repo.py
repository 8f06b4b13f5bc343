"""The repository during a config search: a trial's config.pbtxt files written atomically and reloaded
through Triton's model-control API, and the originals (saved before the first trial) put back and reloaded
at the end, on an error, on Ctrl-C or SIGTERM, so the repository is never left half-written or changed."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path

from ..files import atomic_write
from .tune_config import Knobs, Served, config_text


class TrialRefused(Exception):
    """The server would not load a trial's config (the message says which model and why)."""


@contextmanager
def signals_deferred():
    """Ctrl-C / SIGTERM while the originals go back do not stop that: they are recorded in the list yielded
    (the caller stops once the repository is back)."""
    got: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield got
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


class RepositoryGuard:
    """What the repository files and the server hold, model by model; `set` moves both to a config."""

    def __init__(self, client, served: Served) -> None:
        self.client, self.served = client, served
        self.current: dict[str, Knobs] = served.knobs()  # what the files say
        self.touched: set[str] = set()  # models whose files or loaded config changed
        self.interrupted = False  # a Ctrl-C / SIGTERM came while restoring

    def _write(self, name: str, data: bytes) -> None:
        path = self.served.path(name)
        if path.read_bytes() != data:
            atomic_write(path, data, mode=path.stat().st_mode & 0o777)

    def _load(self, names: list[str]) -> None:
        from tritonclient.utils import InferenceServerException

        for name in names:
            try:
                self.client.load_model(name)
            except InferenceServerException as err:
                raise TrialRefused(f"{name}: {err.message()}") from None

    def _load_order(self, config: dict[str, Knobs], names: set[str]) -> list[str]:
        """Steps then the ensemble, except when the ensemble's max batch goes down: then it goes first (it may
        never allow more than a step while either loads)."""
        served = self.served
        steps = [s for s in served.steps if s in names]
        if not served.ensemble:
            return steps
        new, old = config[served.model].max_batch_size, self.current[served.model].max_batch_size
        lower = new is not None and old is not None and new < old
        return [served.model, *steps] if lower else [*steps, served.model]

    def set(self, config: dict[str, Knobs], *, reload: set[str] = frozenset()) -> None:
        """Write the files of `config` that differ from the current ones and reload those models (and
        `reload`), then the ensemble. TrialRefused when the server refuses one (it keeps serving the old)."""
        names = {n for n in self.served.order() if config[n] != self.current[n]} | set(reload)
        if not names:
            return
        order = self._load_order(config, names)
        for name in names:
            self._write(name, config_text(self.served, name, config[name]))
            self.current[name] = config[name]
        self.touched |= names
        self._load(order)

    def restore(self) -> str:
        """The original bytes back in every file and the touched models reloaded; "" or what went wrong
        (the files are back even when the server is gone)."""
        with signals_deferred() as got:
            for name, data in self.served.original.items():
                self._write(name, data)
            try:
                self.set(self.served.knobs(), reload=self.touched)
                self.touched, problem = set(), ""
            except TrialRefused as err:
                problem = f"the original files are back, but reloading failed: {err}"
            except Exception as err:  # the server went away: it loads the restored files when it starts again
                problem = f"the original files are back, but the server did not reload them: {err}"
        self.interrupted = self.interrupted or bool(got)
        return problem

    def files_identical(self) -> bool:
        return all(self.served.path(n).read_bytes() == data for n, data in self.served.original.items())


def write_patch(served: Served, config: dict[str, Knobs], out: Path) -> list[Path]:
    """The best config as files: out/best_config/<model>/config.pbtxt of each model it changes and a unified
    diff (`patch -p1 -d REPOSITORY < best_config.diff`)."""
    import difflib

    written, diff = [], []
    for name in served.order():
        new = config_text(served, name, config[name])
        if new == served.original[name]:
            continue
        path = out / "best_config" / name / "config.pbtxt"
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(atomic_write(path, new))
        diff += difflib.unified_diff(served.original[name].decode().splitlines(True), new.decode().splitlines(True),
                                     f"a/{name}/config.pbtxt", f"b/{name}/config.pbtxt")
    if diff:
        written.append(atomic_write(out / "best_config.diff", "".join(diff)))
    return written
