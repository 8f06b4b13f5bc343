"""Reference (PyTorch) DAMO-YOLO postprocess, as the official eval: multi-label candidates above a score
threshold, class-aware NMS, top-K. The served path does the same in numpy (tdet.client.postprocess);
tests check the two agree."""

from __future__ import annotations

import torch


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix [N, M] of xyxy boxes."""
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp_min(1e-12)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """Greedy NMS; returns kept indices sorted by descending score (ties: lower index first)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order]
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    ious = box_iou(boxes, boxes)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= ious[i] > iou
    return order[torch.tensor(keep, dtype=torch.long)] if keep else order[:0]


def postprocess(scores: torch.Tensor, boxes: torch.Tensor, *, score_thr: float = 0.05, iou: float = 0.7,
                max_det: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image: scores [N,C], boxes [N,4] xyxy -> (boxes [K,4], scores [K], labels [K] 0-based), K<=max_det."""
    idx, labels = torch.nonzero(scores > score_thr, as_tuple=True)
    cand_boxes, cand_scores = boxes[idx], scores[idx, labels]
    # class-aware NMS: shift each class to its own region so boxes of different classes never overlap
    offset = labels.to(boxes.dtype)[:, None] * (cand_boxes.abs().max() + 1 if len(idx) else 0)
    keep = nms(cand_boxes + offset, cand_scores, iou)[:max_det]
    return cand_boxes[keep], cand_scores[keep], labels[keep]
