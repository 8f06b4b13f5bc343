"""Soak: N minutes of saturation through the served ensemble (a benchmark, not a test).

    .venv/bin/python bench/soak.py [--minutes 10] [--variant damo-yolo-t] [--concurrency 8] [--bad-every 50]
    .venv/bin/python bench/soak.py --url 127.0.0.1:8001 --model damo_yolo_t --server-pid PID   # a running server

Without --url it exports the variant (seeded random init), builds a repository and starts the local
tritonserver. `concurrency` client threads send distinct JPEGs (several sizes) back to back; every
`bad-every`-th request is a broken image, which must be refused with INVALID_ARGUMENT (it exercises the
error path for leaks; counted apart, never as a failure). Per window it prints requests, failures
(target 0), refusals, throughput, p50/p99 latency and the resident memory (RSS) of tritonserver and of
its python backend stubs; at the end, the RSS growth after warm-up (target: none beyond noise).
Results also go to --out (soak.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2
import numpy as np

SIZES = ((1280, 720), (640, 480), (800, 600), (480, 640), (1920, 1080))


def jpegs(n: int, seed: int = 0) -> list[bytes]:
    """n distinct synthetic JPEGs of several sizes (blocky colour fields + shapes the detector responds to)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        img = cv2.resize(rng.integers(0, 255, (max(2, h // 60), max(2, w // 60), 3), dtype=np.uint8), (w, h),
                         interpolation=cv2.INTER_NEAREST)
        for _ in range(5):
            c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            color = tuple(int(v) for v in rng.integers(0, 255, 3))
            cv2.circle(img, c, int(rng.integers(10, min(w, h) // 4)), color, -1)
        out.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of one process (MiB), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def server_processes(pid: int) -> tuple[int, list[int]]:
    """(tritonserver pid, its python backend stub pids): the stubs are in the server's process group."""
    stubs = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pid:
            continue
        try:
            pgid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2])
            if pgid == pid and b"triton_python_backend_stub" in (entry / "cmdline").read_bytes():
                stubs.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return pid, sorted(stubs)


def memory(pid: int) -> dict[str, float]:
    server, stubs = server_processes(pid)
    return {"tritonserver_mb": rss_mb(server), "stubs_mb": sum(rss_mb(s) for s in stubs), "stubs": len(stubs)}


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[tuple[float, float, str]] = []  # (end time, latency ms, "ok" | "refused" | error)

    def add(self, t: float, ms: float, outcome: str) -> None:
        with self.lock:
            self.rows.append((t, ms, outcome))

    def window(self, t0: float, t1: float) -> list[tuple[float, float, str]]:
        with self.lock:
            return [r for r in self.rows if t0 <= r[0] < t1]


def worker(client, blobs: list[bytes], bad_every: int, start: int, stop: threading.Event, rec: Recorder) -> None:
    from tdet.client.errors import InvalidInputError

    n = start
    while not stop.is_set():
        n += 1
        bad = bad_every > 0 and n % bad_every == 0
        data = blobs[n % len(blobs)][:200] if bad else blobs[n % len(blobs)]  # a truncated JPEG
        t0 = time.perf_counter()
        try:
            client.infer(data)
            outcome = "unexpected answer to a broken image" if bad else "ok"
        except InvalidInputError as err:
            outcome = "refused" if bad else f"{type(err).__name__}: {err}"
        except Exception as err:  # every failure is counted and shown
            outcome = f"{type(err).__name__}: {err}"
        rec.add(time.perf_counter(), (time.perf_counter() - t0) * 1000, outcome)


def summarize(rows, seconds: float) -> dict[str, float]:
    ok = np.array([ms for _, ms, o in rows if o == "ok"])
    return {"requests": len(rows), "failures": sum(1 for *_, o in rows if o not in ("ok", "refused")),
            "refused": sum(1 for *_, o in rows if o == "refused"), "img_s": ok.size / seconds,
            "p50_ms": float(np.percentile(ok, 50)) if ok.size else 0.0,
            "p99_ms": float(np.percentile(ok, 99)) if ok.size else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--window-s", type=float, default=60, help="reporting window")
    ap.add_argument("--warmup-s", type=float, default=60, help="RSS growth is measured from the end of this")
    ap.add_argument("--variant", default="damo-yolo-t")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--bad-every", type=int, default=50, help="every Nth request is a broken image (0: none)")
    ap.add_argument("--images", type=int, default=40, help="distinct JPEGs to rotate through")
    ap.add_argument("--url", help="an already running server's gRPC host:port (default: start one)")
    ap.add_argument("--model", help="served ensemble with --url (default: the variant's name)")
    ap.add_argument("--server-pid", type=int, help="tritonserver pid with --url, for the memory figures")
    ap.add_argument("--out", type=Path, default=Path("build/soak"))
    args = ap.parse_args()

    from tdet.client.triton import connect

    model = args.model or args.variant.replace("-", "_")
    proc = None
    if args.url:
        url, pid = args.url, args.server_pid
    else:
        from tdet.ensembles.builder import build_repository
        from tdet.ensembles.server import free_port, start
        from tdet.training.export import export_onnx

        work = Path(tempfile.mkdtemp(prefix="tdet-soak-"))
        onnx = export_onnx(args.variant, work / f"{args.variant}.onnx").path
        build_repository([onnx], work / "repo")
        proc, info = start(work / "repo", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                           log=work / "server.log", timeout_s=300)
        url, pid = info.grpc_url, proc.pid
    blobs = jpegs(args.images)
    rec, stop = Recorder(), threading.Event()
    windows, mem = [], {"start": memory(pid) if pid else {}}
    print(f"soak: {model} at {url}, {args.concurrency} clients, {args.minutes:g} min, every {args.bad_every}th "
          f"request a broken image; {platform.machine()}, {os.cpu_count()} CPUs", flush=True)
    print(f"{'t (s)':>6} {'requests':>8} {'failures':>8} {'refused':>7} {'img/s':>6} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'triton MB':>9} {'stubs MB':>8}", flush=True)
    try:
        with connect(url, model, timeout_s=60, retries=0) as client:
            threads = [threading.Thread(target=worker, args=(client, blobs, args.bad_every, i * 7, stop, rec),
                                        daemon=True)
                       for i in range(args.concurrency)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            end = t0 + args.minutes * 60
            while (now := time.perf_counter()) < end:
                time.sleep(min(args.window_s, end - now))
                w1 = time.perf_counter()
                w0 = t0 + len(windows) * args.window_s
                row = {"t_s": w1 - t0, **summarize(rec.window(w0, w1), w1 - w0), **(memory(pid) if pid else {})}
                windows.append(row)
                if "after_warmup" not in mem and w1 - t0 >= args.warmup_s:
                    mem["after_warmup"] = memory(pid) if pid else {}
                print(f"{row['t_s']:6.0f} {row['requests']:8d} {row['failures']:8d} {row['refused']:7d} "
                      f"{row['img_s']:6.2f} {row['p50_ms']:7.0f} {row['p99_ms']:7.0f} "
                      f"{row.get('tritonserver_mb', 0):9.0f} {row.get('stubs_mb', 0):8.0f}", flush=True)
            stop.set()
            for t in threads:
                t.join(timeout=120)
            total = summarize(rec.window(t0, time.perf_counter() + 1), time.perf_counter() - t0)
        mem["end"] = memory(pid) if pid else {}
    finally:
        stop.set()
        if proc is not None:
            from tdet.ensembles.server import stop_process
            stop_process(proc.pid)
    errors: dict[str, int] = {}
    for *_, o in rec.rows:
        if o not in ("ok", "refused"):
            errors[o[:160]] = errors.get(o[:160], 0) + 1
    print(f"\ntotal: {total['requests']} requests, {total['failures']} failures, {total['refused']} broken images "
          f"refused, {total['img_s']:.2f} img/s, p50 {total['p50_ms']:.0f} ms, p99 {total['p99_ms']:.0f} ms")
    for e, n in sorted(errors.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  failure x{n}: {e}")
    if mem.get("start"):
        warm = mem.get("after_warmup") or mem["start"]
        for key, name in (("tritonserver_mb", "tritonserver"), ("stubs_mb", f"{mem['end'].get('stubs', 0)} stubs")):
            print(f"RSS {name}: start {mem['start'][key]:.0f} MB, after warm-up {warm[key]:.0f} MB, end "
                  f"{mem['end'][key]:.0f} MB (growth after warm-up {mem['end'][key] - warm[key]:+.0f} MB)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps({"model": model, "minutes": args.minutes,
                                                    "concurrency": args.concurrency, "bad_every": args.bad_every,
                                                    "total": total, "windows": windows, "memory": mem,
                                                    "errors": errors}, indent=1))
    print(f"written: {args.out / 'soak.json'}")


if __name__ == "__main__":
    import signal

    from tdet.client import interrupts

    with interrupts.recorded((signal.SIGINT, signal.SIGTERM)):  # SIGTERM too runs the finally that stops the server
        main()
