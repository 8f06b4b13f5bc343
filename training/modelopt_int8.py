"""NVIDIA ModelOpt's ONNX post-training int8 quantization of one fp32 export: the child process of `tdet export
--precision int8 --quantizer modelopt --modelopt-python PY` (training/precision.py `quantize_int8_modelopt`).

It runs in PY, a python with `nvidia-modelopt[onnx]`, not in the project's: ModelOpt 0.47 pins onnx ~= 1.21 and
onnxruntime-gpu ~= 1.24 and pulls its own torch and cupy, which the project's pins (onnx 1.23.2, onnxruntime 1.32.0,
torch 2.13.0) exclude. So this file imports only numpy, onnx (through ModelOpt) and modelopt, never tdet:

    python -m venv /opt/modelopt && /opt/modelopt/bin/pip install "nvidia-modelopt[onnx]" "numpy<2"
    PY training/modelopt_int8.py FP32.onnx CALIB.npy KEEP.json OUT.onnx [--method max|entropy] [--input images]

CALIB.npy: float32 [N, 3, H, W], the calibration images through the served preprocess (the parent writes it);
KEEP.json: node names to leave unquantized (the family's keep-in-fp32 list, resolved on the fp32 graph).
Calibration runs on ONNX Runtime's CPU provider (same ranges on any machine, no GPU needed); everything not
quantized stays fp32 (ModelOpt's default casts it to fp16; TensorRT's --fp16 picks that per layer instead).
The output has no tdet metadata: the parent writes it.
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
    ap.add_argument("--input", default="images", help="the graph's input name")
    args = ap.parse_args()

    from modelopt.onnx.quantization import quantize

    keep = json.load(open(args.keep))
    quantize(args.fp32, quantize_mode="int8", calibration_data={args.input: np.load(args.calib)},
             calibration_method=args.method, calibration_eps=["cpu"],
             nodes_to_exclude=[re.escape(n) + "$" for n in keep], high_precision_dtype="fp32",
             output_path=args.out, log_level="WARNING")


if __name__ == "__main__":
    main()
