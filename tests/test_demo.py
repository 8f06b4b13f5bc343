"""The README's main job (`make demo` -> python -m tdet.client.demo), end to end, on free ports: the model the
project trained itself, served through Triton, scored on the held-out val split next to its in-process run."""

import json
import os
import subprocess
import sys

import cv2
import pytest

from tdet.ensembles.server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.server]


def test_demo_serves_the_trained_model_and_reports_served_and_in_process_map(tmp_path):
    env = dict(os.environ, TDET_CACHE=str(tmp_path / "cache"))  # its own pidfile and backend dir
    ports = [str(free_port()) for _ in range(3)]
    out = subprocess.run([sys.executable, "-m", "tdet.client.demo", "--workdir", str(tmp_path / "demo"),
                          "--repository", str(tmp_path / "model_repository"), "--http-port", ports[0],
                          "--grpc-port", ports[1], "--metrics-port", ports[2]],
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "stopped tritonserver" in out.stdout and "served AP" in out.stdout
    index = json.loads((tmp_path / "demo/detections/damo_yolo_t/detections.json").read_text())
    assert len(index) == 6 and sum(row["count"] for row in index) > 0
    annotated = cv2.imread(index[0]["annotated"])
    assert annotated is not None and annotated.shape[2] == 3
    sheet = cv2.imread(str(tmp_path / "demo/damo-yolo-t.png"))  # the six side by side, as in the README
    assert sheet is not None and sheet.shape[:2] == (2 * 240, 3 * 320)
    metrics = json.loads((tmp_path / "demo/eval/damo_yolo_t/metrics.json").read_text())
    assert metrics["images"] == 200
    served, reference = metrics["metrics"], metrics["reference"]
    assert served["AP50"] > 0.5  # a detector, not random weights
    for k in ("AP", "AP50"):  # serving (export, ONNX Runtime, Triton steps) costs no accuracy
        assert abs(served[k] - reference[k]) <= 0.005, (k, served[k], reference[k])
    assert not list((tmp_path / "cache/triton/servers").glob("*.json"))  # the detached server was stopped
