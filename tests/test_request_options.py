"""Per-request detection options (conf, iou, max_det, classes, clip) as Triton request parameters, read by
the served postprocess of both families over gRPC and HTTP, against the session server. Expected results
are derived from the same server's default answer (the options only select from it), never hard-coded."""

from __future__ import annotations

import re

import numpy as np
import pytest
from matching import assert_same_detections

from tdet.client import preprocess as pp
from tdet.client.boxes import box_iou
from tdet.client.errors import InvalidInputError
from tdet.client.options import DetectOptions, InvalidParameterError, resolve, to_parameters
from tdet.client.triton import connect

pytestmark = pytest.mark.server

MODELS = ("damo_yolo_t", "rtdetrv2_s")


def _same(a, b, scale: float, what: str) -> None:
    assert_same_detections((a.boxes, a.scores, a.category_ids), (b.boxes, b.scores, b.category_ids), scale=scale,
                           box_tol=1e-5, score_tol=1e-6, what=what)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("model", MODELS)
def test_request_options_select_from_the_default_answer(served, images, model, protocol):
    data = images["wide.jpg"]
    w, h = pp.image_size(data)
    url = served.grpc_url if protocol == "grpc" else served.http_url
    with connect(url, model, protocol) as det:
        base = det.infer(data)  # the config defaults (conf 0.05, K = 100)
        assert len(base) > 20, "too few detections for the test to mean anything"
        scores = np.sort(base.scores)
        conf = float((scores[len(scores) // 3] + scores[len(scores) // 3 + 1]) / 2)  # between two scores
        got = det.infer(data, conf=conf)
        _same(got, base[base.scores > conf], max(w, h), f"{model} conf={conf}")
        assert 0 < len(got) < len(base)

        top5 = det.infer(data, max_det=5)
        _same(top5, base[:5], max(w, h), f"{model} max_det=5")

        wanted = int(base.category_ids[0])
        only = det.infer(data, classes=[wanted])
        assert len(only) > 0 and set(only.category_ids.tolist()) == {wanted}
        # the filter runs before top-K / NMS: every default detection of that class is among them
        _same(only[: int((base.category_ids == wanted).sum())], base.filter(classes=[wanted]), max(w, h),
              f"{model} classes")
        by_name = det.infer(data, classes=[det.class_names[wanted]])
        _same(by_name, only, max(w, h), f"{model} class by name")

        clipped = det.infer(data, clip=True)
        assert (base.boxes.min() < 0 or base.boxes[:, [0, 2]].max() > w or base.boxes[:, [1, 3]].max() > h), \
            "no box crosses the image border: clipping would prove nothing"
        want = base.boxes.copy()
        want[:, [0, 2]] = want[:, [0, 2]].clip(0, w)
        want[:, [1, 3]] = want[:, [1, 3]].clip(0, h)
        np.testing.assert_allclose(clipped.boxes, want, rtol=0, atol=1e-5 * max(w, h))
        np.testing.assert_array_equal(clipped.scores, base.scores)


def _max_same_class_iou(dets) -> float:
    out = 0.0
    for cid in set(dets.category_ids.tolist()):
        boxes = dets.filter(classes=[cid]).boxes
        out = max(out, float((box_iou(boxes, boxes) - np.eye(len(boxes))).max(initial=0.0)))
    return out


def test_iou_is_damo_yolo_nms_per_request(served, images):
    with connect(served.grpc_url, "damo_yolo_t") as det:
        loose = det.infer(images["wide.jpg"], iou=0.95)
        tight = det.infer(images["wide.jpg"], iou=0.3)
    assert _max_same_class_iou(loose) > 0.3, "no overlapping pair without NMS: the test would prove nothing"
    assert _max_same_class_iou(tight) <= 0.3 + 1e-6


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_request_parameters_are_the_clients_error(served, images, protocol):
    url = served.grpc_url if protocol == "grpc" else served.http_url
    with connect(url, "damo_yolo_t", protocol, retries=2) as det:
        for params, message in (({"conf": 1.5}, "conf=1.5 must be a number in [0, 1]"),
                                ({"max_det": 500}, "max_det=500 must be a number in [1, 100]"),
                                ({"classes": "1,999"}, "no category id(s) [999]"),
                                ({"clip": "maybe"}, "clip='maybe' must be true or false"),
                                ({"confidence": 0.3}, "unknown request parameter(s) ['confidence']"),
                                ({"track_thresh": 0.3}, "request parameter(s) ['track_thresh'] are the tracker's")):
            with pytest.raises(InvalidInputError, match=re.escape(message)) as err:
                det.infer_encoded([images["small.bmp"]], params)
            assert err.value.status in ("StatusCode.INVALID_ARGUMENT", "400")
        assert len(det.infer(images["small.bmp"])) > 0  # the server is fine afterwards


def test_resolve_reads_numbers_strings_and_booleans():
    """Request parameters arrive as JSON values (gRPC typed params, HTTP JSON): numbers, strings, booleans."""
    d = DetectOptions(conf=0.05, iou=0.7, max_det=100)
    ids = [1, 2, 3]
    assert resolve({}, d, max_k=100, category_ids=ids) == d
    assert resolve({"conf": "0.5", "max_det": 7.0, "clip": "true", "classes": "3, 1"}, d, max_k=100,
                   category_ids=ids) == DetectOptions(0.5, 0.7, 7, (3, 1), True)
    assert resolve({"classes": 2, "clip": False, "binary_data_output": True}, d, max_k=100,
                   category_ids=ids) == DetectOptions(0.05, 0.7, 100, (2,), False)
    assert resolve({"conf": 0.2, "track_thresh": 0.3, "frame_rate": 30}, d, max_k=100, category_ids=ids,
                   tracked=True) == DetectOptions(0.2, 0.7, 100)  # the tracker step after it reads those
    for bad in ({"max_det": 2.5}, {"conf": True}, {"iou": "nan"}, {"classes": ""}, {"classes": "a,b"},
                {"low_thresh": 0.1}):
        with pytest.raises(InvalidParameterError):
            resolve(bad, d, max_k=100, category_ids=ids)


def test_client_parameters_are_checked_as_the_server_checks_them():
    """The client sends what the server would read, and refuses what it would refuse, instead of truncating
    (int(2.5) == 2) or truthy-casting (bool("false") is True)."""
    assert to_parameters(conf=0.3, max_det="3", clip="false", classes=[3, 1]) == {
        "conf": 0.3, "max_det": 3, "clip": False, "classes": "3,1"}
    assert to_parameters() == {}
    for bad in ({"max_det": 2.5}, {"max_det": True}, {"conf": 1.5}, {"iou": float("nan")}, {"clip": "maybe"}):
        with pytest.raises(InvalidParameterError, match="request parameter"):
            to_parameters(**bad)
