"""`tdet info`, `tdet export` and `tdet train` (torch is imported only when a command runs)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tdet.client.errors import UserError, train_extra_missing

from .precision import (
    ACTIVATIONS,
    CALIBRATORS,
    DEFAULT_CALIB_NUM,
    MIN_CALIB_NUM,
    PRECISIONS,
    QUANTIZERS,
    WEIGHT_BITS,
    Calibration,
)
from .train_cli import register_train


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="list variants with params and GFLOPs (deploy form, 640x640)",
                       description="List every registered variant: family, input size, params (M) and "
                                   "GFLOPs (2 x MACs, torch flop counter) at 1x3x640x640 in deploy form, "
                                   "the published COCO AP and the official weights URL. The figures were "
                                   "measured by this code and ship with it (no torch needed); --measure "
                                   "measures them again.")
    p.add_argument("variants", nargs="*", help="only these variants (default: all)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--measure", action="store_true", help="build the models and measure now (torch; ~5 s a "
                                                          "variant) instead of showing the shipped figures")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="export a variant to ONNX (dynamic batch, named outputs)",
                       description="Export VARIANT in deploy form to ONNX (opset >= 17, dynamic batch). "
                                   "DAMO-YOLO: images float32 [B,3,640,640] RGB 0..255 -> scores [B,N,80], "
                                   "boxes [B,N,4] xyxy input px. RT-DETRv2: images RGB 0..1 -> logits "
                                   "[B,300,80], boxes [B,300,4] normalized cxcywh. No NMS in the graph.")
    p.add_argument("variant", help="e.g. damo-yolo-t, rtdetrv2-s (see `tdet info`)")
    p.add_argument("--weights", help="checkpoint path, or 'official' to download the release file; "
                                     "omitted: a seeded random init (NOT a trained model)")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init when --weights is omitted")
    p.add_argument("--check", action="store_true", help="run ONNX Runtime on the result and print the max "
                                                        "difference from PyTorch at batch 2 (the fp32 graph)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="int8: QDQ (per-channel weights, activations calibrated on --calib); fp16: fp32 I/O. "
                        "Both keep the layers that break detection in fp32 (training/precision.py KEEP_FP32)")
    p.add_argument("--calib", help="int8: folder of calibration images, passed through the served preprocess")
    # The int8-only options default to None so that giving one without --precision int8 is refused, not ignored.
    p.add_argument("--calib-num", type=int,
                   help=f"int8: calibration images to use (the first N by name; >= {MIN_CALIB_NUM}; "
                        f"default {DEFAULT_CALIB_NUM})")
    p.add_argument("--calibrator", choices=CALIBRATORS,
                   help="int8: activation ranges: minmax (the observed range), entropy (TensorRT's KL-divergence "
                        "clipping; minutes per model, and -6 to -26 AP on the demo detectors: see the README), "
                        "percentile (99.999%%) (default minmax)")
    p.add_argument("--int8-activations", choices=ACTIVATIONS,
                   help="int8: s8 (default) = symmetric int8, the form TensorRT builds (--engine tensorrt); u8 = "
                        "asymmetric uint8, the form ONNX Runtime's CPU provider runs fastest (TensorRT cannot "
                        "build it)")
    p.add_argument("--int8-weight-bits", type=int, choices=WEIGHT_BITS,
                   help="int8 (ONNX Runtime's quantizer): 7 (default) runs right on every x86 CPU; 8 (one more bit "
                        "of weight precision) saturates ONNX Runtime's int8 kernels on CPUs without VNNI (AVX2 / "
                        "AVX-512 only): for TensorRT or VNNI CPUs")
    p.add_argument("--quantizer", choices=QUANTIZERS,
                   help="int8: onnxruntime (default; quantize_static) or modelopt (NVIDIA ModelOpt's ONNX PTQ, "
                        "TensorRT's Q/DQ placement; symmetric int8, --calibrator minmax|entropy; needs "
                        "--modelopt-python)")
    p.add_argument("--modelopt-python", metavar="PY",
                   help="int8 --quantizer modelopt: a python with nvidia-modelopt[onnx] installed (its pins exclude "
                        "this environment's; training/modelopt_int8.py runs in it)")
    p.add_argument("--no-keep-fp32", action="store_true",
                   help="int8/fp16: convert the KEEP_FP32 layers too (to measure what keeping them buys)")
    p.set_defaults(func=cmd_export)

    register_train(sub)


def _require_train_extra(command: str) -> None:
    """A client-only install (no torch) gets the one line that says what to install, not a traceback."""
    import importlib.util

    def absent(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except ValueError:  # set to None in sys.modules: blocked, as good as absent
            return True

    missing = [m for m in ("torch", "onnx") if absent(m)]
    if missing:
        raise train_extra_missing(f"tdet {command}", ", ".join(missing))


def cmd_info(args: argparse.Namespace) -> int:
    from .info import all_info

    if args.measure:
        _require_train_extra("info --measure")
    rows = all_info(args.variants or None, measured=args.measure)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return 0
    print(f"{'name':<18} {'family':<10} {'input':>9} {'params(M)':>10} {'GFLOPs':>8} {'unfused':>8} {'COCO AP':>8}")
    for r in rows:
        ap = f"{r.published_map:.1f}" if r.published_map is not None else "-"
        print(f"{r.name:<18} {r.family:<10} {r.input_size[0]:>4}x{r.input_size[1]:<4} {r.params_m:>10.2f} "
              f"{r.gflops:>8.1f} {r.gflops_unfused:>8.1f} {ap:>8}")
    print("GFLOPs: 1x3x640x640, 2 x MACs (torch flop counter), deploy form (RepConv/RepVGG fused); 'unfused' is "
          "the train form.\nparams: DAMO-YOLO deploy form; RT-DETRv2 train form, as each family's tables count them.")
    return 0


def calibration_from_args(args: argparse.Namespace) -> Calibration | None:
    """--calib and its int8-only options -> a Calibration (None without --calib); one of them given without
    --calib is an error naming it (an option silently ignored is a different export than the one asked for)."""
    options = {"--calib-num": args.calib_num, "--calibrator": args.calibrator,
               "--int8-activations": args.int8_activations, "--int8-weight-bits": args.int8_weight_bits,
               "--quantizer": args.quantizer,
               "--modelopt-python": args.modelopt_python}
    if args.calib is None:
        given = [k for k, v in options.items() if v is not None]
        if given:
            raise UserError(f"{', '.join(given)}: int8 calibration options, they need --precision int8 --calib IMAGES")
        return None
    defaults = Calibration(Path(args.calib))
    return Calibration(defaults.images,
                       defaults.num if args.calib_num is None else args.calib_num,
                       args.calibrator or defaults.method, args.int8_activations or defaults.activations,
                       args.quantizer or defaults.quantizer, args.modelopt_python, args.int8_weight_bits)


def cmd_export(args: argparse.Namespace) -> int:
    """Exit 0; 1 when --check finds ONNX Runtime and PyTorch apart; 2 for bad arguments."""
    _require_train_extra("export")
    from .export import check_export_args, export_onnx
    from .precision import check_precision_args

    check_export_args(args.variant, args.out, opset=args.opset, weights=args.weights)
    calib = calibration_from_args(args)
    check_precision_args(args.precision, calib, not args.no_keep_fp32)
    if args.weights is None:
        print(f"WARNING: no --weights given: exporting {args.variant} with a seeded RANDOM init "
              f"(seed={args.seed}). Detections will be meaningless; use --weights PATH or --weights official.")
    res = export_onnx(args.variant, args.out, weights=args.weights, opset=args.opset, seed=args.seed,
                      check=args.check, precision=args.precision, calib=calib, keep_fp32=not args.no_keep_fp32)
    print(f"exported {res.variant} ({res.family}, {res.precision}) -> {res.path}  [weights: {res.weights}]")
    if res.check is None:
        return 0
    print("ONNX Runtime vs PyTorch, batch 2: " + ", ".join(
        f"{k} max abs diff {c.max_abs_diff:.2e} (tolerance {c.tolerance:.2e})" for k, c in res.check.items()))
    failed = [k for k, c in res.check.items() if not c.ok]
    if failed:
        print(f"check FAILED: {', '.join(failed)} differ by more than the tolerance "
              f"({res.check[failed[0]].rule})", file=sys.stderr)
        return 1
    print("check passed: ONNX Runtime matches PyTorch within the tolerance")
    return 0
