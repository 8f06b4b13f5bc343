"""NVIDIA ModelOpt's ONNX post-training int8 quantization of one exported graph, for bench/precision.py's
`--modelopt-python` comparison (issue 21: ONNX Runtime's quantizer vs ModelOpt's, whose Q/DQ placement is the one
TensorRT wants). Run by a python that has `nvidia-modelopt[onnx]` installed; the project does not depend on it
(it pulls its own torch, cupy and onnxruntime-gpu):

    python -m venv /tmp/mo && /tmp/mo/bin/pip install "nvidia-modelopt[onnx]" "numpy<2"
    /tmp/mo/bin/python bench/modelopt_int8.py FP32.onnx CALIB.npy KEEP.json OUT.onnx [--method max]

CALIB.npy: float32 [N, 3, H, W], the calibration images through the served preprocess (bench/precision.py writes
it); KEEP.json: node names to leave unquantized (the project's keep-in-fp32 list, resolved). Calibration runs
on ONNX Runtime's CPU provider; everything not quantized stays fp32 (ModelOpt's default would cast it to fp16,
which this CPU comparison does not want).
"""

from __future__ import annotations

import argparse
import json
import re

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fp32")
    ap.add_argument("calib")
    ap.add_argument("keep")
    ap.add_argument("out")
    ap.add_argument("--method", default="max", choices=["max", "entropy"])
    args = ap.parse_args()

    from modelopt.onnx.quantization import quantize

    keep = json.load(open(args.keep))
    quantize(args.fp32, quantize_mode="int8", calibration_data={"images": np.load(args.calib)},
             calibration_method=args.method, calibration_eps=["cpu"],
             nodes_to_exclude=[re.escape(n) + "$" for n in keep], high_precision_dtype="fp32",
             output_path=args.out, log_level="WARNING")


if __name__ == "__main__":
    main()
