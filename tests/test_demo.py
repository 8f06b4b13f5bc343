"""The README's main job (`make demo` -> python -m tdet.client.demo), end to end, on free ports."""

import json
import os
import subprocess
import sys

import cv2

from tdet.ensembles.server import free_port


def test_demo_serves_both_models_and_writes_annotated_images(tmp_path):
    env = dict(os.environ, TDET_CACHE=str(tmp_path / "cache"))  # its own pidfile and backend dir
    ports = [str(free_port()) for _ in range(3)]
    out = subprocess.run([sys.executable, "-m", "tdet.client.demo", "--workdir", str(tmp_path / "demo"),
                          "--repository", str(tmp_path / "model_repository"), "--http-port", ports[0],
                          "--grpc-port", ports[1], "--metrics-port", ports[2]],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "stopped tritonserver" in out.stdout
    for model in ("damo_yolo_t", "rtdetrv2_s"):
        index = json.loads((tmp_path / "demo/detections" / model / "detections.json").read_text())
        assert len(index) == 6 and sum(row["count"] for row in index) > 0
        annotated = cv2.imread(index[0]["annotated"])
        assert annotated is not None and annotated.shape[2] == 3
    assert not (tmp_path / "cache/triton/server.json").exists()  # the detached server was stopped
