"""A whole `tdet capacity` run: frames encoded once, the first frame checked, the generator started, the search
(or one level with `cameras`), the report rewritten after every level and marked incomplete when the run
stops early (server gone, Ctrl-C)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from .. import interrupts
from ..errors import UserError
from ..loadtest.runner import _metrics_before
from .report import write_data, write_report
from .schedule import Generator, LevelResult, check_first_frame, load_frames, run_level
from .search import CapacityResult, find_capacity, hpa_figures, late_text


def check_settings(fps: float, slo_ms: float | None, hold_s: float, max_miss: float, max_in_flight: int,
                   start: int, max_cameras: int, cameras: int | None) -> None:
    """One clear UserError naming the first bad option."""
    def positive(name: str, v: float) -> None:
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise UserError(f"{name} must be a number > 0, got {v:g}")

    positive("--fps", fps)
    if slo_ms is not None:
        positive("--slo-ms", slo_ms)
    positive("--hold", hold_s)
    if not 0 <= max_miss < 1:
        raise UserError(f"--max-miss is a fraction in [0, 1), got {max_miss:g}")
    for name, v in (("--max-in-flight", max_in_flight), ("--start", start), ("--max-cameras", max_cameras)):
        if v < 1:
            raise UserError(f"{name} must be >= 1, got {v}")
    if cameras is not None and cameras < 1:
        raise UserError(f"--cameras must be >= 1, got {cameras}")
    if cameras is None and start > max_cameras:
        raise UserError(f"--start {start} is above --max-cameras {max_cameras}: the search would have no level")


def _verdict(result: CapacityResult, why: str) -> str:
    if not result.complete:
        held, result.capacity = result.capacity, None  # not a capacity: the search did not finish
        return (f"incomplete: {why or 'stopped'}; the report holds what was measured"
                + (f" ({held} cameras held before it stopped)" if held else ""))
    if why and any(r.generator_late for r in result.levels):
        result.capacity = None
        return (f"no capacity reported: {why}; the numbers describe the generator, not the server: rerun with "
                "--workers N (more sender processes) or from a less loaded machine")
    if not result.capacity:
        fewest = min(r.cameras for r in result.levels)
        return f"no capacity: even {fewest} camera(s) did not hold (see the level's misses and p99)"
    more = "at least " if result.at_least else ""
    return (f"capacity: {more}{result.capacity} cameras at {result.fps:g} fps (deadline {result.deadline_ms:g} ms, "
            f"misses <= {100 * result.max_miss:g}%)")


def run_capacity(model: str, url: str, source: Path, *, out: Path, fps: float = 10.0, slo_ms: float | None = None,
                 hold_s: float = 10.0, max_miss: float = 0.01, max_in_flight: int = 2, start: int = 1,
                 max_cameras: int = 256, cameras: int | None = None, workers: int = 1, frames_limit: int = 100,
                 timeout_s: float = 10.0, metrics_url: str | None = None,
                 frames: list[bytes] | None = None) -> CapacityResult:
    """The search (or one level of `cameras`); out/ gets the report. metrics_url: as `tdet loadtest`'s.
    frames: already loaded from `source` (a config search loads them once for all its trials)."""
    check_settings(fps, slo_ms, hold_s, max_miss, max_in_flight, start, max_cameras, cameras)
    frames = load_frames(source, frames_limit) if frames is None else frames
    steps = check_first_frame(url, model, frames[0], timeout_s)
    metrics_url, _ = _metrics_before(metrics_url, url, model)
    deadline_ms = 1000 / fps if slo_ms is None else slo_ms
    result = CapacityResult(model, url, fps, deadline_ms, max_miss, hold_s, max_in_flight, workers, len(frames))

    def measure(n: int) -> LevelResult:
        interrupts.check()
        return run_level(gen, n, fps, hold_s, deadline_ms=deadline_ms, max_in_flight=max_in_flight,
                         metrics_url=metrics_url, steps=steps)

    def on_level(level: LevelResult) -> None:
        print(_progress(level), file=sys.stderr, flush=True)
        write_data(result, out)  # so far, in case the run stops

    why = ""
    try:
        with interrupts.recorded(), Generator(url, model, frames, timeout_s=timeout_s, workers=workers) as gen:
            if cameras is None:
                result.capacity, result.at_least, why = find_capacity(
                    measure, max_miss=max_miss, start=start, max_cameras=max_cameras, levels=result.levels,
                    on_level=on_level)
            else:
                why = _one_level(result, measure(cameras), on_level)
        result.complete = not any(r.aborted for r in result.levels)
    except BaseException as err:
        why = "interrupted (Ctrl-C)" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}"
        raise
    finally:  # also on Ctrl-C or an error: what was measured, marked incomplete
        result.verdict = _verdict(result, why)
        result.hpa = hpa_figures(result)
        write_report(result, out)
    return result


def _one_level(result: CapacityResult, level: LevelResult, on_level) -> str:
    """--cameras N: that level only; the capacity is N when it held."""
    level.judge(result.max_miss)
    result.levels.append(level)
    on_level(level)
    result.capacity = level.cameras if level.passed else None
    if level.aborted or not level.generator_late:
        return level.aborted
    return f"the load generator was late ({late_text(level)})"


def _progress(r: LevelResult) -> str:
    return (f"  {r.cameras} cameras: miss {100 * r.miss_rate:.1f}%, p99 {r.latency_ms['p99']:.1f} ms, "
            f"generator late p99 {r.lateness_ms['p99']:.1f} ms")
