"""The README's main job (`make demo` -> python -m tdet.client.demo), end to end, on free ports: the model the
project trained itself, served through Triton, scored on the held-out val split next to its in-process run."""

import json
import os
import subprocess
import sys

import cv2
import pytest

from tdet.client.demo import CLIP, DEMO_DIR, STRIP_FRAMES, VARIANTS
from tdet.ensembles.server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.server]


def test_demo_serves_the_trained_models_and_reports_served_and_in_process_map(tmp_path):
    env = dict(os.environ, TDET_CACHE=str(tmp_path / "cache"))  # its own pidfile and backend dir
    ports = [str(free_port()) for _ in range(3)]
    out = subprocess.run([sys.executable, "-m", "tdet.client.demo", "--workdir", str(tmp_path / "demo"),
                          "--repository", str(tmp_path / "model_repository"), "--http-port", ports[0],
                          "--grpc-port", ports[1], "--metrics-port", ports[2], "--compare-seconds", "2"],
                         capture_output=True, text=True, timeout=1200, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "stopped tritonserver" in out.stdout and "served AP" in out.stdout
    variants = [v for v in VARIANTS if (DEMO_DIR / f"{v}.pth").is_file()]
    assert "damo-yolo-t" in variants
    for variant in variants:
        model = variant.replace("-", "_")
        index = json.loads((tmp_path / f"demo/detections/{model}/detections.json").read_text())
        assert len(index) == 6 and sum(row["count"] for row in index) > 0
        annotated = cv2.imread(index[0]["annotated"])
        assert annotated is not None and annotated.shape[2] == 3
        sheet = cv2.imread(str(tmp_path / f"demo/{variant}.png"))  # the six side by side, as in the README
        assert sheet is not None and sheet.shape[:2] == (2 * 240, 3 * 320)
        metrics = json.loads((tmp_path / f"demo/eval/{model}/metrics.json").read_text())
        assert metrics["images"] == 200
        served, reference = metrics["metrics"], metrics["reference"]
        assert served["AP50"] > 0.3, (variant, served)  # a detector, not random weights
        for k in ("AP", "AP50"):  # serving (export, ONNX Runtime, Triton steps) costs no accuracy
            assert abs(served[k] - reference[k]) <= 0.005, (variant, k, served[k], reference[k])
    # the comparison table: one row per served model, labelled, measured
    rows = json.loads((tmp_path / "demo/compare/compare.json").read_text())
    assert sorted(r["variant"] for r in rows) == sorted(variants)
    for r in rows:
        assert r["latency_p50_ms"] > 0 and r["throughput_img_s"] > 0 and r["params_m"] > 0 and r["images"] == 200
        served = json.loads((tmp_path / f"demo/eval/{r['model']}/metrics.json").read_text())["metrics"]
        assert abs(r["map_50"] - served["AP50"]) <= 1e-3  # the same served model, scored the same way
    assert "| Model | mAP 50:95" in out.stdout  # printed after the per-model table
    both = cv2.imread(str(tmp_path / "demo/families.png"))  # a row per family, on the same images
    assert both is not None and both.shape[0] == len(variants) * 240
    # tracking: the held-out clip through damo_yolo_t_track (tdet eval --mot), a strip of its annotated frames
    mot = json.loads((tmp_path / "demo/track/mot_metrics.json").read_text())
    assert mot["model"] == "damo_yolo_t_track" and mot["run"]["complete"]
    assert mot["metrics"]["num_frames"] == CLIP["frames"] and mot["metrics"]["num_objects"] > 0
    assert mot["metrics"]["mota"] > 0.3 and mot["metrics"]["idf1"] > 0.4, mot["metrics"]  # a detector, tracked
    assert mot["metrics"]["hota"] > 0.3, mot["metrics"]
    assert f"MOTA {100 * mot['metrics']['mota']:.2f}" in out.stdout
    strip = cv2.imread(str(tmp_path / "demo/tracking.png"))
    assert strip is not None and strip.shape[:2] == (240, STRIP_FRAMES * 320)
    assert not list((tmp_path / "cache/triton/servers").glob("*.json"))  # the detached server was stopped
