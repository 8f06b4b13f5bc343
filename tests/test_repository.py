"""The repository builder (no server): configs parse and agree with each other and with the ONNX names,
the uint8 engine graph equals the exported float graph, and the numpy steps equal their references."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import onnx
import pytest
from matching import assert_same_detections
from tritonclient.grpc import model_config_pb2

from tdet.client import preprocess as pp
from tdet.client.boxes import box_iou, cxcywh_to_xyxy, nms, xyxy_to_cxcywh
from tdet.client.pipeline import preprocess_image
from tdet.client.postprocess import postprocess_damo_yolo, postprocess_rtdetrv2
from tdet.client.specs import (
    EXPORT_INPUT,
    EXPORT_OUTPUTS,
    PREPROCESS,
    PreprocessSpec,
    config_parameters,
    spec_from_parameters,
)
from tdet.ensembles.builder import build_repository
from tdet.ensembles.configs import BuildOptions, read_config
from tdet.ensembles.engine_graph import trtexec_command, uint8_engine_graph
from tdet.ensembles.ort_session import ort_session

_config = read_config


def _session(model):
    return ort_session(model.SerializeToString(), threads=2)


def test_every_config_parses_and_the_ensemble_maps_agree(repository, exported):
    for variant, onnx_path in exported.items():
        m = variant.replace("-", "_")
        family = onnx.load(str(onnx_path), load_external_data=False).metadata_props
        family = {p.key: p.value for p in family}["tdet.family"]
        cfg = {name: _config(repository / name / "config.pbtxt")
               for name in (m, f"{m}_preprocess", f"{m}_engine", f"{m}_postprocess")}
        ens = cfg[m]
        assert ens.platform == "ensemble" and ens.max_batch_size == 16
        assert [i.name for i in ens.input] == ["IMAGE"] and ens.input[0].data_type == model_config_pb2.TYPE_STRING
        assert [o.name for o in ens.output] == ["NUM_DETECTIONS", "BOXES", "SCORES", "CLASSES"]
        assert list(ens.output[1].dims) == [100, 4]
        for step in ens.ensemble_scheduling.step:
            step_cfg = cfg[step.model_name]
            assert set(step.input_map) == {i.name for i in step_cfg.input}, step.model_name
            assert set(step.output_map) == {o.name for o in step_cfg.output}, step.model_name
            assert step_cfg.max_batch_size == 16 and step_cfg.HasField("dynamic_batching"), step.model_name
        engine = cfg[f"{m}_engine"]
        assert engine.backend == "onnxruntime" and engine.input[0].data_type == model_config_pb2.TYPE_UINT8
        assert [o.name for o in engine.output] == list(EXPORT_OUTPUTS[family])
        assert engine.model_warmup and cfg[f"{m}_preprocess"].model_warmup
        graph = onnx.load(str(repository / f"{m}_engine" / "1" / "model.onnx"))
        assert [i.name for i in graph.graph.input] == [EXPORT_INPUT]
        assert {o.name for o in graph.graph.output} == set(EXPORT_OUTPUTS[family])
        assert ens.parameters["family"].string_value == family
        assert (repository / f"{m}_preprocess" / "1" / "model.py").is_file()


@pytest.mark.parametrize("variant", ["damo-yolo-t", "rtdetrv2-s"])
def test_uint8_engine_graph_equals_the_exported_float_graph(exported, variant):
    model = onnx.load(str(exported[variant]))
    family = {p.key: p.value for p in model.metadata_props}["tdet.family"]
    spec = PREPROCESS[family]
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 640, 640), dtype=np.uint8)
    want = _session(model).run(None, {EXPORT_INPUT: pp.to_float_input(x, spec)})
    got = _session(uint8_engine_graph(model, spec.scale)).run(None, {EXPORT_INPUT: x})
    for g, w in zip(got, want):
        # the same float graph after an exact uint8 cast (and the same 1/255 scale): equal to float precision,
        # relative to each output's magnitude (DAMO-YOLO boxes are pixels up to ~900, scores and RT-DETRv2
        # boxes 0..1, logits ~10)
        assert np.abs(g - w).max() <= 1e-5 * np.abs(w).max()


@pytest.mark.parametrize("variant", ["damo-yolo-t", "rtdetrv2-s"])
def test_numpy_postprocess_equals_the_pytorch_reference(exported, images, variant):
    torch = pytest.importorskip("torch")
    model = onnx.load(str(exported[variant]))
    family = {p.key: p.value for p in model.metadata_props}["tdet.family"]
    spec = PREPROCESS[family]
    chw, orig_hw = pp.preprocess(images["wide.jpg"], spec)
    a, b = (t[0] for t in _session(model).run(None, {EXPORT_INPUT: pp.to_float_input(chw[None], spec)}))
    if family == "damo-yolo":
        from tdet.training.models.damo_yolo.postprocess import postprocess
        rb, rs, rl = postprocess(torch.from_numpy(a), torch.from_numpy(b))
        rb = pp.boxes_to_original(rb.numpy(), orig_hw, spec)
        nb, ns, nl = postprocess_damo_yolo(a, b, orig_hw)
    else:
        from tdet.training.models.rtdetrv2.postprocess import postprocess
        rb, rs, rl = postprocess(torch.from_numpy(a), torch.from_numpy(b), orig_hw)
        rb = rb.numpy()
        nb, ns, nl = postprocess_rtdetrv2(a, b, orig_hw)
    assert len(nl) == len(rl) > 0
    # paired detections (equal scores may come out in either order); boxes in units of the image size
    assert_same_detections((nb, ns, nl), (rb, rs.numpy(), rl.numpy()), scale=max(orig_hw), box_tol=1e-6,
                           score_tol=1e-6, what=f"{variant} numpy vs torch postprocess")


def test_one_reader_for_config_parameters_and_the_preprocess_honours_resize(repository):
    """The python steps read parameters from the config's JSON form (as the backend hands it over and as
    tritonclient returns it) with one helper; the preprocess spec comes from them, `resize` included."""
    from google.protobuf.json_format import MessageToDict

    cfg = _config(repository / "rtdetrv2_s_preprocess" / "config.pbtxt")
    as_json = MessageToDict(cfg, preserving_proto_field_name=True)
    params = config_parameters(as_json)
    assert params["family"] == "rtdetrv2" and params["resize"] == "pil-bilinear" and params["input_hw"] == "640,640"
    assert config_parameters({"config": as_json}) == params  # tritonclient gRPC's as_json form
    ens = config_parameters(MessageToDict(_config(repository / "rtdetrv2_s" / "config.pbtxt"),
                                          preserving_proto_field_name=True))
    assert ens["precision"] == "fp32"  # copied from the ONNX's tdet.precision (fp32 when unset)
    assert spec_from_parameters(params) == PREPROCESS["rtdetrv2"]
    assert spec_from_parameters({**params, "resize": "cv2-linear", "input_hw": "320,480"}) == \
        PreprocessSpec((320, 480), PREPROCESS["rtdetrv2"].scale, "cv2-linear")
    with pytest.raises(ValueError, match="unknown resize 'nearest'"):
        spec_from_parameters({**params, "resize": "nearest"})


def test_fused_preprocess_is_byte_identical_to_the_reference(images):
    for data in images.values():
        for spec in PREPROCESS.values():
            fast, hw = preprocess_image(data, spec)
            ref, ref_hw = pp.preprocess(data, spec)
            assert hw == ref_hw and fast.dtype == np.uint8
            np.testing.assert_array_equal(fast, ref)


def test_box_ops():
    xyxy = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(xyxy)), xyxy)
    iou = box_iou(xyxy, xyxy)
    assert iou[0, 1] == pytest.approx(81 / 119) and iou[0, 2] == 0 and np.allclose(np.diag(iou), 1)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert nms(xyxy, scores, 0.5).tolist() == [0, 2]
    assert nms(xyxy, scores, 0.5, labels=np.array([0, 1, 0])).tolist() == [0, 1, 2]  # class-aware
    assert nms(xyxy, scores, 0.5, max_keep=1).tolist() == [0]


def test_tensorrt_kind_writes_config_and_build_script(exported, tmp_path):
    repo = tmp_path / "trt"
    build_repository([exported["damo-yolo-t"]], repo, BuildOptions(engine="tensorrt", max_batch_size=8))
    cfg = _config(repo / "damo_yolo_t_engine" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    script = (repo / "damo_yolo_t_engine" / "1" / "build_plan.sh").read_text()
    assert "--fp16" in script and "--minShapes=images:1x3x640x640" in script
    assert "--maxShapes=images:8x3x640x640" in script and "model.plan" in script
    assert (repo / "damo_yolo_t_engine" / "1" / "model.uint8.onnx").is_file() and (repo / "build_engines.sh").is_file()
    assert "*/build_plan.sh" in (repo / "damo_yolo_t_engine" / "build_engine.sh").read_text()
    assert not (repo / "damo_yolo_t_engine" / "1" / "model.plan").exists()  # built on the GPU host, never faked
    # fp32 as version 2 of the same engine: its own plan script without --fp16; version 1's stays
    build_repository([exported["damo-yolo-t"]], repo, BuildOptions(engine="tensorrt", max_batch_size=8,
                                                                   precision="fp32"), version=2)
    assert "--fp16" not in (repo / "damo_yolo_t_engine" / "2" / "build_plan.sh").read_text()
    assert "--fp16" in (repo / "damo_yolo_t_engine" / "1" / "build_plan.sh").read_text()


def test_tensorrt_engine_builds_where_trtexec_exists(exported, tmp_path):
    if shutil.which("trtexec") is None:
        pytest.skip("TensorRT engine build needs trtexec and a GPU (run it in the engine-builder container)")
    repo = tmp_path / "trt"
    build_repository([exported["damo-yolo-t"]], repo, BuildOptions(engine="tensorrt", max_batch_size=2))
    subprocess.run(["sh", str(repo / "build_engines.sh")], check=True, timeout=1800)
    assert (repo / "damo_yolo_t_engine" / "1" / "model.plan").stat().st_size > 0


def test_trtexec_command_profile():
    cmd = trtexec_command("m.onnx", "m.plan", (640, 640), 16)
    assert cmd.split()[0] == "trtexec" and "--optShapes=images:8x3x640x640" in cmd


@pytest.mark.parametrize(("onnx_precision", "flags"), [
    ("fp32", ["--fp16"]), ("int8", ["--int8", "--fp16"]), ("fp16", ["--stronglyTyped"])])
def test_trtexec_command_follows_onnx_precision(onnx_precision, flags):
    """The plan's flags come from the ONNX's recorded precision: int8 QDQ -> explicit precision (--int8 and
    --fp16 for unquantized layers), fp16 with fp32 I/O -> --stronglyTyped (no --fp16/--int8 on top)."""
    words = trtexec_command("m.onnx", "m.plan", (320, 320), 4, "fp16", onnx_precision).split()
    got = [w for w in words if w in ("--fp16", "--int8", "--stronglyTyped")]
    assert got == flags


@pytest.mark.parametrize(("input_hw", "words"), [
    (None, "lacks ['tdet.input_hw']: export it with `tdet export`"),
    ("640x640", "bad input size '640x640': expected 'height,width'"),
    ("640", "bad input size '640': expected 'height,width'"),
    ("0,640", "bad input size '0,640': height and width must be positive"),
    ("-32,64", "bad input size '-32,64': height and width must be positive"),
])
def test_repo_build_names_bad_input_hw_metadata(exported, tmp_path, capsys, input_hw, words):
    """`tdet repo build` of an exported ONNX whose tdet.input_hw is missing or not a positive 'h,w': exit 2,
    one line naming the metadata key and the text, no traceback, nothing written."""
    from tdet.client.cli import main

    model = onnx.load(str(exported["damo-yolo-t"]))
    meta = {p.key: p.value for p in model.metadata_props if p.key != "tdet.input_hw"}
    if input_hw is not None:
        meta["tdet.input_hw"] = input_hw
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    path, repo = tmp_path / "bad_hw.onnx", tmp_path / "repo"
    onnx.save(model, str(path))
    assert main(["repo", "build", "--onnx", str(path), "--out", str(repo)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tdet repo build: error: ") and words in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert input_hw is None or "tdet.input_hw" in err
    assert not (repo.exists() and list(repo.iterdir())) and not list(tmp_path.glob(".stage-*"))


def test_builder_rejects_a_foreign_onnx_and_leaves_nothing(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(path))
    repo = tmp_path / "repo"
    with pytest.raises(ValueError, match="tdet export"):
        build_repository([path], repo)
    assert not (repo.exists() and list(repo.iterdir())) and not list(tmp_path.glob(".stage-*"))
    with pytest.raises(FileNotFoundError):
        build_repository([tmp_path / "missing.onnx"], repo)
