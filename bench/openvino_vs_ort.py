"""Benchmark: OpenVINO vs ONNX Runtime, the engine alone (fp32), on the demo models at their served sizes
(damo-yolo-t 320, rtdetrv2-s 256: the trained training/demo checkpoints, exported as `tdet export` does),
side by side in one run: the same exported graph, the same threads (2: the served engine's), batch 1 and 4,
CPU, OpenVINO with its inference precision pinned to f32 (its CPU default is bf16 where the CPU has it).

Each rep alternates the runtimes (ORT call, then OpenVINO call), so load from other jobs hits both alike;
the median call time gives img/s. The run also checks the two runtimes' outputs agree (export --check's rule).

    python bench/openvino_vs_ort.py [--reps 10] [--threads 2] [--batches 1 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from tdet.client import specs
from tdet.client.demo import DEMO_DIR
from tdet.ensembles.ort_session import ort_session
from tdet.ensembles.ov_session import ov_compiled, ov_run
from tdet.training.export import check_input, compare_outputs, export_onnx

VARIANTS = {"damo-yolo-t": "damo-yolo", "rtdetrv2-s": "rtdetrv2"}


def call_ms(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t) * 1e3


def measure(onnx: Path, family: str, threads: int, batches: list[int], reps: int) -> list[dict]:
    sess, compiled = ort_session(onnx, threads=threads), ov_compiled(onnx, threads=threads)
    size = tuple(sess.get_inputs()[0].shape[2:])
    names = list(specs.EXPORT_OUTPUTS[family])
    rows = []
    for batch in batches:
        feeds = {specs.EXPORT_INPUT: check_input(batch, size, specs.preprocess_spec(family, size).scale, 0).numpy()}
        got = dict(zip(names, ov_run(compiled, names, feeds)))
        check = compare_outputs(family, got, dict(zip(names, sess.run(names, feeds))))  # also the warm-up
        ort_ms, ov_ms = [], []
        for _ in range(reps):
            ort_ms.append(call_ms(sess.run, names, feeds))
            ov_ms.append(call_ms(ov_run, compiled, names, feeds))
        ort, ov = statistics.median(ort_ms), statistics.median(ov_ms)
        rows.append({"input": f"{size[0]}x{size[1]}", "batch": batch, "ort_ips": batch * 1e3 / ort,
                     "ov_ips": batch * 1e3 / ov, "match": all(c.ok for c in check.values()),
                     "diff": max(c.max_abs_diff / c.tolerance for c in check.values())})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=10, help="alternating calls per runtime and batch (median)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads for both runtimes")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    args = ap.parse_args()
    import openvino

    load0 = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="tdet-ov-bench-"))
    results = {}
    for variant, family in VARIANTS.items():
        onnx = export_onnx(variant, work / f"{variant}.onnx", weights=DEMO_DIR / f"{variant}.pth").path
        results[variant] = measure(onnx, family, args.threads, args.batches, args.reps)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1-min load average "
          f"{load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; {args.threads} threads each; "
          f"OpenVINO {openvino.__version__.split('-')[0]} (f32), onnxruntime; median of {args.reps} alternating calls")
    header = ("model", "input", "batch", "ORT img/s", "OpenVINO img/s", "OpenVINO / ORT", "outputs agree")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for variant, rows in results.items():
        for r in rows:
            print(f"| {variant} | {r['input']} | {r['batch']} | {r['ort_ips']:.2f} | {r['ov_ips']:.2f} | "
                  f"**{r['ov_ips'] / r['ort_ips']:.2f}x** | {'yes' if r['match'] else 'NO'} "
                  f"({r['diff']:.3f} of the tolerance) |")


if __name__ == "__main__":
    main()
