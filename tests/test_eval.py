"""`tdet eval` against the real local server: 12 COCO metrics, results that pycocotools reads back, the
in-process --reference delta, and clean failures for bad datasets and servers."""

import contextlib
import io
import json
import shutil
import subprocess
import sys

import pytest
from pycocotools.coco import COCO

from tdet.client.evaluation import METRICS, evaluate
from tdet.client.synth import synthesize


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return synthesize(root, num=4, seed=11), root / "images"


def tdet(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "tdet.client.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_eval_prints_all_metrics_and_results_round_trip(served, dataset, tmp_path):
    ann, images = dataset
    out = tmp_path / "eval"
    res = tdet("eval", "--model", "damo_yolo_t", "--url", served.grpc_url, "--coco", str(ann), "--images",
               str(images), "--out", str(out), "--concurrency", "4")
    assert res.returncode == 0, res.stderr
    for m in METRICS:
        assert f"\n{m} " in "\n" + res.stdout
    results = json.loads((out / "results.json").read_text())
    assert results, "the tame-init model produces detections"
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann))
        dt = coco.loadRes(str(out / "results.json"))
    assert set(dt.getImgIds()) <= set(coco.getImgIds())
    assert {r["category_id"] for r in results} <= set(coco.getCatIds())  # COCO ids straight from the server
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert list(metrics) == list(METRICS)
    assert not (out / "results.partial.jsonl").exists()


def test_reference_delta_matches_the_in_process_pipeline(served, dataset, tmp_path):
    ann, images = dataset
    res = evaluate("rtdetrv2_s", served.http_url, ann, images, protocol="http", concurrency=2,
                   out=tmp_path / "ref", reference="rtdetrv2-s")
    assert res.reference is not None and set(res.delta) == set(METRICS)
    assert all(abs(d) < 1e-6 or (res.metrics[m] < 0 and res.reference[m] < 0) for m, d in res.delta.items())
    served_rows = json.loads((tmp_path / "ref/results.json").read_text())
    ref_rows = json.loads((tmp_path / "ref/reference_results.json").read_text())
    assert len(served_rows) == len(ref_rows) == 4 * 100  # RT-DETRv2 always returns its top 100
    key = (lambda r: (r["image_id"], r["category_id"], round(r["score"], 3)))
    s, r = sorted(served_rows, key=key), sorted(ref_rows, key=key)
    close = sum(max(abs(a - b) for a, b in zip(x["bbox"], y["bbox"])) <= 0.5 for x, y in zip(s, r))
    assert close >= 0.95 * len(s)  # the few others: equal scores listed in another order


def test_eval_resumes_from_partial_results(served, dataset, tmp_path):
    ann, images = dataset
    out = tmp_path / "resume"
    out.mkdir()
    # an interrupted run had finished image 1 (with a marker score we can recognise)
    marker = {"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.123}
    (out / "results.partial.jsonl").write_text(json.dumps({"image_id": 1, "results": [marker]}) + "\n")
    evaluate("damo_yolo_t", served.grpc_url, ann, images, out=out)
    rows = json.loads((out / "results.json").read_text())
    assert [r for r in rows if r["image_id"] == 1] == [marker]
    assert {r["image_id"] for r in rows} - {1}


@pytest.mark.parametrize("case", ["missing_image", "unannotated_image", "unreachable", "unknown_model"])
def test_eval_faults_exit_cleanly(served, dataset, tmp_path, case):
    ann, images = dataset
    url, model = served.grpc_url, "damo_yolo_t"
    if case in ("missing_image", "unannotated_image"):
        copy = tmp_path / "images"
        shutil.copytree(images, copy)
        images = copy
        if case == "missing_image":
            (copy / "000002.jpg").unlink()
        else:
            shutil.copy(copy / "000000.jpg", copy / "stray.jpg")
    elif case == "unreachable":
        from tdet.ensembles.server import free_port

        url = f"127.0.0.1:{free_port()}"
    else:
        model = "yolo_v99"
    res = tdet("eval", "--model", model, "--url", url, "--coco", str(ann), "--images", str(images),
               "--out", str(tmp_path / "out"), timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    expected = {"missing_image": "missing from", "unannotated_image": "absent from", "unreachable": "cannot reach",
                "unknown_model": "yolo_v99"}[case]
    assert expected in res.stderr
    assert not (tmp_path / "out" / "results.json").exists()
