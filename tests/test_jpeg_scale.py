"""`--jpeg-scale auto`: libjpeg-turbo's DCT-domain reduced decode in the preprocess (off by default: exact)."""

import io
import subprocess
import sys
from dataclasses import replace

import cv2
import numpy as np
import pytest
from PIL import Image

from tdet.client import preprocess as pp
from tdet.client.errors import UserError
from tdet.client.options import DetectOptions
from tdet.client.pipeline import preprocess_image
from tdet.client.specs import JPEG_SCALES, PREPROCESS, preprocess_spec, spec_from_parameters
from tdet.client.synth import synthesize

SIZES_HW = ((320, 320), (256, 256), (640, 640), (320, 480))


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> dict[str, bytes]:
    """Real-content JPEGs (the synthetic val split) at sizes where each reduction applies: 1/2 for 1280x720
    to 320 or 256, 1/4 for 2560x1440 to 320, none for 640x480."""
    root = tmp_path_factory.mktemp("val")
    synthesize(root, 3, seed=0, split="val")
    out = {}
    for path, wh in zip(sorted((root / "images").glob("*.jpg")), ((1280, 720), (2560, 1440), (640, 480))):
        img = cv2.resize(cv2.imread(str(path)), wh, interpolation=cv2.INTER_LINEAR)
        out[f"{wh[0]}x{wh[1]}"] = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    return out


def _exact(data: bytes, spec) -> np.ndarray:
    """The preprocess as it was before the option: every pixel decoded, then the family's resize (RGB, CHW)."""
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return pp.to_chw(pp.resize_rgb(rgb, spec))


def test_off_is_the_default_and_leaves_the_output_unchanged(frames):
    for family, base in PREPROCESS.items():
        assert base.jpeg_scale == "off"
        for hw in SIZES_HW:
            spec = preprocess_spec(family, hw)
            for data in frames.values():
                out, orig = preprocess_image(data, spec)
                np.testing.assert_array_equal(out, _exact(data, spec))
                np.testing.assert_array_equal(preprocess_image(data, replace(spec, jpeg_scale="off"))[0], out)
                assert orig == cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2]


def test_auto_is_close_to_the_exact_output(frames):
    """Tolerance: the reduced decode is a box-filtered (DCT-domain) image, the exact path resizes the full one,
    so pixels differ at edges by up to tens of levels while the image content is the same. The bounds: mean
    absolute difference <= 3 of 255 levels and 99th percentile <= 16 (measured over 12 val images at 1280x720
    and 2560x1440, both families, inputs 256-640: mean 0.1-2.0, p99 1-9); a wrong reduction (a shifted,
    flipped or mis-sized image) gives means of 20+."""
    checked = 0
    for family in PREPROCESS:
        for hw in SIZES_HW:
            exact_spec = preprocess_spec(family, hw)
            auto_spec = replace(exact_spec, jpeg_scale="auto")
            for name, data in frames.items():
                out, orig = preprocess_image(data, auto_spec)
                ref, ref_orig = preprocess_image(data, exact_spec)
                assert orig == ref_orig and out.shape == ref.shape and out.dtype == np.uint8
                diff = np.abs(out.astype(np.int16) - ref.astype(np.int16))
                assert diff.mean() <= 3, (family, hw, name, diff.mean())
                assert np.percentile(diff, 99) <= 16, (family, hw, name, np.percentile(diff, 99))
                checked += int(pp.jpeg_reduction(*map(int, name.split("x")), hw) > 1)
    assert checked >= 8  # the reduced decode really ran (1/2 and 1/4 cases), not only the exact fallback


@pytest.mark.parametrize("wh", [(1280, 720), (2560, 1440), (1281, 721), (641, 639), (4000, 3000), (100, 5000)])
@pytest.mark.parametrize("hw", SIZES_HW)
def test_the_reduction_never_makes_the_image_smaller_than_the_model_input(wh, hw):
    r = pp.jpeg_reduction(*wh, hw)
    assert r in (1, 2, 4)
    if r > 1:  # r = 1: decoded as it is (an image below the input is upscaled by the resize, as before)
        assert -(-wh[0] // r) >= hw[1] and -(-wh[1] // r) >= hw[0]
    if r < 4:  # the largest that fits: the next one would go below the input
        nxt = 2 * r
        assert -(-wh[0] // nxt) < hw[1] or -(-wh[1] // nxt) < hw[0]


def test_decoded_size_and_exif_rotation_with_auto():
    """The decode really comes back at >= the input on both displayed sides (portrait EXIF 6 included, where
    stored width and height swap), and the original size reported is the full displayed one."""
    rng = np.random.default_rng(1)
    stored = cv2.resize(rng.integers(0, 255, (9, 16, 3), dtype=np.uint8), (2000, 700), interpolation=cv2.INTER_CUBIC)
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed 700 wide, 2000 high
    Image.fromarray(stored).save(buf, "JPEG", quality=92, exif=exif)
    data = buf.getvalue()
    for hw in SIZES_HW:
        bgr, orig = pp.decode_checked(data, at_least_hw=hw)
        assert orig == (2000, 700)
        assert bgr.shape[0] >= hw[0] and bgr.shape[1] >= hw[1]
        r = pp.jpeg_reduction(700, 2000, hw)
        assert bgr.shape[:2] == (-(-2000 // r), -(-700 // r))
        out, size = preprocess_image(data, replace(preprocess_spec("damo-yolo", hw), jpeg_scale="auto"))
        assert size == (2000, 700) and out.shape == (3, *hw)


def test_non_jpeg_inputs_stay_exact_with_auto(frames):
    png = cv2.imencode(".png", cv2.imdecode(np.frombuffer(frames["1280x720"], np.uint8), cv2.IMREAD_COLOR))[1]
    for family in PREPROCESS:
        spec = preprocess_spec(family, (320, 320))
        np.testing.assert_array_equal(preprocess_image(png.tobytes(), replace(spec, jpeg_scale="auto"))[0],
                                      preprocess_image(png.tobytes(), spec)[0])


def test_the_config_parameter_round_trips_and_bad_values_are_rejected(tmp_path):
    from tdet.ensembles.builder import build_repository
    from tdet.ensembles.configs import BuildOptions, preprocess_config

    assert JPEG_SCALES == ("off", "auto")
    for value in JPEG_SCALES:
        cfg = preprocess_config("m_preprocess", "damo-yolo", (320, 320), BuildOptions(jpeg_scale=value), 1000, None)
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        assert params["jpeg_scale"] == value and spec_from_parameters(params).jpeg_scale == value
    params.pop("jpeg_scale")
    assert spec_from_parameters(params).jpeg_scale == "off"  # repositories built before the option
    with pytest.raises(ValueError, match="unknown jpeg_scale 'half'"):
        spec_from_parameters({**params, "jpeg_scale": "half"})
    with pytest.raises(UserError, match="--jpeg-scale 'half': use off or auto"):
        build_repository([tmp_path / "none.onnx"], tmp_path / "repo", BuildOptions(jpeg_scale="half"))


def test_cli_rejects_a_bad_jpeg_scale_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tdet.client.cli", "repo", "build", "--onnx", str(tmp_path / "x.onnx"),
                           "--out", str(tmp_path / "repo"), "--jpeg-scale", "half"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--jpeg-scale: invalid choice: 'half'" in proc.stderr


@pytest.mark.server
def test_served_auto_preprocess_is_the_in_process_auto_pipeline(served, exported, frames):
    """A model built with --jpeg-scale auto serves exactly what the in-process pipeline with the same spec
    gives (the config parameter reaches the Triton preprocess), on a 2560x1440 JPEG (reduced 1/2 at 640)."""
    import onnx
    import tritonclient.grpc as grpcclient
    from matching import assert_same_detections

    from tdet.client.pipeline import postprocess_rows, preprocess_rows
    from tdet.client.specs import EXPORT_INPUT
    from tdet.client.triton import connect
    from tdet.ensembles.builder import build_repository
    from tdet.ensembles.configs import BuildOptions, read_config
    from tdet.ensembles.onnx_info import read_onnx_info
    from tdet.ensembles.ort_session import ort_session

    name = "damo_yolo_t_jpeg_auto"
    build_repository([exported["damo-yolo-t"]], served.repository, BuildOptions(jpeg_scale="auto"), name=name)
    cfg = read_config(served.repository / f"{name}_preprocess" / "config.pbtxt")
    assert cfg.parameters["jpeg_scale"].string_value == "auto"
    admin = grpcclient.InferenceServerClient(served.grpc_url)
    admin.load_model(name)
    data = frames["2560x1440"]
    try:
        with connect(served.grpc_url, name) as client:
            got = client.infer(data)
    finally:
        admin.unload_model(name, unload_dependents=True)
    info = read_onnx_info(onnx.load(str(exported["damo-yolo-t"])))
    spec = replace(preprocess_spec(info.family, info.input_hw), jpeg_scale="auto")
    assert pp.jpeg_reduction(2560, 1440, spec.size_hw) == 2
    x, sizes = preprocess_rows([data], spec)
    sess = ort_session(served.repository / f"{name}_engine" / "1" / "model.onnx", threads=2, inter_threads=1)
    num, boxes, scores, classes = postprocess_rows(
        info.family, sess.run(None, {EXPORT_INPUT: x}), sizes, np.asarray(info.category_ids, np.int32),
        DetectOptions(conf=0.05, iou=0.7, max_det=100), input_hw=info.input_hw)
    n = int(num[0][0])
    assert n == len(got.scores) > 0
    assert_same_detections((got.boxes, got.scores, got.category_ids), (boxes[0][:n], scores[0][:n], classes[0][:n]),
                           scale=2560, box_tol=1e-5, score_tol=1e-5, what="served vs in-process, jpeg_scale auto")
