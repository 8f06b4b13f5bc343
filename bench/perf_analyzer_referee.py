"""An outside referee for tdet's load numbers: NVIDIA's perf_analyzer on the same served model (a benchmark).

    .venv/bin/python bench/perf_analyzer_referee.py [--concurrency 1 4 8] [--duration 15] [--rate 8]

Same server, same model (the trained damo-yolo-t demo model at 320, as `make demo` serves it), the same one
1280x720 JPEG frame of the synthetic val split for both tools, gRPC, batch 1 per request:
- closed loop: `tdet loadtest --users C` (Locust) vs `perf_analyzer --concurrency-range C`, alternating per C;
- open loop at one request rate R: `tdet capacity`'s level (R/F cameras at F fps, staggered) vs
  `perf_analyzer --request-rate-range R` (constant schedule).
Throughput and p50/p99 latency side by side, and the ratio tdet / perf_analyzer.

perf_analyzer: the binary of the tritonclient 2.41.0 wheel (later wheels no longer carry it), unpacked into its
own folder (build/perf_analyzer/; `pip download` from the configured index, so the project's pinned
tritonclient is not touched), with libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel on LD_LIBRARY_PATH
and Debian's libb64-0d (`apt-get install libb64-0d`). perf_analyzer sends BYTES b64 data as it is serialized on
the wire (4-byte little-endian length, then the bytes): that is what the input file holds.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PA_DIR = ROOT / "build" / "perf_analyzer"
WHEELS = {"tritonclient==2.41.0": "tritonclient-2.41.0.data/data/bin/perf_analyzer",
          "nvidia-cuda-runtime-cu12": "nvidia/cuda_runtime/lib/libcudart.so.12"}


def install_perf_analyzer(dest: Path = PA_DIR) -> tuple[Path, dict]:
    """(the perf_analyzer binary, the environment to run it in), unpacking the two wheels on first use."""
    binary, cudart = dest / "bin" / "perf_analyzer", dest / "lib" / "libcudart.so.12"
    if not (binary.is_file() and cudart.is_file()):
        wheels = dest / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), *WHEELS],
                       check=True)
        for req, member in WHEELS.items():
            name = req.split("==")[0].replace("-", "_")
            wheel = next(wheels.glob(f"{name}-*.whl"))
            target = binary if member.endswith("perf_analyzer") else cudart
            target.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheel) as z:
                target.write_bytes(z.read(member))
        binary.chmod(0o755)
    env = dict(os.environ, LD_LIBRARY_PATH=f"{cudart.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    missing = subprocess.run(["ldd", str(binary)], env=env, capture_output=True, text=True).stdout
    missing = [line.split()[0] for line in missing.splitlines() if "not found" in line]
    if missing:
        raise SystemExit(f"perf_analyzer cannot run here: {', '.join(missing)} not found "
                         "(libb64.so.0d: `apt-get install libb64-0d`)")
    return binary, env


def perf_analyzer(binary: Path, env: dict, model: str, grpc_url: str, frame: bytes, work: Path, *,
                  concurrency: int | None = None, rate: float | None = None, duration_s: float = 15) -> dict:
    """One perf_analyzer measurement (three windows of duration/3; stability not required, since on a
    shared CPU it may never settle): img/s and p50/p99 ms from its CSV."""
    data = work / "pa_input.json"
    wire = len(frame).to_bytes(4, "little") + frame
    data.write_text(json.dumps({"data": [{"IMAGE": {"b64": base64.b64encode(wire).decode()}}]}))
    out = work / "pa.csv"
    out.unlink(missing_ok=True)
    load = (["--concurrency-range", str(concurrency)] if concurrency is not None
            else ["--request-rate-range", str(rate), "--request-distribution", "constant"])
    cmd = [str(binary), "-m", model, "-u", grpc_url, "-i", "grpc", "--input-data", str(data), *load,
           "--measurement-interval", str(int(duration_s * 1000 / 3)), "--stability-percentage", "999",
           "--max-trials", "3", "-f", str(out)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration_s * 4 + 120)
    if run.returncode or not out.is_file():
        raise RuntimeError(f"perf_analyzer failed ({run.returncode}):\n{run.stdout[-1500:]}{run.stderr[-1500:]}")
    row = next(csv.DictReader(out.open()))
    return {"img_s": float(row["Inferences/Second"]), "p50_ms": float(row["p50 latency"]) / 1000,
            "p99_ms": float(row["p99 latency"]) / 1000}


def tdet_closed(model: str, grpc_url: str, frame_dir: Path, work: Path, users: int, duration_s: float) -> dict:
    from tdet.client.loadtest.runner import run_once

    s = run_once(model, grpc_url, users=users, spawn_rate=users * 10, duration_s=duration_s, images=frame_dir,
                 out=work / f"loadtest_c{users}", metrics_url="")
    return {"img_s": s.images_per_s, "p50_ms": s.latency_ms["p50"], "p99_ms": s.latency_ms["p99"],
            "failures": s.failures}


def tdet_open(model: str, grpc_url: str, frame: bytes, rate: float, fps: float, duration_s: float) -> dict:
    """tdet capacity's level at rate/fps cameras (open loop, staggered phases); a deadline far above any
    latency here, so every answered frame counts: throughput = answered frames per second."""
    from tdet.client.capacity.schedule import Generator, run_level

    cameras = max(1, round(rate / fps))
    with Generator(grpc_url, model, [frame]) as gen:
        level = run_level(gen, cameras, fps, duration_s, deadline_ms=60_000, max_in_flight=64)
    answered = level.on_time + level.late
    return {"img_s": answered * cameras * fps / max(level.scheduled, 1), "p50_ms": level.latency_ms["p50"],
            "p99_ms": level.latency_ms["p99"], "lateness_p99_ms": level.lateness_ms["p99"]}


def with_engine_batch(metrics_url: str, model: str, measure) -> dict:
    """measure()'s result plus the batch the engine formed meanwhile (Triton's counters, before/after): how
    the load generator's timing met the dynamic batcher."""
    from tdet.client.loadtest.metrics import per_model, scrape

    before = scrape(metrics_url)
    res = measure()
    eng = per_model(before, scrape(metrics_url), [f"{model}_engine"])[f"{model}_engine"]
    return {**res, "engine_batch": eng["avg_batch_size"]}


def serve_demo_model(work: Path):
    """Export the damo-yolo-t demo checkpoint, build its repository, start a server: (process, info, model)."""
    from tdet.ensembles.builder import build_repository
    from tdet.ensembles.server import free_port, start
    from tdet.training.export import export_onnx

    onnx = export_onnx("damo-yolo-t", work / "damo-yolo-t.onnx", weights=ROOT / "training/demo/damo-yolo-t.pth").path
    built = build_repository([onnx], work / "model_repository")
    proc, info = start(work / "model_repository", http_port=free_port(), grpc_port=free_port(),
                       metrics_port=free_port(), timeout_s=600)
    return proc, info, built[0].name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--duration", type=float, default=15, help="seconds measured per tool and load level")
    ap.add_argument("--rate", type=float, default=8, help="open-loop request rate (frames/s in total)")
    ap.add_argument("--fps", type=float, default=2, help="per-camera fps of tdet's open-loop side")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "perf_analyzer_referee.json")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from ensemble_overhead import frames

    from tdet.ensembles.server import stop_process

    binary, env = install_perf_analyzer()
    work = Path(tempfile.mkdtemp(prefix="tdet-referee-"))
    frame = frames(1, work)[0]
    frame_dir = work / "frame"
    frame_dir.mkdir()
    (frame_dir / "frame.jpg").write_bytes(frame)
    load_start = os.getloadavg()[0]
    proc, info, model = serve_demo_model(work)
    rows = []
    try:
        from tdet.client.triton import connect

        with connect(info.grpc_url, model) as client:  # warm-up: every instance has run once
            client.infer_many([frame] * 16, concurrency=8)
        batch = lambda fn: with_engine_batch(info.metrics_url, model, fn)  # noqa: E731
        for c in args.concurrency:
            pa = batch(lambda c=c: perf_analyzer(binary, env, model, info.grpc_url, frame, work, concurrency=c,
                                                 duration_s=args.duration))
            td = batch(lambda c=c: tdet_closed(model, info.grpc_url, frame_dir, work, c, args.duration))
            rows.append({"load": f"concurrency {c}", "perf_analyzer": pa, "tdet": td})
        pa = batch(lambda: perf_analyzer(binary, env, model, info.grpc_url, frame, work, rate=args.rate,
                                         duration_s=args.duration))
        td = batch(lambda: tdet_open(model, info.grpc_url, frame, args.rate, args.fps, args.duration))
        rows.append({"load": f"{args.rate:g} req/s open loop", "perf_analyzer": pa, "tdet": td})
    finally:
        stop_process(proc.pid)
    report = {"model": model, "frame": "1280x720 JPEG", "load_avg_start": load_start,
              "load_avg_end": os.getloadavg()[0], "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"{model}, one 1280x720 JPEG, gRPC; 1-min load average {load_start:.1f} at the start, "
          f"{report['load_avg_end']:.1f} at the end (other jobs on the cores inflate latency)\n")
    print("| load | perf_analyzer img/s | tdet img/s | tdet / pa | pa p50 / p99 ms | tdet p50 / p99 ms "
          "| engine batch pa / tdet |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        pa, td = r["perf_analyzer"], r["tdet"]
        print(f"| {r['load']} | {pa['img_s']:.2f} | {td['img_s']:.2f} | {td['img_s'] / pa['img_s']:.2f}x | "
              f"{pa['p50_ms']:.1f} / {pa['p99_ms']:.1f} | {td['p50_ms']:.1f} / {td['p99_ms']:.1f} | "
              f"{pa['engine_batch']:.2f} / {td['engine_batch']:.2f} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    import signal

    from tdet.client import interrupts

    with interrupts.recorded((signal.SIGINT, signal.SIGTERM)):  # SIGTERM too runs the finally that stops the server
        main()
