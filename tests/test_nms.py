"""The DAMO-YOLO postprocess's blocked class-aware NMS (tdet.client.postprocess.batched_nms) keeps exactly
the boxes, in the same order, of the one-IoU-row-per-kept-box greedy NMS it replaced (kept below as the
oracle), of the PyTorch reference (training/models/damo_yolo/postprocess.py) and, where it loads, of
torchvision's batched_nms: crowded, tied, IoU-at-threshold, zero-area, chained and empty cases."""

from __future__ import annotations

import numpy as np
import pytest

from tdet.client.boxes import nms as old_nms  # the greedy NMS the served path used before: the oracle
from tdet.client.postprocess import batched_nms, postprocess_damo_yolo


def crowded(seed: int, n: int = 600, objects: int = 12, classes: int = 4, quantum: float | None = None):
    """Detector-like candidates: clusters of jittered boxes around a few objects, multi-label (the same
    box in several classes), scores in (0.05, 1). quantum: snap coordinates and scores to a grid, so
    exact IoU and score ties occur."""
    rng = np.random.default_rng(seed)
    centre, size = rng.uniform(20, 300, (objects, 2)), rng.uniform(4, 150, (objects, 2))
    obj = rng.integers(0, objects, n)
    c = centre[obj] + rng.normal(0, 0.15, (n, 2)) * size[obj]
    wh = size[obj] * rng.uniform(0.7, 1.3, (n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], 1)
    scores = rng.uniform(0.05, 1.0, n)
    if quantum:
        boxes, scores = np.round(boxes / quantum) * quantum, np.round(scores * 20) / 20
    labels = np.where(rng.random(n) < 0.7, obj % classes, rng.integers(0, classes, n))
    return boxes.astype(np.float32), scores.astype(np.float32), labels.astype(np.int64)


def check_same(boxes, scores, labels, iou, max_keep=None, blocks=(1, 7, 128)):
    expected = old_nms(boxes, scores, iou, labels=labels, max_keep=max_keep)
    for block in blocks:
        got = batched_nms(boxes, scores, labels, iou, max_keep=max_keep, block=block)
        assert got.dtype == np.int64
        assert got.tolist() == expected.tolist(), f"block {block}"
    return expected


@pytest.mark.parametrize("seed", range(40))
def test_crowded_random_matches_old(seed):
    classes = (1, 3, 80)[seed % 3]
    quantum = (None, 0.5, 4.0)[seed % 3 if seed % 2 else 0]
    boxes, scores, labels = crowded(seed, classes=classes, quantum=quantum)
    for iou in (0.7, 0.5, 0.3):
        for max_keep in (None, 100, 5):
            kept = check_same(boxes, scores, labels, iou, max_keep)
            assert 0 < len(kept) < len(scores)


def test_tied_scores_keep_lower_index_first():
    # identical boxes, identical scores, one class: only the lowest index survives; another class keeps its own
    boxes = np.tile(np.array([[10, 10, 50, 50]], np.float32), (6, 1))
    scores = np.full(6, 0.5, np.float32)
    labels = np.array([1, 0, 0, 1, 0, 1])
    assert check_same(boxes, scores, labels, 0.7).tolist() == [0, 1]
    # all-tied crowded set: tie order decides which boxes suppress which
    boxes, _, labels = crowded(3, n=400, quantum=2.0)
    check_same(boxes, np.full(400, 0.25, np.float32), labels, 0.5)
    check_same(boxes, np.full(400, 0.25, np.float32), labels, 0.5, max_keep=10)


def test_iou_exactly_at_threshold_is_kept():
    # IoU(a, b) = 100 / 200 = 0.5 and IoU(a, c) = 50 / 100 = 0.5 exactly: suppression is IoU > iou
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 20], [0, 0, 5, 10], [0, 0, 10, 10.5]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    labels = np.zeros(4, np.int64)
    assert check_same(boxes, scores, labels, 0.5).tolist() == [0, 1, 2]
    assert check_same(boxes, scores, labels, np.nextafter(np.float32(0.5), np.float32(0)).item()).tolist() == [0]
    # a grid of integer boxes gives many exact IoU values (1/2, 1/3, 2/3, ...) right at common thresholds
    xy = np.stack(np.meshgrid(np.arange(0, 12, 2), np.arange(0, 12, 3)), -1).reshape(-1, 2)
    boxes = np.concatenate([xy, xy + [6, 6]], 1).astype(np.float32)
    scores = np.linspace(0.9, 0.1, len(boxes)).astype(np.float32)[::-1].copy()
    for iou in (1 / 3, 0.5, 2 / 3, 0.25):
        check_same(boxes, scores, np.zeros(len(boxes), np.int64), iou)


def test_zero_area_boxes_never_suppress():
    boxes = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 0], [0, 0, 10, 10], [2, 2, 2, 9]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
    assert check_same(boxes, scores, np.zeros(5, np.int64), 0.1).tolist() == [0, 1, 2, 3, 4]


def test_chain_needs_many_passes():
    # each box overlaps only its neighbours: who survives depends on the whole chain (worst case for the
    # vectorized passes inside a block)
    x = np.arange(300, dtype=np.float32) * 3
    boxes = np.stack([x, np.zeros_like(x), x + 10, np.full_like(x, 10)], 1)
    scores = np.linspace(1, 0.05, 300).astype(np.float32)
    kept = check_same(boxes, scores, np.zeros(300, np.int64), 0.5, blocks=(1, 128, 512))
    assert kept.tolist() == list(range(0, 300, 2))


def test_empty_and_limits():
    none = np.zeros((0, 4), np.float32)
    assert batched_nms(none, np.zeros(0, np.float32), np.zeros(0, np.int64), 0.7).tolist() == []
    boxes, scores, labels = crowded(0, n=50)
    assert batched_nms(boxes, scores, labels, 0.7, max_keep=0).tolist() == []
    assert check_same(boxes, scores, labels, 0.7, max_keep=1).tolist() == [int(np.argmax(scores))]
    with pytest.raises(ValueError, match="block"):
        batched_nms(boxes, scores, labels, 0.7, block=0)


def test_postprocess_damo_yolo_same_detections_as_old_nms():
    rng = np.random.default_rng(7)
    boxes, _, _ = crowded(7, n=2100, objects=20)
    scores = (rng.random((2100, 80)) ** 8).astype(np.float32)  # ~1,000+ candidates above 0.05, 80 classes
    out_boxes, out_scores, out_labels = postprocess_damo_yolo(scores, boxes, (720, 1280), input_hw=(320, 320))
    idx, labels = np.nonzero(scores > 0.05)
    assert len(idx) > 1000
    keep = old_nms(boxes[idx], scores[idx, labels], 0.7, labels=labels, max_keep=100)
    assert out_labels.tolist() == labels[keep].tolist()
    assert out_scores.tolist() == scores[idx, labels][keep].tolist()
    expected_boxes = boxes[idx[keep]] * np.array([1280 / 320, 720 / 320] * 2, np.float32)
    np.testing.assert_allclose(out_boxes, expected_boxes, rtol=1e-6, atol=1e-6 * 1280)


@pytest.mark.parametrize("seed", range(12))
def test_matches_torch_reference(seed):
    torch = pytest.importorskip("torch")
    from tdet.training.models.damo_yolo.postprocess import nms as torch_nms

    boxes, scores, labels = crowded(100 + seed, classes=(1, 5, 80)[seed % 3], quantum=(None, 1.0)[seed % 2])
    for iou, max_keep in ((0.7, None), (0.45, 100)):
        ref = torch_nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou, labels=torch.from_numpy(labels),
                        max_keep=max_keep)
        assert batched_nms(boxes, scores, labels, iou, max_keep=max_keep).tolist() == ref.tolist()


def _torchvision_batched_nms():
    pytest.importorskip("torch")
    try:
        from torchvision.ops import batched_nms as tv_batched_nms
    except Exception as err:  # a CUDA-only wheel beside CPU torch fails to register its ops
        pytest.skip(f"torchvision not usable here: {type(err).__name__}: {err}")
    return tv_batched_nms


@pytest.mark.parametrize("seed", range(12))
def test_matches_torchvision_batched_nms(seed):
    import torch

    tv_batched_nms = _torchvision_batched_nms()
    # coordinates on a 1/4 px grid: torchvision's per-class coordinate offsets stay exact in float32
    boxes, scores, labels = crowded(200 + seed, classes=(1, 4, 80)[seed % 3], quantum=0.25)
    scores = scores + np.arange(len(scores), dtype=np.float32) * 1e-6  # torch's sort is not stable: no ties
    for iou in (0.7, 0.5):
        ref = tv_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), iou)
        assert batched_nms(boxes, scores, labels, iou).tolist() == ref.tolist()
        assert old_nms(boxes, scores, iou, labels=labels).tolist() == ref.tolist()
