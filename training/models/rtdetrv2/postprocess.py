"""Reference (PyTorch) RT-DETRv2 postprocess (RTDETRPostProcessor with focal loss): sigmoid, top-K over
queries x classes, cxcywh -> xyxy scaled to the original size. No threshold, no NMS."""

from __future__ import annotations

import torch


def postprocess(logits: torch.Tensor, boxes: torch.Tensor, orig_hw: tuple[int, int], *, max_det: int = 100
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image: logits [Q,C], boxes [Q,4] normalized cxcywh -> (boxes [K,4] xyxy original px,
    scores [K], labels [K] 0-based), K = max_det, by descending score."""
    num_classes = logits.shape[-1]
    scores, idx = torch.topk(logits.sigmoid().flatten(), max_det)
    labels, query = idx % num_classes, idx // num_classes
    cx, cy, w, h = boxes[query].unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    scale = torch.tensor([orig_hw[1], orig_hw[0], orig_hw[1], orig_hw[0]], dtype=xyxy.dtype)
    return xyxy * scale, scores, labels
