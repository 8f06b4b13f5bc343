"""Periodic COCO evaluation of the (EMA) model during training, in-process.

The numbers are the ones `tdet eval` reports through Triton: the same stretch resize (the served
preprocessing code, in the val loader), the same uint8 network input, the same numpy postprocess
(thresholds, NMS, top K, boxes mapped back to original pixels: training.reference.predict), the same
pycocotools COCOeval and its 12 metrics. So the AP a run reports is the AP its export serves, up to
engine float noise.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from torch import nn

from tdet.client.evaluation import coco_metrics, to_coco_results
from tdet.client.optionfields import from_settings
from tdet.client.options import DetectOptions
from tdet.client.postprocess import Detections

from ..reference import predict


def postprocess_kwargs(eval_cfg: dict) -> dict:
    """Recipe `eval` section (DetectOptions' setting names: score_threshold, iou_threshold, max_detections,
    clip) -> the postprocess keyword arguments given there (predict's conf, iou, max_det, clip)."""
    return from_settings(DetectOptions, eval_cfg, what="recipe eval key", strict=True)


def evaluate(model: nn.Module, family: str, batches: Iterable, coco, category_ids: list[int],
             input_hw: tuple[int, int], post: dict) -> dict[str, float]:
    """COCO metrics (AP, AP50, ... AR_large) of `model` (the family's detector, put in eval mode here) over the
    val batches (training.data.loader.ValBatch); `coco` is the pycocotools COCO of the val annotations,
    `category_ids[label]` the dataset id of a contiguous label."""
    ids = np.asarray(category_ids, np.int32)
    was_training = model.training
    model.eval()
    results: list[dict] = []
    try:
        for images, image_ids, orig_hw in batches:
            sizes = [(int(h), int(w)) for h, w in orig_hw]
            for image_id, (boxes, scores, labels) in zip(image_ids, predict(model, family, images, sizes, input_hw,
                                                                            **post)):
                results += to_coco_results(int(image_id), Detections(boxes, scores, ids[labels]))
    finally:
        model.train(was_training)
    return coco_metrics(coco, results)
