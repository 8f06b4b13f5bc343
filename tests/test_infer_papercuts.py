"""Issue 16's first-hour papercuts in `tdet infer`: http(s) URLs are fetched (a local http.server here: there is
no internet), with the URL and the HTTP status or network error in one line when that fails; a video is refused
plainly; and drawn labels stay readable in busy images (filled, inside the image, never on top of each other)."""

from __future__ import annotations

import functools
import json
import socket
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from matching import assert_same_detections

from tdet.client.errors import UserError
from tdet.client.image_input import encode_image, fetch_url
from tdet.client.infer import class_color, draw_detections, label_layout, label_rects, output_names, url_name
from tdet.client.ports import free_port  # nothing listens on a port it returns
from tdet.client.postprocess import Detections


def _tdet(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdet.client.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    return res.stderr


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request lines on stderr
        pass


@pytest.fixture
def web(tmp_path, images):
    """A real HTTP server on 127.0.0.1 serving a folder with real images: (base URL, folder)."""
    root = tmp_path / "www"
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "bus stop.jpg").write_bytes(images["wide.jpg"])
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()
    thread.join()


# --- 1. URLs --------------------------------------------------------------------------------------------


def test_fetch_url_returns_the_served_bytes_and_names_what_failed(web):
    base, root = web
    want = (root / "photos" / "bus stop.jpg").read_bytes()
    assert fetch_url(f"{base}/photos/bus%20stop.jpg") == want
    assert encode_image(f"{base}/photos/bus%20stop.jpg") == want  # the Python API takes URLs too
    with pytest.raises(UserError, match=rf"could not fetch {base}/photos/missing.jpg: HTTP 404"):
        fetch_url(f"{base}/photos/missing.jpg")
    with pytest.raises(UserError, match=r"larger than the 1000 bytes allowed"):
        fetch_url(f"{base}/photos/bus%20stop.jpg", max_bytes=1000)
    dead = f"http://127.0.0.1:{free_port()}/x.jpg"
    with pytest.raises(UserError, match=rf"could not fetch {dead}: .*refused"):
        fetch_url(dead)


def test_fetch_url_gives_up_on_a_server_that_never_answers():
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/x.jpg"
        with pytest.raises(UserError, match=rf"could not fetch {url}: no answer within 0.5 s"):
            fetch_url(url, timeout_s=0.5)


def test_url_result_names_are_the_last_segment_sanitized(tmp_path):
    assert url_name("https://ultralytics.com/images/bus.jpg") == "bus.jpg"
    assert url_name("https://h/a/bus%20stop.jpg?size=2#x") == "bus_stop.jpg"
    assert url_name("https://h/a/..%2F..%2Fetc%2Fpasswd") == "etc_passwd"  # never leaves the output folder
    assert url_name("https://h/") == url_name("https://h") == "image"
    names = output_names(["https://a/x/bus.jpg", str(tmp_path / "bus.jpg"), "https://b/bus.png",
                          "https://c/zidane.jpg"])
    assert names == ["bus.jpg", "bus.jpg_2", "bus.png", "zidane"]  # no result overwrites another


def test_infer_url_errors_are_one_line_exit_2_before_any_request(web, tmp_path):
    base, _ = web
    no_server = f"127.0.0.1:{free_port()}"  # the URL fails first: the server is never asked
    missing = f"{base}/photos/missing.jpg"
    err = _one_line_error(_tdet("infer", missing, "--model", "damo_yolo_t", "--url", no_server,
                                "--out", str(tmp_path / "out")))
    assert f"could not fetch {missing}: HTTP 404" in err  # the URL whole: no slash lost to a Path
    dead = f"https://127.0.0.1:{free_port()}/bus.jpg"
    err = _one_line_error(_tdet("infer", dead, "--model", "damo_yolo_t", "--url", no_server))
    assert f"could not fetch {dead}: " in err and "refused" in err


@pytest.mark.server
def test_infer_url_writes_the_same_detections_as_the_local_file(served, web, tmp_path):
    base, root = web
    local = root / "photos" / "bus stop.jpg"
    url = f"{base}/photos/bus%20stop.jpg?v=1"
    out = tmp_path / "out"
    res = _tdet("infer", url, str(local), "--model", "damo_yolo_t", "--url", served.grpc_url, "--out", str(out),
                "--conf", "0.01")
    assert res.returncode == 0, res.stderr
    index = json.loads((out / "detections.json").read_text())
    assert [r["image"] for r in index] == [url, str(local)]
    assert [Path(r["json"]).name for r in index] == ["bus_stop.json", "bus stop.json"]  # the URL's sanitized
    got, want = (json.loads(Path(r["json"]).read_text()) for r in index)
    assert (got["height"], got["width"]) == (want["height"], want["width"])
    assert cv2.imread(index[0]["annotated"]).shape[:2] == (got["height"], got["width"])

    def dets(d):
        return (np.array([x["box"] for x in d["detections"]]).reshape(-1, 4), [x["score"] for x in d["detections"]],
                [x["category_id"] for x in d["detections"]])

    assert_same_detections(dets(got), dets(want), scale=got["width"], box_tol=1e-4, score_tol=1e-4, what="url")


# --- 2. videos ------------------------------------------------------------------------------------------


def _video(path: Path) -> Path:
    """A real 10-frame video by OpenCV; a file with the name alone where this OpenCV cannot write one."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    if writer.isOpened():
        for i in range(10):
            writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    if not path.is_file() or path.stat().st_size == 0:
        path.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    return path


def test_infer_takes_video_and_encode_image_says_plainly_it_is_not_an_image(tmp_path):
    clip = _video(tmp_path / "clip.mp4")
    no_server = f"127.0.0.1:{free_port()}"
    err = _one_line_error(_tdet("infer", str(clip), "--model", "damo_yolo_t", "--url", no_server))
    assert "cannot reach Triton" in err  # read as a video (tests/test_video.py runs one through a server)
    for suffix in (".avi", ".mkv", ".webm"):
        with pytest.raises(UserError, match="a video, not an image"):
            encode_image(tmp_path / f"clip{suffix}")


# --- 3. labels ------------------------------------------------------------------------------------------


def _busy(h: int, w: int, seed: int = 0) -> Detections:
    """Clusters of heavily overlapping boxes of several classes, some against the image's edges."""
    rng = np.random.default_rng(seed)
    centres = [(w * 0.3, h * 0.4), (w * 0.7, h * 0.5), (w * 0.98, h * 0.02), (w * 0.03, h * 0.97)]
    boxes = []
    for cx, cy in centres:
        for _ in range(5):
            bw, bh = rng.uniform(0.1, 0.3) * w, rng.uniform(0.1, 0.3) * h
            x, y = cx + rng.normal(0, 0.02 * w), cy + rng.normal(0, 0.02 * h)
            boxes.append(np.clip([x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2], 0, [w, h, w, h]))
    scores = np.sort(rng.uniform(0.3, 0.95, len(boxes)))[::-1]
    ids = rng.integers(1, 7, len(boxes))
    names = ("circle", "square", "triangle", "star", "cross", "hexagon")
    return Detections(np.array(boxes, np.float32), scores.astype(np.float32), ids.astype(np.int32),
                      tuple(names[i - 1] for i in ids))


def _overlap(a, b) -> bool:
    return bool(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])


@pytest.mark.parametrize("shape", [(480, 640, 3), (1080, 1920, 3)])
def test_labels_are_apart_inside_the_image_and_filled(shape):
    h, w = shape[:2]
    dets = _busy(h, w)
    texts, rects = label_rects(dets, shape)
    assert len(rects) == len(dets) == len(texts)
    assert (rects[:, :2] >= 0).all() and (rects[:, 2] <= w).all() and (rects[:, 3] <= h).all()
    for i in range(len(rects)):
        for j in range(i):
            assert not _overlap(rects[i], rects[j]), (texts[i], rects[i], texts[j], rects[j])
    for r, box in zip(rects, np.rint(dets.boxes)):  # each label in its box's column, from its left edge when it fits
        assert r[0] == min(max(box[0], 0), w - (r[2] - r[0]))
    background = np.full(shape, 40, np.uint8)
    drawn = draw_detections(background, dets)
    for d, r in zip(dets, rects):
        patch = drawn[r[1]:r[3], r[0]:r[2]].reshape(-1, 3)
        fill = (patch == class_color(d.category_id)).all(axis=1).mean()
        assert 0.4 < fill < 0.98, (d, fill)  # the background colour, with the text on it
    outside = np.ones((h, w), bool)
    for r in rects:
        outside[r[1]:r[3], r[0]:r[2]] = False
    assert (drawn[outside] == 40).all(axis=1).mean() > 0.5  # only the box lines beside the labels


def test_label_layout_prefers_above_then_inside_then_the_nearest_free_slot():
    sizes = [(50, 12)] * 4
    boxes = [[100, 100, 200, 200],  # room above: sits on the top edge
             [105, 102, 190, 190],  # would cover the first: moved to the nearest free row
             [0, 3, 80, 60],  # no room above: inside, at the top
             [610, 300, 700, 350]]  # past the right edge: pulled back in
    rects = label_layout(boxes, sizes, (400, 640))
    assert tuple(rects[0]) == (100, 88, 150, 100)
    assert tuple(rects[1]) == (105, 100, 155, 112)  # just below the first label: 10 px from its place, 76 is 14
    assert tuple(rects[2]) == (0, 3, 50, 15)
    assert tuple(rects[3]) == (590, 288, 640, 300)
    assert label_layout(np.zeros((0, 4)), np.zeros((0, 2)), (10, 10)).shape == (0, 4)


def test_out_on_the_inputs_own_folder_is_refused_and_nothing_is_overwritten(tmp_path):
    """`--out` = the images' folder wrote each annotated copy over its original (same NAME.jpg), and a video's
    NAME.mp4 over the video: refused before any request, every input byte for byte as it was."""
    from tdet.client.synth_video import synthesize_video

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.png"):
        cv2.imwrite(str(images / name), np.full((40, 60, 3), 127, np.uint8))
    clip = synthesize_video(tmp_path / "clips", 1, seed=1, size=(64, 48), frames=3, fps=5)[0] / "clip-000.mp4"
    before = {p: p.read_bytes() for p in [*images.iterdir(), clip]}
    no_server = f"127.0.0.1:{free_port()}"
    err = _one_line_error(_tdet("infer", str(images), "--model", "m", "--url", no_server, "--out", str(images)))
    assert f"--out {images}: its a.jpg would overwrite the input {images / 'a.jpg'}; pick another --out" in err
    err = _one_line_error(_tdet("infer", str(clip), "--model", "m", "--url", no_server, "--out", str(clip.parent)))
    assert f"its clip-000.mp4 would overwrite the input {clip}" in err
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(images.iterdir()) == sorted(p for p in before if p.parent == images)  # no JSON, no index
