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
    p.set_defaults(func=cmd_capacity, protocol="grpc")


def cmd_capacity(args: argparse.Namespace) -> int:
    from ..server_args import metrics_url, server_url
    from .run import run_capacity
    from .search import format_result

    result = run_capacity(args.model, server_url(args), args.source, out=args.out, fps=args.fps, slo_ms=args.slo_ms,
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
