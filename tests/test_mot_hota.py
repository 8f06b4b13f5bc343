"""HOTA, DetA, AssA, LocA in tdet.client.mot_eval (TrackEval's HOTA class fed per-frame arrays), checked against
the definitions of the HOTA paper (Luiten et al., IJCV 2021) on tiny clips; no server."""

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("motmetrics")
pytest.importorskip("trackeval")

from tdet.client.mot_eval import mot_metrics

ALPHAS = np.arange(1, 20) * 0.05  # the paper's localisation thresholds 0.05, 0.10, ..., 0.95


def _write_mot(path, rows, gt=False):
    tail = "1,1,1" if gt else "1,-1,-1,-1"  # gt: conf 1 (scored), class, visibility; results: conf, x, y, z
    path.write_text("".join(f"{f},{i},{x:g},{y:g},{w:g},{h:g},{tail}\n" for f, i, x, y, w, h in rows))
    return path


def _write_jsonl(path, rows, frames):
    """The project's tracked JSONL (frames from 0, xyxy boxes) of MOT rows (frames from 1, xywh)."""
    lines = [json.dumps({"frame": f - 1, "detections": [{"box": [x, y, x + w, y + h], "track_id": i}
                                                        for ff, i, x, y, w, h in rows if ff == f]})
             for f in range(1, frames + 1)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _gt(frames, objects=1):
    """`objects` 40x40 boxes moving right, over frames 1..frames (MOT rows: frame, id, x, y, w, h)."""
    return [(f, i, 10 + 4 * f + 100 * i, 20 + 3 * i, 40, 40) for f in range(1, frames + 1)
            for i in range(1, objects + 1)]


def test_perfect_tracks_score_one(tmp_path):
    gt = _gt(12, objects=3)
    m = mot_metrics(_write_mot(tmp_path / "gt.txt", gt, gt=True), _write_mot(tmp_path / "same.txt", gt))
    for k in ("hota", "deta", "assa", "loca", "mota", "idf1"):
        assert m[k] == pytest.approx(1.0, rel=1e-9), k


def test_id_swap_halfway_matches_the_hota_definition(tmp_path):
    """One object over N frames, tracked exactly, its id changing after k frames. Every detection is a TP at every
    alpha (IoU 1), so DetA = 1. A TP c of the first id has TPA(c) = k, FNA(c) = N - k, FPA(c) = 0, so
    A(c) = k / N; one of the second id: (N - k) / N. AssA = mean of A(c) over the N TPs; HOTA = sqrt(DetA AssA)."""
    n, k = 10, 4
    gt = _gt(n)
    tracked = [(f, 7 if f <= k else 9, x, y, w, h) for f, _, x, y, w, h in gt]
    m = mot_metrics(_write_mot(tmp_path / "gt.txt", gt, gt=True), _write_mot(tmp_path / "t.txt", tracked))
    ass_a = (k * (k / n) + (n - k) * ((n - k) / n)) / n
    assert m["deta"] == pytest.approx(1.0, rel=1e-9) and m["loca"] == pytest.approx(1.0, rel=1e-9)
    assert m["assa"] == pytest.approx(ass_a, rel=1e-9)
    assert m["hota"] == pytest.approx(np.sqrt(1.0 * ass_a), rel=1e-9)
    assert m["num_switches"] == 1 and m["mota"] == pytest.approx(1 - 1 / n, rel=1e-9)  # CLEAR: 1 switch in N


def test_jsonl_and_mot_txt_of_the_same_tracks_score_the_same(tmp_path):
    """JSONL frames from 0 and xyxy boxes vs MOTChallenge frames from 1 and xywh: the same tracks, the same numbers
    (HOTA and the motmetrics ones, MOTP included: both read the boxes in the same pixel frame)."""
    frames = 15
    gt = _gt(frames, objects=2)
    rng = np.random.default_rng(3)
    shift = np.round(rng.uniform(-6, 6, (len(gt), 2)), 2)  # 2 decimals: the txt holds them exactly
    keep = rng.random(len(gt)) > 0.15
    tracked = [(f, i if f <= 8 else 3 - i, x + dx, y + dy, w, h)  # some misses, an id swap, jittered boxes
               for (f, i, x, y, w, h), (dx, dy), k in zip(gt, shift, keep) if k]
    tracked.append((5, 4, 250.0, 150.0, 30.0, 30.0))  # a false positive
    gt_txt = _write_mot(tmp_path / "gt.txt", gt, gt=True)
    txt = mot_metrics(gt_txt, _write_mot(tmp_path / "t.txt", tracked))
    jsonl = mot_metrics(gt_txt, _write_jsonl(tmp_path / "t.jsonl", tracked, frames))
    assert 0 < txt["hota"] < 1 and 0 < txt["assa"] < 1 and 0 < txt["loca"] < 1
    assert jsonl == pytest.approx(txt, rel=1e-6)


def test_shifted_boxes_lower_loca_and_the_thresholds_they_pass(tmp_path):
    """Every track box shifted 7 px right of its 40x40 gt box: IoU = 33*40 / (2*1600 - 33*40) ~ 0.70 (far from a
    threshold). At the alphas <= IoU every detection matches (DetA = AssA = 1, LocA = IoU); above, none does
    (DetA = AssA = 0, and TrackEval sets LocA to 1 where nothing matched). Each metric is the mean over alphas."""
    gt = _gt(8)
    tracked = [(f, 5, x + 7, y, w, h) for f, _, x, y, w, h in gt]
    m = mot_metrics(_write_mot(tmp_path / "gt.txt", gt, gt=True), _write_mot(tmp_path / "t.txt", tracked))
    iou = 33 * 40 / (2 * 1600 - 33 * 40)
    passed = float(np.sum(ALPHAS <= iou)) / len(ALPHAS)  # 14 of the 19 thresholds
    assert m["deta"] == pytest.approx(passed, rel=1e-9) and m["assa"] == pytest.approx(passed, rel=1e-9)
    assert m["hota"] == pytest.approx(passed, rel=1e-9)
    assert m["loca"] == pytest.approx(passed * iou + (1 - passed), rel=1e-9) and m["loca"] < 1
    assert m["motp"] == pytest.approx(1 - iou, rel=1e-6) and m["mota"] == pytest.approx(1.0)  # matched at IoU 0.5


def test_trackeval_imports_nothing_heavy():
    """The mot extra stays client-side: importing TrackEval and mot_eval loads no torch, OpenCV's GUI
    build, scikit-image or matplotlib (its declared deps, skipped by the --no-deps install)."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import trackeval, tdet.client.mot_eval\n"
            "loaded = {m.split('.')[0] for m, mod in sys.modules.items() if mod is not None}\n"
            "print(sorted(loaded & {'torch', 'skimage', 'matplotlib', 'cv2'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
