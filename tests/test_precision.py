"""`tdet export --precision int8|fp16` (training/precision.py) on the TRAINED demo checkpoints: the reduced graphs
run in ONNX Runtime and detect what the fp32 graph detects; bad calibration input is a clear error (exit 2) that
writes nothing."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from matching import WEAK, assert_precision_close

from tdet.client import specs
from tdet.client.postprocess import postprocess_one
from tdet.client.preprocess import preprocess, to_float_input
from tdet.client.synth import synthesize
from tdet.ensembles.ort_session import ort_session

DEMO = Path(__file__).resolve().parents[1] / "training" / "demo"
CALIB_NUM = 8  # precision.MIN_CALIB_NUM: the cheapest calibration the CLI accepts
# how close int8 / fp16 must come to fp32: matching.STRONG, WEAK, TOLERANCES, BY_VARIANT (shared with the gate)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("precision")
    synthesize(root / "train", CALIB_NUM, seed=0, split="train", size=(320, 240))
    synthesize(root / "val", 2, seed=0, split="val", size=(320, 240))
    return {"calib": root / "train" / "images", "val": root / "val" / "images", "root": root}


@pytest.fixture(scope="module")
def fp32(data) -> dict[str, Path]:
    from tdet.training.export import export_onnx

    return {v: export_onnx(v, data["root"] / f"{v}.onnx", weights=DEMO / f"{v}.pth").path
            for v in ("damo-yolo-t", "rtdetrv2-s")}


def _meta(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _detect(path: Path, images: list[Path]) -> list[tuple]:
    """Every image through the graph (batch 1) and the served numpy postprocess."""
    meta = _meta(path)
    family, hw = meta[specs.META_FAMILY], specs.parse_hw(meta[specs.META_INPUT_HW])
    spec = specs.preprocess_spec(family, hw)
    sess = ort_session(path, threads=2)
    names = list(specs.EXPORT_OUTPUTS[family])
    dets = []
    for f in images:
        chw, orig = preprocess(f.read_bytes(), spec)
        out = sess.run(names, {specs.EXPORT_INPUT: to_float_input(chw, spec)[None]})
        d = postprocess_one(family, [o[0] for o in out], orig, conf=WEAK, input_hw=hw)
        dets.append((d[0], d[1], d[2], hw))
    return dets


def _assert_detects_like(graph: Path, fp32: Path, images: list[Path], variant: str, precision: str,
                         what: str) -> None:
    """`graph` detects on each image what `fp32` detects, paired, within the precision's tolerances."""
    for i, (g, w) in enumerate(zip(_detect(graph, images), _detect(fp32, images))):
        assert_precision_close(g[:3], w[:3], variant, precision, scale=float(max(w[3])), what=f"{what} image {i}")


@pytest.mark.parametrize(("variant", "precision"), [("damo-yolo-t", "fp16"), ("rtdetrv2-s", "int8"),
                                                    ("rtdetrv2-s", "fp16")])  # damo-yolo-t int8: the CLI test
def test_reduced_precision_detects_what_fp32_detects(fp32, data, variant, precision):
    from tdet.training import precision as p

    src = fp32[variant]
    meta = _meta(src)
    family = meta[specs.META_FAMILY]
    calib = p.Calibration(data["calib"], CALIB_NUM) if precision == "int8" else None
    spec = specs.preprocess_spec(family, specs.parse_hw(meta[specs.META_INPUT_HW]))
    inputs = p.calibration_inputs(p.check_precision_args(precision, calib), spec)
    out = src.with_name(f"{variant}-{precision}.onnx")
    p.reduce_precision(src, out, precision, family=family, inputs=inputs, calib=calib)

    got_meta = _meta(out)
    assert got_meta[specs.META_PRECISION] == precision
    assert json.loads(got_meta[specs.META_KEEP_FP32])["patterns"] == list(p.KEEP_FP32[family])
    assert json.loads(got_meta[specs.META_KEEP_FP32])["nodes"] > 0
    assert got_meta[specs.META_CLASS_NAMES] == meta[specs.META_CLASS_NAMES]
    _assert_detects_like(out, src, sorted(data["val"].iterdir()), variant, precision, f"{variant} {precision}")
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert ("QuantizeLinear" in ops) if precision == "int8" else ("Cast" in ops), ops


def test_int8_export_through_the_cli(fp32, data, tmp_path, capsys):
    """`tdet export --precision int8 --calib`: one file (no temp or pre-processed graph left), its metadata says
    int8 and how it was calibrated, and it detects what the fp32 export detects."""
    from tdet.client.cli import main

    out = tmp_path / "out" / "damo-int8.onnx"
    assert main(["export", "damo-yolo-t", "--weights", str(DEMO / "damo-yolo-t.pth"), "--out", str(out),
                 "--precision", "int8", "--calib", str(data["calib"]), "--calib-num", str(CALIB_NUM),
                 "--calibrator", "percentile"]) == 0
    assert "(damo-yolo, int8)" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    meta = _meta(out)
    assert meta[specs.META_PRECISION] == "int8"
    assert json.loads(meta[specs.META_CALIBRATION]) == {"method": "percentile", "images": CALIB_NUM,
                                                        "activations": "s8", "quantizer": "onnxruntime",
                                                        "weight_bits": 7}  # 8-bit weights saturate ORT sans VNNI
    _assert_detects_like(out, fp32["damo-yolo-t"], sorted(data["val"].iterdir()), "damo-yolo-t", "int8",
                         "damo-yolo-t int8 (CLI)")


def _ort_optimized_ops(path: Path, tmp: Path) -> list[str]:
    """The op types of the graph ONNX Runtime's CPU provider runs after its QDQ fusions (the extended level:
    hardware-independent; the full level adds layout changes that depend on the CPU)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


def test_uint8_activations_for_onnxruntime_cpu(fp32, data, tmp_path, capsys):
    """`--int8-activations u8`: asymmetric uint8 activations, the form ONNX Runtime's CPU provider fuses into
    QLinearConv for every conv (the README's speed table); it detects what fp32 detects, its metadata says so,
    and TensorRT (symmetric int8 only) is refused at build time with nothing written."""
    import onnx

    from tdet.client.cli import main
    from tdet.ensembles.engine_graph import has_uint8_qdq

    out = tmp_path / "damo-int8-u8.onnx"
    assert main(["export", "damo-yolo-t", "--weights", str(DEMO / "damo-yolo-t.pth"), "--out", str(out),
                 "--precision", "int8", "--calib", str(data["calib"]), "--calib-num", str(CALIB_NUM),
                 "--int8-activations", "u8"]) == 0
    assert json.loads(_meta(out)[specs.META_CALIBRATION])["activations"] == "u8"
    assert has_uint8_qdq(onnx.load(str(out))) and not has_uint8_qdq(onnx.load(str(fp32["damo-yolo-t"])))
    ops = _ort_optimized_ops(out, tmp_path)
    assert ops.count("QLinearConv") > 0 and "Conv" not in ops, sorted(set(ops))
    _assert_detects_like(out, fp32["damo-yolo-t"], sorted(data["val"].iterdir()), "damo-yolo-t", "int8",
                         "damo-yolo-t int8 u8")
    capsys.readouterr()
    repo = tmp_path / "repo"
    assert main(["repo", "build", "--out", str(repo), "--onnx", str(out), "--engine", "tensorrt"]) == 2
    assert "symmetric int8" in capsys.readouterr().err
    assert not repo.exists() or not any(repo.iterdir())
    assert main(["repo", "build", "--out", str(repo), "--onnx", str(out)]) == 0


def _write_images(folder: Path, n: int, bad: int | None = None) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        data = cv2.imencode(".jpg", rng.integers(0, 255, (40, 48, 3), np.uint8))[1].tobytes()
        (folder / f"{i:03d}.jpg").write_bytes(b"not an image" if i == bad else data)
    return folder


@pytest.mark.parametrize(("case", "message"), [
    ("no-calib", "needs --calib"),
    ("empty", "0 images"),
    ("too-few", "3 images"),
    ("num-too-small", "--calib-num must be"),
    ("unreadable", "003.jpg"),
    ("fp16-with-calib", "int8 only"),
    ("fp32-with-activations", "--int8-activations: int8 calibration options"),
    ("fp16-with-calibrator", "--calibrator: int8 calibration options"),
    ("modelopt-no-python", "needs --modelopt-python"),
    ("modelopt-python-missing", "cannot run it"),
    ("modelopt-not-installed", "cannot import modelopt.onnx.quantization"),
    ("modelopt-u8", "symmetric int8 only"),
    ("modelopt-percentile", "not --calibrator percentile"),
    ("modelopt-weight-bits", "ModelOpt writes 8-bit weights"),
    ("fp32-with-weight-bits", "--int8-weight-bits: int8 calibration options"),
    ("python-without-modelopt", "--modelopt-python is for --quantizer modelopt"),
    ("fp32-no-keep-fp32", "--no-keep-fp32 is for --precision int8 / fp16"),  # it was ignored
])
def test_bad_calibration_is_a_clear_error_and_writes_nothing(tmp_path, capsys, case, message):
    from tdet.client.cli import main

    out = tmp_path / "out" / "m.onnx"
    args = ["export", "damo-yolo-t", "--weights", str(DEMO / "damo-yolo-t.pth"), "--out", str(out),
            "--precision", "int8"]
    folders = {"empty": (0, None), "too-few": (3, None), "num-too-small": (8, None), "unreadable": (8, 3),
               "fp16-with-calib": (8, None)}
    folders.update({c: (8, None) for c in ("modelopt-no-python", "modelopt-python-missing", "modelopt-not-installed",
                                           "modelopt-u8", "modelopt-percentile", "python-without-modelopt",
                                           "modelopt-weight-bits")})
    # this test's python has no ModelOpt (not a project dependency): the import check must refuse it
    modelopt = {"modelopt-no-python": [], "modelopt-python-missing": ["--modelopt-python", str(tmp_path / "nopy")],
                "modelopt-not-installed": ["--modelopt-python", sys.executable],
                "modelopt-u8": ["--modelopt-python", sys.executable, "--int8-activations", "u8"],
                "modelopt-percentile": ["--modelopt-python", sys.executable, "--calibrator", "percentile"],
                "modelopt-weight-bits": ["--modelopt-python", sys.executable, "--int8-weight-bits", "7"]}
    if case in folders:
        args += ["--calib", str(_write_images(tmp_path / "calib", *folders[case])), "--calib-num",
                 "2" if case == "num-too-small" else "8"]
    if case == "fp16-with-calib":
        args[args.index("int8")] = "fp16"
    if case == "fp32-with-activations":
        args[args.index("int8")] = "fp32"
        args += ["--int8-activations", "u8"]
    if case == "fp32-with-weight-bits":
        args[args.index("int8")] = "fp32"
        args += ["--int8-weight-bits", "8"]
    if case == "fp32-no-keep-fp32":
        args[args.index("int8")] = "fp32"
        args += ["--no-keep-fp32"]
    if case == "fp16-with-calibrator":
        args[args.index("int8")] = "fp16"
        args += ["--calibrator", "entropy"]
    if case in modelopt:
        args += ["--quantizer", "modelopt", *modelopt[case]]
    if case == "python-without-modelopt":
        args += ["--modelopt-python", sys.executable]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.parent.exists() or not any(out.parent.iterdir()), list(out.parent.iterdir())


@pytest.mark.skipif(not os.environ.get("TDET_MODELOPT_PYTHON"),
                    reason="TDET_MODELOPT_PYTHON (a python with nvidia-modelopt[onnx], ~6 GB) is not set")
def test_modelopt_int8_detects_what_fp32_detects(fp32, data):
    """`tdet export --quantizer modelopt`: ModelOpt's symmetric Q/DQ graph, tdet metadata written (so `tdet repo
    build` takes it as int8), detecting what fp32 detects within the int8 tolerances, rtdetrv2-s."""
    from tdet.client.cli import main

    out = fp32["rtdetrv2-s"].with_name("rtdetrv2-s-int8-modelopt.onnx")
    assert main(["export", "rtdetrv2-s", "--weights", str(DEMO / "rtdetrv2-s.pth"), "--out", str(out),
                 "--precision", "int8", "--calib", str(data["calib"]), "--calib-num", str(CALIB_NUM),
                 "--quantizer", "modelopt", "--modelopt-python", os.environ["TDET_MODELOPT_PYTHON"]]) == 0
    import onnx

    model = onnx.load(str(out), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[specs.META_PRECISION] == "int8"
    assert json.loads(meta[specs.META_CALIBRATION])["quantizer"] == "modelopt"
    zero_points = [i for i in model.graph.initializer if i.name.endswith("zero_point")]
    assert "QuantizeLinear" in {n.op_type for n in model.graph.node} and all(z.data_type == 3 for z in zero_points)
    _assert_detects_like(out, fp32["rtdetrv2-s"], sorted(data["val"].iterdir()), "rtdetrv2-s", "int8",
                         "rtdetrv2-s int8 modelopt")


def _conv_relu_graph(path: Path) -> None:
    """images [N,1,8,8] -> Conv 3x3 (4 channels) -> Relu -> out: the smallest graph with one two-signed and one
    one-signed activation for the calibrators."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", [specs.EXPORT_INPUT, "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["conv"], ["out"], name="relu")], "g",
        [helper.make_tensor_value_info(specs.EXPORT_INPUT, TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 8, 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _input_scale(path: Path) -> float:
    """The scale of the QuantizeLinear on the graph input."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == specs.EXPORT_INPUT)
    return float(inits[q.input[1]])


def test_entropy_calibration_clips_outliers_that_minmax_keeps(tmp_path):
    """`--calibrator entropy` is the KL search over a 2048-bin histogram (precision.entropy_ranges), not
    quantize_static's own Entropy (128 bins for 128 quantized bins: one candidate, the minmax range): on a
    heavy-tailed input it clips the rare outliers minmax keeps, a one-signed tensor keeps its sign, and
    quantize_int8 writes those ranges into the graph."""
    from tdet.training.precision import entropy_ranges, quantize_int8

    model = tmp_path / "conv.onnx"
    _conv_relu_graph(model)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, 1, 8, 8)).astype(np.float32) for _ in range(16)]
    inputs[3][0, 0, 0, 0] = 40.0  # one outlier, ~10x the rest
    peak = max(float(np.abs(x).max()) for x in inputs)

    ranges = entropy_ranges(model, inputs)
    lo, hi = (float(v) for v in ranges[specs.EXPORT_INPUT].range_value)
    assert 0 < hi < 0.5 * peak and -hi <= lo < 0  # clipped well inside the outlier, symmetric about zero
    relu_lo, relu_hi = (float(v) for v in ranges["out"].range_value)
    assert relu_lo == 0.0 and relu_hi > 0  # post-ReLU: nothing below zero was seen, none is reserved

    scales = {}
    for method in ("minmax", "entropy"):
        out = tmp_path / f"{method}.onnx"
        quantize_int8(model, out, inputs, family="damo-yolo", method=method, keep_fp32=False)
        scales[method] = _input_scale(out)
    assert scales["minmax"] == pytest.approx(peak / 127, rel=1e-5)
    assert scales["entropy"] == pytest.approx(hi / 127, rel=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.onnx", "entropy.onnx", "minmax.onnx"]
