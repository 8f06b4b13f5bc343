"""Video in `tdet infer` (files, streams) and `tdet data synth --video`: a generated clip through a real
tritonserver gives an annotated video of the input's frame count, fps and size, one JSONL line per frame, and per
frame the detections `tdet infer` gives for the same frame sent as an image; the failures (unopenable source,
truncated file, corrupt frame, stream that dies) say what happened, keep the outputs valid and exit 1 only where
something was lost."""

from __future__ import annotations

import configparser
import http.server
import json
import math
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from tdet.client.synth import CATEGORY_IDS
from tdet.client.synth_video import synthesize_video
from tdet.client.video import is_live, is_video_source, source_name
from tests.matching import assert_same_detections

MODEL = "damo_yolo_t"
CONF = "0.01"  # the test models are random-init: a low threshold so that frames have detections to compare
QUALITY = 90


def _tdet(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdet.client.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _read_all(path: Path) -> tuple[list[np.ndarray], float, tuple[int, int], int]:
    """(frames, fps, (w, h), the container's frame count) as OpenCV decodes them."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    info = (cap.get(cv2.CAP_PROP_FPS), (int(cap.get(3)), int(cap.get(4))), int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
    cap.release()
    return frames, *info


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 2 s, 10 fps, 160x120 generated clip."""
    return synthesize_video(tmp_path_factory.mktemp("clips"), 1, seed=5, size=(160, 120), frames=20, fps=10)[0]


def _avi(frames: list[np.ndarray], path: Path, fps: float = 10) -> Path:
    """MJPEG in AVI: each frame its own JPEG, so one can be cut or corrupted on its own."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def _avi_frames(data: bytes) -> list[tuple[int, int]]:
    """(offset of the JPEG, its size) of every frame chunk of an MJPEG AVI."""
    out, i = [], data.find(b"movi")
    while (j := data.find(b"00dc", i + 4)) >= 0:
        size = struct.unpack("<I", data[j + 4:j + 8])[0]
        if data[j + 8:j + 10] == b"\xff\xd8":
            out.append((j + 8, size))
        i = j
    return out


def test_synth_video_writes_mot_ground_truth_coco_and_the_clip(tmp_path):
    clips = synthesize_video(tmp_path / "a", 3, seed=2, size=(160, 120), frames=24, fps=8)
    again = synthesize_video(tmp_path / "b", 1, seed=2, size=(160, 120), frames=24, fps=8)
    assert (clips[0] / "gt/gt.txt").read_bytes() == (again[0] / "gt/gt.txt").read_bytes()  # deterministic
    assert (clips[0] / "img1/000007.jpg").read_bytes() == (again[0] / "img1/000007.jpg").read_bytes()
    starts, ends, partly_hidden = [], [], []
    for clip in clips:
        seq = configparser.ConfigParser()
        seq.read(clip / "seqinfo.ini")
        assert dict(seq["Sequence"]) == {"name": clip.name, "imdir": "img1", "framerate": "8", "seqlength": "24",
                                         "imwidth": "160", "imheight": "120", "imext": ".jpg"}
        frames, fps, size, count = _read_all(clip / f"{clip.name}.mp4")
        assert (len(frames), count, fps, size) == (24, 24, 8, (160, 120))
        assert sorted(p.name for p in (clip / "img1").iterdir()) == [f"{i:06d}.jpg" for i in range(1, 25)]
        rows = np.loadtxt(clip / "gt/gt.txt", delimiter=",", ndmin=2)
        assert rows.shape[1] == 9 and set(rows[:, 6]) == {1} and set(rows[:, 7]) <= set(CATEGORY_IDS)
        assert (rows[:, 0] >= 1).all() and (rows[:, 0] <= 24).all() and (rows[:, 8] > 0).all()
        assert (rows[:, 2] >= 0).all() and (rows[:, 2] + rows[:, 4] <= 160).all()
        assert (rows[:, 3] >= 0).all() and (rows[:, 3] + rows[:, 5] <= 120).all()
        coco = COCO(str(clip / "annotations.json"))
        assert len(coco.imgs) == 24 and len(coco.anns) == len(rows)
        for a in coco.anns.values():  # the same boxes as gt.txt, frame by frame and track by track
            match = rows[(rows[:, 0] == a["image_id"]) & (rows[:, 1] == a["track_id"])]
            assert len(match) == 1 and np.allclose(match[0, 2:6], a["bbox"]) and match[0, 7] == a["category_id"]
        for track in set(rows[:, 1]):
            t = rows[rows[:, 1] == track]
            assert len(set(t[:, 7])) == 1  # an object keeps its class
            starts.append(t[:, 0].min())
            ends.append(t[:, 0].max())
            partly_hidden.append((t[:, 8] < 0.99).any())
            moved = np.abs(t[-1, 2:4] - t[0, 2:4]).max() if len(t) > 1 else 0
            assert len(t) == 1 or moved > 0 or (t[:, 8] < 1).any()
    assert min(starts) == 1 and max(starts) > 1  # objects present from the start and objects that come in
    assert max(ends) == 24 and min(ends) < 24  # objects that stay and objects that leave
    assert any(partly_hidden)  # occlusion (or objects cut by the border)


def test_video_sources_are_recognised():
    assert is_video_source("a/b.mp4") and is_video_source("x.MKV") and is_video_source("0")
    assert is_video_source("rtsp://cam/stream") and is_video_source("http://h/live.mjpg?x=1")
    assert not is_video_source("a.jpg") and not is_video_source("http://h/a.jpg")
    assert is_live("0") and is_live("rtsp://cam/s") and is_live("http://h/cam.mjpg") and not is_live("a.mp4")
    assert not is_live("http://h/clip.mp4")
    assert (source_name("v/clip.mp4"), source_name("0"), source_name("rtsp://h/live/cam1")) == \
        ("clip", "camera0", "cam1")


def _mp4_boxes(buf: bytes) -> list[list]:
    """An mp4's boxes as [type, body], the containers down to the sample table parsed into lists."""
    out, i = [], 0
    while i < len(buf):
        size, kind = struct.unpack(">I4s", buf[i:i + 8])
        body = buf[i + 8:i + size]
        out.append([kind, _mp4_boxes(body) if kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl") else body])
        i += size
    return out


def _mp4_bytes(boxes: list[list]) -> bytes:
    out = b""
    for kind, body in boxes:
        data = _mp4_bytes(body) if isinstance(body, list) else body
        out += struct.pack(">I4s", len(data) + 8, kind) + data
    return out


def _variable_frame_rate(src: Path, dst: Path, slow_from: int) -> Path:
    """The clip with its frames from `slow_from` on shown three times as long: the sample table's durations, and
    the movie's, track's and media's total durations (version-0 headers) stretched to match, the edit list gone."""
    count = 0

    def retime(boxes: list[list]) -> None:
        nonlocal count
        boxes[:] = [box for box in boxes if box[0] != b"edts"]
        for box in boxes:
            if box[0] == b"stts":
                (count, delta), = [struct.unpack(">II", box[1][8:16])]
                rows = [(slow_from, delta), (count - slow_from, 3 * delta)]
                box[1] = box[1][:4] + struct.pack(">I", 2) + b"".join(struct.pack(">II", *r) for r in rows)
            elif isinstance(box[1], list):
                retime(box[1])

    def stretch(boxes: list[list]) -> None:
        at = {b"mvhd": 16, b"tkhd": 20, b"mdhd": 16}  # where each header's 32-bit duration is
        for box in boxes:
            if box[0] in at:
                i = at[box[0]]
                old = struct.unpack(">I", box[1][i:i + 4])[0]
                box[1] = box[1][:i] + struct.pack(">I", old * (slow_from + 3 * (count - slow_from)) // count) + \
                    box[1][i + 4:]
            elif isinstance(box[1], list):
                stretch(box[1])

    boxes = _mp4_boxes(src.read_bytes())
    retime(boxes)
    stretch(boxes)
    dst.write_bytes(_mp4_bytes(boxes))
    return dst


def test_frame_times_are_the_files_timestamps_also_at_a_variable_frame_rate(clip, tmp_path):
    from tdet.client.video import VideoSource, select_frames

    def times(path: Path, **select: float) -> list[float]:
        src = VideoSource(str(path))
        try:
            return [f.time_s for f in select_frames(src.frames(), **select)]
        finally:
            src.close()

    cfr = times(clip / f"{clip.name}.mp4")
    assert np.allclose(cfr, np.arange(20) / 10, rtol=0, atol=1e-6)
    vfr = _variable_frame_rate(clip / f"{clip.name}.mp4", tmp_path / "vfr.mp4", slow_from=10)
    want = np.concatenate([np.arange(10) * 0.1, 1.0 + np.arange(10) * 0.3])
    assert np.allclose(times(vfr), want, rtol=0, atol=1e-6)
    assert np.allclose(times(vfr, start_s=0.95, end_s=2.0), [1.0, 1.3, 1.6, 1.9], rtol=0, atol=1e-6)


def test_several_sources_get_distinct_output_names(tmp_path):
    from tdet.client.video import video_names

    for rel in ("a/x.mp4", "a/x.avi", "b/x.mp4", "c/solo.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    files = [str(tmp_path / r) for r in ("a/x.mp4", "a/x.avi", "b/x.mp4")]
    assert video_names([*files, "rtsp://h1/live/stream", "rtsp://h2/stream", "0"]) == \
        ["a/x.mp4", "a/x.avi", "b/x", "stream", "stream_2", "camera0"]
    assert video_names([str(tmp_path / "c/solo.mp4")]) == ["solo"]  # one file: its stem, as before
    assert video_names([files[0], files[0]]) == ["x.mp4", "x.mp4_2"]


class _Typed(http.server.BaseHTTPRequestHandler):
    types = {"/video": "multipart/x-mixed-replace; boundary=frame", "/clip": "video/mp4", "/photo": "image/jpeg"}

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", self.types[self.path])
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"data")

    def log_message(self, *args: object) -> None:
        pass


def test_urls_without_a_suffix_are_told_apart_by_their_content_type():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Typed)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        assert is_video_source(f"{base}/video", probe=True) and is_live(f"{base}/video")  # an MJPEG camera
        assert is_video_source(f"{base}/clip", probe=True) and not is_live(f"{base}/clip")
        assert not is_video_source(f"{base}/photo", probe=True) and not is_video_source(f"{base}/video")
    finally:
        server.shutdown()
        server.server_close()
    assert not is_video_source(f"{base}/gone", probe=True)  # no answer: left to the image path, which reports it


def test_unopenable_sources_are_one_line_errors(tmp_path):
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 100)
    from tdet.ensembles.server import free_port

    for source, says in ((tmp_path / "missing.mp4", "no such file"), (tmp_path / "junk.mp4", "could not open"),
                         (f"rtsp://127.0.0.1:{free_port()}/cam", "could not open"), ("57", "no camera")):
        res = _tdet("infer", str(source), "--model", MODEL, "--url", f"127.0.0.1:{free_port()}", "--out",
                    str(tmp_path / "out"))
        assert res.returncode == 2, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr  # no FFmpeg / OpenCV log lines either
        line = res.stderr.strip()
        assert line.startswith("tdet infer: error: cannot open video") and str(source) in line and says in line
        assert "Traceback" not in res.stderr


def test_start_past_the_end_of_a_file_is_refused_before_any_request(clip, tmp_path):
    """--start beyond a 2 s clip (or a range between two frames) selects nothing: one line, exit 2, no outputs,
    instead of an exit-0 run that names an mp4 it never wrote."""
    from tdet.ensembles.server import free_port

    video = clip / f"{clip.name}.mp4"
    for flags in (["--start", "100"], ["--start", "0.51", "--end", "0.58"]):
        res = _tdet("infer", str(video), "--model", MODEL, "--url", f"127.0.0.1:{free_port()}", "--out",
                    str(tmp_path / "out"), *flags)
        assert res.returncode == 2, res.stderr
        assert res.stderr.strip() == (f"tdet infer: error: --start/--end select no frame of {video} "
                                      "(20 frames at 10 fps: 2.00 s)"), res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.server
def test_video_through_the_server_equals_its_frames_sent_as_images(served, clip, tmp_path):
    video = clip / f"{clip.name}.mp4"
    frames, fps, size, count = _read_all(video)
    out = tmp_path / "out"
    res = _tdet("infer", str(video), "--model", MODEL, "--url", served.grpc_url, "--out", str(out), "--conf", CONF,
                "--jpeg-quality", str(QUALITY), "--concurrency", "3")
    assert res.returncode == 0, res.stderr
    got, got_fps, got_size, got_count = _read_all(out / f"{clip.name}.mp4")
    assert (len(got), got_count, got_fps, got_size) == (len(frames), count, fps, size) == (20, 20, 10, (160, 120))
    lines = _jsonl(out / f"{clip.name}.jsonl")
    assert [r["frame"] for r in lines] == list(range(20))
    assert np.allclose([r["time_s"] for r in lines], np.arange(20) / 10)
    summary = json.loads((out / f"{clip.name}.summary.json").read_text())
    assert summary["frames"] == 20 and summary["dropped"] == 0 and summary["complete"] is True
    assert summary["latency_ms_p99"] >= summary["latency_ms_p50"] > 0 and summary["achieved_fps"] > 0
    assert f"{video}: 20 frames -> " in res.stdout
    # the same frames, JPEG-encoded the same way, through `tdet infer` as images
    stills = tmp_path / "stills"
    stills.mkdir()
    for i, f in enumerate(frames):
        (stills / f"{i:03d}.jpg").write_bytes(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])[1])
    res = _tdet("infer", str(stills), "--model", MODEL, "--url", served.grpc_url, "--out", str(tmp_path / "img"),
                "--conf", CONF)
    assert res.returncode == 0, res.stderr
    total = 0
    for i, line in enumerate(lines):
        want = json.loads((tmp_path / "img" / f"{i:03d}.json").read_text())["detections"]
        have = line["detections"]
        total += len(have)
        as_tuple = [(np.array([d["box"] for d in x]).reshape(-1, 4), [d["score"] for d in x],
                     [d["category_id"] for d in x]) for x in (have, want)]
        assert_same_detections(*as_tuple, scale=max(size), box_tol=1e-4, score_tol=1e-4, what=f"frame {i}")
        assert all("track_id" not in d for d in have)  # the plain ensemble has no tracks
    assert total > 0  # the comparison compared something


@pytest.mark.server
def test_stride_start_and_max_frames_select_frames(served, clip, tmp_path):
    video = clip / f"{clip.name}.mp4"
    res = _tdet("infer", str(video), "--model", MODEL, "--url", served.grpc_url, "--out", str(tmp_path), "--conf",
                CONF, "--vid-stride", "3", "--start", "0.5", "--max-frames", "4", "--show")
    assert res.returncode == 0, res.stderr
    assert "warning: --show: no display" in res.stderr  # headless here: the outputs are files anyway
    assert [r["frame"] for r in _jsonl(tmp_path / f"{clip.name}.jsonl")] == [5, 8, 11, 14]
    got, got_fps, got_size, _ = _read_all(tmp_path / f"{clip.name}.mp4")
    assert len(got) == 4 and abs(got_fps - 10 / 3) < 1e-3 * 10 and got_size == (160, 120)


@pytest.mark.server
def test_truncated_file_keeps_what_was_read_and_says_so(served, clip, tmp_path):
    frames = _read_all(clip / f"{clip.name}.mp4")[0]
    data = _avi(frames, tmp_path / "full.avi").read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:_avi_frames(data)[12][0] + 100])  # ends inside frame 12
    out = tmp_path / "out"
    res = _tdet("infer", str(cut), "--model", MODEL, "--url", served.grpc_url, "--out", str(out), "--conf", CONF)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert f"{cut}: ended after frame " in res.stderr and "truncated" in res.stderr
    lines = _jsonl(out / "cut.jsonl")
    assert f"outputs are complete up to frame {lines[-1]['frame']} (video" in res.stderr  # an index, as in the JSONL
    summary = json.loads((out / "cut.summary.json").read_text())
    assert summary["complete"] is False and "truncated" in summary["error"]
    assert 10 <= len(lines) <= 13 and [r["frame"] for r in lines] == list(range(len(lines)))
    written = [r for r in lines if "detections" in r]
    got, got_fps, got_size, _ = _read_all(out / "cut.mp4")  # finalised: readable to its last frame
    assert len(got) == len(written) == summary["frames"] and got_size == (160, 120) and got_fps == 10


@pytest.mark.server
def test_corrupt_frame_is_a_warning_naming_it_and_the_rest_goes_on(served, clip, tmp_path):
    frames = _read_all(clip / f"{clip.name}.mp4")[0]
    data = bytearray(_avi(frames, tmp_path / "full.avi").read_bytes())
    start, size = _avi_frames(bytes(data))[7]
    data[start:start + size] = bytes(size)  # frame 7 holds no JPEG any more
    bad = tmp_path / "bad.avi"
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    res = _tdet("infer", str(bad), "--model", MODEL, "--url", served.grpc_url, "--out", str(out), "--conf", CONF)
    assert res.returncode == 1, res.stderr  # a frame was lost
    assert f"warning: {bad}: frame 7: corrupt frame" in res.stderr and "Traceback" not in res.stderr
    lines = _jsonl(out / "bad.jsonl")
    assert [r["frame"] for r in lines] == list(range(20))
    assert [i for i, r in enumerate(lines) if "error" in r] == [7] and "detections" not in lines[7]
    summary = json.loads((out / "bad.summary.json").read_text())
    assert (summary["frames"], summary["corrupt"], summary["complete"]) == (19, 1, False)
    assert len(_read_all(out / "bad.mp4")[0]) == 19


class _Mjpeg(http.server.BaseHTTPRequestHandler):
    """An MJPEG camera (multipart/x-mixed-replace) that serves `parts[n]` frames on its n-th connection, then
    goes down (503)."""

    frames: list[bytes] = []
    parts: list[int] = []
    connections = 0

    def do_GET(self) -> None:
        cls = type(self)
        n, cls.connections = cls.connections, cls.connections + 1
        if n >= len(cls.parts):
            self.send_error(503)
            return
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        for jpg in cls.frames[:cls.parts[n]]:
            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                             + jpg + b"\r\n")
            self.wfile.flush()
            time.sleep(0.1)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.server
def test_stream_that_dies_is_reopened_then_given_up_with_outputs_valid(served, clip, tmp_path):
    frames = _read_all(clip / f"{clip.name}.mp4")[0]
    handler = type("Cam", (_Mjpeg,), {"frames": [cv2.imencode(".jpg", f)[1].tobytes() for f in frames],
                                      "parts": [8, 6], "connections": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/cam.mjpg"
    out = tmp_path / "out"
    try:
        res = _tdet("infer", url, "--model", MODEL, "--url", served.grpc_url, "--out", str(out), "--conf", CONF,
                    "--reconnect", "2")
    finally:
        server.shutdown()
        server.server_close()
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert f"{url}: stream lost after frame 7, reopened" in res.stderr
    assert f"{url}: stream lost after frame 13; gave up after 2 reconnect tries" in res.stderr
    summary = json.loads((out / "cam.summary.json").read_text())
    assert summary["live"] is True and summary["reconnects"] == 1 and summary["complete"] is False
    lines = _jsonl(out / "cam.jsonl")
    assert len(lines) == summary["frames"] >= 2 and summary["frames"] + summary["dropped"] == 14
    assert [r["frame"] for r in lines] == sorted({r["frame"] for r in lines}) and lines[-1]["frame"] <= 13
    got, fps, size, _ = _read_all(out / "cam.mp4")
    assert size == (160, 120) and fps == pytest.approx(summary["source_fps"], rel=1e-3)
    # the video follows the frames' time (a frame held until the next came), not one video frame per frame sent
    # (which played faster than it happened): one video frame per 1/fps from the first frame to the last
    times = [r["time_s"] for r in lines if "detections" in r]
    assert len(got) == summary["video_frames"] == math.floor((times[-1] - times[0]) * summary["source_fps"]) + 1


# --- stateful models (a tracker's shape): correlation id, start/end flags, extra outputs passed through ----------

SEQ_CONFIG = """name: "seq_tracks"
backend: "python"
max_batch_size: 1
input [ { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] } ]
output [
  { name: "NUM_DETECTIONS" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "BOXES" data_type: TYPE_FP32 dims: [ 2, 4 ] },
  { name: "SCORES" data_type: TYPE_FP32 dims: [ 2 ] },
  { name: "CLASSES" data_type: TYPE_INT32 dims: [ 2 ] },
  { name: "TRACK_IDS" data_type: TYPE_INT32 dims: [ 2 ] },
  { name: "SEQ" data_type: TYPE_INT32 dims: [ 3 ] }
]
sequence_batching {
  max_sequence_idle_microseconds: 10000000
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] }
  ]
}
parameters { key: "class_names" value { string_value: "[\\"rectangle\\", \\"ellipse\\"]" } }
parameters { key: "category_ids" value { string_value: "[1, 2]" } }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

# A stateful python model with a tracker's interface (the real tracker is issue 19 item 2): per correlation id it
# counts the requests since the start flag; TRACK_IDS and SEQ (step, start, end) say what it saw.
SEQ_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.steps = {}

    def execute(self, requests):
        out = []
        for r in requests:
            cid = r.correlation_id()
            start = int(pb_utils.get_input_tensor_by_name(r, "START").as_numpy().reshape(-1)[0])
            end = int(pb_utils.get_input_tensor_by_name(r, "END").as_numpy().reshape(-1)[0])
            step = 1 if start else self.steps.get(cid, 0) + 1
            self.steps[cid] = step
            if end:
                self.steps.pop(cid, None)
            tensors = {"NUM_DETECTIONS": np.array([[2]], np.int32),
                       "BOXES": np.array([[[1, 1, 20, 20], [30, 30, 60, 50]]], np.float32),
                       "SCORES": np.array([[0.9, 0.8]], np.float32), "CLASSES": np.array([[1, 2]], np.int32),
                       "TRACK_IDS": np.array([[10 * step + 1, 10 * step + 2]], np.int32),
                       "SEQ": np.array([[step, start, end]], np.int32)}
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in tensors.items()]))
        return out
'''


@pytest.fixture
def seq_model(served):
    import tritonclient.grpc as grpcclient

    folder = served.repository / "seq_tracks"
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(SEQ_CONFIG)
    (folder / "1" / "model.py").write_text(SEQ_MODEL)
    admin = grpcclient.InferenceServerClient(served.grpc_url)
    admin.load_model("seq_tracks")
    try:
        yield "seq_tracks"
    finally:
        admin.unload_model("seq_tracks")
        shutil.rmtree(folder)  # the session's repository stays as the other tests expect it


@pytest.mark.server
def test_stateful_model_gets_one_ordered_sequence_and_its_track_ids_pass_through(served, clip, seq_model, tmp_path):
    from tdet.client.triton import connect
    from tdet.client.video import infer_video

    video = clip / f"{clip.name}.mp4"
    with connect(served.grpc_url, seq_model) as det:
        results = list(infer_video(det, str(video), concurrency=4))
    assert len(results) == 20
    for i, r in enumerate(results):  # in order, one sequence: start flag on the first, end flag on the last
        assert r.frame.index == i and r.track_ids == [10 * (i + 1) + 1, 10 * (i + 1) + 2]
        assert r.extras["SEQ"] == [i + 1, int(i == 0), int(i == 19)]
    out = tmp_path / "out"
    res = _tdet("infer", str(video), "--model", seq_model, "--url", served.grpc_url, "--out", str(out),
                "--max-frames", "6")
    assert res.returncode == 0, res.stderr
    lines = _jsonl(out / f"{clip.name}.jsonl")
    assert [[d["track_id"] for d in r["detections"]] for r in lines] == [[10 * s + 1, 10 * s + 2] for s in range(1, 7)]
    assert [r["seq"] for r in lines] == [[s, int(s == 1), int(s == 6)] for s in range(1, 7)]
    assert len(_read_all(out / f"{clip.name}.mp4")[0]) == 6  # drawn with "#id" labels


@pytest.mark.server
def test_python_client_infer_video_equals_infer_on_the_same_jpeg(served, clip):
    from tdet.client.triton import connect
    from tdet.client.video import infer_video

    frames = _read_all(clip / f"{clip.name}.mp4")[0]
    with connect(served.grpc_url, MODEL, conf=float(CONF)) as det:
        results = list(infer_video(det, str(clip / f"{clip.name}.mp4"), max_frames=5, jpeg_quality=80))
        assert [r.frame.index for r in results] == list(range(5)) and all(r.track_ids is None for r in results)
        for r, f in zip(results, frames):
            want = det.infer(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes())
            got = r.detections
            assert_same_detections((got.boxes, got.scores, got.category_ids), (want.boxes, want.scores,
                                   want.category_ids), scale=160, box_tol=1e-4, score_tol=1e-4)


@pytest.mark.server
def test_server_that_goes_away_mid_video_stops_with_outputs_valid(exported, clip, tmp_path):
    from tdet.ensembles.builder import build_repository
    from tdet.ensembles.server import free_port, start, stop_process

    repo = tmp_path / "repo"
    build_repository([exported["damo-yolo-t"]], repo)
    proc, info = start(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                       log=tmp_path / "server.log", timeout_s=240)
    frames = _read_all(clip / f"{clip.name}.mp4")[0]
    handler = type("Cam", (_Mjpeg,), {"frames": [cv2.imencode(".jpg", f)[1].tobytes() for f in frames] * 3,
                                      "parts": [60], "connections": 0})
    camera = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=camera.serve_forever, daemon=True).start()
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tdet.client.cli", "infer", f"http://127.0.0.1:{camera.server_port}/cam.mjpg",
           "--model", MODEL, "--url", info.grpc_url, "--out", str(out), "--retries", "1"]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (
                (out / "cam.jsonl").is_file() and len((out / "cam.jsonl").read_text().splitlines()) >= 3):
            time.sleep(0.1)
        stop_process(proc.pid)  # the server goes away mid-stream
        proc.wait(timeout=30)
        stdout, stderr = run.communicate(timeout=120)
    finally:
        run.kill()
        camera.shutdown()
        camera.server_close()
        if proc.poll() is None:
            stop_process(proc.pid)
    assert run.returncode == 2, stderr
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("tdet infer: error: ") and "stopped after" in lines[0], stderr
    summary = json.loads((out / "cam.summary.json").read_text())
    assert summary["complete"] is False and "stopped after" in summary["error"]
    records = _jsonl(out / "cam.jsonl")  # every line whole
    assert len(records) == summary["frames"] >= 3 and all("detections" in r for r in records)
    # finalised, a live stream's video following the frames' times: one video frame per 1/fps, first to last
    times = [r["time_s"] for r in records]
    expected = math.floor((times[-1] - times[0]) * summary["source_fps"]) + 1
    assert len(_read_all(out / "cam.mp4")[0]) == summary["video_frames"] == expected


@pytest.mark.server
def test_two_videos_named_alike_keep_their_outputs_apart(served, clip, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(clip / f"{clip.name}.mp4", tmp_path / folder / "x.mp4")
    out = tmp_path / "out"
    res = _tdet("infer", str(tmp_path / "a/x.mp4"), str(tmp_path / "b/x.mp4"), "--model", MODEL, "--url",
                served.grpc_url, "--out", str(out), "--max-frames", "3")
    assert res.returncode == 0, res.stderr
    for folder in ("a", "b"):
        assert len(_jsonl(out / folder / "x.jsonl")) == 3 and len(_read_all(out / folder / "x.mp4")[0]) == 3
        summary = json.loads((out / folder / "x.summary.json").read_text())
        assert summary["source"] == str(tmp_path / folder / "x.mp4") and summary["complete"]


@pytest.mark.server
def test_ctrl_c_mid_video_says_interrupted_in_the_summary(served, tmp_path):
    long_clip = synthesize_video(tmp_path / "clips", 1, seed=6, size=(160, 120), frames=150, fps=10)[0]
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "tdet.client.cli", "infer", str(long_clip / f"{long_clip.name}.mp4"),
                             "--model", MODEL, "--url", served.grpc_url, "--out", str(out), "--concurrency", "1"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    jsonl = out / f"{long_clip.name}.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not jsonl.is_file() or len(jsonl.read_text().splitlines()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)  # a hang guard, not a speed limit
    assert proc.returncode == 130 and "Traceback" not in err
    summary = json.loads((out / f"{long_clip.name}.summary.json").read_text())
    lines = _jsonl(jsonl)
    assert summary["complete"] is False and summary["error"] == f"interrupted after {summary['frames']} frames"
    assert 2 <= summary["frames"] == len(lines) < 150 and summary["last_frame"] == lines[-1]["frame"]
    assert len(_read_all(out / f"{long_clip.name}.mp4")[0]) == len(lines)  # finalised
