"""Server-side tracking: `tdet repo build --track` -> `<m>_track` (pre -> engine -> post -> ByteTrack per
sequence id), served by a real tritonserver; and ByteTrack itself (tdet.client.bytetrack)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from tdet.client.bytetrack import ByteTracker, ByteTrackParams, KalmanFilter, iou_matrix, xyxy_to_xyah
from tdet.client.synth_video import synthesize_video

FRAMES = 12
PARAMS = {"conf": 0.05, "track_thresh": 0.1, "low_thresh": 0.02}  # low: many tracks, both associations


def _clip(seed: int) -> list[bytes]:
    """JPEG frames of bright shapes moving linearly over a blocky background."""
    rng = np.random.default_rng(seed)
    bg = cv2.resize(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), (320, 240), interpolation=cv2.INTER_NEAREST)
    starts, vel = rng.uniform(30, 200, (4, 2)), rng.uniform(-6, 6, (4, 2))
    frames = []
    for f in range(FRAMES):
        img = bg.copy()
        for (x, y), (vx, vy), c in zip(starts, vel, rng.integers(0, 255, (4, 3))):
            cv2.circle(img, (int(x + vx * f), int(y + vy * f)), 22, tuple(int(v) for v in c), -1)
        frames.append(cv2.imencode(".jpg", img)[1].tobytes())
    return frames


# short, for the eviction test, yet above a frame's latency through the ensemble on a loaded 2-core CPU (at
# 1.5 s, two streams at once were evicted mid-clip there)
IDLE_US = 4_000_000


def _send(client, model, frame, cid, start, end, params=PARAMS):
    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[frame]], dtype=np.object_))
    res = client.infer(model, [inp], sequence_id=cid, sequence_start=start, sequence_end=end, parameters=params)
    n = int(res.as_numpy("NUM_DETECTIONS")[0, 0])
    return res.as_numpy("TRACK_IDS")[0, :n].tolist(), res.as_numpy("BOXES")[0, :n]


def _stream(url, model, frames, cid, out, pause=0.0):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    for i, f in enumerate(frames):
        out.append(_send(client, model, f, cid, i == 0, i == len(frames) - 1)[0])
        time.sleep(pause)


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory):
    """The model the project trained (training/demo/damo-yolo-t.pth) exported: it detects the synthetic shapes,
    so its tracks follow objects (random weights would give a few still boxes)."""
    pytest.importorskip("torch")
    from tdet.client.demo import DEMO_DIR
    from tdet.training.export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "damo-yolo-t.onnx"
    return export_onnx("damo-yolo-t", out, weights=DEMO_DIR / "damo-yolo-t.pth").path


@pytest.fixture(scope="module")
def track_server(demo_onnx, tmp_path_factory):
    from tdet.ensembles.builder import build_repository
    from tdet.ensembles.server import free_port, start, stop_process

    repo = tmp_path_factory.mktemp("track") / "model_repository"
    build_repository([demo_onnx], repo, track=True, track_idle_us=IDLE_US)
    log = repo.parent / "tritonserver.log"
    proc, info = start(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), log=log,
                       timeout_s=240)
    try:
        yield info.grpc_url, repo
    finally:
        stop_process(proc.pid)
        proc.wait(timeout=30)


def test_build_track_writes_the_tracker_and_the_track_ensemble(track_server):
    from tdet.ensembles.configs import read_config

    _, repo = track_server
    ens = read_config(repo / "damo_yolo_t_track" / "config.pbtxt")
    assert [s.model_name for s in ens.ensemble_scheduling.step][-1] == "damo_yolo_t_tracker"
    assert "TRACK_IDS" in [o.name for o in ens.output]
    assert read_config(repo / "damo_yolo_t_tracker" / "config.pbtxt").sequence_batching.oldest.max_candidate_sequences


def test_two_streams_at_once_keep_their_own_tracks(track_server):
    url, _ = track_server
    a, b = _clip(1), _clip(2)
    alone_a, alone_b = [], []
    _stream(url, "damo_yolo_t_track", a, 101, alone_a)
    _stream(url, "damo_yolo_t_track", b, 102, alone_b)
    assert any(alone_a) and any(alone_b), "the model detected nothing: the test clip is too hard"
    both_a, both_b = [], []
    threads = [threading.Thread(target=_stream, args=(url, "damo_yolo_t_track", a, 201, both_a, 0.01)),
               threading.Thread(target=_stream, args=(url, "damo_yolo_t_track", b, 202, both_b, 0.01))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert both_a == alone_a and both_b == alone_b


def test_idle_stream_is_evicted(track_server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    url, _ = track_server
    client = grpcclient.InferenceServerClient(url)
    frames = _clip(3)
    _send(client, "damo_yolo_t_track", frames[0], 303, True, False)
    _send(client, "damo_yolo_t_track", frames[1], 303, False, False)
    time.sleep(IDLE_US / 1e6 + 2.5)  # past max_sequence_idle_microseconds plus the batcher's reaper period
    with pytest.raises(InferenceServerException, match="START"):
        _send(client, "damo_yolo_t_track", frames[2], 303, False, False)
    ids, _ = _send(client, "damo_yolo_t_track", frames[2], 303, True, True)  # a restart is a fresh tracker
    assert ids == sorted(ids) and (not ids or ids[0] == 1)


def test_track_model_needs_a_sequence_id(track_server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    url, _ = track_server
    inp = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[_clip(4)[0]]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="sequence|correlation"):
        grpcclient.InferenceServerClient(url).infer("damo_yolo_t_track", [inp])


def test_bytetrack_keeps_ids_through_a_gap_and_a_low_score_frame():
    """Two boxes moving apart: ids stay through a low-score frame (the 2nd association) and a missed frame
    (the track buffer); a box appearing later gets a new id."""
    tr = ByteTracker(ByteTrackParams(track_buffer=5))
    seen = []
    for f in range(10):
        boxes = [[10 + 4 * f, 10, 50 + 4 * f, 50], [200 - 4 * f, 100, 240 - 4 * f, 140]]
        scores = [0.9, 0.3 if f == 4 else 0.9]
        if f == 6:
            boxes, scores = boxes[:1], scores[:1]
        if f >= 8:
            boxes, scores = [*boxes, [300, 300, 340, 340]], [*scores, 0.9]
        seen.append(tr.update(np.array(boxes), np.array(scores), np.zeros(len(scores)))[3].tolist())
    assert seen[0] == [1, 2] and all(sorted(s[:2]) == [1, 2] for s in seen[1:6]) and seen[6] == [1]
    assert sorted(seen[7]) == [1, 2] and sorted(seen[9]) == [1, 2, 3]


def test_kalman_update_of_many_tracks_at_once_equals_one_at_a_time():
    """The batched Kalman update (one 4x4 solve per track, all at once) gives each track what updating it alone
    gives, and pulls the state to the measurement."""
    kf, rng = KalmanFilter(), np.random.default_rng(0)
    xy = rng.uniform(0, 500, (6, 2))
    boxes = np.c_[xy, xy + rng.uniform(10, 80, (6, 2))]
    states = [kf.initiate(xyxy_to_xyah(b)) for b in boxes]
    mean, cov = kf.predict(np.stack([m for m, _ in states]), np.stack([c for _, c in states]))
    z = xyxy_to_xyah(boxes + rng.normal(0, 3, boxes.shape))
    m_all, c_all = kf.update(mean, cov, z)
    for i in range(len(boxes)):
        m_one, c_one = kf.update(mean[i:i + 1], cov[i:i + 1], z[i:i + 1])
        np.testing.assert_allclose(m_all[i], m_one[0], rtol=1e-9, atol=1e-9 * np.abs(m_one).max())
        np.testing.assert_allclose(c_all[i], c_one[0], rtol=1e-9, atol=1e-9 * np.abs(c_one).max())
    assert (np.abs(m_all[:, :4] - z) < np.abs(mean[:, :4] - z)).all()


def test_mot_metrics_score_a_perfect_and_a_swapped_track(tmp_path):
    """py-motmetrics on a tiny clip: tracks equal to the ground truth score MOTA = IDF1 = 1; swapping the ids
    halfway costs ID switches and IDF1."""
    pytest.importorskip("motmetrics")
    from tdet.client.mot_eval import mot_metrics

    gt = [(f + 1, i, 10 + 5 * f + 100 * i, 20, 30, 40) for f in range(10) for i in (1, 2)]
    (tmp_path / "gt.txt").write_text("".join(f"{f},{i},{x},{y},{w},{h},1,1,1\n" for f, i, x, y, w, h in gt))
    (tmp_path / "same.txt").write_text("".join(f"{f},{i},{x},{y},{w},{h},1,-1,-1,-1\n" for f, i, x, y, w, h in gt))
    swap = {(f, i): i if f <= 5 else 3 - i for f, i, *_ in gt}  # ids 1 <-> 2 from frame 6 on
    lines = [json.dumps({"frame": f - 1, "detections": [{"box": [x, y, x + w, y + h], "track_id": swap[f, i]}
                                                        for ff, i, x, y, w, h in gt if ff == f]}) for f in range(1, 11)]
    (tmp_path / "swapped.jsonl").write_text("\n".join(lines) + "\n")
    same = mot_metrics(tmp_path / "gt.txt", tmp_path / "same.txt")
    assert same["mota"] == pytest.approx(1.0) and same["idf1"] == pytest.approx(1.0) and same["num_switches"] == 0
    swapped = mot_metrics(tmp_path / "gt.txt", tmp_path / "swapped.jsonl")
    assert swapped["num_switches"] == 2 and swapped["idf1"] == pytest.approx(0.5)


def _tdet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdet.client.cli", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def synth_clip(tmp_path_factory):
    """A tiny `tdet data synth --video` clip (MOTChallenge layout with gt/gt.txt)."""
    return synthesize_video(tmp_path_factory.mktemp("clip"), 1, seed=3, size=(320, 240), frames=FRAMES, fps=10)[0]


def _gt_boxes(clip) -> dict[int, list[tuple[int, list[float]]]]:
    """frame (from 0) -> [(ground-truth id, xyxy)]."""
    out: dict[int, list] = {}
    for line in (clip / "gt" / "gt.txt").read_text().splitlines():
        f, i, x, y, w, h = (float(v) for v in line.split(",")[:6])
        out.setdefault(int(f) - 1, []).append((int(i), [x, y, x + w, y + h]))
    return out


def _track_ids_per_object(clip, lines) -> dict[int, list[set[int]]]:
    """ground-truth id -> per frame where it is matched, the track ids of the boxes it pairs with (IoU >= 0.5,
    and it is those boxes' best ground truth). A set, not one id: class-aware NMS may keep a second box of
    another class on the same object (a second track), and which of the two overlaps it more is a float detail."""
    gt, out = _gt_boxes(clip), {}
    for rec in lines:
        dets, objects = rec["detections"], gt.get(rec["frame"], [])
        if not dets or not objects:
            continue
        iou = iou_matrix(np.array([b for _, b in objects]), np.array([d["box"] for d in dets]))
        for k, (obj, _) in enumerate(objects):
            ids = {dets[j]["track_id"] for j in range(len(dets)) if iou[k, j] >= 0.5 and iou[:, j].argmax() == k}
            if ids:
                out.setdefault(obj, []).append(ids)
    return out


def test_infer_video_through_the_track_ensemble(track_server, synth_clip, tmp_path):
    """`tdet infer CLIP --model <m>_track` against the real server (the tracker's default thresholds): one JSONL
    line per frame, every detection with a track id; each moving object keeps its track id (ground truth paired
    with the tracks by IoU), two objects never share one, and the summary is complete."""
    url, _ = track_server
    video = synth_clip / f"{synth_clip.name}.mp4"
    r = _tdet("infer", str(video), "--model", "damo_yolo_t_track", "--url", url, "--conf", "0.1",
              "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [json.loads(line) for line in (tmp_path / f"{synth_clip.name}.jsonl").read_text().splitlines()]
    assert [rec["frame"] for rec in lines] == list(range(FRAMES))
    assert all(isinstance(d["track_id"], int) and d["track_id"] > 0 for rec in lines for d in rec["detections"])
    followed = {obj: ids for obj, ids in _track_ids_per_object(synth_clip, lines).items() if len(ids) >= 3}
    assert max(map(len, followed.values()), default=0) >= FRAMES - 2, "no object was tracked through the clip"
    kept = {obj: set.intersection(*ids) for obj, ids in followed.items()}  # the ids present in all its frames
    assert all(kept.values()), followed  # each object has one track id from its first frame to its last
    assert all(not kept[a] & kept[b] for a in kept for b in kept if a < b), kept  # no id on two objects
    summary = json.loads((tmp_path / f"{synth_clip.name}.summary.json").read_text())
    assert summary["complete"] and not summary["error"] and summary["model"] == "damo_yolo_t_track"
    assert summary["frames"] == FRAMES and summary["corrupt"] == summary["failed"] == summary["dropped"] == 0
    assert (summary["width"], summary["height"]) == (320, 240) and summary["source_fps"] == pytest.approx(10)
    assert 0 < summary["latency_ms_p50"] <= summary["latency_ms_p99"] and summary["achieved_fps"] > 0


def test_infer_refuses_images_for_the_track_ensemble_before_sending_any(track_server, synth_clip, tmp_path):
    url, _ = track_server
    r = _tdet("infer", str(synth_clip / "img1"), "--model", "damo_yolo_t_track", "--url", url, "--out",
              str(tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "tracking (stateful) model" in r.stderr and "not images" in r.stderr
    assert not (tmp_path / "out" / "detections.json").exists()


def test_eval_mot_scores_a_clip_through_the_track_ensemble(track_server, synth_clip, tmp_path):
    """`tdet eval --mot CLIP`: the clip through <m>_track, scored against its gt.txt; the numbers are
    py-motmetrics' on the JSONL written, over every frame and ground-truth box of the clip."""
    pytest.importorskip("motmetrics")
    from tdet.client.mot_eval import mot_metrics

    url, _ = track_server
    r = _tdet("eval", "--model", "damo_yolo_t_track", "--url", url, "--mot", str(synth_clip), "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    saved = json.loads((tmp_path / "mot_metrics.json").read_text())
    m = saved["metrics"]
    assert m == pytest.approx(mot_metrics(synth_clip / "gt" / "gt.txt", tmp_path / f"{synth_clip.name}.jsonl"))
    gt_rows = (synth_clip / "gt" / "gt.txt").read_text().splitlines()
    assert m["num_frames"] == FRAMES and m["num_objects"] == len(gt_rows)
    assert 0 < m["idf1"] <= 1 and m["mota"] <= 1 and m["num_misses"] < len(gt_rows)
    assert f"MOTA {100 * m['mota']:.2f}" in r.stdout and f"IDF1 {100 * m['idf1']:.2f}" in r.stdout
    assert saved["run"]["complete"] and saved["run"]["frames"] == FRAMES


def test_eval_mot_bad_input(track_server, synth_clip, tmp_path, capsys):
    """A plain (untracked) model, a folder without ground truth, --mot mixed with COCO flags, COCO evaluation
    without --coco: one line each, exit 2."""
    from tdet.client.cli import main

    url, _ = track_server
    cases = [(["--model", "damo_yolo_t", "--mot", str(synth_clip)], "returns no TRACK_IDS"),
             (["--model", "damo_yolo_t_track", "--mot", str(tmp_path)], "no MOTChallenge ground truth"),
             (["--model", "damo_yolo_t_track", "--mot", str(synth_clip), "--coco", "x.json"], "--coco go with COCO"),
             (["--model", "damo_yolo_t_track", "--video", "x.mp4"], "--video goes with --mot"),
             (["--model", "damo_yolo_t_track"], "needs --coco and --images (or --mot GT")]
    for args, message in cases:
        assert main(["eval", "--url", url, "--out", str(tmp_path / "out"), *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
