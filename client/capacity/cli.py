"""`tdet capacity`: the argparse front of run.run_capacity (torch-free; the work is imported when it runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..connection import DEFAULT_PORTS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("capacity", help="how many cameras at F fps the server holds (open loop, deadline per frame)",
                       description="N virtual cameras send the frames of --source at --fps each on a fixed schedule "
                                   "(open loop, staggered phases); a frame is on time if answered within the deadline "
                                   "(--slo-ms, default 1/fps); a camera with --max-in-flight unanswered frames drops "
                                   "its next one (a miss). Searches N (doubling, then bisection) for the most cameras "
                                   "with misses <= --max-miss and p99 <= the deadline, each level held --hold s. "
                                   "Writes capacity.json, levels.csv, capacity.png and report.html to --out. Exit 0: "
                                   "a capacity; 1: none (the generator was late, or even --start cameras did not "
                                   "hold); 2: bad input, or the run stopped early (what it measured is written, "
                                   "marked incomplete).")
    p.add_argument("--model", required=True, help="served model, e.g. damo_yolo_t")
    p.add_argument("--url", help="server gRPC host:port (default: $TDET_URL, else the one server `tdet serve "
                                 f"--detach` runs, else 127.0.0.1:{DEFAULT_PORTS['grpc']})")
    p.add_argument("--source", type=Path, required=True, help="video file (its frames JPEG-encoded once) or image "
                                                              "folder, the frames every camera sends")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second per camera")
    p.add_argument("--slo-ms", type=float, help="deadline per frame, ms (default: one frame interval, 1000/fps)")
    p.add_argument("--max-miss", type=float, default=0.01, help="largest share of missed frames a level may have")
    p.add_argument("--hold", type=float, default=10.0, help="seconds each level runs")
    p.add_argument("--max-in-flight", type=int, default=2, help="unanswered frames a camera may have; more: dropped")
    p.add_argument("--start", type=int, default=1, help="cameras of the first level")
    p.add_argument("--max-cameras", type=int, default=256, help="the search goes no higher")
    p.add_argument("--cameras", type=int, help="measure this one level instead of searching")
    p.add_argument("--workers", type=int, default=1, help="sender processes the cameras are split over (when one "
                                                          "cannot keep the schedule)")
    p.add_argument("--frames", type=int, default=100, help="at most this many frames of --source")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="request timeout")
    p.add_argument("--metrics-url", help="Triton's Prometheus metrics (as for `tdet loadtest`; '' to skip)")
    p.add_argument("--out", type=Path, default=Path("build/capacity"), help="report folder")
    s = p.add_argument_group("config search (--search)")
    s.add_argument("--search", action="store_true",
                   help="try configs of the served model (instances per step, the engine's max batch and queue "
                        "delay), one knob at a time from the best so far, each reloaded and measured; the server "
                        "must run in explicit model-control mode on --repository. The repository ends as it "
                        "began (also on an error or Ctrl-C) unless --apply; the best is written to --out as "
                        "best_config/ and best_config.diff")
    s.add_argument("--repository", type=Path, help="the model repository the server serves (required with --search)")
    s.add_argument("--budget", type=float, default=900.0, metavar="SECONDS",
                   help="no new trial starts after this many seconds; what was measured is reported")
    s.add_argument("--apply", action="store_true", help="write the best config into --repository and reload it")
    s.add_argument("--instances", type=_ints, default=None, metavar="N,N",
                   help="instance counts tried per step (default: 1,2,4)")
    s.add_argument("--batch-sizes", type=_ints, default=None, metavar="N,N",
                   help="the engine's max_batch_size values tried (default: 1,4,16; '' for none)")
    s.add_argument("--queue-delays", type=_floats, default=None, metavar="F,F",
                   help="dynamic-batching queue delays tried, in frame intervals 1/fps (default: 0,0.1,0.25; "
                        "'' for none)")
    p.set_defaults(func=cmd_capacity, protocol="grpc")


def _numbers(kind, text: str) -> tuple:
    try:
        return tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of numbers, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    return _numbers(int, text)


def _floats(text: str) -> tuple[float, ...]:
    return _numbers(float, text)


def cmd_search(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..server_args import metrics_url, server_url
    from . import tune

    if args.repository is None:
        raise UserError("--search needs --repository DIR: the model repository the server serves (in explicit "
                        "model-control mode), where the trial configs are written")
    if args.cameras is not None:
        raise UserError("--search measures the capacity of each config: leave out --cameras")
    pick = lambda given, default: default if given is None else given  # noqa: E731
    url = server_url(args, single="tdet capacity")
    result = tune.search_configs(
        args.model, url, args.source, args.repository, out=args.out, budget_s=args.budget,
        apply=args.apply, instances=pick(args.instances, tune.DEFAULT_INSTANCES),
        batch_sizes=pick(args.batch_sizes, tune.DEFAULT_BATCH_SIZES), delays=pick(args.queue_delays,
                                                                                  tune.DEFAULT_DELAYS),
        fps=args.fps, slo_ms=args.slo_ms, hold_s=args.hold, max_miss=args.max_miss,
        max_in_flight=args.max_in_flight, max_cameras=args.max_cameras, workers=args.workers,
        frames_limit=args.frames, timeout_s=args.timeout, metrics_url=metrics_url(args))
    print(f"report: {args.out / 'search.json'}, {args.out / 'search.html'}, {args.out / 'trials'}/")
    if result.restored:
        print(f"tdet capacity: error: {result.restored}", file=sys.stderr)
        return 2
    if result.stopped and not result.stopped.startswith("the --budget"):
        print(f"tdet capacity: error: the search stopped early: {result.stopped}", file=sys.stderr)
        return 2
    return 0 if result.best is not None else 1


def cmd_capacity(args: argparse.Namespace) -> int:
    if args.search:
        return cmd_search(args)
    for flag in ("repository", "apply", "instances", "batch_sizes", "queue_delays"):
        if getattr(args, flag) not in (None, False):  # the search's knobs: without --search they would do nothing
            from ..errors import UserError

            raise UserError(f"--{flag.replace('_', '-')} goes with --search")
    from ..server_args import metrics_url, server_url
    from .run import run_capacity
    from .search import format_result

    url = server_url(args, single="tdet capacity")
    result = run_capacity(args.model, url, args.source, out=args.out, fps=args.fps, slo_ms=args.slo_ms,
                          hold_s=args.hold, max_miss=args.max_miss, max_in_flight=args.max_in_flight,
                          start=args.start, max_cameras=args.max_cameras, cameras=args.cameras,
                          workers=args.workers, frames_limit=args.frames, timeout_s=args.timeout,
                          metrics_url=metrics_url(args))
    print(format_result(result))
    print(f"report: {args.out / 'capacity.json'}, {args.out / 'levels.csv'}, {args.out / 'capacity.png'}, "
          f"{args.out / 'report.html'}")
    if not result.complete:
        print(f"tdet capacity: error: {result.verdict}", file=sys.stderr)
        return 2
    return 0 if result.capacity else 1
