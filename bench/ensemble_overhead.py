"""Ensemble overhead on this machine: in-process pipeline vs the served Triton ensemble (a benchmark,
not a test). Same ONNX (the uint8 engine graph from the repository), same ORT threads, spinning off.

    .venv/bin/python bench/ensemble_overhead.py [--variants damo-yolo-t rtdetrv2-s] [--requests 48]

Prints per variant: preprocess of a 1280x720 JPEG, the engine alone (batch 1 and 4), the in-process
JPEG->detections pipeline (sequential), the served ensemble over gRPC at saturation (concurrent
requests), the ratios served/in-process and served/engine-alone, and Triton's per-step compute time
and engine batch size.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2
import numpy as np


def jpegs(n: int, seed: int = 0) -> list[bytes]:
    """n distinct synthetic 1280x720 JPEGs (distinct so no cache or branch predictor flatters anything)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = cv2.resize(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8), (1280, 720), interpolation=cv2.INTER_CUBIC)
        img = cv2.add(img, rng.integers(0, 30, img.shape, dtype=np.uint8))
        out.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


ENGINE_BATCHES = (1, 4)


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def in_process(engine_onnx: Path, family: str, threads: int, images: list[bytes]) -> dict[str, float]:
    from tdet.client.labels import COCO_CATEGORY_IDS
    from tdet.client.options import DetectOptions
    from tdet.client.pipeline import postprocess_rows, preprocess_rows
    from tdet.client.specs import EXPORT_INPUT, PREPROCESS
    from tdet.ensembles.ort_session import ort_session

    spec = PREPROCESS[family]
    sess = ort_session(engine_onnx, threads=threads, inter_threads=1)
    ids = np.asarray(COCO_CATEGORY_IDS, np.int32)
    x, sizes = preprocess_rows([images[0]], spec)
    opts = DetectOptions()  # the repository's defaults: conf 0.05, iou 0.7, K = 100

    def pipeline(data: bytes):
        batch, hw = preprocess_rows([data], spec)
        outs = sess.run(None, {EXPORT_INPUT: batch})
        return postprocess_rows(family, outs, hw, ids, opts)

    outs = sess.run(None, {EXPORT_INPUT: x})
    res = {"preprocess_ms": median_ms(lambda: preprocess_rows([images[0]], spec), 30),
           "engine_ms": median_ms(lambda: sess.run(None, {EXPORT_INPUT: x}), 10),
           "postprocess_ms": median_ms(lambda: postprocess_rows(family, outs, sizes, ids, opts), 20)}
    # the engine alone at the batch sizes the server forms: the ceiling the ensemble is measured against
    for b in ENGINE_BATCHES:
        xb, _ = preprocess_rows(images[:b], spec)
        res[f"engine_ips_b{b}"] = b / (median_ms(lambda xb=xb: sess.run(None, {EXPORT_INPUT: xb}), 5) / 1000)
    pipeline(images[0])
    t = time.perf_counter()
    for data in images:
        pipeline(data)
    res["inproc_ips"] = len(images) / (time.perf_counter() - t)
    return res


def served(grpc_url: str, model: str, images: list[bytes], concurrency: int) -> dict[str, float]:
    from tdet.client.triton import connect

    steps = {s: f"{model}_{s}" for s in ("preprocess", "engine", "postprocess")}
    with connect(grpc_url, model) as client:
        client.infer_many(images[:concurrency], concurrency=concurrency)  # warm every instance
        before = {s: client.statistics(m) for s, m in steps.items()}
        t = time.perf_counter()
        client.infer_many(images, concurrency=concurrency)
        wall = time.perf_counter() - t
        after = {s: client.statistics(m) for s, m in steps.items()}
    res = {"served_ips": len(images) / wall}
    for s in steps:
        n = int(after[s]["inference_count"]) - int(before[s]["inference_count"])
        ns = (int(after[s]["inference_stats"]["compute_infer"]["ns"])
              - int(before[s]["inference_stats"]["compute_infer"]["ns"]))
        execs = int(after[s]["execution_count"]) - int(before[s]["execution_count"])
        # every request of a batch records the batch's whole compute time: per image = ns / n / batch
        res[f"{s}_batch"] = n / max(execs, 1)
        res[f"{s}_server_ms"] = ns / 1e6 / max(n, 1) / res[f"{s}_batch"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["damo-yolo-t"])
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--ort-threads", type=int, default=2)
    args = ap.parse_args()

    from tdet.client.specs import PREPROCESS
    from tdet.ensembles.builder import build_repository
    from tdet.ensembles.configs import BuildOptions
    from tdet.ensembles.server import free_port, start, stop_process
    from tdet.training.export import export_onnx
    from tdet.training.registry import family_of

    work = Path(tempfile.mkdtemp(prefix="tdet-bench-"))
    onnx_files = [export_onnx(v, work / f"{v}.onnx").path for v in args.variants]
    repo = work / "model_repository"
    build_repository(onnx_files, repo, BuildOptions(ort_threads=args.ort_threads))
    images = jpegs(args.requests)
    rows = {}
    for v in args.variants:  # in-process first, with the server not yet running (no CPU contention)
        rows[v] = in_process(repo / f"{v.replace('-', '_')}_engine" / "1" / "model.onnx", family_of(v).FAMILY,
                             args.ort_threads, images)
    proc, info = start(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), timeout_s=300)
    try:
        for v in args.variants:
            rows[v].update(served(info.grpc_url, v.replace("-", "_"), images, args.concurrency))
    finally:
        stop_process(proc.pid)

    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; ORT threads "
          f"{args.ort_threads}; {args.requests} distinct 1280x720 JPEGs; served: gRPC, concurrency {args.concurrency}")
    header = ("variant", "pre 1280x720 ms", "engine b1 ms", "post ms", "in-proc pipeline img/s",
              "engine alone img/s (b1, b4)", "served img/s", "served/in-proc", "served/engine b4",
              "server pre|engine|post ms/img", "engine batch")
    print(" | ".join(header))
    for v, r in rows.items():
        print(" | ".join([v, f"{r['preprocess_ms']:.2f}", f"{r['engine_ms']:.1f}", f"{r['postprocess_ms']:.2f}",
                          f"{r['inproc_ips']:.2f}", f"{r['engine_ips_b1']:.2f}, {r['engine_ips_b4']:.2f}",
                          f"{r['served_ips']:.2f}", f"{r['served_ips'] / r['inproc_ips']:.2f}x",
                          f"{r['served_ips'] / r['engine_ips_b4']:.2f}x",
                          f"{r['preprocess_server_ms']:.1f}|{r['engine_server_ms']:.1f}|{r['postprocess_server_ms']:.1f}",
                          f"{r['engine_batch']:.2f}"]))
    print(f"(preprocess spec: {', '.join(f'{f}: {s.resize}' for f, s in PREPROCESS.items())})")


if __name__ == "__main__":
    main()
