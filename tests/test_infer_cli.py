"""`tdet infer` as a user runs it: a folder with a broken file and a 1x1 PNG among good images (skipped with
a warning naming them, the rest written, a summary, exit 1), inputs whose names collide, and the score
threshold and clipping applied to what is returned (the JSON, the count and the drawing agree)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tdet.client.infer import output_names
from tdet.client.triton import connect


def _tdet(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdet.client.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_output_names_never_collide(tmp_path):
    files = [tmp_path / p for p in ("a/x.jpg", "a/x.png", "b/x.jpg", "a/detections.jpg", "a/x.jpg.png", "a/y.bmp")]
    assert output_names(files) == ["a/x.jpg", "a/x.png", "b/x", "a/detections", "a/x.jpg.png", "a/y"]
    assert output_names([tmp_path / "one" / "photo.jpg"]) == ["photo"]
    assert output_names([tmp_path / "p" / "detections.png"]) == ["detections.png"]  # the index keeps its name


@pytest.mark.server
def test_infer_skips_bad_files_writes_the_rest_and_says_so(served, images, tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for name in ("wide.jpg", "tall.png", "square.jpg"):
        (src / name).write_bytes(images[name])
    (src / "broken.jpg").write_bytes(b"not an image")
    (src / "dot.png").write_bytes(cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes())
    out = tmp_path / "out"
    res = _tdet("infer", str(src), "--model", "damo_yolo_t", "--url", served.grpc_url, "--out", str(out))
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert f"skipped {src / 'broken.jpg'}: " in res.stderr and "not a decodable image" in res.stderr
    assert f"skipped {src / 'dot.png'}: " in res.stderr and "too small" in res.stderr
    assert "5 images: 3 written" in res.stdout and "2 skipped" in res.stdout
    index = json.loads((out / "detections.json").read_text())
    assert [Path(r["image"]).name for r in index] == ["broken.jpg", "dot.png", "square.jpg", "tall.png", "wide.jpg"]
    assert [("error" in r) for r in index] == [True, True, False, False, False]
    for row in index[2:]:
        assert (out / f"{Path(row['image']).stem}.jpg").is_file() and Path(row["json"]).is_file()
    assert not (out / "broken.json").exists() and not (out / "dot.json").exists()


@pytest.mark.server
def test_infer_keeps_colliding_names_apart_and_applies_conf_and_clip(served, images, tmp_path):
    for rel, name in (("a/x.jpg", "wide.jpg"), ("a/x.png", "tall.png"), ("b/x.jpg", "square.jpg")):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(images[name])
    with connect(served.grpc_url, "rtdetrv2_s") as det:
        scores = np.sort(det.infer(images["wide.jpg"]).scores)
    conf = float((scores[len(scores) // 2] + scores[len(scores) // 2 + 1]) / 2)  # between two served scores
    out = tmp_path / "out"
    res = _tdet("infer", str(tmp_path / "a/x.jpg"), str(tmp_path / "a/x.png"), str(tmp_path / "b/x.jpg"), "--model",
                "rtdetrv2_s", "--url", served.http_url, "--protocol", "http", "--out", str(out), "--conf", str(conf))
    assert res.returncode == 0, res.stderr
    index = json.loads((out / "detections.json").read_text())
    assert [Path(r["json"]).relative_to(out).as_posix() for r in index] == ["a/x.jpg.json", "a/x.png.json", "b/x.json"]
    for row, (h, w) in zip(index, ((720, 1280), (500, 333), (640, 640))):
        data = json.loads(Path(row["json"]).read_text())
        assert (data["height"], data["width"]) == (h, w) and data["parameters"]["conf"] == conf
        dets = data["detections"]
        assert row["count"] == len(dets) and f"{row['image']}: {len(dets)} detections" in res.stdout
        assert all(d["score"] > conf - 1e-5 for d in dets)  # the JSON rounds scores to 1e-5
        boxes = np.array([d["box"] for d in dets]).reshape(-1, 4)
        assert boxes.min(initial=0) >= 0 and (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all()
        assert cv2.imread(row["annotated"]).shape[:2] == (h, w)
    wide = json.loads((out / "a/x.jpg.json").read_text())["detections"]
    assert 0 < len(wide) < len(scores)  # the threshold selected some of the served detections, not none or all


@pytest.mark.server
def test_ctrl_c_leaves_an_index_of_every_result_on_disk_and_the_rest_marked_not_run(served, images, tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(40):
        (src / f"{i:03d}.jpg").write_bytes(images["wide.jpg"])
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "tdet.client.cli", "infer", str(src), "--model", "damo_yolo_t",
                             "--url", served.grpc_url, "--out", str(out), "--concurrency", "4"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out.glob("0*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)  # a hang guard, not a speed limit
    assert proc.returncode == 130 and "Traceback" not in err
    index = json.loads((out / "detections.json").read_text())
    assert [Path(r["image"]).name for r in index] == [f"{i:03d}.jpg" for i in range(40)]  # one row per input
    on_disk = sorted(p.stem for p in out.glob("0*.json"))
    assert sorted(Path(r["json"]).stem for r in index if "json" in r) == on_disk  # every result written is listed
    not_run = [r for r in index if "error" in r]
    assert all(r["error"] == "not run: interrupted" for r in not_run)
    assert 2 <= len(on_disk) < 40 and len(on_disk) + len(not_run) == 40
