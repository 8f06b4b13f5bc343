"""AlignOTA label assignment (DAMO-YOLO's `AlignOTAAssigner`, a SimOTA variant whose classification cost
is the quality focal loss against the IoU-scaled one-hot target).

For one image:
- candidates: priors whose point lies strictly inside some GT box, or strictly within
  `center_radius` * stride of some GT centre (per axis);
- cost[prior, gt] = cls_weight * sum_c BCE(p_c, t_c) * |t_c - p_c|^2 with t = onehot(label) * IoU
  + iou_weight * -log(IoU + 1e-7) + 1e8 unless the prior is both inside that box and its centre region;
  IoU is between the prior's predicted box and the GT box;
- dynamic k per GT = max(1, int(sum of its top-10 IoUs over the candidates)); each GT takes its k
  cheapest candidates; a prior taken by several GTs keeps the one with the lowest cost (over all GTs).
Priors are grid corners (ix * stride, iy * stride), the same points the head decodes from.
`__call__` assigns one image (the reference); `batch` assigns a whole batch in one set of tensor ops (GTs
padded to the largest count) with the same result, bit for bit (tests/test_damo_yolo_batched_assigner.py);
the criterion uses `batch` on CUDA (on CPU the per-image one is faster).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..box_ops import pairwise_iou

IOU_EPS = 1e-6  # the floor on the union (and GIoU's enclosing area) of the official assigner and loss (mmdet's)
OUTSIDE_COST = 1e8  # the official INF: a pair outside box-and-centre is taken only if nothing else is left


@dataclass(frozen=True)
class Assignment:
    """gt_index [N] int64: index of the assigned GT per prior, -1 for background;
    iou [N] float32: IoU of the prior's predicted box with its assigned GT (0 for background)."""

    gt_index: torch.Tensor
    iou: torch.Tensor


def center_prior_masks(points: torch.Tensor, strides: torch.Tensor, gt_boxes: torch.Tensor,
                       center_radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(in_box, in_center), both bool [..., N, G]: prior point (x, y) [N, 2] strictly inside GT box
    [..., G, 4] (xyxy px), and strictly within center_radius * stride [N] of the GT centre on both axes."""
    x, y = points[:, 0, None], points[:, 1, None]
    x1, y1, x2, y2 = (gt_boxes[..., None, :, j] for j in range(4))  # [..., 1, G]
    in_box = torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=-1).min(dim=-1).values > 0
    cx = (x1 + x2) / 2.0
    cy = (y1 + y2) / 2.0
    r = center_radius * strides[:, None]
    in_center = torch.stack([x - (cx - r), y - (cy - r), (cx + r) - x, (cy + r) - y],
                            dim=-1).min(dim=-1).values > 0
    return in_box, in_center


def classification_cost(scores: torch.Tensor, ious: torch.Tensor, gt_labels: torch.Tensor) -> torch.Tensor:
    """sum_c BCE(p_c, t_c) * |t_c - p_c|^2 with t = onehot(label) * IoU: [..., V, G] from scores [..., V, C]
    (probabilities), ious [..., V, G], gt_labels [..., G] (a leading batch dimension or none).

    Same value as the official [V, G, C] expansion, computed as the all-zero-target sum plus the
    correction at the label class, so memory stays O(V*(G+C)) for crowded images and many classes."""
    at = gt_labels[..., None, :].expand(ious.shape)  # [..., V, G]: each GT's label, for every candidate
    background = F.binary_cross_entropy(scores, torch.zeros_like(scores), reduction="none") * scores.pow(2)
    p = scores.gather(-1, at)
    at_label = F.binary_cross_entropy(p, ious, reduction="none") * (ious - p).abs().pow(2)
    return background.sum(dim=-1, keepdim=True) - background.gather(-1, at) + at_label


class AlignOTAAssigner:
    def __init__(self, *, center_radius: float = 2.5, candidate_topk: int = 10, iou_weight: float = 3.0,
                 cls_weight: float = 1.0, eps: float = 1e-7) -> None:
        self.center_radius, self.candidate_topk = center_radius, candidate_topk
        self.iou_weight, self.cls_weight, self.eps = iou_weight, cls_weight, eps

    @torch.no_grad()
    def __call__(self, scores: torch.Tensor, points: torch.Tensor, strides: torch.Tensor,
                 pred_boxes: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor) -> Assignment:
        """One image. scores [N, C] class probabilities; points [N, 2] prior (x, y) px; strides [N];
        pred_boxes [N, 4] decoded xyxy px; gt_boxes [G, 4] xyxy px; gt_labels [G] int64 in 0..C-1."""
        n = points.shape[0]
        gt_index = torch.full((n,), -1, dtype=torch.long, device=points.device)
        iou = torch.zeros(n, dtype=torch.float32, device=points.device)
        if gt_boxes.shape[0] == 0 or n == 0:
            return Assignment(gt_index, iou)
        in_box, in_center = center_prior_masks(points, strides, gt_boxes, self.center_radius)
        candidates = torch.nonzero(in_box.any(dim=1) | in_center.any(dim=1)).squeeze(1)
        if candidates.numel() == 0:
            return Assignment(gt_index, iou)

        ious = pairwise_iou(pred_boxes[candidates], gt_boxes, eps=IOU_EPS)  # [V, G]
        cost = self._cost(scores[candidates], ious, gt_labels, (in_box & in_center)[candidates])
        matched_gt, matched = self._dynamic_k_matching(cost, ious)
        fg = candidates[matched]
        gt_index[fg] = matched_gt
        iou[fg] = ious[matched, matched_gt]
        return Assignment(gt_index, iou)

    def _cost(self, scores: torch.Tensor, ious: torch.Tensor, gt_labels: torch.Tensor,
              inside: torch.Tensor) -> torch.Tensor:
        """The matching cost [..., V, G]: classification + IoU cost, plus OUTSIDE_COST where the prior is not
        both in the GT box and in its centre region (`inside`)."""
        return (classification_cost(scores, ious, gt_labels) * self.cls_weight
                + -torch.log(ious + self.eps) * self.iou_weight + (~inside).float() * OUTSIDE_COST)

    def _dynamic_k_matching(self, cost: torch.Tensor, ious: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cost, ious [V, G] -> (GT index of each matched candidate [M], matched mask over candidates [V])."""
        topk = min(self.candidate_topk, ious.shape[0])
        ks = torch.topk(ious, topk, dim=0).values.sum(dim=0).int().clamp(min=1).tolist()
        matching = torch.zeros_like(cost, dtype=torch.bool)
        # one topk per GT with its own k, as the official: under cost ties (pairs outside box-and-centre
        # share the 1e8 float32 grid) a single topk with the largest k may pick different priors
        for g, k in enumerate(ks):
            matching[torch.topk(cost[:, g], k, largest=False).indices, g] = True
        contested = matching.sum(dim=1) > 1
        cheapest = torch.min(cost[contested], dim=1).indices  # over all GTs, not only those that took it
        matching[contested] = F.one_hot(cheapest, cost.shape[1]).bool()
        matched = matching.any(dim=1)
        return matching[matched].int().argmax(dim=1), matched

    @torch.no_grad()
    def batch(self, scores: torch.Tensor, points: torch.Tensor, strides: torch.Tensor, pred_boxes: torch.Tensor,
              gt_boxes: torch.Tensor, gt_labels: torch.Tensor, valid: torch.Tensor) -> Assignment:
        """All images at once, the same assignment as `__call__` image by image. scores [B, N, C];
        pred_boxes [B, N, 4]; gt_boxes [B, G, 4], gt_labels [B, G] padded to the largest GT count, valid
        [B, G] bool marks the real GTs. -> Assignment with gt_index and iou [B, N].

        Costs are computed for every prior (non-candidates and padded GTs masked to +inf), element by element
        as the per-image path does, so every candidate's cost has the same bits. Each GT takes its k cheapest
        candidates with ties to the lower prior index: the k-th smallest cost is a value (which topk gives
        whatever its tie order), then the ties at that value are taken in index order."""
        b, n = scores.shape[:2]
        gt_index = torch.full((b, n), -1, dtype=torch.long, device=scores.device)
        iou = torch.zeros((b, n), dtype=torch.float32, device=scores.device)
        if gt_boxes.shape[1] == 0 or n == 0:
            return Assignment(gt_index, iou)
        in_box, in_center = center_prior_masks(points, strides, gt_boxes, self.center_radius)  # [B, N, G]
        in_box, in_center = in_box & valid[:, None], in_center & valid[:, None]
        candidate = (in_box.any(dim=2) | in_center.any(dim=2))[:, :, None]  # [B, N, 1]
        ious = pairwise_iou(pred_boxes, gt_boxes, eps=IOU_EPS)  # [B, N, G]
        cost = self._cost(scores, ious, gt_labels.clamp(min=0), in_box & in_center)
        usable = candidate & valid[:, None]
        cost = cost.masked_fill(~usable, float("inf"))

        # dynamic k from the candidates' top IoUs (zeros elsewhere add nothing to the sum)
        cand_ious = ious.masked_fill(~usable, 0.0)
        topk = min(self.candidate_topk, n)
        ks = torch.topk(cand_ious, topk, dim=1).values.sum(dim=1).int().clamp(min=1)  # [B, G]
        ks = ks.masked_fill(~valid, 0).long()
        kth = torch.topk(cost, min(int(ks.max()), n), dim=1, largest=False).values  # [B, K, G], sorted
        threshold = kth.gather(1, (ks - 1).clamp(min=0)[:, None, :])  # [B, 1, G]
        below = cost < threshold
        ties = cost == threshold
        room = ks[:, None, :] - below.sum(dim=1, keepdim=True)
        matching = (below | (ties & (ties.cumsum(dim=1) <= room))) & (ks[:, None, :] > 0)

        contested = matching.sum(dim=2) > 1  # [B, N]
        cheapest = torch.min(cost[contested], dim=1).indices
        matching[contested] = F.one_hot(cheapest, cost.shape[2]).bool()
        matched = matching.any(dim=2)
        chosen = matching.int().argmax(dim=2)
        gt_index = torch.where(matched, chosen, gt_index)
        iou = torch.where(matched, ious.gather(2, chosen[:, :, None]).squeeze(2), iou)
        return Assignment(gt_index, iou)
