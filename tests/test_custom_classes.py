"""A user's own classes end to end: `tdet train` on a COCO set whose 3 categories have non-COCO ids (7, 12, 40),
fine-tuned from an 80-class checkpoint at 128x128, then `tdet export`, `tdet repo build`, a real tritonserver and
`tdet infer`: the served classes are the dataset's ids and names, at the training input size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from synthetic import shapes_set

pytestmark = [pytest.mark.slow, pytest.mark.server]

CLASSES = {1: (7, "box"), 2: (12, "oval"), 3: (40, "wedge")}  # synth's rectangle / ellipse / triangle
VARIANTS = ("damo-yolo-t", "rtdetrv2-s")


def tdet(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "tdet.client.cli", *args], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"tdet {' '.join(args)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def custom_set(tmp_path_factory) -> tuple[Path, Path]:
    return shapes_set(tmp_path_factory.mktemp("custom"), 4, seed=8, size=(160, 128), objects=(3, 6), relabel=CLASSES)


@pytest.fixture(scope="module")
def trained(custom_set, tmp_path_factory) -> dict[str, Path]:
    """Per variant: an 80-class checkpoint in the official layout, fine-tuned for 2 steps on the custom set."""
    from tdet.training.registry import build_model

    ann, images = custom_set
    root = tmp_path_factory.mktemp("runs")
    onnx_files = {}
    for variant in VARIANTS:
        coco80 = root / f"{variant}-coco80.pth"
        sd = build_model(variant, init="tame", seed=2).state_dict()
        torch.save({"model": sd} if variant.startswith("damo") else {"ema": {"module": sd}}, coco80)
        out = tdet("train", variant, "--data", str(ann), "--images", str(images), "--weights", str(coco80),
                   "--epochs", "1", "--batch", "2", "--img-size", "128", "--workers", "0", "--out", str(root / variant))
        assert "the class branch was re-initialised" in out.stdout
        onnx_files[variant] = root / f"{variant}.onnx"
        tdet("export", variant, "--weights", str(root / variant / "last.pth"), "--out", str(onnx_files[variant]))
    return onnx_files


def test_export_carries_the_datasets_classes_and_input_size(trained):
    for variant, path in trained.items():
        meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert json.loads(meta["tdet.category_ids"]) == [7, 12, 40], variant
        assert json.loads(meta["tdet.class_names"]) == ["box", "oval", "wedge"], variant
        assert meta["tdet.input_hw"] == "128,128", variant
        dims = [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
        assert dims[1:] == [3, 128, 128], variant


def test_served_classes_are_the_datasets_ids_and_infer_draws_their_names(trained, custom_set, tmp_path):
    from tdet.client.triton import connect
    from tdet.ensembles.server import free_port, start, stop_process

    repo = tmp_path / "repo"
    # a 2-step model's scores sit near the 0.01 prior: a low threshold so that detections come back
    tdet("repo", "build", "--onnx", *map(str, trained.values()), "--out", str(repo), "--score-threshold", "0.001")
    for variant in VARIANTS:
        m = variant.replace("-", "_")
        assert json.loads((repo / m / "labels.json").read_text()) == {"7": "box", "12": "oval", "40": "wedge"}
    proc, info = start(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                       log=tmp_path / "server.log", timeout_s=300)
    try:
        _, images = custom_set
        for variant in VARIANTS:
            m = variant.replace("-", "_")
            with connect(info.grpc_url, m, "grpc") as client:
                dets = client.infer((images / "000000.jpg").read_bytes())
            assert len(dets) > 0 and set(dets.category_ids.tolist()) <= {7, 12, 40}, variant
            assert set(dets.class_names) <= {"box", "oval", "wedge"}
            out = tmp_path / "infer" / m
            tdet("infer", str(images), "--model", m, "--url", info.grpc_url, "--out", str(out), "--conf", "0.001")
            rows = [json.loads(p.read_text()) for p in sorted(out.glob("0*.json"))]
            assert len(rows) == 4
            served = [d for r in rows for d in r["detections"]]
            assert served and {d["category_id"] for d in served} <= {7, 12, 40}
            assert {d["class_name"] for d in served} <= {"box", "oval", "wedge"}
            assert all(CLASSES_BY_ID[d["category_id"]] == d["class_name"] for d in served)
    finally:
        stop_process(proc.pid)
        proc.wait(timeout=60)


CLASSES_BY_ID = {i: n for i, n in CLASSES.values()}
