"""Through tdet's client: each bad input raises InvalidInputError (INVALID_ARGUMENT / HTTP 400, never a
server fault) for that request only, the server stays READY, and the inputs that must work (grayscale/RGBA
PNG, rows of different images) do; a 1x1 image is refused clearly. The wire-level cases: test_fuzz.py."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from matching import assert_same_detections
from PIL import Image

from tdet.client.preprocess import MAX_PIXELS
from tdet.client.triton import InferenceError, InvalidInputError, connect

INVALID = {"grpc": "StatusCode.INVALID_ARGUMENT", "http": "400"}

pytestmark = pytest.mark.server


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG")
    return buf.getvalue()


def _bomb_png() -> bytes:
    """A real PNG over the pixel limit (8200x8200 gray = 67.2 MP > 64 MP) that compresses to ~70 kB."""
    return cv2.imencode(".png", np.zeros((8200, 8200), np.uint8))[1].tobytes()


@pytest.fixture(params=["grpc", "http"])
def client(request, served):
    url = served.grpc_url if request.param == "grpc" else served.http_url
    with connect(url, "damo_yolo_t", request.param) as c:
        yield c
    with grpcclient.InferenceServerClient(served.grpc_url) as check:
        assert check.is_server_ready(), "the server must stay READY after a bad request"
        assert all(check.is_model_ready(m) for m in served.models)


@pytest.mark.parametrize("case, message", [
    ("empty", "empty image: 0 bytes"),
    ("truncated", "corrupt or truncated"),
    ("text", "not a decodable image"),
    ("bomb", "image too large: 8200x8200"),
])
def test_bad_image_is_a_clear_error_for_that_request(client, images, case, message):
    data = {"empty": b"", "truncated": images["wide.jpg"][: len(images["wide.jpg"]) // 3],
            "text": b"GET / HTTP/1.1\r\nnot an image", "bomb": _bomb_png()}[case]
    assert case != "bomb" or 8200 * 8200 > MAX_PIXELS
    with pytest.raises(InvalidInputError, match=message) as err:
        client.infer(data)
    assert err.value.status == INVALID[client.protocol]
    assert len(client.infer(images["small.bmp"])) > 0  # the next request is served normally


def test_grayscale_and_rgba_png_work(client, images):
    # rtdetrv2_s: top-K without a threshold always returns boxes to compare (random-init DAMO may see none in gray)
    client = connect(client.url, "rtdetrv2_s", client.protocol)
    bgr = cv2.imdecode(np.frombuffer(images["tall.png"], np.uint8), cv2.IMREAD_COLOR)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    rgba = np.dstack([rgb, np.full(gray.shape, 77, np.uint8)])
    # same pixels, other encodings -> the same detections
    gray_dets, gray3_dets = client.infer(_png(gray, "L")), client.infer(_png(np.dstack([gray] * 3)))
    rgba_dets, rgb_dets = client.infer(_png(rgba, "RGBA")), client.infer(_png(rgb))
    assert len(gray3_dets) > 0 and len(rgb_dets) > 0
    for got, want in ((gray_dets, gray3_dets), (rgba_dets, rgb_dets)):
        assert_same_detections((got.boxes, got.scores, got.category_ids), (want.boxes, want.scores, want.category_ids),
                               scale=500, box_tol=1e-5, score_tol=1e-5, what="same pixels, other encoding")
    client.close()


def test_one_by_one_image_gets_a_clear_error_and_small_images_work(client):
    with pytest.raises(InvalidInputError, match="image too small: 1x1"):
        client.infer(_png(np.full((1, 1, 3), 200, np.uint8)))
    dets = client.infer(_png(np.full((8, 8, 3), 200, np.uint8)))  # the smallest accepted size
    assert dets.boxes.shape == (len(dets), 4) and np.isfinite(dets.boxes).all()


def test_a_bad_row_fails_only_its_request(client, images):
    with pytest.raises(InvalidInputError, match="row 1") as err:
        client.infer_batch([images["wide.jpg"], b"", images["tall.png"]])
    assert err.value.status == INVALID[client.protocol]
    ok = client.infer_batch([images["wide.jpg"], images["tall.png"]])
    assert [len(d) > 0 for d in ok] == [True, True]


def test_bad_requests_mixed_with_good_ones_in_flight(served, images):
    """Concurrent good and bad requests (batched together by Triton): only the bad ones fail."""
    from concurrent.futures import ThreadPoolExecutor

    with connect(served.grpc_url, "rtdetrv2_s") as c:
        def call(data: bytes):
            try:
                return len(c.infer(data))
            except InferenceError as err:
                assert isinstance(err, InvalidInputError), err  # a bad image is never a server fault
                return str(err)
        blobs = [images["square.jpg"], b"", images["small.bmp"], b"junk", images["wide.jpg"], b""]
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(call, blobs))
    assert results[0] == results[2] == results[4] == 100
    assert "empty image" in results[1] and "not a decodable" in results[3] and "empty image" in results[5]
