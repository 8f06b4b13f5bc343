"""`tdet repo build --preprocess dali` (ensembles/dali_preprocess.py): the preprocess step as a DALI pipeline.

The GPU variant (nvJPEG, GPU resize) needs a GPU; here the same pipeline runs with DALI's CPU operators and is
compared with the python step (client/pipeline.preprocess_rows) on real images much larger than the model input,
smaller, non-square, EXIF-rotated and PNG: the network input within a stated tolerance, the original sizes
exactly, and the trained demo model's detections through both paired up. The build writes model.dali and a
DALI-backend config; the local server refuses such a repository with one clear line."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from matching import pair_detections

dali = pytest.importorskip("nvidia.dali", reason="nvidia-dali not installed (the dali extra)")

from tdet.client import specs  # noqa: E402
from tdet.client.pipeline import preprocess_rows  # noqa: E402
from tdet.client.postprocess import postprocess_one  # noqa: E402
from tdet.client.preprocess import to_float_input  # noqa: E402
from tdet.client.synth import synthesize  # noqa: E402
from tdet.ensembles.dali_preprocess import DALI_INPUT, DALI_OUTPUTS, dali_pipeline  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "training" / "demo"
# DALI's resize vs OpenCV's / PIL's, on 0..255 pixels (1 = 1/255 of the normalised input): the mean |diff| over
# the image and the largest single one. Measured here: mean 0.004-0.19, max 1-2 (the decodes agree; resize
# rounding differs by one level); README's DALI subsection.
MEAN_TOL, MAX_TOL = 0.5, 3
STRONG, WEAK = 0.5, 0.2  # every confident detection of one path has a twin above WEAK in the other
# box / original image size, score (absolute); measured here: <= 1e-4 and <= 0.0035 (README)
BOX_TOL, SCORE_TOL = 0.002, 0.02


def _jpeg(bgr: np.ndarray, orientation: int = 1) -> bytes:
    from PIL import Image

    img = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, exif=exif.tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, bytes]:
    """Synthetic val images (objects the demo model detects) as what users send: 1280x720 and 300x500 JPEG,
    the 640x480 original, a phone photo stored sideways (EXIF orientation 6) and a 500x300 PNG."""
    root = tmp_path_factory.mktemp("dali")
    synthesize(root / "val", 3, seed=0, split="val", size=(640, 480))
    files = sorted((root / "val" / "images").iterdir())
    a, b, c = (cv2.imread(str(f)) for f in files)
    return {"1280x720.jpg": _jpeg(cv2.resize(a, (1280, 720), interpolation=cv2.INTER_CUBIC)),
            "300x500.jpg": _jpeg(cv2.resize(b, (300, 500), interpolation=cv2.INTER_AREA)),
            "640x480.jpg": files[2].read_bytes(),
            "exif6.jpg": _jpeg(cv2.rotate(c, cv2.ROTATE_90_COUNTERCLOCKWISE), orientation=6),
            "500x300.png": cv2.imencode(".png", cv2.resize(a, (500, 300), interpolation=cv2.INTER_AREA))[1].tobytes()}


def _dali_rows(spec: specs.PreprocessSpec, rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The CPU pipeline, serialised and loaded back (as the backend loads model.dali), on one batch."""
    serialized = dali_pipeline(spec, device="cpu", batch_size=len(rows)).serialize()
    pipe = dali.Pipeline.deserialize(serialized, device_id=None)
    pipe.feed_input(DALI_INPUT, rows)
    images, sizes = (o.as_array() for o in pipe.run())
    return images, sizes


def _raw(blobs: list[bytes]) -> list[np.ndarray]:
    return [np.frombuffer(b, np.uint8) for b in blobs]


CASES = [(specs.DAMO_YOLO, (320, 320)), (specs.DAMO_YOLO, (640, 640)), (specs.RTDETRV2, (640, 640)),
         (specs.RTDETRV2, (320, 480))]


@pytest.mark.parametrize(("family", "hw"), CASES, ids=[f"{f}-{h}x{w}" for f, (h, w) in CASES])
def test_cpu_pipeline_matches_the_python_step(photos, family, hw):
    spec = specs.preprocess_spec(family, hw)
    blobs = list(photos.values())
    want, want_hw = preprocess_rows(blobs, spec)
    got, got_hw = _dali_rows(spec, _raw(blobs))
    assert got.dtype == want.dtype == np.uint8 and got.shape == want.shape == (len(blobs), 3, *hw)
    assert got_hw.dtype == want_hw.dtype == np.int32
    np.testing.assert_array_equal(got_hw, want_hw)  # EXIF-rotated: the displayed (height, width)
    for name, g, w in zip(photos, got, want):
        diff = np.abs(g.astype(np.int16) - w.astype(np.int16))
        assert diff.mean() < MEAN_TOL and diff.max() <= MAX_TOL, \
            f"{name}: mean |diff| {diff.mean():.3f}, max {diff.max()} (of 255)"


def test_zero_padded_rows_decode_as_the_images(photos):
    """The client sends a batch to a uint8 IMAGE as rows zero-padded to the longest (client.image_input.wire_images):
    the padding is ignored."""
    from tdet.client.image_input import wire_images

    spec = specs.preprocess_spec(specs.DAMO_YOLO, (320, 320))
    blobs = list(photos.values())
    rows, datatype = wire_images(blobs, {"input": [{"name": "IMAGE", "data_type": "TYPE_UINT8", "dims": ["-1"]}]})
    assert datatype == "UINT8" and rows.shape == (len(blobs), max(map(len, blobs)))
    padded, padded_hw = _dali_rows(spec, list(rows))
    exact, exact_hw = _dali_rows(spec, _raw(blobs))
    np.testing.assert_array_equal(padded, exact)
    np.testing.assert_array_equal(padded_hw, exact_hw)


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("torch")
    from tdet.training.export import export_onnx

    out = tmp_path_factory.mktemp("dali-onnx")
    return {v: export_onnx(v, out / f"{v}.onnx", weights=DEMO / f"{v}.pth").path for v in ("damo-yolo-t",)}


def _detect(onnx: Path, family: str, chw: np.ndarray, sizes: np.ndarray) -> list[tuple]:
    from tdet.ensembles.ort_session import ort_session

    sess = ort_session(onnx, threads=2)
    hw = chw.shape[-2:]
    spec = specs.preprocess_spec(family, hw)
    out = sess.run(list(specs.EXPORT_OUTPUTS[family]), {specs.EXPORT_INPUT: to_float_input(chw, spec)})
    return [postprocess_one(family, [o[i] for o in out], (int(sizes[i][0]), int(sizes[i][1])), conf=WEAK,
                            input_hw=hw) for i in range(len(chw))]


def test_trained_model_detects_the_same_through_both(photos, demo_onnx):
    """The trained damo-yolo-t (served at 320): engine ONNX + the served numpy postprocess on the python step's
    input and on the DALI pipeline's: every confident detection of one has its twin in the other."""
    spec = specs.preprocess_spec(specs.DAMO_YOLO, (320, 320))
    blobs = list(photos.values())
    want_chw, sizes = preprocess_rows(blobs, spec)
    got_chw, _ = _dali_rows(spec, _raw(blobs))
    want = _detect(demo_onnx["damo-yolo-t"], specs.DAMO_YOLO, want_chw, sizes)
    got = _detect(demo_onnx["damo-yolo-t"], specs.DAMO_YOLO, got_chw, sizes)
    strong_total = 0
    for name, g, w, hw in zip(photos, got, want, sizes):
        for a, b, direction in ((w, g, "python -> dali"), (g, w, "dali -> python")):
            strong = a[1] >= STRONG
            strong_total += int(strong.sum())
            rows, _, box_err, score_err = pair_detections((a[0][strong], a[1][strong], a[2][strong]), b,
                                                          scale=float(max(hw)))
            assert len(rows) == strong.sum(), f"{name} {direction}: {strong.sum() - len(rows)} detections lost"
            if len(rows):
                assert box_err.max() <= BOX_TOL, f"{name} {direction}: box off by {box_err.max():.3g} of the image"
                assert score_err.max() <= SCORE_TOL, f"{name} {direction}: score off by {score_err.max():.3g}"
    assert strong_total >= len(blobs), "too few confident detections: not the trained model?"


def test_build_writes_model_dali_and_a_dali_config(demo_onnx, tmp_path, capsys):
    from tdet.client.cli import main
    from tdet.ensembles.configs import read_config

    out = tmp_path / "repo"
    assert main(["repo", "build", "--onnx", str(demo_onnx["damo-yolo-t"]), "--out", str(out), "--name", "m",
                 "--preprocess", "dali", "--max-batch-size", "8"]) == 0
    printed = capsys.readouterr().out
    assert "DALI backend" in printed and "cannot serve" in printed
    pre = out / "m_preprocess"
    assert sorted(p.name for p in (pre / "1").iterdir()) == ["model.dali"], "no python model beside the pipeline"
    serialized = (pre / "1" / "model.dali").read_bytes()
    assert b"decoders__Image" in serialized and b"mixed" in serialized, "the GPU (nvJPEG) decode is serialised"
    cfg = read_config(pre / "config.pbtxt")  # Triton's own schema (tritonclient's model_config_pb2)
    from tritonclient.grpc import model_config_pb2 as mc

    assert cfg.backend == "dali" and cfg.default_model_filename == "model.dali" and cfg.max_batch_size == 8
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("IMAGE", mc.TYPE_UINT8, [-1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [
        (DALI_OUTPUTS[0], mc.TYPE_UINT8, [3, 320, 320]), (DALI_OUTPUTS[1], mc.TYPE_INT32, [2])]
    assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    eng = read_config(out / "m_engine" / "config.pbtxt")
    assert [(i.name, i.data_type, list(i.dims)) for i in eng.input] == [(o.name, o.data_type, list(o.dims))
                                                                          for o in cfg.output[:1]]
    ens = read_config(out / "m" / "config.pbtxt")
    assert [(i.name, i.data_type, list(i.dims)) for i in ens.input] == [("IMAGE", mc.TYPE_UINT8, [-1])]
    assert ens.parameters["preprocess"].string_value == "dali"
    assert ens.parameters["dali_version"].string_value == dali.__version__  # the release that serialised it
    step = ens.ensemble_scheduling.step[0]
    assert step.model_name == "m_preprocess" and dict(step.output_map) == {"images": "images", "orig_hw": "orig_hw"}

    # the pip tritonserver has no DALI backend: one clear line, exit 2, no server started
    assert main(["serve", "--repository", str(out), "--http-port", "0", "--grpc-port", "0",
                 "--metrics-port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "m_preprocess use Triton's DALI backend" in err, err


def test_dali_refuses_jpeg_scale_before_writing(demo_onnx, tmp_path, capsys):
    from tdet.client.cli import main

    out = tmp_path / "repo"
    assert main(["repo", "build", "--onnx", str(demo_onnx["damo-yolo-t"]), "--out", str(out), "--preprocess", "dali",
                 "--jpeg-scale", "auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--jpeg-scale auto is the python preprocess's" in err, err
    assert not out.exists() or not any(out.iterdir())


def test_build_without_dali_is_one_line_and_writes_nothing(demo_onnx, tmp_path, capsys, monkeypatch):
    """Where the dali extra is not installed (an import of nvidia.dali fails), --preprocess dali says how to get it."""
    import sys

    from tdet.client.cli import main

    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # what `import nvidia.dali` raises ImportError for
    out = tmp_path / "repo"
    assert main(["repo", "build", "--onnx", str(demo_onnx["damo-yolo-t"]), "--out", str(out),
                 "--preprocess", "dali"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--preprocess dali needs nvidia-dali" in err and "pip install" in err, err
    assert not out.exists()
