"""The Python client as a user calls it: paths, bytes, numpy arrays and PIL images in; Detections that index,
iterate and filter; batches split at the server's max_batch_size; and the README's example, run as written."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from matching import assert_same_detections

from tdet.client.errors import UserError
from tdet.client.postprocess import Detection, Detections
from tdet.client.triton import connect

README = Path(__file__).parents[1] / "README.md"


def _dets() -> Detections:
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]], np.float32)
    return Detections(boxes, np.array([0.9, 0.5, 0.2], np.float32), np.array([1, 3, 1], np.int32),
                      ("person", "car", "person"))


def test_detections_index_iterate_and_filter():
    d = _dets()
    first = d[0]
    assert isinstance(first, Detection) and first.class_name == "person" and first.box == (0.0, 0.0, 10.0, 10.0)
    assert d[-1].score == pytest.approx(0.2) and [x.category_id for x in d] == [1, 3, 1]
    assert len(d[1:]) == 2 and d[1:].class_names == ("car", "person")
    assert d[d.scores > 0.4].category_ids.tolist() == [1, 3] and d[[2, 0]].scores.tolist() == pytest.approx([0.2, 0.9])
    assert d.filter(min_score=0.5).scores.tolist() == pytest.approx([0.9, 0.5])
    assert d.filter(classes=["person"]).category_ids.tolist() == [1, 1] == d.filter(classes=[1]).category_ids.tolist()
    assert len(d.filter(min_score=0.3, classes=["person", 3])) == 2 and len(d.filter(classes=[])) == 0
    with pytest.raises(IndexError):
        d[3]
    assert d.to_list()[1] == {"box": [5.0, 5.0, 20.0, 20.0], "score": 0.5, "category_id": 3, "class_name": "car"}
    assert "car 0.50" in repr(d) and "3 detections" in repr(d)


@pytest.mark.server
def test_infer_takes_paths_bytes_arrays_and_pil_images(served, images, tmp_path):
    from PIL import Image

    data = images["wide.jpg"]
    path = tmp_path / "street.jpg"
    path.write_bytes(data)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # the pixels the server decodes
    with connect(served.grpc_url, "damo_yolo_t") as det:
        want = det.infer(data)
        assert len(want) > 0
        for given in (str(path), path, bytearray(data), bgr, Image.fromarray(bgr[:, :, ::-1])):
            got = det.infer(given)
            # the same pixels reach the engine (arrays travel as lossless PNG): the same answer, bit for bit
            np.testing.assert_array_equal(got.boxes, want.boxes)
            np.testing.assert_array_equal(got.scores, want.scores)
        with pytest.raises(FileNotFoundError, match="no such image file"):
            det.infer(tmp_path / "missing.jpg")
        with pytest.raises(UserError, match="uint8"):
            det.infer(bgr.astype(np.float32))
        with pytest.raises(UserError, match="CHW array"):
            det.infer(np.ascontiguousarray(bgr.transpose(2, 0, 1)))
        for empty in (np.zeros((0, 0, 3), np.uint8), np.zeros((8, 0), np.uint8)):
            with pytest.raises(UserError, match="empty"):
                det.infer(empty)


@pytest.mark.server
def test_infer_batch_splits_at_the_servers_max_batch_size(served, images):
    blobs = [images[n] for n in ("wide.jpg", "tall.png", "square.jpg", "small.bmp")] * 5  # 20 > 16
    with connect(served.http_url, "damo_yolo_t", "http") as det:
        assert det.max_batch_size == 16
        before = int(det.statistics()["inference_count"])
        batched = det.infer_batch(blobs)
        single = [det.infer(b) for b in blobs[:4]]
        assert int(det.statistics()["inference_count"]) - before == 24  # 20 rows in two requests, then 4
    assert len(batched) == 20
    for i, got in enumerate(batched):
        want = single[i % 4]
        assert_same_detections((got.boxes, got.scores, got.category_ids), (want.boxes, want.scores, want.category_ids),
                               scale=1280, box_tol=1e-5, score_tol=1e-5, what=f"row {i}")


@pytest.mark.server
def test_the_readme_python_example_runs_as_written(served, images, tmp_path, monkeypatch, capsys):
    """The README's Python client block, executed unchanged but for the server address (the session
    server's port) in a folder that holds the images it names."""
    text = README.read_text()
    section = text[text.index("### Python client"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "127.0.0.1:8001" in code
    for name in set(re.findall(r'"([\w/.-]+\.(?:jpg|png))"', code)):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(images["wide.jpg"])
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace("127.0.0.1:8001", served.grpc_url), "README.md", "exec"), {})
    assert capsys.readouterr().out.strip(), "the example prints what it found"
