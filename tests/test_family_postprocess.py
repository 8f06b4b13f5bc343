"""The client side's per-family behaviour is one table (tdet.client.postprocess.FAMILY_POSTPROCESS): what the
served postprocess runs, whether `iou` means anything, the official COCO protocol; client and ensembles code
hold no branch on a family's name."""

import re
from pathlib import Path

import numpy as np
import pytest

from tdet.client.evaluation import eval_parameters
from tdet.client.postprocess import (
    FAMILY_POSTPROCESS,
    postprocess_damo_yolo,
    postprocess_one,
    postprocess_rtdetrv2,
)
from tdet.client.specs import FAMILIES

ROOT = Path(__file__).parents[1]


def test_client_and_ensembles_do_not_branch_on_family_names():
    files = [f for d in ("client", "ensembles") for f in (ROOT / d).rglob("*.py")]
    pattern = re.compile(r"family\s*[!=]=|FAMILY\s*[!=]=|[!=]=\s*(DAMO_YOLO|RTDETRV2)\b")
    hits = [f"{f.relative_to(ROOT)}:{i}" for f in files for i, line in enumerate(f.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert hits == []


def test_every_family_has_its_postprocess_behaviour():
    assert set(FAMILY_POSTPROCESS) == set(FAMILIES)
    with pytest.raises(ValueError, match="unknown family 'yolo'"):
        postprocess_one("yolo", [], (10, 10))


def test_postprocess_one_runs_the_familys_own_postprocess():
    rng = np.random.default_rng(0)
    scores = rng.random((50, 3), dtype=np.float32)
    xy = rng.random((50, 2), dtype=np.float32) * 500
    boxes = np.concatenate([xy, xy + 20 + rng.random((50, 2), dtype=np.float32) * 100], 1)
    got = postprocess_one("damo-yolo", [scores, boxes], (480, 640), conf=0.3, iou=0.5, max_det=20)
    want = postprocess_damo_yolo(scores, boxes, (480, 640), conf=0.3, iou=0.5, max_det=20)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    logits = rng.standard_normal((30, 3)).astype(np.float32)
    cxcywh = rng.random((30, 4), dtype=np.float32)
    got = postprocess_one("rtdetrv2", [logits, cxcywh], (480, 640), iou=0.01, max_det=10)  # no NMS: iou unused
    want = postprocess_rtdetrv2(logits, cxcywh, (480, 640), conf=0.0, max_det=10)  # the official: no threshold
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert len(got[1]) == 10


def test_eval_sends_iou_only_to_a_family_with_nms():
    assert eval_parameters("damo-yolo", iou=0.6) == {"conf": 0.05, "iou": 0.6, "clip": False}
    assert eval_parameters("rtdetrv2", conf=0.2, iou=0.6) == {"conf": 0.2, "clip": False}
