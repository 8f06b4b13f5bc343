"""Issue 16 papercuts of `tdet eval` against the real local server: a warning when the served classes are not
the dataset's, and --per-class AP per category."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tdet.client.errors import UserError
from tdet.client.evaluation import class_mismatch
from tdet.client.labels import COCO_CATEGORY_IDS, COCO_CLASSES
from tdet.client.synth import synthesize


def tdet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdet.client.cli", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The synthetic set: ids 1..6 named rectangle, ellipse, ...: COCO's ids 1..6 are person, bicycle, ..."""
    root = tmp_path_factory.mktemp("shapes")
    return synthesize(root, num=3, seed=5), root / "images"


@pytest.fixture(scope="module")
def as_coco(shapes, tmp_path_factory):
    """The same images and boxes labelled with COCO ids and names (the served COCO model's own classes)."""
    ann, images = shapes
    coco = json.loads(ann.read_text())
    ids = {c["id"]: (COCO_CATEGORY_IDS[k], COCO_CLASSES[k]) for k, c in enumerate(coco["categories"])}
    coco["annotations"] = [dict(a, category_id=ids[a["category_id"]][0]) for a in coco["annotations"]]
    coco["categories"] = [{"id": i, "name": n} for i, n in ids.values()]
    path = tmp_path_factory.mktemp("coco_labels") / "annotations.json"
    path.write_text(json.dumps(coco))
    return path, images


def test_eval_warns_when_served_classes_are_not_the_datasets(served, shapes, tmp_path):
    ann, images = shapes
    res = tdet("eval", "--model", "damo_yolo_t", "--url", served.grpc_url, "--coco", str(ann), "--images",
               str(images), "--out", str(tmp_path / "eval"))
    assert res.returncode == 0, res.stderr[-2000:]
    warning = [line for line in res.stderr.splitlines() if line.startswith("warning: the served classes")]
    assert len(warning) == 1, res.stderr[-2000:]
    names = {c["id"]: c["name"] for c in json.loads(ann.read_text())["categories"]}
    first = min(names)
    assert f"{first}={names[first]} vs {COCO_CLASSES[COCO_CATEGORY_IDS.index(first)]}" in warning[0]
    assert f"{80 - len(names)} served id(s) are not in the dataset" in warning[0]
    assert "AP" in res.stdout  # the metrics are still printed


def test_eval_per_class_matches_the_overall_ap_and_no_warning_for_matching_classes(served, as_coco, tmp_path):
    """Per-category AP in percent for each dataset category; their mean over the categories with ground truth
    is the overall AP (COCOeval averages the same precision entries)."""
    ann, images = as_coco
    out = tmp_path / "eval"
    res = tdet("eval", "--model", "damo_yolo_t", "--url", served.grpc_url, "--coco", str(ann), "--images",
               str(images), "--out", str(out), "--per-class")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "warning: the served classes" not in res.stderr
    saved = json.loads((out / "metrics.json").read_text())
    per_class = saved["per_class_ap"]
    coco = json.loads(ann.read_text())
    with_gt = {a["category_id"] for a in coco["annotations"]}
    assert set(per_class) == {str(c["id"]) for c in coco["categories"]}
    assert all((v is None) == (int(c) not in with_gt) for c, v in per_class.items())
    values = [v for v in per_class.values() if v is not None]
    overall = saved["metrics"]["AP"]
    assert sum(values) / len(values) == pytest.approx(overall, rel=1e-6, abs=1e-9)
    lines = res.stdout.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("AP per category in %")))
    for c in coco["categories"]:
        row = next(line for line in lines[start:] if line.split()[:2] == [str(c["id"]), c["name"].split()[0]])
        v = per_class[str(c["id"])]
        assert row.split()[-1] == ("-" if v is None else f"{100 * v:.2f}"), row


def test_eval_per_class_is_off_by_default(served, as_coco, tmp_path):
    ann, images = as_coco
    out = tmp_path / "eval"
    res = tdet("eval", "--model", "damo_yolo_t", "--url", served.grpc_url, "--coco", str(ann), "--images",
               str(images), "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "AP per category" not in res.stdout
    assert "per_class_ap" not in json.loads((out / "metrics.json").read_text())


def test_class_mismatch_names_missing_ids_on_each_side():
    """Dataset ids the model lacks and served ids the dataset lacks are both named; matching classes (names
    compared without case) give no warning; a model that does not say its classes gives none."""
    served = {1: "person", 2: "bicycle", 3: "car"}
    assert class_mismatch(served, {1: "Person", 3: "car"}) is None
    msg = class_mismatch(served, {1: "person", 7: "truck"})
    assert msg and "1 of the dataset's 2 category ids are not served" in msg and "7=truck" in msg
    assert "2 served id(s) are not in the dataset: 2=bicycle, 3=car" in msg
    assert class_mismatch({}, {1: "x"}) is None


def test_a_dataset_folder_for_the_annotations_names_the_json_files_inside(served, shapes, tmp_path):
    ann, images = shapes  # synthesize writes <root>/annotations.json next to <root>/images
    res = tdet("eval", "--model", "damo_yolo_t", "--url", served.grpc_url, "--coco", str(ann.parent), "--images",
               str(images), "--out", str(tmp_path / "eval"))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert f"{ann.parent} is a folder: pass the COCO annotations .json file; found there: {ann}" in res.stderr
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_export_records_a_local_checkpoint_by_its_absolute_path(tmp_path, monkeypatch):
    # the served `weights` parameter was the path as typed: `eval --reference` run from another folder could not
    # find "demo/damo-yolo-t.pth" and asked for --weights
    import onnx

    from tdet.client.specs import META_WEIGHTS
    from tdet.training.export import export_onnx
    from tdet.training.reference import TorchReference

    demo = Path(__file__).resolve().parents[1] / "training" / "demo"
    monkeypatch.chdir(demo.parent)
    res = export_onnx("damo-yolo-t", tmp_path / "m.onnx", weights="demo/damo-yolo-t.pth")
    assert res.weights == str(demo / "damo-yolo-t.pth")
    assert {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}[META_WEIGHTS] == res.weights
    monkeypatch.chdir(tmp_path)
    reference = TorchReference("damo-yolo-t")
    reference.check("m", {"variant": "damo-yolo-t", "weights": res.weights})  # raised UserError: not on this machine
    assert reference._build == (res.weights, 0)


def test_reference_refuses_a_checkpoint_retrained_since_the_model_was_built(tmp_path):
    # `eval --reference` loaded whatever the served path held now: a best.pth retrained after the build made the
    # reference disagree with the server, and the report blamed serving
    import shutil

    import torch

    from tdet.ensembles.builder import build_repository
    from tdet.ensembles.configs import read_config
    from tdet.training.export import export_onnx
    from tdet.training.reference import TorchReference
    from tdet.training.registry import build_model

    demo = Path(__file__).resolve().parents[1] / "training" / "demo" / "damo-yolo-t.pth"
    ckpt, kept = tmp_path / "best.pth", tmp_path / "served-copy.pth"
    shutil.copy(demo, ckpt)
    shutil.copy(demo, kept)
    build_repository([export_onnx("damo-yolo-t", tmp_path / "m.onnx", weights=ckpt).path], tmp_path / "repo")
    served = {k: v.string_value for k, v in read_config(tmp_path / "repo" / "damo_yolo_t" / "config.pbtxt")
              .parameters.items()}
    TorchReference("damo-yolo-t").check("damo_yolo_t", served)  # the same file: fine
    torch.save({"model": build_model("damo-yolo-t", seed=3).state_dict()}, ckpt)  # retrained into the same path
    with pytest.raises(UserError, match=r"the served checkpoint .*best\.pth \(sha256 \w+\) is not the checkpoint "
                                        r"damo_yolo_t was built from .*changed since"):
        TorchReference("damo-yolo-t").check("damo_yolo_t", served)
    with pytest.raises(UserError, match="--weights .* is not the checkpoint damo_yolo_t was built from"):
        TorchReference("damo-yolo-t", str(ckpt)).check("damo_yolo_t", served)
    reference = TorchReference("damo-yolo-t", str(kept))  # a copy of the served checkpoint elsewhere: fine
    reference.check("damo_yolo_t", served)
    assert reference._build == (str(kept), 0)
