"""`tdet repo build --nms engine` (ensembles/nms_graph.py): DAMO-YOLO's NMS as ONNX NonMaxSuppression in the
engine graph. Under ONNX Runtime the tail keeps what client.postprocess.batched_nms keeps (crowded, tied,
empty, batched inputs); served, the ensemble answers what the python-NMS ensemble answers, request options
included, and refuses the ones it cannot serve; RT-DETRv2 refuses the option."""

from __future__ import annotations

import re

import numpy as np
import pytest
from matching import assert_same_detections

from tdet.client.errors import InvalidInputError
from tdet.client.options import DetectOptions, InvalidParameterError
from tdet.client.pipeline import postprocess_rows
from tdet.client.postprocess import batched_nms
from tdet.client.specs import DAMO_YOLO
from tdet.ensembles.nms_graph import NMS_OUTPUTS, check_request, nms_rows, tail_model
from tdet.ensembles.ort_session import ort_session

N, C = 240, 4  # candidates x classes of the synthetic graph
BUILT = DetectOptions(conf=0.05, iou=0.5, max_det=30)


def _tail_session(detect: DetectOptions):
    """ORT session of the NMS tail alone (inputs s_in, b_in)."""
    return ort_session(tail_model(N, C, detect).SerializeToString(), threads=1)


def _batch(seed: int, *, ties: bool):
    """B=3 images of crowded boxes (many same-class overlaps); ties: scores on a 1/16 grid (many equal);
    image 1 is empty (no score above conf)."""
    rng = np.random.default_rng(seed)
    scores = rng.random((3, N, C), dtype=np.float32) ** 3
    if ties:
        scores = np.round(scores * 16) / 16
    scores[1] = 0.01
    xy = rng.random((3, N, 2), dtype=np.float32) * 60  # 240 boxes of 5..35 px in 95 px: crowded
    wh = rng.random((3, N, 2), dtype=np.float32) * 30 + 5
    return scores.astype(np.float32), np.concatenate([xy, xy + wh], -1).astype(np.float32)


@pytest.mark.parametrize("ties", [False, True])
def test_the_tail_keeps_what_batched_nms_keeps_in_its_order(ties):
    sess = _tail_session(BUILT)
    for seed in range(3):
        scores, boxes = _batch(seed, ties=ties)
        num, det_boxes, det_scores, det_labels = sess.run(list(NMS_OUTPUTS), {"s_in": scores, "b_in": boxes})
        assert num.shape == (3, 1) and int(num[1, 0]) == 0, "the empty image keeps nothing"
        for b in range(3):
            idx, labels = np.nonzero(scores[b] > BUILT.conf)
            keep = batched_nms(boxes[b][idx], scores[b][idx, labels], labels, BUILT.iou)  # by score, all kept
            rank = np.array([np.sum(labels[keep[:i]] == labels[keep[i]]) for i in range(len(keep))], int)
            capped = bool((rank >= BUILT.max_det).any())
            keep = keep[rank < BUILT.max_det]  # at most max_det per class, as NonMaxSuppression
            k = int(num[b, 0])
            assert k == len(keep), f"seed {seed} image {b}: {k} kept vs {len(keep)}"
            assert capped or b == 1, "no class reached max_det: the per-class cap would be untested"
            # the same boxes, scores and labels in the same order, bit for bit (ties included)
            np.testing.assert_array_equal(det_labels[b, :k], labels[keep])
            np.testing.assert_array_equal(det_scores[b, :k], scores[b][idx[keep], labels[keep]])
            np.testing.assert_array_equal(det_boxes[b, :k], boxes[b][idx[keep]])
            assert not det_scores[b, k:].any(), "rows past num_dets are padding"


@pytest.mark.parametrize("opts", [BUILT, DetectOptions(conf=0.3, iou=0.5, max_det=30),
                                  DetectOptions(conf=0.05, iou=0.5, max_det=7),
                                  DetectOptions(conf=0.05, iou=0.5, max_det=30, classes=(12, 40), clip=True)],
                         ids=["defaults", "conf", "max_det", "classes+clip"])
def test_engine_nms_rows_equal_the_python_postprocess(opts):
    """The postprocess of the tail's outputs (filter, prefix, box mapping) = the python NMS postprocess, per
    request option the engine NMS can serve exactly."""
    sess = _tail_session(BUILT)
    ids = np.asarray([1, 12, 40, 90], np.int32)
    scores, boxes = _batch(5, ties=True)
    sizes = np.asarray([[480, 640], [100, 100], [90, 200]], np.int32)
    kept = sess.run(list(NMS_OUTPUTS), {"s_in": scores, "b_in": boxes})
    got = nms_rows(kept, sizes, ids, opts, input_hw=(96, 96), pad_to=BUILT.max_det)
    want = postprocess_rows(DAMO_YOLO, [scores, boxes], sizes, ids, opts, input_hw=(96, 96), pad_to=BUILT.max_det)
    for b in range(3):
        n = int(want[0][b, 0])
        assert int(got[0][b, 0]) == n
        assert_same_detections((got[1][b, :n], got[2][b, :n], got[3][b, :n]),
                               (want[1][b, :n], want[2][b, :n], want[3][b, :n]), scale=640.0, box_tol=0,
                               score_tol=0, what=f"image {b}")


def test_requests_the_engine_nms_cannot_serve_are_refused():
    check_request(DetectOptions(conf=0.5, iou=0.5, max_det=3, classes=(1,)), BUILT)  # a filter of the kept set
    with pytest.raises(InvalidParameterError, match=r"iou=0\.3: this model runs NMS in the engine at the build's"):
        check_request(DetectOptions(conf=0.05, iou=0.3, max_det=30), BUILT)
    with pytest.raises(InvalidParameterError, match=r"conf=0\.01: below the build's 0\.05"):
        check_request(DetectOptions(conf=0.01, iou=0.5, max_det=30), BUILT)


def test_rtdetrv2_refuses_nms_engine_before_writing(exported, tmp_path, capsys):
    from tdet.client.cli import main

    out = tmp_path / "repo"
    args = ["repo", "build", "--onnx", str(exported["damo-yolo-t"]), str(exported["rtdetrv2-s"]), "--out", str(out),
            "--nms", "engine"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--nms engine: rtdetrv2 has no NMS" in err
    assert not any(out.glob("*/config.pbtxt")), "nothing is written when one file is refused"


@pytest.fixture(scope="module")
def nms_model(served):
    """damo_yolo_t built again with --nms engine into the session repository and loaded: its name."""
    import tritonclient.grpc as grpcclient

    from tdet.ensembles.builder import build_repository
    from tdet.ensembles.configs import BuildOptions, read_config

    name = "damo_yolo_t_nms"
    build_repository([served.onnx["damo-yolo-t"]], served.repository, BuildOptions(nms="engine"), name=name)
    post = read_config(served.repository / f"{name}_postprocess" / "config.pbtxt")
    eng = read_config(served.repository / f"{name}_engine" / "config.pbtxt")
    assert post.parameters["nms"].string_value == "engine"  # recorded in the generated config
    assert [i.name for i in eng.output] == list(NMS_OUTPUTS) == [i.name for i in post.input][:4]
    admin = grpcclient.InferenceServerClient(served.grpc_url)
    admin.load_model(name)
    try:
        yield name
    finally:
        admin.unload_model(name, unload_dependents=True)


@pytest.mark.server
def test_served_engine_nms_answers_what_the_python_nms_answers(served, images, nms_model):
    from tdet.client.triton import connect

    data = [images[k] for k in ("wide.jpg", "tall.png", "square.jpg", "small.bmp")]
    with connect(served.grpc_url, "damo_yolo_t") as ref, connect(served.grpc_url, nms_model) as det:
        base = ref.infer_encoded(data, {})
        wanted = f"{base[0].category_ids[0]},{base[0].category_ids[-1]}"  # classes the model does detect
        for params in ({}, {"conf": 0.2}, {"max_det": 5}, {"classes": wanted, "clip": True}, {"conf": 0.999}):
            want = ref.infer_encoded(data, params)  # one request, batch 4
            got = det.infer_encoded(data, params)
            for i, (g, w) in enumerate(zip(got, want)):
                assert_same_detections((g.boxes, g.scores, g.category_ids), (w.boxes, w.scores, w.category_ids),
                                       scale=1280.0, box_tol=1e-5, score_tol=1e-6, what=f"{params} image {i}")
            assert sum(len(w) for w in want) > 0 or params == {"conf": 0.999}
        assert len(want[0]) == 0, "conf 0.999: the empty answer"
        for params, message in (({"iou": 0.3}, "iou=0.3: this model runs NMS in the engine"),
                                ({"conf": 0.01}, "conf=0.01: below the build's 0.05")):
            with pytest.raises(InvalidInputError, match=re.escape(message)) as err:
                det.infer_encoded(data[:1], params)
            assert err.value.status == "StatusCode.INVALID_ARGUMENT"


def test_versions_of_one_name_share_the_nms_mode(exported, tmp_path):
    """The postprocess is shared by an engine's versions: one built with --nms engine beside a python-NMS one
    would feed it the wrong tensors, so that needs --name or --replace."""
    from tdet.client.errors import UserError
    from tdet.ensembles.builder import build_repository
    from tdet.ensembles.configs import BuildOptions, read_config

    onnx = exported["damo-yolo-t"]
    build_repository([onnx], tmp_path, BuildOptions(), name="m")
    with pytest.raises(UserError, match="holds a model with another nms"):
        build_repository([onnx], tmp_path, BuildOptions(nms="engine"), name="m", version=2)
    build_repository([onnx], tmp_path, BuildOptions(nms="engine"), name="m", version=2, replace=True)
    assert read_config(tmp_path / "m" / "config.pbtxt").parameters["nms"].string_value == "engine"
    assert sorted(p.name for p in (tmp_path / "m_engine").iterdir() if p.is_dir()) == ["2"]


@pytest.mark.parametrize("changes", [{}, {"preprocess_instances": 1, "engine_instances": 2, "postprocess_instances": 2,
                                          "ort_threads": 1, "queue_delay_us": 0}], ids=["defaults", "changed"])
def test_generated_configs_carry_instances_threads_and_delays(exported, tmp_path, changes):
    """Issue 17.5: what `tdet repo build` chose per step (instances, ORT threads, batching delay) is in the
    generated config.pbtxt files, where Triton (and a reader) finds it."""
    from tdet.ensembles.builder import build_repository
    from tdet.ensembles.configs import BuildOptions, read_config

    opts = BuildOptions(**changes)
    build_repository([exported["damo-yolo-t"]], tmp_path, opts, name="m")
    for step, count in (("preprocess", opts.preprocess_instances), ("engine", opts.engine_instances),
                        ("postprocess", opts.postprocess_instances)):
        cfg = read_config(tmp_path / f"m_{step}" / "config.pbtxt")
        assert [g.count for g in cfg.instance_group] == [count], step
        assert cfg.dynamic_batching.max_queue_delay_microseconds == opts.queue_delay_us, step
    eng = read_config(tmp_path / "m_engine" / "config.pbtxt")
    assert eng.parameters["intra_op_thread_count"].string_value == str(opts.ort_threads)
    assert eng.parameters["inter_op_thread_count"].string_value == "1"
