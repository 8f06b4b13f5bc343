"""The load generator's ceiling on this machine: the request rate one `tdet loadtest` process offers vs
`--workers 2` (Locust's distributed mode), against the cheapest model this repository serves. A benchmark,
not a test.

    .venv/bin/python bench/loadgen_ceiling.py [--duration 20] [--users 32] [--size 64]

The model: damo-yolo-t (the smallest variant) exported at --size x --size from a random-init checkpoint, one
detection kept, fed --size x --size JPEGs, so each request costs the server as little as the ensemble allows.
Prints, for 1 process and for --workers 2 side by side: requests/s, p50 latency, and the CPU cores the
generator (Locust master + workers) and the server (tritonserver + its python stubs) used, and their CPU per
request. A generator near 1.0 core per process is at its ceiling; a server near all the cores is the limit; on
a machine shared with other jobs neither may be, and CPU per request still gives one process's ceiling.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

MODEL = "damo_yolo_t"
TICK = os.sysconf("SC_CLK_TCK")


def cheap_repository(root: Path, size: int) -> Path:
    """damo-yolo-t at size x size (random init, seed 0) as a served repository that keeps one detection."""
    import torch

    from tdet.ensembles.builder import build_repository
    from tdet.ensembles.options import BuildOptions
    from tdet.training.export import export_onnx
    from tdet.training.registry import build_model

    ckpt = root / f"damo-yolo-t-{size}.pth"
    sd = build_model("damo-yolo-t", seed=0, input_hw=(size, size)).state_dict()
    torch.save({"model": sd, "tdet": {"variant": "damo-yolo-t", "input_hw": [size, size]}}, ckpt)
    onnx = export_onnx("damo-yolo-t", root / "damo-yolo-t.onnx", weights=ckpt).path
    repo = root / "model_repository"
    build_repository([onnx], repo, BuildOptions(max_det=1, ort_threads=1))
    return repo


def server_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) of every live process in the server's process group (server + stubs)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid:  # fields after ")": state ppid pgrp ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # Locust master and workers, once they are reaped
    return r.ru_utime + r.ru_stime


def measure(url: str, metrics_url: str, pgid: int, images: Path, out: Path, users: int, duration: float,
            workers: int) -> dict:
    from tdet.client.loadtest.runner import run_once

    gen0, srv0, t0 = children_cpu_s(), server_cpu_s(pgid), time.monotonic()
    s = run_once(MODEL, url, users=users, spawn_rate=users, duration_s=duration, images=images, out=out,
                 metrics_url=metrics_url, local_only=True, workers=workers)
    wall = time.monotonic() - t0  # includes Locust's start and stop: the cores are a lower bound
    gen, srv = children_cpu_s() - gen0, server_cpu_s(pgid) - srv0
    return {"rate": s.requests_per_s, "requests": s.requests, "failures": s.failures, "p50": s.latency_ms["p50"],
            "gen_cores": gen / wall, "srv_cores": srv / wall, "gen_ms": 1000 * gen / s.requests,
            "srv_ms": 1000 * srv / s.requests, "batch": s.triton.get(f"{MODEL}_engine", {}).get("avg_batch_size", 0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=20, help="seconds of load per setting")
    ap.add_argument("--users", type=int, default=32, help="closed-loop users (enough to saturate the generator)")
    ap.add_argument("--size", type=int, default=64, help="model input and image side, px")
    args = ap.parse_args()

    from tdet.client.synth import synthesize
    from tdet.ensembles.server import free_port, start, stop_process

    with tempfile.TemporaryDirectory(prefix="loadgen-ceiling-") as tmp:
        root = Path(tmp)
        repo = cheap_repository(root, args.size)
        synthesize(root / "imgs", num=8, seed=0, size=(args.size, args.size))
        proc, info = start(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                           log=root / "tritonserver.log", timeout_s=240)
        try:
            load = os.getloadavg()[0]
            rows = {w: measure(info.grpc_url, info.metrics_url, proc.pid, root / "imgs" / "images", root / f"w{w}",
                               args.users, args.duration, w) for w in (0, 2)}
        finally:
            stop_process(proc.pid)
    print(f"{MODEL} at {args.size}x{args.size}, {args.users} users, {args.duration:g} s per setting, "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the start")
    print(f"{'generator':<14}{'requests/s':>11}{'requests':>9}{'fail':>5}{'p50 ms':>8}{'batch':>6}"
          f"{'gen cores':>10}{'srv cores':>10}{'gen CPU ms/req':>15}{'srv CPU ms/req':>15}")
    for w, r in rows.items():
        name = "1 process" if not w else f"--workers {w}"
        print(f"{name:<14}{r['rate']:>11.1f}{r['requests']:>9}{r['failures']:>5}{r['p50']:>8.1f}{r['batch']:>6.1f}"
              f"{r['gen_cores']:>10.2f}{r['srv_cores']:>10.2f}{r['gen_ms']:>15.2f}{r['srv_ms']:>15.2f}")
    print(f"--workers 2 / 1 process: {rows[2]['rate'] / rows[0]['rate']:.2f}x; one generator process with a core "
          f"to itself would offer ~{1000 / rows[0]['gen_ms']:.0f} req/s (1 s / its CPU per request, Locust's "
          f"start-up included)")


if __name__ == "__main__":
    import signal

    from tdet.client import interrupts

    with interrupts.recorded((signal.SIGINT, signal.SIGTERM)):  # SIGTERM too runs the finally that stops the server
        main()
