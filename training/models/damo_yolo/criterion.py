"""DAMO-YOLO training loss (ZeroHead's `loss`, GFL v1 style): Quality Focal Loss on the sigmoid class
scores, GIoU and Distribution Focal Loss on the AlignOTA positives.

- loss_cls = sum QFL(beta 2) / num_pos; the positive's soft target is the IoU of its (detached) predicted
  box with its GT, every other (prior, class) pair has target 0;
- loss_bbox = 2.0 * sum w * (1 - GIoU) / sum w,  loss_dfl = 0.25 * sum_4 w * DFL / (4 * sum w), with
  w = the positive's detached max class score; DFL targets are the GT's (l, t, r, b) distances in
  strides, clamped to [0, reg_max - 0.1];
- num_pos and sum w are averaged over DDP ranks (every rank all-reduces both, whatever its targets) and
  floored at 1;
- no positives (e.g. only empty images): loss_bbox = loss_dfl = 0, still attached to the box branch.
Computed in float32 whatever the autocast state.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..box_ops import aligned_giou
from .assigner import IOU_EPS, AlignOTAAssigner
from .head import _priors

Target = dict[str, torch.Tensor]  # {"boxes": float [N, 4] xyxy network-input px, "labels": int64 [N]}


def quality_focal_loss(scores: torch.Tensor, labels: torch.Tensor, quality: torch.Tensor,
                       beta: float = 2.0) -> torch.Tensor:
    """Per-row QFL [M] from scores [M, C] (probabilities, not logits), labels [M] (C = background) and
    quality [M] (soft target of the labelled class): sum_c BCE(p_c, t_c) * |t_c - p_c|^beta."""
    loss = F.binary_cross_entropy(scores, torch.zeros_like(scores), reduction="none") * scores.pow(beta)
    pos = torch.nonzero((labels >= 0) & (labels < scores.shape[1])).squeeze(1)
    pos_label = labels[pos]
    p = scores[pos, pos_label]
    loss[pos, pos_label] = (F.binary_cross_entropy(p, quality[pos], reduction="none")
                            * (quality[pos] - p).abs().pow(beta))
    return loss.sum(dim=1)


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DFL [M] from bin logits [M, reg_max + 1] and continuous targets [M] in [0, reg_max): cross-entropy
    to the two neighbouring bins, weighted by the distance to the other one."""
    left = target.long()
    right = left + 1
    return (F.cross_entropy(logits, left, reduction="none") * (right.float() - target)
            + F.cross_entropy(logits, right, reduction="none") * (target - left.float()))


def world_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over the DDP ranks when torch.distributed is initialised, else `x`."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    x = x.clone()
    dist.all_reduce(x.div_(dist.get_world_size()), op=dist.ReduceOp.SUM)
    return x


class DamoYoloCriterion(nn.Module):
    """(train-mode DAMO-YOLO outputs, targets) -> {"loss_cls", "loss_bbox", "loss_dfl", "total"}."""

    def __init__(self, num_classes: int, *, reg_max: int = 16, strides: tuple[int, ...] = (8, 16, 32),
                 qfl_beta: float = 2.0, cls_weight: float = 1.0, giou_weight: float = 2.0,
                 dfl_weight: float = 0.25, assigner: AlignOTAAssigner | None = None,
                 batched_assign: bool | None = None) -> None:
        super().__init__()
        self.num_classes, self.reg_max, self.strides = num_classes, reg_max, tuple(strides)
        self.qfl_beta, self.cls_weight = qfl_beta, cls_weight
        self.giou_weight, self.dfl_weight = giou_weight, dfl_weight
        self.assigner = assigner or AlignOTAAssigner()
        # True: one set of tensor ops for the whole batch; False: image by image (the reference; the same
        # targets bit for bit). None: batched on CUDA only: on CPU it is slower (it costs every prior against
        # every padded GT; bench/assigner_batched.py measured 0.43-1.07x on 2 cores)
        self.batched_assign = batched_assign

    def forward(self, outputs: list[tuple[torch.Tensor, torch.Tensor]],
                targets: list[Target]) -> dict[str, torch.Tensor]:
        """outputs: per level (class logits [B, C, H, W], scaled box-bin logits [B, 4*(reg_max+1), H, W]),
        as `DamoYolo.forward` returns them; targets: one dict per image (N may be 0)."""
        if len(outputs) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} output levels, got {len(outputs)}")
        if len(targets) != outputs[0][0].shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {outputs[0][0].shape[0]} images")
        labels = torch.cat([t["labels"].reshape(-1) for t in targets])
        if labels.numel() and not bool(((labels >= 0) & (labels < self.num_classes)).all()):  # one sync a batch
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1}, got {labels.unique().tolist()}")
        with torch.autocast(outputs[0][0].device.type, enabled=False):
            return self._losses(outputs, targets)

    def _flatten(self, outputs: list[tuple[torch.Tensor, torch.Tensor]]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> scores [B, N, C] (sigmoid), bin logits and bin probabilities [B, N, 4, reg_max+1],
        points [N, 2], strides [N]. The softmax runs over the maps' own layout, as the official."""
        scores, bins, probs, points, strides = [], [], [], [], []
        for (cls_logit, reg_logit), stride in zip(outputs, self.strides):
            b, c, h, w = cls_logit.shape
            if c != self.num_classes:
                raise ValueError(f"class maps have {c} channels, the criterion expects {self.num_classes}")
            scores.append(cls_logit.float().sigmoid().flatten(2).permute(0, 2, 1))
            reg_logit = reg_logit.float().reshape(b, 4, self.reg_max + 1, h, w)
            bins.append(reg_logit.flatten(3).permute(0, 3, 1, 2))
            probs.append(reg_logit.softmax(dim=2).flatten(3).permute(0, 3, 1, 2))
            points.append(_priors(h, w, stride, reg_logit))
            strides.append(reg_logit.new_full((h * w,), float(stride)))
        cat = lambda xs: torch.cat(xs, 1)  # noqa: E731
        return cat(scores), cat(bins), cat(probs), torch.cat(points), torch.cat(strides)

    def _losses(self, outputs: list[tuple[torch.Tensor, torch.Tensor]],
                targets: list[Target]) -> dict[str, torch.Tensor]:
        scores, bins, prob, points, strides = self._flatten(outputs)
        b, n, c = scores.shape
        project = torch.linspace(0, self.reg_max, self.reg_max + 1, device=bins.device)
        # expected distance per side (a [*, R+1] x [R+1, 1] matmul, as the official Integral), in px
        dist_px = (prob.reshape(-1, self.reg_max + 1) @ project[:, None]).reshape(b, n, 4) * strides[:, None]
        pred_boxes = torch.cat([points - dist_px[..., :2], points + dist_px[..., 2:]], dim=-1)

        labels = torch.full((b, n), c, dtype=torch.long, device=scores.device)
        quality = scores.new_zeros(b, n)
        box_targets = scores.new_zeros(b, n, 4)
        dfl_targets = scores.new_zeros(b, n, 4)
        gt_boxes = [t["boxes"].to(scores.device, torch.float32).reshape(-1, 4) for t in targets]
        gt_labels = [t["labels"].to(scores.device, torch.long).reshape(-1) for t in targets]
        batched = scores.device.type == "cuda" if self.batched_assign is None else self.batched_assign
        assign = self._assign_batch if batched else self._assign_per_image
        assign(scores, points, strides, pred_boxes, gt_boxes, gt_labels, labels, quality, box_targets, dfl_targets)

        labels, scores = labels.reshape(-1), scores.reshape(-1, c)
        pos = torch.nonzero(labels < c).squeeze(1)
        num_pos = max(world_mean(torch.tensor(float(pos.numel()), device=scores.device)).item(), 1.0)
        loss_cls = self.cls_weight * (quality_focal_loss(scores, labels, quality.reshape(-1), self.qfl_beta).sum()
                                      / num_pos)

        weight = scores.detach().max(dim=1).values[pos]
        norm = max(world_mean(weight.sum()).item(), 1.0)
        if pos.numel() > 0:
            giou = aligned_giou(pred_boxes.reshape(-1, 4)[pos], box_targets.reshape(-1, 4)[pos], eps=IOU_EPS)
            loss_bbox = self.giou_weight * (((1 - giou) * weight).sum() / norm)
            dfl = distribution_focal_loss(bins.reshape(-1, 4 * (self.reg_max + 1))[pos].reshape(-1, self.reg_max + 1),
                                          dfl_targets.reshape(-1, 4)[pos].reshape(-1))
            loss_dfl = self.dfl_weight * ((dfl * weight[:, None].expand(-1, 4).reshape(-1)).sum() / (4.0 * norm))
        else:  # zero, but keeps the box branch in the graph (DDP expects a gradient for every parameter)
            loss_bbox = prob.sum() / norm * 0.0
            loss_dfl = prob.sum() / norm * 0.0
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_dfl": loss_dfl,
                "total": loss_cls + loss_bbox + loss_dfl}

    def _assign_per_image(self, scores, points, strides, pred_boxes, gt_boxes, gt_labels,
                          labels, quality, box_targets, dfl_targets) -> None:
        """The reference: fills the [B, N] target tensors in place, one assignment per image."""
        for i, (boxes, gt_label) in enumerate(zip(gt_boxes, gt_labels)):
            if gt_label.numel() == 0:
                continue
            a = self.assigner(scores[i].detach(), points, strides, pred_boxes[i].detach(), boxes, gt_label)
            pos = torch.nonzero(a.gt_index >= 0).squeeze(1)
            gt = a.gt_index[pos]
            labels[i, pos] = gt_label[gt]
            quality[i, pos] = a.iou[pos]
            box_targets[i, pos] = boxes[gt]
            dfl_targets[i, pos] = self._distance_targets(points[pos], strides[pos], boxes[gt])

    def _assign_batch(self, scores, points, strides, pred_boxes, gt_boxes, gt_labels,
                      labels, quality, box_targets, dfl_targets) -> None:
        """Fills the [B, N] target tensors in place from one batched assignment (GTs padded to the largest
        count); every value is computed element by element as the per-image loop does."""
        b, n = scores.shape[:2]
        g = max(x.shape[0] for x in gt_labels)
        if g == 0:
            return
        pad_boxes = scores.new_zeros(b, g, 4)
        pad_labels = torch.zeros(b, g, dtype=torch.long, device=scores.device)
        valid = torch.zeros(b, g, dtype=torch.bool, device=scores.device)
        for i, (bx, lb) in enumerate(zip(gt_boxes, gt_labels)):
            pad_boxes[i, :lb.numel()], pad_labels[i, :lb.numel()], valid[i, :lb.numel()] = bx, lb, True
        a = self.assigner.batch(scores.detach(), points, strides, pred_boxes.detach(), pad_boxes, pad_labels, valid)
        fg = a.gt_index >= 0
        gt = a.gt_index.clamp(min=0)
        labels.copy_(torch.where(fg, pad_labels.gather(1, gt), labels))
        quality.copy_(torch.where(fg, a.iou, quality))
        boxes = pad_boxes.gather(1, gt[:, :, None].expand(b, n, 4))
        box_targets.copy_(torch.where(fg[:, :, None], boxes, box_targets))
        dist = self._distance_targets(points.repeat(b, 1), strides.repeat(b), boxes.reshape(-1, 4)).reshape(b, n, 4)
        dfl_targets.copy_(torch.where(fg[:, :, None], dist, dfl_targets))

    def _distance_targets(self, points: torch.Tensor, strides: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(l, t, r, b) [P, 4] from prior points [P, 2] to GT boxes [P, 4], in strides, in [0, reg_max - 0.1].
        Both are divided by the stride before subtracting, as the official (same float rounding)."""
        s = strides[:, None]
        p, box = points / s, boxes / s
        d = torch.cat([p - box[:, :2], box[:, 2:] - p], dim=1)
        return d.clamp(min=0, max=self.reg_max - 0.1)
