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
from pathlib import Path

import numpy as np
import pytest
from matching import assert_same_detections
from pycocotools.coco import COCO

from tdet.client.evaluation import METRICS, _dataset_key, evaluate
from tdet.client.labels import COCO_CATEGORY_IDS, COCO_CLASSES
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
    # the served (COCO) model's category ids straight from the server, no off-by-one (the synthetic set has
    # its own 6 categories: ids a COCO model does not know score 0, they are not remapped)
    assert {r["category_id"] for r in results} <= set(COCO_CATEGORY_IDS)
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert list(metrics) == list(METRICS)
    assert not (out / "results.partial.jsonl").exists()


def test_eval_conf_is_sent_with_every_request(served, dataset, tmp_path):
    """--conf replaces the official protocol's 0.05: the server keeps exactly the default run's detections
    scoring above it (a higher threshold only drops candidates, which suppress nothing above it in NMS)."""
    ann, images = dataset
    common = ("eval", "--model", "damo_yolo_t", "--url", served.grpc_url, "--coco", str(ann), "--images", str(images))
    assert tdet(*common, "--out", str(tmp_path / "default")).returncode == 0
    default = json.loads((tmp_path / "default/results.json").read_text())
    # a threshold between two scores near the median, far from both: results.json rounds scores to 1e-5
    scores = np.unique([r["score"] for r in default])
    gaps = np.flatnonzero(np.diff(scores) > 1e-3)
    k = gaps[np.argmin(np.abs(gaps - len(scores) // 2))]
    conf = float((scores[k] + scores[k + 1]) / 2)
    res = tdet(*common, "--out", str(tmp_path / "conf"), "--conf", str(conf))
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "conf/metrics.json").read_text())["parameters"]["conf"] == conf
    kept = json.loads((tmp_path / "conf/results.json").read_text())

    def rows(results):
        return sorted((r["image_id"], r["category_id"], r["score"], *r["bbox"]) for r in results)

    assert 0 < len(kept) < len(default)
    assert rows(kept) == rows([r for r in default if r["score"] > conf])


def _pseudo_ground_truth(served, ann, images, model: str, min_score: float, path) -> Path:
    """The COCO file of `ann` with the served model's own detections (score >= min_score) as ground truth
    (xyxy -> xywh here, independently of eval): a set on which a random-init model scores AP ~1, so a
    metric delta is measured at 1, not at 0."""
    from tdet.client.triton import connect

    gt = json.loads(ann.read_text())
    rows = []
    with connect(served.grpc_url, model) as client:
        for img in gt["images"]:
            dets = client.infer((images / img["file_name"]).read_bytes())
            for (x1, y1, x2, y2), s, c in zip(dets.boxes.tolist(), dets.scores, dets.category_ids):
                if s >= min_score:
                    rows.append({"id": len(rows) + 1, "image_id": img["id"], "category_id": int(c), "iscrowd": 0,
                                 "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    assert len(rows) >= 4
    categories = [{"id": c, "name": n} for c, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES)]  # what the model serves
    path.write_text(json.dumps(dict(gt, annotations=rows, categories=categories)))
    return path


def _by_image(rows: list[dict]) -> dict[int, tuple]:
    out = {}
    for image_id in {r["image_id"] for r in rows}:
        mine = [r for r in rows if r["image_id"] == image_id]
        xywh = np.array([r["bbox"] for r in mine], np.float64).reshape(-1, 4)
        out[image_id] = (np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                         np.array([r["score"] for r in mine]), np.array([r["category_id"] for r in mine]))
    return out


def test_reference_delta_matches_the_in_process_pipeline(served, dataset, tmp_path):
    from tdet.training.reference import TorchReference

    ann, images = dataset
    pseudo = _pseudo_ground_truth(served, ann, images, "rtdetrv2_s", 0.3, tmp_path / "pseudo.json")
    res = evaluate("rtdetrv2_s", served.http_url, pseudo, images, protocol="http", concurrency=2,
                   out=tmp_path / "ref", reference=TorchReference("rtdetrv2-s"))
    assert res.reference is not None and set(res.delta) == set(METRICS)
    assert res.metrics["AP"] > 0.99 and res.reference["AP"] > 0.99  # both detect what the set holds
    assert all(abs(d) < 1e-3 for d in res.delta.values()), res.delta
    served_rows = json.loads((tmp_path / "ref/results.json").read_text())
    ref_rows = json.loads((tmp_path / "ref/reference_results.json").read_text())
    assert len(served_rows) == len(ref_rows) == 4 * 100  # RT-DETRv2 always returns its top 100
    served_dets, ref_dets = _by_image(served_rows), _by_image(ref_rows)
    assert served_dets.keys() == ref_dets.keys()
    for image_id in served_dets:  # every served detection has its in-process twin (rounded to 1e-3 px, 1e-5)
        assert_same_detections(served_dets[image_id], ref_dets[image_id], scale=640, box_tol=5e-5, score_tol=1e-4,
                               what=f"image {image_id}: served vs in-process")


def test_reference_predict_batches_like_single_images(served, dataset):
    """training.reference.predict (shared with the trainer's evaluator): a batch gives each image's own
    answer, in original pixels, with the served postprocess."""
    torch = pytest.importorskip("torch")
    from tdet.client.preprocess import preprocess
    from tdet.client.specs import PREPROCESS
    from tdet.training.reference import predict
    from tdet.training.registry import build_model

    ann, images = dataset
    paths = sorted(images.glob("*.jpg"))[:3]
    pre = [preprocess(p.read_bytes(), PREPROCESS["damo-yolo"]) for p in paths]
    model = build_model("damo-yolo-t", deploy=True, seed=0).eval()
    batch = predict(model, "damo-yolo", np.stack([c for c, _ in pre]), [hw for _, hw in pre], (640, 640))
    assert sum(len(s) for _, s, _ in batch) > 0
    for (chw, hw), got in zip(pre, batch):
        want = predict(model, "damo-yolo", chw[None], [hw], (640, 640))[0]
        assert_same_detections(got, want, scale=max(hw), box_tol=1e-5, score_tol=1e-5, what="batch vs single")
        assert got[0].size == 0 or got[0][:, 2].max() < 1.5 * hw[1]  # original pixels, not 640-input pixels
    with pytest.raises(ValueError, match="eval mode"):
        predict(model.train(), "damo-yolo", pre[0][0][None], [pre[0][1]], (640, 640))
    with torch.enable_grad():  # other test modules switch grad off globally
        predict(model.eval(), "damo-yolo", pre[0][0][None], [pre[0][1]], (640, 640))
        assert torch.is_grad_enabled()  # predict's no_grad does not leak to the caller (the trainer)


def _same_results(got: list[dict], want: list[dict]) -> None:
    """COCO result rows of two runs of one model, image by image, paired (another batch composition may move
    the last bits and swap equal scores)."""
    for image_id in {r["image_id"] for r in got + want}:
        g, w = ([r for r in rows if r["image_id"] == image_id] for rows in (got, want))
        as_dets = lambda rows: (np.array([r["bbox"] for r in rows]).reshape(-1, 4),  # noqa: E731
                                [r["score"] for r in rows], [r["category_id"] for r in rows])
        assert_same_detections(as_dets(g), as_dets(w), scale=640, box_tol=1e-4, score_tol=1e-4,
                               what=f"image {image_id}")


def test_eval_resumes_from_partial_results(served, dataset, tmp_path, capsys):
    """An interrupted run's finished images are not sent again (one is, to check the model still gives its
    results); rows of another model under the same name (rebuilt from other weights), or of another model's
    run in the same folder, are never mixed in."""
    from tdet.client.triton import connect

    ann, images = dataset
    out = tmp_path / "resume"
    full = json.loads(evaluate("damo_yolo_t", served.grpc_url, ann, images, out=out).results_path.read_text())
    ids = sorted(json.loads(ann.read_text())["images"], key=lambda i: i["id"])
    rows = {i["id"]: [r for r in full if r["image_id"] == i["id"]] for i in ids}
    assert sum(map(len, rows.values())) > 0

    def interrupted(key: str, results: dict) -> None:  # as a run stopped after the first two images leaves it
        lines = [json.dumps({"key": key})] + [json.dumps({"image_id": i, "results": results[i]})
                                              for i in list(results)[:2]]
        (out / "results.partial.jsonl").write_text("\n".join(lines) + "\n")

    def requests(run) -> int:
        with connect(served.grpc_url, "damo_yolo_t") as det:
            before = int(det.statistics()["inference_count"])
            run()
            return int(det.statistics()["inference_count"]) - before

    interrupted(_dataset_key("damo_yolo_t", ann), rows)
    resumed = requests(lambda: evaluate("damo_yolo_t", served.grpc_url, ann, images, out=out))
    assert resumed == len(ids) - 2 + 1  # the rest, and one finished image again for the check
    _same_results(json.loads((out / "results.json").read_text()), full)
    assert "starting over" not in capsys.readouterr().err
    # the same name now serving other weights: its finished images answer differently, so none is kept
    marker = {"image_id": ids[0]["id"], "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.123}
    other = {i: [dict(r, score=round(r["score"] / 2, 5)) for r in rs] for i, rs in rows.items()}
    other[ids[0]["id"]] = other[ids[0]["id"]] + [marker]
    interrupted(_dataset_key("damo_yolo_t", ann), other)
    assert requests(lambda: evaluate("damo_yolo_t", served.grpc_url, ann, images, out=out)) == len(ids) + 1
    assert "holds results damo_yolo_t no longer gives" in capsys.readouterr().err
    _same_results(json.loads((out / "results.json").read_text()), full)
    # a partial run of another model in the same folder is never mixed in
    interrupted(_dataset_key("rtdetrv2_s", ann), {ids[0]["id"]: [marker], ids[1]["id"]: []})
    evaluate("damo_yolo_t", served.grpc_url, ann, images, out=out)
    assert marker not in json.loads((out / "results.json").read_text())


def test_served_detections_as_ground_truth_score_perfectly(served, dataset, tmp_path):
    """A non-vacuous mAP (random-init weights score ~0 on the synthetic shapes): ground truth made from the
    client's own detections must give AP 1 through `evaluate`, so image ids, category ids and box format
    all survive the eval path; a one-off category id must not."""
    ann, images = dataset
    pseudo = _pseudo_ground_truth(served, ann, images, "damo_yolo_t", 0.2, tmp_path / "pseudo.json")
    res = evaluate("damo_yolo_t", served.grpc_url, pseudo, images, out=tmp_path / "p")
    assert res.metrics["AP"] > 0.99 and res.metrics["AR100"] > 0.99
    gt = json.loads(pseudo.read_text())
    shifted = [dict(r, category_id=r["category_id"] + 1) for r in gt["annotations"]]
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
    _, err = proc.communicate(timeout=120)  # a hang guard, not a speed limit
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    done = len(partial.read_text().splitlines()) - 1  # after the header line
    assert not (out / "results.json").exists() and 1 <= done < 40  # stopped, not after all 40 images


def test_reference_problems_fail_before_any_image_is_sent(served, dataset, tmp_path):
    from tdet.training.reference import TorchReference

    ann, images = dataset
    with pytest.raises(ValueError, match="unknown variant"):
        TorchReference("rtdetrv2-x9")
    with pytest.raises(FileNotFoundError, match="--weights file not found"):
        TorchReference("damo-yolo-t", str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="serves damo-yolo-t"):
        evaluate("damo_yolo_t", served.grpc_url, ann, images, out=tmp_path / "r",
                 reference=TorchReference("rtdetrv2-s"))
    assert not (tmp_path / "r" / "results.partial.jsonl").exists()
    res = tdet("eval", "--model", "damo_yolo_t", "--url", served.grpc_url, "--coco", str(ann), "--images", str(images),
               "--out", str(tmp_path / "cli"), "--reference", "rtdetrv2-s", timeout=120)
    assert res.returncode == 2 and "serves damo-yolo-t" in res.stderr and "Traceback" not in res.stderr


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
