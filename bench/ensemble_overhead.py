"""What the served path costs next to the engine, for the models users serve (a benchmark, not a test).

    .venv/bin/python bench/ensemble_overhead.py [--variants damo-yolo-t rtdetrv2-s] [--requests 64] [--quick]

Models, per variant: the trained demo checkpoint (training/demo/<variant>.pth, exported at the size it was
trained at, as `make demo` serves it), the seeded random-init export at 640 as a second row, the trained
model again with `--jpeg-scale auto` (DCT-domain reduced JPEG decode), and for DAMO-YOLO the trained model
with `--nms engine` (the NMS in the engine graph; its engine times include the NMS). Frames: the project's synthetic val
split (`tdet data synth --split val`, real shapes and textures) scaled to 1280x720 JPEG, one distinct frame
per request. Same uint8 engine graph, same engine instances x ORT threads (default: `tdet repo build`'s), spinning
off, everywhere. --sweep: served img/s per `tdet repo build` setting instead.

Prints, per model: per step in-process (pre and post on one thread, the engine at batch 1) and
(pre+post)/engine; the engine alone at the batch the server is given (ORT, the same instances x threads) vs the
served ensemble at saturation (gRPC, concurrent requests), measured in turns (--rounds) with the server up
after one discarded served pass (the engines' ORT arenas grow to the batch shapes in the first ones),
their ratio (median and range); Triton's per-step compute and the engine batch it formed; the CPU ms per image
each served process spent (preprocess, engine, postprocess, tritonserver, this client) next to the engine
alone's. Then the preprocess split into JPEG decode, resize and layout, exact vs reduced decode.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2
import numpy as np

DEMO_DIR = Path(__file__).resolve().parents[1] / "training" / "demo"
FRAME_WH = (1280, 720)


@dataclass(frozen=True)
class Row:
    """One served model of the bench: its ensemble name, variant, ONNX, what it is, and its jpeg_scale."""

    name: str
    variant: str
    onnx: Path
    kind: str  # "trained" | "random-init"
    jpeg_scale: str = "off"
    nms: str = "python"
    precision: str = "fp32"  # or a PRECISIONS key: the trained checkpoint at a reduced precision


def frames(n: int, work: Path, seed: int = 0) -> list[bytes]:
    """n distinct real-content 1280x720 JPEGs: the synthetic val split (mixed sizes) scaled to 1280x720."""
    from tdet.client.synth import synthesize

    synthesize(work / "val", n, seed=seed, split="val")
    out = []
    for path in sorted((work / "val" / "images").glob("*.jpg"))[:n]:
        img = cv2.resize(cv2.imread(str(path)), FRAME_WH, interpolation=cv2.INTER_LINEAR)
        out.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(max(reps, 1)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def cycle_ms(fn, items: list, reps: int) -> float:
    """Median ms of fn(item) over `reps` items taken in turn (distinct inputs, no cache flatters it)."""
    fn(items[0])
    times = []
    for i in range(max(reps, 1)):
        item = items[i % len(items)]
        t = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _model_spec(onnx_path: Path, jpeg_scale: str):
    import onnx

    from tdet.client.specs import preprocess_spec
    from tdet.ensembles.onnx_info import read_onnx_info

    info = read_onnx_info(onnx.load(str(onnx_path)))
    return info, replace(preprocess_spec(info.family, info.input_hw), jpeg_scale=jpeg_scale)


def old_nms_post_ms(post, reps: int) -> float:
    """The same postprocess with the NMS it had before issue 17 (tdet.client.boxes.nms, one numpy IoU row per
    kept box; the same kept set, tests/test_nms.py) in place of the blocked batched_nms: old vs new, one run."""
    from unittest import mock

    from tdet.client import postprocess
    from tdet.client.boxes import nms

    def old(boxes, scores, labels, iou, *, max_keep=None):
        return nms(boxes, scores, iou, labels=labels, max_keep=max_keep)

    with mock.patch.object(postprocess, "batched_nms", old):
        return median_ms(post, reps)


def in_process(row: Row, engine_onnx: Path, threads: int, images: list[bytes], reps: int) -> dict[str, float]:
    """Per step: pre and post on one thread (as in the server's python steps), the engine at batch 1 on
    `threads` (all the server gives its engine instances)."""
    from tdet.client.options import DetectOptions
    from tdet.client.pipeline import postprocess_rows, preprocess_rows
    from tdet.client.specs import EXPORT_INPUT
    from tdet.ensembles.nms_graph import nms_rows
    from tdet.ensembles.ort_session import ort_session

    info, spec = _model_spec(row.onnx, row.jpeg_scale)
    sess = ort_session(engine_onnx, threads=threads, inter_threads=1)
    ids = np.asarray(info.category_ids, np.int32)
    x, sizes = preprocess_rows([images[0]], spec)
    outs = sess.run(None, {EXPORT_INPUT: x})
    opts = DetectOptions()  # the repository's defaults: conf 0.05, iou 0.7, K = 100
    if row.nms == "engine":
        post = lambda: nms_rows(outs, sizes, ids, opts, input_hw=info.input_hw, pad_to=opts.max_det)  # noqa: E731
    else:
        post = lambda: postprocess_rows(info.family, outs, sizes, ids, opts, input_hw=info.input_hw)  # noqa: E731
    res = {"pre_ms": cycle_ms(lambda d: preprocess_rows([d], spec), images, reps * 3),
           "engine_ms": median_ms(lambda: sess.run(None, {EXPORT_INPUT: x}), reps),
           "post_ms": median_ms(post, reps * 2)}
    if row.nms == "python" and info.family == "damo-yolo":
        res["post_old_ms"] = old_nms_post_ms(post, reps * 2)
    if row.nms == "engine":
        res["tail_ms"] = nms_tail_ms(row, info, x, threads, reps)
    res["input"] = f"{info.input_hw[0]}x{info.input_hw[1]}"
    return res


def engine_alone(row: Row, engine_onnx: Path, threads: int, instances: int, batch: int, images: list[bytes]):
    """A function measuring the engine alone as the server runs it (`instances` ORT sessions of `threads` each,
    no spinning, side by side in threads: ORT releases the GIL) on every frame once in batches of `batch`,
    preprocessed beforehand: -> (img/s, CPU ms per image)."""
    from concurrent.futures import ThreadPoolExecutor

    import psutil

    from tdet.client.pipeline import preprocess_rows
    from tdet.client.specs import EXPORT_INPUT
    from tdet.ensembles.ort_session import ort_session

    _, spec = _model_spec(row.onnx, row.jpeg_scale)
    sessions = [ort_session(engine_onnx, threads=threads, inter_threads=1) for _ in range(instances)]
    batches = [preprocess_rows(images[i:i + batch], spec)[0] for i in range(0, len(images), batch)]
    for sess in sessions:
        sess.run(None, {EXPORT_INPUT: batches[0]})
    me = psutil.Process()

    def share(i: int) -> None:
        for xb in batches[i::instances]:
            sessions[i].run(None, {EXPORT_INPUT: xb})

    def measure() -> tuple[float, float]:
        cpu, t = sum(me.cpu_times()[:2]), time.perf_counter()
        with ThreadPoolExecutor(instances) as pool:
            list(pool.map(share, range(instances)))
        wall, cpu = time.perf_counter() - t, sum(me.cpu_times()[:2]) - cpu
        return len(images) / wall, 1000 * cpu / len(images)
    return measure


def nms_tail_ms(row: Row, info, x: np.ndarray, threads: int, reps: int) -> float:
    """The --nms engine tail alone (ORT, one thread) on this frame's real engine outputs, batch 1."""
    import onnx

    from tdet.client.options import DetectOptions
    from tdet.client.specs import EXPORT_INPUT, EXPORT_OUTPUTS, PREPROCESS
    from tdet.ensembles.engine_graph import uint8_engine_graph
    from tdet.ensembles.nms_graph import tail_model
    from tdet.ensembles.ort_session import ort_session

    graph = uint8_engine_graph(onnx.load(str(row.onnx)), PREPROCESS[info.family].scale)
    scores, boxes = ort_session(graph.SerializeToString(), threads=threads).run(
        list(EXPORT_OUTPUTS[info.family]), {EXPORT_INPUT: x})
    tail = ort_session(tail_model(scores.shape[1], scores.shape[2], DetectOptions()).SerializeToString(), threads=1)
    return median_ms(lambda: tail.run(None, {"s_in": scores, "b_in": boxes}), reps * 2)


def cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far: this process (the client), the tritonserver process (gRPC and the
    ensemble scheduler) and each Triton model's stub processes (every step is its own)."""
    import psutil

    from tdet.ensembles.server import step_processes

    def cpu(p) -> float:
        try:
            return sum(p.cpu_times()[:2])
        except psutil.Error:  # a stub that just went away
            return 0.0
    out = {"client": cpu(psutil.Process()), "tritonserver": cpu(psutil.Process(server_pid))}
    for model, procs in step_processes(server_pid).items():
        out[model] = sum(cpu(p) for p in procs)
    return out


def served(grpc_url: str, model: str, images: list[bytes], concurrency: int, server_pid: int | None = None
           ) -> dict[str, float]:
    """Served img/s at `concurrency` in flight, Triton's per-step compute and batch, and (with server_pid) the
    CPU ms per image each process spent (`cpu_<step>`, `cpu_tritonserver`, `cpu_client`)."""
    from tdet.client.triton import connect

    steps = {s: f"{model}_{s}" for s in ("preprocess", "engine", "postprocess")}
    with connect(grpc_url, model) as client:
        client.infer_many(images[:concurrency], concurrency=concurrency)  # warm every instance
        before = {s: client.statistics(m) for s, m in steps.items()}
        cpu0 = cpu_seconds(server_pid) if server_pid else {}
        t = time.perf_counter()
        client.infer_many(images, concurrency=concurrency)
        wall = time.perf_counter() - t
        cpu1 = cpu_seconds(server_pid) if server_pid else {}
        after = {s: client.statistics(m) for s, m in steps.items()}
    res = {"served_ips": len(images) / wall}
    if server_pid:
        for key, name in {**steps, "tritonserver": "tritonserver", "client": "client"}.items():
            res[f"cpu_{key}"] = 1000 * (cpu1.get(name, 0.0) - cpu0.get(name, 0.0)) / len(images)
    for s in steps:
        n = int(after[s]["inference_count"]) - int(before[s]["inference_count"])
        ns = (int(after[s]["inference_stats"]["compute_infer"]["ns"])
              - int(before[s]["inference_stats"]["compute_infer"]["ns"]))
        execs = int(after[s]["execution_count"]) - int(before[s]["execution_count"])
        # every request of a batch records the batch's whole compute time: per image = ns / n / batch
        res[f"{s}_batch"] = n / max(execs, 1)
        res[f"{s}_server_ms"] = ns / 1e6 / max(n, 1) / res[f"{s}_batch"]
    return res


def preprocess_split(images: list[bytes], size_hw: tuple[int, int], reps: int) -> dict[str, float]:
    """The preprocess of one 1280x720 JPEG split into its parts (ms, one thread): header check, JPEG decode
    (full and DCT-reduced), resize per family (from the full and the reduced decode), HWC->CHW + BGR->RGB."""
    from PIL import Image

    from tdet.client.preprocess import JPEG_REDUCED, _header, jpeg_reduction

    h, w = size_hw
    r = jpeg_reduction(*FRAME_WH, size_hw)
    flag = JPEG_REDUCED.get(r, cv2.IMREAD_COLOR)
    bufs = [np.frombuffer(b, np.uint8) for b in images]
    full = cv2.imdecode(bufs[0], cv2.IMREAD_COLOR)
    small = cv2.imdecode(bufs[0], flag)
    net = cv2.resize(full, (w, h))
    return {"reduction": r,
            "header": cycle_ms(_header, images, reps),
            "decode": cycle_ms(lambda b: cv2.imdecode(b, cv2.IMREAD_COLOR), bufs, reps),
            "decode_reduced": cycle_ms(lambda b: cv2.imdecode(b, flag), bufs, reps),
            "cv2_resize": median_ms(lambda: cv2.resize(full, (w, h), interpolation=cv2.INTER_LINEAR), reps),
            "cv2_resize_reduced": median_ms(lambda: cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), reps),
            "pil_resize": median_ms(lambda: Image.fromarray(full).resize((w, h), Image.BILINEAR), reps),
            "pil_resize_reduced": median_ms(lambda: Image.fromarray(small).resize((w, h), Image.BILINEAR), reps),
            "layout": median_ms(lambda: np.ascontiguousarray(net.transpose(2, 0, 1)[::-1]), reps)}


# --precisions: tdet export --precision / --int8-activations of each (int8 calibrated on 64 train-split images)
PRECISIONS = {"int8": ("int8", "s8"), "int8-u8": ("int8", "u8"), "fp16": ("fp16", "")}


def reduced_export(variant: str, ckpt: Path, work: Path, form: str) -> Path:
    from tdet.client.synth import synthesize
    from tdet.training.export import export_onnx
    from tdet.training.precision import Calibration

    precision, activations = PRECISIONS[form]
    calib = None
    if precision == "int8":
        if not (work / "calib" / "annotations.json").is_file():
            synthesize(work / "calib", 64, seed=0, split="train", workers=2)
        calib = Calibration(work / "calib" / "images", 64, "minmax", activations)
    return export_onnx(variant, work / f"{variant}.{form}.onnx", weights=ckpt, precision=precision, calib=calib).path


def build_rows(variants: list[str], work: Path, kinds: list[str], jpeg_auto: bool, nms_engine: bool,
               precisions: tuple[str, ...] = ()) -> list[Row]:
    from tdet.training.export import export_onnx

    rows = []
    for v in variants:
        m = v.replace("-", "_")
        ckpt = DEMO_DIR / f"{v}.pth"
        if "trained" in kinds and ckpt.is_file():
            path = export_onnx(v, work / f"{v}.trained.onnx", weights=ckpt).path
            rows.append(Row(m, v, path, "trained"))
            if jpeg_auto:
                rows.append(Row(f"{m}_jpeg_auto", v, path, "trained", "auto"))
            if nms_engine and v.startswith("damo-yolo"):  # RT-DETRv2 has no NMS
                rows.append(Row(f"{m}_engine_nms", v, path, "trained", nms="engine"))
            for form in precisions:
                rows.append(Row(f"{m}_{form.replace('-', '_')}", v, reduced_export(v, ckpt, work, form), "trained",
                                precision=form))
        elif "trained" in kinds:
            print(f"(no demo checkpoint {ckpt}: {v} has no trained row)")
        if "random" in kinds:
            rows.append(Row(f"{m}_random", v, export_onnx(v, work / f"{v}.random.onnx").path, "random-init"))
    return rows


def main() -> None:
    from tdet.ensembles.configs import BuildOptions

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["damo-yolo-t", "rtdetrv2-s"])
    ap.add_argument("--rows", nargs="+", choices=["trained", "random"], default=["trained", "random"],
                    help="trained: the demo checkpoints at their served size; random: seeded random init at 640")
    ap.add_argument("--no-jpeg-auto", action="store_true", help="skip the trained model served with --jpeg-scale auto")
    ap.add_argument("--no-nms-engine", action="store_true", help="skip the trained DAMO-YOLO built with --nms engine")
    ap.add_argument("--precisions", nargs="*", choices=list(PRECISIONS), default=[],
                    help="also the trained checkpoint at these precisions (int8-u8: --int8-activations u8)")
    ap.add_argument("--requests", type=int, default=64, help="distinct frames; the served run sends each once")
    ap.add_argument("--reps", type=int, default=10, help="repetitions per in-process timing (median)")
    ap.add_argument("--concurrency", type=int, default=8)
    defaults = BuildOptions()
    ap.add_argument("--engine-instances", type=int, default=defaults.engine_instances,
                    help="engine instances served and run alone (default: tdet repo build's)")
    ap.add_argument("--ort-threads", type=int, default=defaults.ort_threads,
                    help="ORT threads per engine instance (default: tdet repo build's)")
    ap.add_argument("--batch", type=int, default=4, help="engine-alone batch (the server's dynamic batches)")
    ap.add_argument("--rounds", type=int, default=3, help="engine alone then served, this many times in turn "
                    "(medians; the spread of served / engine alone says how noisy the machine was)")
    ap.add_argument("--quick", action="store_true", help="about a minute less: 24 frames, 4 reps")
    ap.add_argument("--sweep", nargs="*", metavar="SETTING", help="instead: served img/s of the first variant "
                    "(trained) per instance/thread/delay setting (SWEEP: all, or the labels given), from `tdet repo "
                    "build` defaults")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.reps, args.rounds = min(args.requests, 24), min(args.reps, 4), min(args.rounds, 2)

    from tdet.ensembles.builder import build_repository
    from tdet.ensembles.server import free_port, start, stop_process

    cv2.setNumThreads(1)  # as the server's python steps: one thread each
    args.load_at_start = os.getloadavg()[0]  # other jobs on the cores inflate every number: say how busy it was
    work = Path(tempfile.mkdtemp(prefix="tdet-bench-"))
    images = frames(max(args.requests, args.batch, args.concurrency), work)
    if args.sweep is not None:
        return sweep(args, work, images)
    rows = build_rows(args.variants, work, args.rows, not args.no_jpeg_auto, not args.no_nms_engine,
                      tuple(args.precisions))
    repo = work / "model_repository"
    for row in rows:
        build_repository([row.onnx], repo, BuildOptions(ort_threads=args.ort_threads,
                                                        engine_instances=args.engine_instances,
                                                             jpeg_scale=row.jpeg_scale, nms=row.nms),
                         name=row.name)
    results: dict[str, dict] = {}
    for row in rows:  # in-process first, with the server not yet running (no CPU contention)
        results[row.name] = in_process(row, repo / f"{row.name}_engine" / "1" / "model.onnx",
                                       args.ort_threads * args.engine_instances, images, args.reps)
    splits = {}
    for row in rows:
        if row.jpeg_scale == "off":
            _, spec = _model_spec(row.onnx, "off")
            splits.setdefault(spec.size_hw, preprocess_split(images, spec.size_hw, args.reps * 3))
    proc, info = start(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), timeout_s=600)
    try:
        for row in rows:  # engine alone and served in turns, with the server up and idle for the first
            alone = engine_alone(row, repo / f"{row.name}_engine" / "1" / "model.onnx", args.ort_threads,
                                 args.engine_instances, args.batch, images[:args.requests])
            # the first passes grow each engine's ORT arena to the batch shapes the server forms (hundreds of page
            # faults per image, then none): one discarded pass, so the rounds measure the steady state
            served(info.grpc_url, row.name, images[:args.requests], args.concurrency)
            rounds = []
            for _ in range(args.rounds):
                ips, cpu = alone()
                rounds.append({"engine_ips": ips, "cpu_engine_alone": cpu,
                               **served(info.grpc_url, row.name, images[:args.requests], args.concurrency, proc.pid)})
            results[row.name].update({k: statistics.median(r[k] for r in rounds) for k in rounds[0]})
            results[row.name]["ratios"] = [r["served_ips"] / r["engine_ips"] for r in rounds]
    finally:
        stop_process(proc.pid)
    report(rows, results, splits, args)


# `tdet repo build` settings tried by --sweep, as changes from its defaults (BuildOptions: 2 engine instances x
# 1 ORT thread, 2 preprocess, 1 postprocess, 1 ms batching delay, python NMS)
SWEEP = {"defaults": {}, "engine 1 x ORT 2": {"engine_instances": 1, "ort_threads": 2},
         "engine 1 x ORT 1": {"engine_instances": 1}, "engine 2 x ORT 2": {"ort_threads": 2},
         "preprocess 1": {"preprocess_instances": 1}, "preprocess 3": {"preprocess_instances": 3},
         "postprocess 2": {"postprocess_instances": 2}, "delay 0": {"queue_delay_us": 0},
         "delay 5 ms": {"queue_delay_us": 5000}, "nms engine": {"nms": "engine"}}


def sweep(args: argparse.Namespace, work: Path, images: list[bytes]) -> None:
    """Served img/s per SWEEP setting, one server for all; two passes in opposite orders (the load of the
    other jobs drifts), each pass sending every frame once per setting."""
    from tdet.ensembles.builder import build_repository
    from tdet.ensembles.configs import BuildOptions
    from tdet.ensembles.server import free_port, start, stop_process

    row = next(r for r in build_rows(args.variants[:1], work, ["trained"], False, False))
    settings = {k: v for k, v in SWEEP.items() if not args.sweep or k in args.sweep}
    repo, names = work / "sweep_repository", {}
    for i, (label, changes) in enumerate(settings.items()):
        names[label] = f"{row.name}_s{i}"
        build_repository([row.onnx], repo, BuildOptions(**changes), name=names[label])
    proc, info = start(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), timeout_s=900)
    ips: dict[str, list[float]] = {label: [] for label in settings}
    try:
        for label in settings:  # a discarded pass each: the engines' ORT arenas grow in the first ones (main)
            served(info.grpc_url, names[label], images[:args.requests], args.concurrency)
        for order in (list(settings), list(settings)[::-1]):
            for label in order:
                ips[label].append(served(info.grpc_url, names[label], images[:args.requests],
                                         args.concurrency)["served_ips"])
        for label in settings:  # one request in flight: what a single client waits
            ips[label].append(served(info.grpc_url, names[label], images[:8], 1)["served_ips"])
    finally:
        stop_process(proc.pid)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1-min load average "
          f"{args.load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; {row.variant} trained at "
          f"{_model_spec(row.onnx, 'off')[0].input_hw}; {args.requests} 1280x720 JPEGs; gRPC, concurrency "
          f"{args.concurrency}; defaults: {BuildOptions()}")
    print("| setting | served img/s pass 1 | pass 2 | mean | 1 in flight: img/s |\n|---|---|---|---|---|")
    for label, (a, b, one) in ips.items():
        print(f"| {label} | {a:.2f} | {b:.2f} | {(a + b) / 2:.2f} | {one:.2f} |")


def report(rows: list[Row], results: dict[str, dict], splits: dict, args: argparse.Namespace) -> None:
    load = f"1-min load average {args.load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {load}; engine: "
          f"{args.engine_instances} instance(s) x {args.ort_threads} ORT thread(s), served and alone; {args.requests} "
          "distinct real-content 1280x720 JPEGs (synthetic val split, scaled); "
          f"served: gRPC, concurrency {args.concurrency}; engine alone at batch {args.batch}, in turns with "
          f"the served run, {args.rounds} rounds (medians)")
    header = ("model", "weights", "input", "jpeg", "nms", "pre ms", "engine b1 ms", "post ms (old NMS)",
              "(pre+post)/engine (old NMS)",
              f"engine alone b{args.batch} img/s", "served img/s", f"served/engine (range of {args.rounds})",
              "server pre|engine|post ms/img",
              "engine batch")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        r = results[row.name]
        print("| " + " | ".join([
            row.variant, row.kind + ("" if row.precision == "fp32" else f" {row.precision}"), r["input"],
            row.jpeg_scale, row.nms, f"{r['pre_ms']:.2f}", f"{r['engine_ms']:.1f}",
            f"{r['post_ms']:.2f}" + (f" ({r['post_old_ms']:.2f})" if "post_old_ms" in r else ""),
            f"{(r['pre_ms'] + r['post_ms']) / r['engine_ms']:.2f}"
            + (f" ({(r['pre_ms'] + r['post_old_ms']) / r['engine_ms']:.2f})" if "post_old_ms" in r else ""),
            f"{r['engine_ips']:.2f}", f"{r['served_ips']:.2f}",
            f"**{statistics.median(r['ratios']):.2f}x** ({min(r['ratios']):.2f}-{max(r['ratios']):.2f})",
            f"{r['preprocess_server_ms']:.1f}|{r['engine_server_ms']:.1f}|{r['postprocess_server_ms']:.1f}",
            f"{r['engine_batch']:.2f}"]) + " |")
    print("\nCPU ms per image (user + system, by process): the engine alone vs each served process; bound: the "
          "served / engine alone ratio the cores allow when the engine's CPU per image is the alone figure")
    header = ("model", "jpeg", "nms", "engine alone", "served: preprocess", "engine", "postprocess", "tritonserver",
              "client", "total", "bound")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        r = results[row.name]
        parts = [r[f"cpu_{k}"] for k in ("preprocess", "engine", "postprocess", "tritonserver", "client")]
        print("| " + " | ".join([row.name, row.jpeg_scale, row.nms, f"{r['cpu_engine_alone']:.1f}",
                                 *(f"{x:.1f}" for x in parts), f"{sum(parts):.1f}",
                                 f"{r['cpu_engine_alone'] / sum(parts):.2f}"]) + " |")
    for row in rows:
        if "tail_ms" in results[row.name]:
            print(f"\n{row.name}: the NMS tail alone (ORT, 1 thread, batch 1, this frame's engine outputs) "
                  f"{results[row.name]['tail_ms']:.2f} ms of its engine's {results[row.name]['engine_ms']:.1f} ms")
    print("\npreprocess of one 1280x720 JPEG by part (ms, one thread; reduced: DCT-domain decode at 1/r):")
    header = ("model input", "r", "header", "decode full", "decode 1/r", "cv2 resize full|1/r",
              "PIL resize full|1/r", "CHW+RGB layout")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for hw, s in splits.items():
        print("| " + " | ".join([f"{hw[0]}x{hw[1]}", str(s["reduction"]), f"{s['header']:.2f}", f"{s['decode']:.2f}",
                                 f"{s['decode_reduced']:.2f}", f"{s['cv2_resize']:.2f}|{s['cv2_resize_reduced']:.2f}",
                                 f"{s['pil_resize']:.2f}|{s['pil_resize_reduced']:.2f}", f"{s['layout']:.3f}"]) + " |")


if __name__ == "__main__":
    import signal

    from tdet.client import interrupts

    with interrupts.recorded((signal.SIGINT, signal.SIGTERM)):  # SIGTERM too runs the finally that stops the server
        main()
