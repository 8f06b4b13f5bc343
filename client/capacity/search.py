"""The camera count search: doubling from --start until a level fails, then bisection between the last level
that held and the first that did not, one level at a time (each held --hold seconds), and the figures an
autoscaler needs at the capacity found."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .schedule import LATE_FRACTION, LevelResult


@dataclass
class CapacityResult:
    model: str
    url: str
    fps: float
    deadline_ms: float
    max_miss: float
    hold_s: float
    max_in_flight: int
    workers: int
    frames: int  # distinct frames the cameras cycle through
    levels: list[LevelResult] = field(default_factory=list)  # in the order measured
    capacity: int | None = None  # the most cameras that held; None: not reported (see `verdict`)
    at_least: bool = False  # every level up to --max-cameras held: the capacity is at least that
    complete: bool = False  # the search ran to its end (no server loss, no interruption)
    verdict: str = ""  # one line: the answer, or why there is none
    hpa: dict[str, object] = field(default_factory=dict)  # per-replica autoscaling figures (hpa_figures)


def find_capacity(measure: Callable[[int], LevelResult], *, max_miss: float, start: int = 1, max_cameras: int = 256,
                  levels: list[LevelResult] | None = None,
                  on_level: Callable[[LevelResult], None] | None = None) -> tuple[int, bool, str]:
    """(capacity, at_least, why it stopped early or ""). measure(n) runs one level; each is appended to
    `levels`, then handed to on_level (a caller writes them out as they come). Stops at the first level where
    the server went away or the generator was late."""
    levels = [] if levels is None else levels
    lo, hi, n = 0, None, min(start, max_cameras)

    def probe(n: int) -> str:
        r = measure(n)
        r.judge(max_miss)
        levels.append(r)
        if on_level is not None:
            on_level(r)
        if r.aborted:
            return r.aborted
        if r.generator_late:
            return f"the load generator was late at {n} cameras ({late_text(r)})"
        return ""

    while True:  # doubling
        if why := probe(n):
            return lo, False, why
        if not levels[-1].passed:
            hi = n
            break
        lo = n
        if n >= max_cameras:
            return lo, True, ""
        n = min(2 * n, max_cameras)
    while hi - lo > 1:  # bisection
        mid = (lo + hi) // 2
        if why := probe(mid):
            return lo, False, why
        lo, hi = (mid, hi) if levels[-1].passed else (lo, mid)
    return lo, False, ""


def late_text(r: LevelResult) -> str:
    late = r.lateness_ms
    return (f"sends behind schedule p90 {late['p90']:.1f} ms, max {late['max']:.1f} ms; the limits are "
            f"{LATE_FRACTION:.0%} of the {r.deadline_ms:g} ms deadline and the deadline")


def hpa_figures(result: CapacityResult) -> dict[str, object]:
    """Per replica at the capacity found: cameras, frames/s, and Triton's queue time per request of the step
    that queues most at that load (the metric a Kubernetes HPA scales on, with its PromQL)."""
    level = next((r for r in result.levels if r.cameras == result.capacity and r.passed), None)
    if level is None:
        return {}
    out: dict[str, object] = {"cameras_per_replica": level.cameras,
                              "frames_per_s_per_replica": level.cameras * level.fps}
    if level.triton:
        step, t = max(level.triton.items(), key=lambda kv: kv[1]["queue_ms"])
        out.update(metric_model=step, queue_ms_per_request=t["queue_ms"],
                   promql=(f'rate(nv_inference_queue_duration_us{{model="{step}"}}[1m]) / '
                           f'rate(nv_inference_request_success{{model="{step}"}}[1m]) / 1000'))
    return out


def format_level(r: LevelResult) -> str:
    lat, late = r.latency_ms, r.lateness_ms
    flag = "ok  " if r.passed else "FAIL"
    return (f"{flag} {r.cameras:4d} cameras: miss {100 * r.miss_rate:5.1f}% (late {r.late}, failed {r.failed}, "
            f"dropped {r.dropped} of {r.scheduled})  latency p50 {lat['p50']:.1f} p90 {lat['p90']:.1f} "
            f"p99 {lat['p99']:.1f} ms  {r.achieved_fps:.1f} fps on time  generator late p99 {late['p99']:.1f} ms"
            + (f"  [{r.aborted}]" if r.aborted else ""))


def format_result(result: CapacityResult) -> str:
    lines = [format_level(r) for r in result.levels]
    lines.append(result.verdict)
    hpa = result.hpa
    if hpa:
        line = (f"autoscaling (per replica): {hpa['cameras_per_replica']} cameras = "
                f"{hpa['frames_per_s_per_replica']:g} frames/s")
        if "metric_model" in hpa:
            line += (f"; Triton queue time at that load: {hpa['queue_ms_per_request']:.2f} ms per request of "
                     f"{hpa['metric_model']} (scale out above it: {hpa['promql']})")
        lines.append(line)
    return "\n".join(lines)
