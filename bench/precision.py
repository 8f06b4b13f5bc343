"""Accuracy and engine-alone speed per precision (fp32, int8, fp16; each reduced form with and without the
keep-in-fp32 list), ONNX Runtime on CPU in this process (a measurement, not a test).

    .venv/bin/python bench/precision.py [--variants damo-yolo-t rtdetrv2-s] [--num 200] [--calib-num 64]
        [--calibrator minmax] [--rounds 5] [--runs 10] [--threads 2] [--modelopt-python /tmp/mo/bin/python]

Exports each trained demo checkpoint (training/demo/<variant>.pth) once in fp32 and converts it as `tdet export
--precision` does (training/precision.py), calibrating int8 on the first --calib-num images of `tdet data synth
--split train --seed 0`. AP / AP50: the held-out val split (`tdet data synth --split val --num 200 --seed 0`, the
demo's), batch 1, the served numpy postprocess with the family's COCO protocol, pycocotools. Speed: the engine
alone at batch 1 on one val image, every graph timed in turn in each of --rounds rounds (side by side: a load
change on the machine hits all of them), median of the per-round medians.

--modelopt-python PY adds the form "int8 modelopt": NVIDIA ModelOpt's ONNX PTQ of the same fp32 graph (symmetric
int8, its own Q/DQ placement, the one TensorRT wants), calibrated on the same images and leaving the same keep-in-fp32
nodes unquantized, as `tdet export --quantizer modelopt --modelopt-python PY` does (training/modelopt_int8.py run in
PY, a python with nvidia-modelopt[onnx]; not a project dependency), then evaluated and timed here like the others.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEMO_DIR = Path(__file__).resolve().parents[1] / "training" / "demo"
# (precision, keep the KEEP_FP32 layers, int8 activations: s8 the TensorRT form, u8 ONNX Runtime CPU's fast form,
# int8 weight bits: 7 the default, 8 saturates ONNX Runtime's int8 kernels on CPUs without VNNI)
FORMS = (("fp32", True, "", 0), ("int8", True, "s8", 7), ("int8", False, "s8", 7), ("int8", True, "u8", 7),
         ("int8", True, "s8", 8), ("int8", True, "u8", 8), ("fp16", True, "", 0), ("fp16", False, "", 0))


def convert_all(variant: str, work: Path, calib_dir: Path, calib_num: int, method: str,
                modelopt_python: str | None = None) -> dict[str, Path]:
    """-> {form name: .onnx} for FORMS (and "int8 modelopt" with `modelopt_python`), from one fp32 export."""
    import onnx

    from tdet.client import specs
    from tdet.training.export import export_onnx
    from tdet.training.precision import Calibration, calibration_inputs, check_precision_args, reduce_precision

    fp32 = export_onnx(variant, work / f"{variant}.onnx", weights=DEMO_DIR / f"{variant}.pth").path
    meta = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    family = meta[specs.META_FAMILY]
    spec = specs.preprocess_spec(family, specs.parse_hw(meta[specs.META_INPUT_HW]))
    inputs = calibration_inputs(check_precision_args("int8", Calibration(calib_dir, calib_num, method)), spec)
    out = {"fp32": fp32}
    for precision, keep, act, bits in FORMS[1:]:
        name = (f"{precision}{' u8' if act == 'u8' else ''}{' 8-bit weights' if bits == 8 else ''}"
                f"{'' if keep else ' (no keep list)'}")
        path = work / (f"{variant}-{precision}{'-u8' if act == 'u8' else ''}{'-w8' if bits == 8 else ''}"
                       f"{'' if keep else '-nokeep'}.onnx")
        t = time.perf_counter()
        calib = Calibration(calib_dir, calib_num, method, act, weight_bits=bits) if precision == "int8" else None
        reduce_precision(fp32, path, precision, family=family, inputs=inputs, calib=calib, keep_fp32=keep)
        print(f"{variant} {name}: converted in {time.perf_counter() - t:.0f} s", flush=True)
        out[name] = path
    if modelopt_python:
        t = time.perf_counter()
        path = work / f"{variant}-int8-modelopt.onnx"
        calib = Calibration(calib_dir, calib_num, method, "s8", "modelopt", modelopt_python)
        reduce_precision(fp32, path, "int8", family=family, inputs=inputs, calib=calib)
        out["int8 modelopt"] = path
        print(f"{variant} int8 modelopt: converted in {time.perf_counter() - t:.0f} s", flush=True)
    return out


def evaluate(path: Path, coco, paths: dict[int, Path], threads: int) -> dict[str, float]:
    """COCO AP of one graph on the val split, in process (batch 1, the served postprocess)."""
    import json

    import numpy as np
    import onnx

    from tdet.client import specs
    from tdet.client.coco_eval import coco_metrics, to_coco_results
    from tdet.client.evaluation import eval_parameters
    from tdet.client.postprocess import Detections, postprocess_one
    from tdet.client.preprocess import preprocess, to_float_input
    from tdet.ensembles.ort_session import ort_session

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    family, hw = meta[specs.META_FAMILY], specs.parse_hw(meta[specs.META_INPUT_HW])
    spec = specs.preprocess_spec(family, hw)
    ids = np.asarray(json.loads(meta[specs.META_CATEGORY_IDS]), np.int32)
    kw = eval_parameters(family)
    sess = ort_session(path, threads=threads)
    names = list(specs.EXPORT_OUTPUTS[family])
    rows = []
    for image_id, p in sorted(paths.items()):
        chw, orig = preprocess(p.read_bytes(), spec)
        outs = sess.run(names, {specs.EXPORT_INPUT: to_float_input(chw, spec)[None]})
        b, s, lab = postprocess_one(family, [o[0] for o in outs], orig, input_hw=hw, **kw)
        rows += to_coco_results(image_id, Detections(b, s, ids[lab]))
    return coco_metrics(coco, rows)


def speeds(graphs: dict[str, Path], image: Path, threads: int, rounds: int, runs: int) -> dict[str, float]:
    """Engine-alone images/s at batch 1 per graph, the graphs timed in turn each round."""
    import onnx

    from tdet.client import specs
    from tdet.client.preprocess import preprocess, to_float_input
    from tdet.ensembles.ort_session import ort_session

    sessions, inputs = {}, {}
    for name, path in graphs.items():
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        spec = specs.preprocess_spec(meta[specs.META_FAMILY], specs.parse_hw(meta[specs.META_INPUT_HW]))
        sessions[name] = ort_session(path, threads=threads)
        inputs[name] = {specs.EXPORT_INPUT: to_float_input(preprocess(image.read_bytes(), spec)[0], spec)[None]}
        sessions[name].run(None, inputs[name])  # warm-up
    per_round: dict[str, list[float]] = {n: [] for n in graphs}
    for _ in range(rounds):
        for name, sess in sessions.items():
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                sess.run(None, inputs[name])
                times.append(time.perf_counter() - t)
            per_round[name].append(statistics.median(times))
    return {n: 1.0 / statistics.median(v) for n, v in per_round.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["damo-yolo-t", "rtdetrv2-s"])
    ap.add_argument("--num", type=int, default=200, help="val images (the demo's split: 200)")
    ap.add_argument("--calib-num", type=int, default=64)
    ap.add_argument("--calibrator", default="minmax", choices=["minmax", "entropy", "percentile"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=10, help="timed runs per graph per round")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--modelopt-python", help="a python with nvidia-modelopt[onnx]: add ModelOpt's int8 (see above)")
    args = ap.parse_args()
    if args.modelopt_python and args.calibrator not in ("minmax", "entropy"):
        ap.error(f"ModelOpt has no {args.calibrator} calibrator: drop --modelopt-python or use minmax|entropy")

    from tdet.client.coco_eval import load_dataset
    from tdet.client.synth import synthesize

    work = Path(tempfile.mkdtemp(prefix="tdet-precision-"))
    try:  # the graphs and images take ~0.4 GB
        synthesize(work / "val", args.num, seed=0, split="val", workers=2)
        synthesize(work / "train", args.calib_num, seed=0, split="train", workers=2)
        coco, paths = load_dataset(work / "val" / "annotations.json", work / "val" / "images")
        table = []
        for v in args.variants:
            graphs = convert_all(v, work, work / "train" / "images", args.calib_num, args.calibrator,
                                 args.modelopt_python)
            ips = speeds(graphs, paths[min(paths)], args.threads, args.rounds, args.runs)
            for name, path in graphs.items():
                t = time.perf_counter()
                m = evaluate(path, coco, paths, args.threads)
                print(f"{v} {name}: AP {100 * m['AP']:.2f} ({time.perf_counter() - t:.0f} s)", flush=True)
                table.append((v, name, m, ips[name], path.stat().st_size / 1e6))
        print(f"\nval split (seed 0, {args.num} images), COCO box AP in percent, ONNX Runtime {args.threads} threads, "
              f"int8 calibrated with {args.calibrator} on {args.calib_num} train-split images")
        print("| model | precision | AP | AP50 | dAP vs fp32 | dAP50 | engine img/s (batch 1) | x fp32 | file MB |")
        print("|" + "---|" * 9)
        base = {}
        for v, name, m, ips, mb in table:
            base.setdefault(v, (m, ips))
            m0, ips0 = base[v]
            print(f"| {v} | {name} | {100 * m['AP']:.2f} | {100 * m['AP50']:.2f} | {100 * (m['AP'] - m0['AP']):+.2f} "
                  f"| {100 * (m['AP50'] - m0['AP50']):+.2f} | {ips:.1f} | {ips / ips0:.2f} | {mb:.1f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
