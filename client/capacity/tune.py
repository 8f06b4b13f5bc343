"""`tdet capacity --search`: trial configs of the served model, one knob at a time from the best so far
(each composing step's instance count, then the engine's max_batch_size and dynamic-batching queue delay in
fractions of the frame interval), each written into the repository, reloaded through the model-control API
(explicit mode) and measured with the capacity search; the best (most cameras; ties: fewer instances, then
less queue delay) is applied (`apply`) or written as a patch. The repository ends as it began otherwise,
also on an error, Ctrl-C or SIGTERM (tune_repo)."""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .. import interrupts
from ..errors import InferenceError, UserError
from .run import check_settings, run_capacity
from .schedule import load_frames
from .tune_config import Knobs, Served, changed, check_explicit_mode, lowered_ensemble, read_served
from .tune_repo import RepositoryGuard, TrialRefused, write_patch

DEFAULT_INSTANCES = (1, 2, 4)
DEFAULT_BATCH_SIZES = (1, 4, 16)
DEFAULT_DELAYS = (0.0, 0.1, 0.25)  # fractions of the frame interval 1/F


@dataclass
class Trial:
    index: int
    label: str  # what it changes from the repository's config, "as in the repository" for none
    config: dict[str, dict]  # knobs per model
    capacity: int | None = None
    at_least: bool = False
    p99_ms: float | None = None  # at the capacity
    verdict: str = ""
    error: str = ""  # the server refused the config, or the measurement failed
    seconds: float = 0.0
    report: str = ""  # the trial's capacity report folder

    @property
    def instances(self) -> int:
        return sum(k["instances"] or 0 for k in self.config.values())

    @property
    def queue_delay_us(self) -> int:
        return sum(k["queue_delay_us"] or 0 for k in self.config.values())


@dataclass
class SearchResult:
    model: str
    url: str
    repository: str
    fps: float
    deadline_ms: float
    budget_s: float
    trials: list[Trial] = field(default_factory=list)
    best: int | None = None  # index into trials
    spent_s: float = 0.0
    stopped: str = ""  # why the search ended before its grid: budget, server gone, interrupted
    applied: bool = False
    restored: str = ""  # "" or what went wrong putting the originals back
    patch: list[str] = field(default_factory=list)


def dimensions(served: Served, instances, batch_sizes, delays_us) -> list[tuple[str, str, list[int]]]:
    """(model, knob, values) in the order tried: the engine's instances first (it is most often the
    bottleneck), the other steps', then the engine's batching when it batches."""
    engine = served.engine
    dims = [(s, "instances", list(instances)) for s in [engine, *(s for s in served.steps if s != engine)]]
    if served.knobs()[engine].max_batch_size is not None:
        dims += [(engine, "max_batch_size", list(batch_sizes)), (engine, "queue_delay_us", list(delays_us))]
    return dims


def label(served: Served, config: dict[str, Knobs]) -> str:
    base = served.knobs()
    parts = []
    for name in served.order():
        diff = changed(config[name], base[name])
        short = name.removeprefix(f"{served.model}_") if name != served.model else "ensemble"
        parts += [f"{short} {k.replace('_', ' ')} {v}" for k, v in diff.items()]
    return ", ".join(parts) or "as in the repository"


def best_trial(trials: list[Trial]) -> Trial | None:
    """Most cameras; ties: fewer instances, then less queue delay, then the lower p99."""
    held = [t for t in trials if t.capacity]
    return max(held, key=lambda t: (t.capacity, -t.instances, -t.queue_delay_us, -(t.p99_ms or 0)), default=None)


def _p99_at(result) -> float | None:
    level = next((r for r in result.levels if r.cameras == result.capacity and r.passed), None)
    return level.latency_ms["p99"] if level else None


def search_configs(model: str, url: str, source: Path, repository: Path, *, out: Path, budget_s: float = 900.0,
                   apply: bool = False, instances=DEFAULT_INSTANCES, batch_sizes=DEFAULT_BATCH_SIZES,
                   delays=DEFAULT_DELAYS, fps: float = 10.0, slo_ms: float | None = None, hold_s: float = 10.0,
                   max_miss: float = 0.01, max_in_flight: int = 2, max_cameras: int = 256, workers: int = 1,
                   frames_limit: int = 100, timeout_s: float = 10.0, metrics_url: str | None = None) -> SearchResult:
    """The search; out/ gets search.json, search.html, trials/NN/ (each trial's capacity report) and the best
    config as a patch (best_config/, best_config.diff)."""
    import tritonclient.grpc as grpcclient

    from .tune_report import print_table, write_search

    check_settings(fps, slo_ms, hold_s, max_miss, max_in_flight, 1, max_cameras, None)
    _check_grid(instances, batch_sizes, delays, budget_s)
    frames = load_frames(source, frames_limit)
    client = grpcclient.InferenceServerClient(url)
    check_explicit_mode(client, url)
    served = read_served(client, url, model, repository)
    deadline_ms = 1000 / fps if slo_ms is None else slo_ms
    result = SearchResult(model, url, str(repository), fps, deadline_ms, budget_s)
    delays_us = [round(f * 1e6 / fps) for f in delays]
    guard, t0 = RepositoryGuard(client, served), time.monotonic()
    measured: dict[tuple, Trial] = {}

    def trial(config: dict[str, Knobs]) -> Trial:
        interrupts.check()
        best = best_trial(result.trials)
        t = Trial(len(result.trials), label(served, config), {n: asdict(k) for n, k in config.items()},
                  report=str(out / "trials" / f"{len(result.trials):02d}"))
        result.trials.append(t)
        measured[_key(config)] = t
        print(f"trial {t.index}: {t.label}", file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            guard.set(config)
            cap = run_capacity(model, url, source, out=Path(t.report), fps=fps, slo_ms=slo_ms, hold_s=hold_s,
                               max_miss=max_miss, max_in_flight=max_in_flight,
                               start=min(max_cameras, best.capacity if best else 1), max_cameras=max_cameras,
                               workers=workers, timeout_s=timeout_s, metrics_url=metrics_url, frames=frames)
            t.capacity, t.at_least, t.verdict, t.p99_ms = cap.capacity, cap.at_least, cap.verdict, _p99_at(cap)
            if not cap.complete:
                result.stopped = cap.verdict
        except TrialRefused as err:
            t.error = f"the server refused this config: {err}"
            guard.set(served.knobs())  # back to the originals before the next trial
        except (UserError, InferenceError) as err:
            t.error = f"{type(err).__name__}: {err}"
        t.seconds = time.monotonic() - start
        print(f"trial {t.index}: {_outcome(t)}", file=sys.stderr, flush=True)
        write_search(result, out)
        return t

    try:
        # SIGTERM (a `kill`, a container stop) takes the Ctrl-C path, so the originals are restored
        with interrupts.recorded((signal.SIGINT, signal.SIGTERM)):
            best_config = served.knobs()
            trial(best_config)
            for name, knob, values in dimensions(served, instances, batch_sizes, delays_us):
                for v in values:
                    config = lowered_ensemble(served, {**best_config, name: replace(best_config[name], **{knob: v})})
                    if _key(config) in measured or result.stopped:
                        continue
                    if time.monotonic() - t0 >= budget_s:
                        result.stopped = f"the --budget of {budget_s:g} s is spent"
                        break
                    trial(config)
                best = best_trial(result.trials)
                best_config = _knobs(best.config) if best else best_config
    except KeyboardInterrupt:
        result.stopped = "interrupted (Ctrl-C / SIGTERM)"
        raise
    finally:
        _finish(result, served, guard, apply, out)
        print_table(result)
        write_search(result, out)
    if guard.interrupted:
        raise KeyboardInterrupt
    return result


def _finish(result: SearchResult, served: Served, guard: RepositoryGuard, apply: bool, out: Path) -> None:
    """The best as a patch; applied (and reloaded) with `apply` when the search was not interrupted, else the
    originals back."""
    best = best_trial(result.trials)
    result.best = best.index if best else None
    result.spent_s = sum(t.seconds for t in result.trials)
    config = _knobs(best.config) if best else None
    if config is not None:
        result.patch = [str(p) for p in write_patch(served, config, out)]
    if apply and config is not None and not result.stopped.startswith("interrupted"):
        try:
            guard.set(config)
            result.applied = True
            return
        except Exception as err:  # refused or the server went away: the originals go back
            result.restored = f"--apply failed ({err}); "
    result.restored += guard.restore()


def _outcome(t: Trial) -> str:
    if t.error:
        return t.error
    return t.verdict


def _key(config: dict[str, Knobs]) -> tuple:
    return tuple(sorted((n, tuple(asdict(k).values())) for n, k in config.items()))


def _knobs(config: dict[str, dict]) -> dict[str, Knobs]:
    return {n: Knobs(**k) for n, k in config.items()}


def _check_grid(instances, batch_sizes, delays, budget_s: float) -> None:
    if not instances or min(instances) < 1:
        raise UserError(f"--instances are counts >= 1, got {','.join(map(str, instances)) or 'none'}")
    if batch_sizes and min(batch_sizes) < 1:
        raise UserError(f"--batch-sizes are sizes >= 1, got {','.join(map(str, batch_sizes))}")
    if delays and min(delays) < 0:
        raise UserError(f"--queue-delays are fractions of the frame interval >= 0, got {','.join(map(str, delays))}")
    if not budget_s > 0:
        raise UserError(f"--budget must be > 0 seconds, got {budget_s:g}")
