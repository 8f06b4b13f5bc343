"""Hungarian matcher (src/zoo/rtdetr/matcher.py, focal-loss form): a one-to-one assignment of queries to
ground-truth boxes minimising cost_class * focal class cost + cost_bbox * L1 + cost_giou * (-GIoU)."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .box_ops import cxcywh_to_xyxy, pairwise_generalized_iou

Indices = list[tuple[torch.Tensor, torch.Tensor]]


class HungarianMatcher(nn.Module):
    def __init__(self, *, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 alpha: float = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.alpha, self.gamma = alpha, gamma

    def cost_matrix(self, logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                    gt_boxes: torch.Tensor) -> torch.Tensor:
        """One image: logits [Q,C], boxes [Q,4] and gt_boxes [M,4] normalized cxcywh, labels int64 [M]
        -> cost [Q,M]. The class term is the focal loss of predicting the GT class minus that of not
        predicting it, so confident right classes get negative cost."""
        prob = logits.sigmoid()[:, labels]
        neg = (1 - self.alpha) * prob ** self.gamma * -(1 - prob + 1e-8).log()
        pos = self.alpha * (1 - prob) ** self.gamma * -(prob + 1e-8).log()
        cost_l1 = torch.cdist(boxes, gt_boxes, p=1)
        cost_giou = -pairwise_generalized_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(gt_boxes))
        return self.cost_bbox * cost_l1 + self.cost_class * (pos - neg) + self.cost_giou * cost_giou

    @torch.no_grad()
    def forward(self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> Indices:
        """outputs: pred_logits [B,Q,C], pred_boxes [B,Q,4]; targets: per image boxes [M,4] (normalized
        cxcywh), labels [M]. -> per image (query indices, gt indices), int64 [min(Q, M)] each, sorted by
        query index. FloatingPointError on non-finite costs (a diverged model)."""
        indices: Indices = []
        for logits, boxes, t in zip(outputs["pred_logits"], outputs["pred_boxes"], targets):
            if len(t["labels"]) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            dtype = torch.promote_types(logits.dtype, torch.float32)  # fp32, or fp64 for double-precision checks
            cost = self.cost_matrix(logits.to(dtype), boxes.to(dtype), t["labels"], t["boxes"].to(dtype)).cpu()
            if not torch.isfinite(cost).all():
                raise FloatingPointError("non-finite matching cost: NaN/inf in the predictions or target boxes")
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
