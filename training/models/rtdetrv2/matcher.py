"""Hungarian matcher (src/zoo/rtdetr/matcher.py, focal-loss form): per image, a one-to-one assignment of
queries to ground-truth boxes minimising cost_class * focal class cost + cost_bbox * L1 + cost_giou * (-GIoU)."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..box_ops import pairwise_giou
from .box_ops import cxcywh_to_xyxy

Indices = list[tuple[torch.Tensor, torch.Tensor]]


class HungarianMatcher(nn.Module):
    def __init__(self, *, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 alpha: float = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.alpha, self.gamma = alpha, gamma

    def cost_matrix(self, logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                    gt_boxes: torch.Tensor) -> torch.Tensor:
        """Predictions logits [N,C], boxes [N,4] against GTs gt_boxes [M,4] (normalized cxcywh), labels
        int64 [M] -> cost [N,M]. The class term is the focal loss of predicting the GT class minus that of not
        predicting it, so confident right classes get negative cost."""
        prob = logits.sigmoid()[:, labels]
        neg = (1 - self.alpha) * prob ** self.gamma * -(1 - prob + 1e-8).log()
        pos = self.alpha * (1 - prob) ** self.gamma * -(prob + 1e-8).log()
        cost_l1 = torch.cdist(boxes, gt_boxes, p=1)
        cost_giou = -pairwise_giou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(gt_boxes), eps=None)
        return self.cost_bbox * cost_l1 + self.cost_class * (pos - neg) + self.cost_giou * cost_giou

    @torch.no_grad()
    def forward(self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> Indices:
        """outputs: pred_logits [B,Q,C], pred_boxes [B,Q,4]; targets: per image boxes [M,4] (normalized
        cxcywh), labels [M]. -> per image (query indices, gt indices), int64 CPU tensors [min(Q, M)] each,
        sorted by query index. FloatingPointError on non-finite costs (a diverged model).

        As the official: one cost matrix of all queries against all GTs of the batch (few large kernels,
        one device-to-host copy), of which each image uses its own [Q, M_i] block."""
        bs, num_queries = outputs["pred_logits"].shape[:2]
        sizes = [len(t["labels"]) for t in targets]
        if sum(sizes) == 0:
            return [(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)) for _ in sizes]
        dtype = torch.promote_types(outputs["pred_logits"].dtype, torch.float32)  # fp32 (fp64 in checks)
        cost = self.cost_matrix(outputs["pred_logits"].flatten(0, 1).to(dtype),
                                outputs["pred_boxes"].flatten(0, 1).to(dtype),
                                torch.cat([t["labels"] for t in targets]),
                                torch.cat([t["boxes"] for t in targets]).to(dtype))
        cost = cost.view(bs, num_queries, -1).cpu()
        if not torch.isfinite(cost).all():
            raise FloatingPointError("non-finite matching cost: NaN/inf in the predictions or target boxes")
        indices: Indices = []
        for i, block in enumerate(cost.split(sizes, -1)):
            rows, cols = linear_sum_assignment(block[i].numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
