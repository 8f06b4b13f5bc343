"""`tdet export --precision int8|fp16`: an fp32 export turned into a reduced-precision ONNX.

int8: onnxruntime's static quantization (QDQ, per-channel weights), activations calibrated on the user's
images passed through the served preprocess (tdet.client.preprocess), so calibration sees served inputs; or
NVIDIA ModelOpt's ONNX PTQ (`--quantizer modelopt`), whose Q/DQ placement is TensorRT's, run in its own python
(training/modelopt_int8.py: its pins exclude the project's).
fp16: onnxconverter-common's float16 conversion with fp32 inputs/outputs (keep_io_types).

Both keep the layers that break detection in fp32 by default (KEEP_FP32, per family): node-name regexes
("name:...") or op types ("op:..."), recorded with the precision in the ONNX metadata (tdet.precision,
tdet.keep_fp32) so the served repository and reports can tell what a graph is.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import re
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tdet.client import specs
from tdet.client.errors import InvalidImageError, UserError
from tdet.client.preprocess import preprocess, to_float_input

PRECISIONS = ("fp32", "int8", "fp16")
CALIBRATORS = ("minmax", "entropy", "percentile")  # onnxruntime.quantization.CalibrationMethod
# int8 activations: s8 = symmetric int8 (zero point 0), the only Q/DQ form TensorRT builds (explicit precision);
# u8 = asymmetric uint8 x int8 weights, the form ONNX Runtime's CPU provider fuses into QLinearConv for every conv
# (with s8 it fuses fewer than half of DAMO-YOLO-T's convs and runs the rest as Q/DQ + float Conv: README).
ACTIVATIONS = ("s8", "u8")
# int8 weight bits (ONNX Runtime's quantizer): 7 (`reduce_range`) by default. ORT's CPU int8 kernels on x86 CPUs
# without VNNI (AVX2 / AVX-512 only) sum u8 x s8 products pairwise into int16 (vpmaddubsw), which saturates with
# 8-bit weights: on such a CPU (this project's CI, an AVX2 EPYC) 8-bit int8 graphs lost up to 7.6 AP / moved scores
# by 0.37 where 7-bit ones keep the fp32 detections. 8 bits only for TensorRT or VNNI CPUs (README).
WEIGHT_BITS = (7, 8)
QUANTIZERS = ("onnxruntime", "modelopt")
MODELOPT_METHODS = {"minmax": "max", "entropy": "entropy"}  # our calibrator names -> ModelOpt's
DEFAULT_CALIB_NUM = 64
MIN_CALIB_NUM = 8  # fewer images give ranges set by a handful of activations: not a calibration
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# The layers kept in fp32 by default, and why (patterns over `tdet export`'s node names):
# DAMO-YOLO: everything after the head's last convs. The export's decode (nodes outside /model/) holds the class
#   sigmoid (the score every threshold reads), the DFL softmax over reg_max + 1 bins and its integral (the 0..reg_max
#   projection) that turn 17 logits into one distance, where an int8 step moves a box edge by a good part of a bin
#   (a stride in pixels), and the distance -> xyxy decode with anchor points and strides, in input pixels (0..640)
#   where int8 steps are pixels wide; the head's per-level scales feed the DFL logits.
# RT-DETRv2: the query selection (the decoder's own ops at its top level: anchors and their inverse sigmoid, TopK,
#   GatherElements; the encoder-output projection and its class/box heads): a reduced-precision score reorders
#   near-equal queries, so other objects are decoded; the deformable cross-attention but its value/output
#   projections (sampling offsets, attention weights and their softmax, the grid_sample locations: a pixel off
#   is another feature); the box/score heads, whose inverse_sigmoid / sigmoid refinement runs per decoder layer
#   and compounds the error.
KEEP_FP32: dict[str, tuple[str, ...]] = {
    specs.DAMO_YOLO: (r"name:/(?!model/).*", r"name:/model/head/(?!gfl_cls\.|gfl_reg\.).*", "op:Softmax"),
    specs.RTDETRV2: (
        r"name:/decoder/[A-Za-z]+(_\d+)?", r"name:/decoder/(enc_output|enc_score_head|enc_bbox_head)/.*",
        r"name:/decoder/dec_(score|bbox)_head\..*",
        r"name:/decoder/layers\.\d+/cross_attn/(?!value_proj/|output_proj/).*",
        "op:TopK", "op:GatherElements", "op:GridSample",
    ),
}


@dataclass(frozen=True)
class Calibration:
    """int8 calibration: the image folder, how many of its images, the range calibrator, the activation type and
    the quantizer (with ModelOpt, the python that has it)."""

    images: Path
    num: int = DEFAULT_CALIB_NUM
    method: str = "minmax"
    activations: str = "s8"
    quantizer: str = "onnxruntime"
    modelopt_python: str | None = None
    weight_bits: int | None = None  # None: 7 with ONNX Runtime's quantizer, ModelOpt's 8

    @property
    def bits(self) -> int:
        """The int8 weights' bits the export writes."""
        return 8 if self.quantizer == "modelopt" else (self.weight_bits or 7)


def check_precision_args(precision: str, calib: Calibration | None, keep_fp32: bool = True) -> list[Path]:
    """Refuse bad --precision/--calib/--no-keep-fp32 arguments before anything is exported; -> the calibration
    files."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32" and not keep_fp32:  # it would be ignored
        raise UserError("--no-keep-fp32 is for --precision int8 / fp16 (an fp32 export converts nothing)")
    if precision != "int8":
        if calib is not None:
            raise UserError(f"--calib is for --precision int8 only (got --precision {precision})")
        return []
    if calib is None:
        raise UserError("--precision int8 needs --calib IMAGES: a folder of images like the served ones")
    if calib.method not in CALIBRATORS:
        raise UserError(f"--calibrator must be one of {', '.join(CALIBRATORS)}, got {calib.method!r}")
    if calib.activations not in ACTIVATIONS:
        raise UserError(f"--int8-activations must be one of {', '.join(ACTIVATIONS)}, got {calib.activations!r}")
    if calib.quantizer not in QUANTIZERS:
        raise UserError(f"--quantizer must be one of {', '.join(QUANTIZERS)}, got {calib.quantizer!r}")
    if calib.weight_bits not in (None, *WEIGHT_BITS):
        raise UserError(f"--int8-weight-bits must be 7 or 8, got {calib.weight_bits}")
    if calib.quantizer == "modelopt":
        check_modelopt(calib)
    elif calib.modelopt_python is not None:
        raise UserError("--modelopt-python is for --quantizer modelopt")
    if calib.num < MIN_CALIB_NUM:
        raise UserError(f"--calib-num must be >= {MIN_CALIB_NUM}, got {calib.num}")
    if not calib.images.is_dir():
        raise UserError(f"--calib {calib.images}: not a folder of images")
    files = sorted(p for p in calib.images.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < calib.num:
        raise UserError(f"--calib {calib.images}: {len(files)} images ({', '.join(IMAGE_SUFFIXES)}), "
                        f"--calib-num asks for {calib.num}")
    return files[:calib.num]


def check_modelopt(calib: Calibration) -> None:
    """--quantizer modelopt: the options ModelOpt has, and a --modelopt-python that imports it."""
    if calib.activations != "s8":
        raise UserError("--quantizer modelopt writes symmetric int8 only: drop --int8-activations u8")
    if calib.weight_bits is not None:
        raise UserError("--int8-weight-bits is ONNX Runtime's quantizer's (`reduce_range`); ModelOpt writes 8-bit "
                        "weights: drop it")
    if calib.method not in MODELOPT_METHODS:
        raise UserError(f"--quantizer modelopt calibrates with {' or '.join(MODELOPT_METHODS)}, "
                        f"not --calibrator {calib.method}")
    if calib.modelopt_python is None:
        raise UserError("--quantizer modelopt needs --modelopt-python PY: a python with nvidia-modelopt[onnx] "
                        "(its pins exclude this environment's onnx/onnxruntime/torch; see training/modelopt_int8.py)")
    _modelopt_importable(calib.modelopt_python)


@functools.cache
def _modelopt_importable(python: str) -> None:
    """Fail before the export, naming the cause, if `python` cannot run ModelOpt (checked once per python)."""
    import subprocess

    try:
        res = subprocess.run([python, "-c", "import modelopt.onnx.quantization"], capture_output=True, text=True,
                             timeout=600)
    except OSError as err:
        raise UserError(f"--modelopt-python {python}: cannot run it ({err.strerror})") from None
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"--modelopt-python {python}: cannot import modelopt.onnx.quantization ({last}); "
                        "install nvidia-modelopt[onnx] in it")


def calibration_inputs(files: Sequence[Path], spec: specs.PreprocessSpec) -> list[np.ndarray]:
    """The served preprocess of each calibration image: float32 [1, 3, H, W] in the graph's units. An
    unreadable image is an error naming it (a silently smaller calibration set is a different one)."""
    out = []
    for f in files:
        try:
            chw, _ = preprocess(f.read_bytes(), spec)
        except InvalidImageError as err:
            raise UserError(f"--calib: {f}: {err}") from None
        out.append(to_float_input(chw, spec)[None])
    return out


def matched_nodes(model: Any, patterns: Iterable[str]) -> list[str]:
    """Names of the graph's nodes matched by the "name:REGEX" / "op:TYPE" patterns (main graph; subgraphs
    have none in these exports)."""
    names = [re.compile(p[5:]) for p in patterns if p.startswith("name:")]
    ops = {p[3:] for p in patterns if p.startswith("op:")}
    return [n.name for n in model.graph.node if n.op_type in ops or any(r.fullmatch(n.name) for r in names)]


def keep_patterns(family: str, keep_fp32: bool) -> tuple[str, ...]:
    return KEEP_FP32[family] if keep_fp32 else ()


class CalibrationFeed:
    """The calibration inputs as onnxruntime's CalibrationDataReader (which it recognises by get_next): one
    input feed per call, then None."""

    def __init__(self, inputs: list[np.ndarray]) -> None:
        self.it = iter(inputs)

    def get_next(self) -> dict | None:
        x = next(self.it, None)
        return None if x is None else {specs.EXPORT_INPUT: x}


def quantize_int8(fp32: Path, out: Path, inputs: list[np.ndarray], *, family: str, method: str = "minmax",
                  keep_fp32: bool = True, activations: str = "s8", weight_bits: int = 7) -> list[str]:
    """fp32 ONNX -> QDQ int8 ONNX at `out` (per-channel weights of `weight_bits` bits, activations calibrated on
    `inputs`); -> the node names left in fp32."""
    import onnx
    from onnxruntime import quantization as q
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_name(out.name + ".pre.onnx")
    cache = out.with_name(out.name + ".ranges.json")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a warning per 1-D weight it cannot quantize per channel
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)  # the symbolic pass fails on these graphs
        exclude = matched_nodes(onnx.load(str(pre)), keep_patterns(family, keep_fp32))
        methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
                   "percentile": q.CalibrationMethod.Percentile}
        act = {"s8": q.QuantType.QInt8, "u8": q.QuantType.QUInt8}[activations]
        if method == "entropy":  # ranges from the KL search below, handed to quantize_static as its cache
            save_tensors_data(entropy_ranges(pre, inputs), cache)
        q.quantize_static(str(pre), str(out), CalibrationFeed(inputs), quant_format=q.QuantFormat.QDQ, per_channel=True,
                          activation_type=act, weight_type=q.QuantType.QInt8,
                          calibrate_method=methods[method], nodes_to_exclude=exclude,
                          calibration_cache_path=str(cache) if method == "entropy" else None,
                          reduce_range=weight_bits == 7, extra_options={"ActivationSymmetric": activations == "s8"})
    finally:
        root.setLevel(level)
        pre.unlink(missing_ok=True)
        cache.unlink(missing_ok=True)
        for aux in out.parent.glob(out.name + ".pre*"):
            aux.unlink(missing_ok=True)
    return exclude


ENTROPY_BINS = 2048  # histogram bins over [-max|x|, max|x|]: the KL search tries 961 clipping thresholds


def entropy_ranges(model: Path, inputs: list[np.ndarray]) -> Any:
    """Activation ranges by the KL-divergence search of TensorRT's entropy calibrator, with onnxruntime's own
    EntropyCalibrater over the op types quantize_static quantizes. Why not quantize_static's Entropy method
    alone: it builds 128-bin histograms for 128 quantized bins, so its search has one candidate, the whole
    range, and lands on the minmax ranges (measured: the same AP as minmax to 0.01 on both families). The
    histogram is symmetric (TensorRT's form); each range is the clipped (-t, t) narrowed to what was seen, so a
    one-signed tensor keeps its sign for the u8 form. Served, it costs the demo detectors 6-26 AP (README): an
    option for TensorRT users, never the default."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    with tempfile.TemporaryDirectory(prefix="tdet-entropy-") as tmp:
        calibrator = create_calibrator(model, list(set(QLinearOpsRegistry) | set(QDQRegistry)),
                                       augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.Entropy,
                                       extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": 128,
                                                      "symmetric": True})
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress and bin counts
            calibrator.collect_data(CalibrationFeed(inputs))
            clipped = calibrator.compute_data()
        seen = calibrator.collector.histogram_dict  # name -> (hist, edges, min, max, ...)
    for k, r in clipped.items():
        r.lowest = np.asarray(max(r.lowest, seen[k][2]), r.lowest.dtype)
        r.highest = np.asarray(min(r.highest, seen[k][3]), r.highest.dtype)
    return clipped


def quantize_int8_modelopt(fp32: Path, out: Path, inputs: list[np.ndarray], *, family: str, method: str,
                           python: str, keep_fp32: bool = True) -> list[str]:
    """fp32 ONNX -> ModelOpt's QDQ int8 ONNX at `out` (training/modelopt_int8.py run by `python`, calibrated on
    `inputs`, the keep-in-fp32 nodes excluded); -> the node names left in fp32. Its failure is a UserError
    carrying the child's last lines; nothing is left at `out`."""
    import subprocess

    import onnx

    exclude = matched_nodes(onnx.load(str(fp32), load_external_data=False), keep_patterns(family, keep_fp32))
    with tempfile.TemporaryDirectory(prefix="tdet-modelopt-") as tmp:
        calib, keep, src = Path(tmp) / "calib.npy", Path(tmp) / "keep.json", Path(tmp) / "fp32.onnx"
        src.symlink_to(fp32.resolve())  # ModelOpt wants an .onnx name; the export's temp file has none
        np.save(calib, np.concatenate(inputs))
        keep.write_text(json.dumps(exclude))
        script = Path(__file__).with_name("modelopt_int8.py")
        res = subprocess.run([python, str(script), str(src), str(calib), str(keep), str(out.resolve()),
                              "--method", MODELOPT_METHODS[method], "--input", specs.EXPORT_INPUT],
                             capture_output=True, text=True)
    if res.returncode != 0 or not out.is_file():
        out.unlink(missing_ok=True)
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-5:])
        raise UserError(f"ModelOpt's quantization failed (exit {res.returncode}):\n{tail}")
    return exclude


def convert_fp16(fp32: Path, out: Path, *, family: str, keep_fp32: bool = True) -> list[str]:
    """fp32 ONNX -> fp16 ONNX at `out` with float32 inputs/outputs; -> the node names left in fp32."""
    import onnx
    from onnxconverter_common import float16

    model = _drop_initializer_identities(onnx.load(str(fp32)))
    patterns = keep_patterns(family, keep_fp32)
    keep = matched_nodes(model, patterns)
    ops = [p[3:] for p in patterns if p.startswith("op:")]
    # the converter retypes a Cast(to=float)'s output (shape arithmetic: the attention scale) but not its `to`
    casts = [n.name for n in model.graph.node
             if n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per weight below fp16's smallest normal
        half = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=keep + casts,
                                                op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + ops)
    onnx.save(_float32_outputs(half), str(out))
    return keep


def _float32_outputs(model: Any) -> Any:
    """Graph outputs typed float32, as keep_io_types promises. When the node producing an output is kept in fp32
    (DAMO-YOLO's decode), the converter still appends a Cast to fp16 there and types the output fp16, which the
    served postprocess (float32 inputs) refuses: that Cast casts to float32 instead (from fp32: a no-op), any
    other fp16 output gets a Cast appended."""
    import onnx
    from onnx import TensorProto, helper

    producers = {o: n for n in model.graph.node for o in n.output}
    for out in model.graph.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        node = producers[out.name]
        if node.op_type == "Cast":
            next(a for a in node.attribute if a.name == "to").i = TensorProto.FLOAT
        else:
            half = f"{out.name}_fp16"
            node.output[list(node.output).index(out.name)] = half
            for n in model.graph.node:  # other readers of the fp16 tensor keep reading it
                n.input[:] = [half if i == out.name else i for i in n.input]
            model.graph.node.append(helper.make_node("Cast", [half], [out.name], to=TensorProto.FLOAT,
                                                     name=f"{out.name}_to_fp32"))
        out.type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.checker.check_model(model)
    return model


def _drop_initializer_identities(model: Any) -> Any:
    """Consumers of `Identity(initializer)` read the initializer itself. The exporter writes such Identities for
    weights shared across decoder layers (RT-DETRv2), and the fp16 converter types their outputs fp16 while the
    initializer stays fp32 when a blocked node also reads it: a graph ONNX Runtime refuses to load."""
    inits = {i.name for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    alias = {n.output[0]: n.input[0] for n in model.graph.node
             if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs}
    keep = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in keep:
        for i, name in enumerate(n.input):
            if name in alias:
                n.input[i] = alias[name]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def write_precision_meta(path: Path, base_meta: dict[str, str], precision: str, patterns: Sequence[str],
                         kept: Sequence[str], calib: Calibration | None) -> None:
    """The fp32 export's metadata plus the precision, the keep-in-fp32 patterns and (int8) the calibration."""
    import onnx

    model = onnx.load(str(path))
    meta = dict(base_meta)
    meta[specs.META_PRECISION] = precision
    meta[specs.META_KEEP_FP32] = json.dumps({"patterns": list(patterns), "nodes": len(kept)})
    if calib is not None:
        meta[specs.META_CALIBRATION] = json.dumps({"method": calib.method, "images": calib.num,
                                                   "activations": calib.activations, "quantizer": calib.quantizer,
                                                   "weight_bits": calib.bits})
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    model.producer_name = "tdet"
    onnx.save(model, str(path))


def reduce_precision(fp32: Path, out: Path, precision: str, *, family: str, inputs: list[np.ndarray],
                     calib: Calibration | None, keep_fp32: bool = True) -> None:
    """Write the `precision` form of the fp32 graph `fp32` to `out`, with its metadata."""
    import onnx

    base_meta = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    if precision == "int8":
        assert calib is not None
        if calib.quantizer == "modelopt":
            assert calib.modelopt_python is not None
            kept = quantize_int8_modelopt(fp32, out, inputs, family=family, method=calib.method,
                                          python=calib.modelopt_python, keep_fp32=keep_fp32)
        else:
            kept = quantize_int8(fp32, out, inputs, family=family, method=calib.method, keep_fp32=keep_fp32,
                                 activations=calib.activations, weight_bits=calib.bits)
    else:
        kept = convert_fp16(fp32, out, family=family, keep_fp32=keep_fp32)
    write_precision_meta(out, base_meta, precision, keep_patterns(family, keep_fp32), kept, calib)
