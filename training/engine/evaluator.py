"""Periodic COCO evaluation of the (EMA) model during training, in-process.

The numbers are the ones `tdet eval` reports through Triton: the same stretch resize (the served
preprocessing code), the same numpy postprocess (thresholds, NMS, top K, boxes mapped back to original
pixels), the same pycocotools COCOeval and its 12 metrics. So the AP a run reports is the AP its export
serves, up to engine float noise.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from tdet.client.evaluation import coco_metrics, to_coco_results
from tdet.client.postprocess import Detections, postprocess_one
from tdet.client.preprocess import to_float_input
from tdet.client.specs import preprocess_spec



def postprocess_kwargs(eval_cfg: dict) -> dict:
    """Recipe `eval` section -> postprocess_one keyword arguments."""
    names = {"score_threshold": "score_thr", "iou_threshold": "iou", "max_detections": "max_det"}
    unknown = set(eval_cfg) - set(names)
    if unknown:
        raise ValueError(f"unknown recipe eval key(s) {sorted(unknown)}; known: {sorted(names)}")
    return {names[k]: v for k, v in eval_cfg.items()}


@torch.no_grad()
def predict(export_model: nn.Module, family: str, images: np.ndarray | torch.Tensor, orig_hw: list[tuple[int, int]],
            input_hw: tuple[int, int], *, device: torch.device | str = "cpu", **post: float
            ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Run the export form of a model (fam.export_module(model), eval mode) on a batch of network inputs,
    stretch-resized to input_hw: uint8 [B,3,H,W] RGB (numpy, as the served engine gets them) or float32 already
    in the model's range -> per image (boxes xyxy original px, scores, labels 0-based), through the served
    path's numpy postprocess."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(to_float_input(images, preprocess_spec(family, input_hw)))
    outs = [o.float().cpu().numpy() for o in export_model(images.to(device))]
    return [postprocess_one(family, [o[i] for o in outs], orig_hw[i], input_hw=input_hw, **post)
            for i in range(len(orig_hw))]


def evaluate(export_model: nn.Module, family: str, batches: Iterable, coco, category_ids: list[int],
             input_hw: tuple[int, int], post: dict, *, device: torch.device | str = "cpu") -> dict[str, float]:
    """COCO metrics (AP, AP50, ... AR_large) of `export_model` over the val batches (training.data.loader
    ValBatch: images, image_ids, orig_hw); `coco` is the pycocotools COCO of the val annotations,
    `category_ids[label]` the dataset id of a contiguous label."""
    ids = np.asarray(category_ids, np.int32)
    was_training = export_model.training
    export_model.eval()
    results: list[dict] = []
    try:
        for images, image_ids, orig_hw in batches:
            sizes = [(int(h), int(w)) for h, w in orig_hw]
            for image_id, (boxes, scores, labels) in zip(
                    image_ids, predict(export_model, family, images, sizes, input_hw, device=device, **post)):
                results += to_coco_results(int(image_id), Detections(boxes, scores, ids[labels]))
    finally:
        export_model.train(was_training)
    return coco_metrics(coco, results)
