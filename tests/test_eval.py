"""`tdet eval` against the real local server: 12 COCO metrics, results that pycocotools reads back, the
in-process --reference delta, and clean failures for bad datasets and servers."""

import contextlib
import io
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
from pycocotools.coco import COCO

from tdet.client.evaluation import METRICS, _dataset_key, evaluate
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
    header = json.dumps({"key": _dataset_key("damo_yolo_t", ann)})
    (out / "results.partial.jsonl").write_text(header + "\n" + json.dumps({"image_id": 1, "results": [marker]}) + "\n")
    evaluate("damo_yolo_t", served.grpc_url, ann, images, out=out)
    rows = json.loads((out / "results.json").read_text())
    assert [r for r in rows if r["image_id"] == 1] == [marker]
    assert {r["image_id"] for r in rows} - {1}
    # a partial run of another model in the same folder is never mixed in
    header = json.dumps({"key": _dataset_key("rtdetrv2_s", ann)})
    (out / "results.partial.jsonl").write_text(header + "\n" + json.dumps({"image_id": 1, "results": [marker]}) + "\n")
    evaluate("damo_yolo_t", served.grpc_url, ann, images, out=out)
    assert marker not in json.loads((out / "results.json").read_text())


def test_served_detections_as_ground_truth_score_perfectly(served, dataset, tmp_path):
    """A non-vacuous mAP (random-init weights score ~0 on the synthetic shapes): ground truth made from the
    client's own detections (xyxy -> xywh here, independently of eval) must give AP 1 through `evaluate`,
    so image ids, category ids and box format all survive the eval path; a one-off category id must not."""
    from tdet.client.triton import connect

    ann, images = dataset
    gt = json.loads(ann.read_text())
    rows = []
    with connect(served.grpc_url, "damo_yolo_t") as client:
        for img in gt["images"]:
            dets = client.infer((images / img["file_name"]).read_bytes())
            for (x1, y1, x2, y2), s, c in zip(dets.boxes.tolist(), dets.scores, dets.category_ids):
                if s >= 0.2:
                    rows.append({"id": len(rows) + 1, "image_id": img["id"], "category_id": int(c), "iscrowd": 0,
                                 "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    assert len(rows) >= 4
    pseudo = tmp_path / "pseudo.json"
    pseudo.write_text(json.dumps(dict(gt, annotations=rows)))
    res = evaluate("damo_yolo_t", served.grpc_url, pseudo, images, out=tmp_path / "p")
    assert res.metrics["AP"] > 0.99 and res.metrics["AR100"] > 0.99
    shifted = [dict(r, category_id=r["category_id"] + 1) for r in rows]
    pseudo.write_text(json.dumps(dict(gt, annotations=shifted)))
    assert evaluate("damo_yolo_t", served.grpc_url, pseudo, images, out=tmp_path / "q").metrics["AP"] < 0.5


def test_ctrl_c_stops_promptly_and_keeps_finished_images(served, tmp_path):
    ann = synthesize(tmp_path / "many", num=40, seed=4, size=(320, 240))
    out = tmp_path / "int"
    proc = subprocess.Popen([sys.executable, "-m", "tdet.client.cli", "eval", "--model", "rtdetrv2_s", "--url",
                             served.grpc_url, "--coco", str(ann), "--images", str(tmp_path / "many/images"), "--out",
                             str(out), "--concurrency", "1"], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    partial = out / "results.partial.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not partial.is_file() or len(partial.read_text().splitlines()) < 2):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert time.monotonic() - t0 < 10  # not after all 40 images
    assert not (out / "results.json").exists() and len(partial.read_text().splitlines()) >= 2


def test_reference_problems_fail_before_any_image_is_sent(served, dataset, tmp_path):
    ann, images = dataset
    for ref, weights, msg in (("rtdetrv2-x9", None, "unknown variant"), ("rtdetrv2-s", None, "serves damo-yolo-t"),
                              ("damo-yolo-t", str(tmp_path / "nope.pth"), "--weights file not found")):
        with pytest.raises((ValueError, FileNotFoundError), match=msg):
            evaluate("damo_yolo_t", served.grpc_url, ann, images, out=tmp_path / "r", reference=ref, weights=weights)
        assert not (tmp_path / "r" / "results.partial.jsonl").exists()


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
