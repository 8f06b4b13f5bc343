"""Benchmark: the DAMO-YOLO postprocess's class-aware NMS per image, old (one numpy IoU row per kept box,
tdet.client.boxes.nms) vs new (blocked, tdet.client.postprocess.batched_nms: the same kept indices,
tests/test_nms.py), side by side in one run, with OpenCV's compiled cv2.dnn.NMSBoxesBatched as a
reference row (not used: double-precision IoU on class-offset boxes, so not the same decisions at the
threshold; the run counts the images where its kept set differs).

Candidate sets like DAMO-YOLO's above conf 0.05: clusters of jittered boxes around 5-25 objects in a
320x320 input, multi-label (a box in several classes), ~1,000 candidates, a few classes or 80.
max_det 100, IoU 0.7 (the served defaults). Median over images of the median of `--reps` calls.

    python bench/nms_speed.py [--images 20] [--reps 5] [--candidates 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import cv2
import numpy as np

from tdet.client.boxes import nms as old_nms
from tdet.client.postprocess import batched_nms


def candidates(rng: np.random.Generator, n: int, classes: int):
    objects = int(rng.integers(5, 26))
    centre, size = rng.uniform(20, 300, (objects, 2)), rng.uniform(8, 160, (objects, 2))
    obj = rng.integers(0, objects, n)
    c = centre[obj] + rng.normal(0, 0.12, (n, 2)) * size[obj]
    wh = size[obj] * rng.uniform(0.75, 1.25, (n, 2))
    boxes = np.clip(np.concatenate([c - wh / 2, c + wh / 2], 1), 0, 320).astype(np.float32)
    labels = np.where(rng.random(n) < 0.75, (obj * 7) % classes, rng.integers(0, classes, n)).astype(np.int64)
    scores = (0.05 + 0.9 * rng.random(n) ** 3).astype(np.float32)
    return boxes, scores, labels


def timed(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def opencv_nms(boxes, scores, labels, iou, max_det):
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).astype(np.float64)
    keep = cv2.dnn.NMSBoxesBatched(xywh, scores, labels.astype(np.int32), 0.0, iou, top_k=0)
    return np.asarray(keep, np.int64).reshape(-1)[:max_det]


def measure(classes: int, n: int, images: int, reps: int, iou: float = 0.7, max_det: int = 100) -> dict:
    rng = np.random.default_rng(classes)
    rows: dict[str, list[float]] = {"old_ms": [], "new_ms": [], "opencv_ms": []}
    opencv_differs = 0
    for _ in range(images):
        b, s, lab = candidates(rng, n, classes)
        old = old_nms(b, s, iou, labels=lab, max_keep=max_det)
        new = batched_nms(b, s, lab, iou, max_keep=max_det)
        if old.tolist() != new.tolist():
            raise AssertionError("new NMS differs from the old one")  # tests/test_nms.py should have caught it
        opencv_differs += opencv_nms(b, s, lab, iou, max_det).tolist() != old.tolist()
        rows["old_ms"].append(timed(lambda: old_nms(b, s, iou, labels=lab, max_keep=max_det), reps))
        rows["new_ms"].append(timed(lambda: batched_nms(b, s, lab, iou, max_keep=max_det), reps))
        rows["opencv_ms"].append(timed(lambda: opencv_nms(b, s, lab, iou, max_det), reps))
    out = {"classes": classes, "candidates": n, "images": images, **{k: statistics.median(v) for k, v in rows.items()}}
    out["speedup"] = out["old_ms"] / out["new_ms"]
    out["opencv_kept_differs_on"] = f"{opencv_differs}/{images}"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--candidates", type=int, default=1000)
    args = ap.parse_args(argv)
    results = [measure(c, args.candidates, args.images, args.reps) for c in (3, 80)]
    print("| classes | candidates | old NMS | new NMS | speed-up | OpenCV (reference, not exact) "
          "| OpenCV kept differs |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['classes']} | {r['candidates']} | {r['old_ms']:.2f} ms | {r['new_ms']:.2f} ms | "
              f"{r['speedup']:.1f}x | {r['opencv_ms']:.2f} ms | {r['opencv_kept_differs_on']} |")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
