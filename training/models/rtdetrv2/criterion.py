"""RT-DETRv2 training loss (src/zoo/rtdetr/rtdetrv2_criterion.py, RTDETRCriterionv2 with the configs'
losses ['vfl', 'boxes']): varifocal classification loss + L1 + GIoU on Hungarian-matched queries, for the
last decoder layer, every other layer (re-matched), the encoder's top-k proposals and the denoising
queries (fixed GT assignment)."""

from __future__ import annotations

from itertools import accumulate
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import outputs_to_fp32
from ..box_ops import aligned_iou_giou
from .box_ops import cxcywh_to_xyxy
from .matcher import HungarianMatcher, Indices

Targets = list[dict[str, torch.Tensor]]
WEIGHTS = {"loss_vfl": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


class RTDETRv2Criterion(nn.Module):
    def __init__(self, num_classes: int = 80, *, matcher: HungarianMatcher | None = None,
                 weight_dict: dict[str, float] | None = None, alpha: float = 0.75, gamma: float = 2.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.weight_dict = dict(WEIGHTS if weight_dict is None else weight_dict)
        self.alpha, self.gamma = alpha, gamma

    def forward(self, outputs: dict[str, Any], targets: Targets) -> dict[str, torch.Tensor]:
        """outputs: the train-mode model's dict; targets: per image {"boxes": [N,4] normalized cxcywh,
        "labels": int64 [N]} (N may be 0). -> weighted terms under the official names (loss_vfl,
        loss_bbox, loss_giou, then *_aux_i, *_dn_i, *_enc_0) and "total", their sum, in fp32 also
        under autocast (the official computes the loss outside autocast)."""
        device = outputs["pred_logits"].device
        with torch.autocast(device.type, enabled=False):
            outputs = outputs_to_fp32(outputs)
            dtype = outputs["pred_boxes"].dtype
            targets = [{"boxes": t["boxes"].to(device, dtype), "labels": t["labels"].to(device)}
                       for t in targets]
            num_boxes = self.num_boxes(targets, device)
            # all GTs of the batch in one tensor (image b's start at first[b]): a few gathers per loss term
            gt = (torch.cat([t["boxes"] for t in targets]), torch.cat([t["labels"] for t in targets]),
                  [0, *accumulate(len(t["labels"]) for t in targets)])
            losses = self._terms(outputs, gt, self.matcher(outputs, targets), num_boxes, "")
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                losses.update(self._terms(aux, gt, self.matcher(aux, targets), num_boxes, f"_aux_{i}"))
            if "dn_aux_outputs" in outputs:
                meta = outputs["dn_meta"]
                indices = denoising_indices(meta, targets)
                for i, aux in enumerate(outputs["dn_aux_outputs"]):
                    losses.update(self._terms(aux, gt, indices, num_boxes * meta["dn_num_group"], f"_dn_{i}"))
            if outputs.get("enc_meta", {}).get("class_agnostic"):
                raise NotImplementedError("class-agnostic query selection")
            for i, aux in enumerate(outputs.get("enc_aux_outputs", [])):
                losses.update(self._terms(aux, gt, self.matcher(aux, targets), num_boxes, f"_enc_{i}"))
            losses["total"] = sum(losses.values())
        return losses

    @staticmethod
    def num_boxes(targets: Targets, device: torch.device) -> float:
        """GT boxes per rank: the local count averaged over ranks when torch.distributed is initialised
        (every rank calls the all_reduce, whatever its targets), at least 1."""
        n = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(n)
            n = n / dist.get_world_size()
        return torch.clamp(n, min=1).item()

    def _terms(self, outputs: dict[str, torch.Tensor], gt: tuple[torch.Tensor, torch.Tensor, list[int]],
               indices: Indices, num_boxes: float, suffix: str) -> dict[str, torch.Tensor]:
        """gt: (boxes [sum N,4], labels [sum N], first GT index per image); indices per image (query, GT)."""
        gt_boxes_all, gt_labels_all, first = gt
        device = outputs["pred_logits"].device
        batch_idx, query_idx, gt_idx = torch.cat(
            [torch.stack([torch.full_like(i, b), i, j + first[b]]) for b, (i, j) in enumerate(indices)], 1).to(device)
        src = outputs["pred_boxes"][batch_idx, query_idx]
        gt_boxes, gt_labels = gt_boxes_all[gt_idx], gt_labels_all[gt_idx]
        iou, giou = aligned_iou_giou(cxcywh_to_xyxy(src), cxcywh_to_xyxy(gt_boxes), eps=None)
        terms = {
            "loss_vfl": self.varifocal_loss(outputs["pred_logits"], (batch_idx, query_idx), gt_labels,
                                            iou.detach(), num_boxes),
            "loss_bbox": F.l1_loss(src, gt_boxes, reduction="none").sum() / num_boxes,
            "loss_giou": (1 - giou).sum() / num_boxes,
        }
        return {k + suffix: v * self.weight_dict[k] for k, v in terms.items() if k in self.weight_dict}

    def varifocal_loss(self, logits: torch.Tensor, matched: tuple[torch.Tensor, torch.Tensor],
                       labels: torch.Tensor, iou: torch.Tensor, num_boxes: float) -> torch.Tensor:
        """logits [B,Q,C]; matched (image index, query index) [K] each, with GT labels [K] and the IoU of
        the matched box with its GT [K]. Matched queries learn their IoU as the target score of their GT
        class (weight = target); everything else learns 0 with the focal weight alpha * p^gamma. BCE
        summed over classes, averaged over queries, summed over images, per GT box (x Q / num_boxes)."""
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        classes[matched] = labels
        onehot = F.one_hot(classes, self.num_classes + 1)[..., :-1]
        score = torch.zeros(logits.shape[:2], dtype=logits.dtype, device=logits.device)
        score[matched] = iou.to(score.dtype)
        target = score.unsqueeze(-1) * onehot
        weight = self.alpha * logits.sigmoid().detach().pow(self.gamma) * (1 - onehot) + target
        loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="none")
        return loss.mean(1).sum() * logits.shape[1] / num_boxes


def denoising_indices(meta: dict[str, Any], targets: Targets) -> Indices:
    """The fixed assignment of denoising queries: image i's positive copies (dn_positive_idx, group-major)
    to its GTs arange(N_i) repeated dn_num_group times."""
    out = []
    for pos, t in zip(meta["dn_positive_idx"], targets):
        gt = torch.arange(len(t["labels"]), dtype=torch.int64, device=pos.device).tile(meta["dn_num_group"])
        if len(pos) != len(gt):
            raise ValueError(f"dn_meta has {len(pos)} positive queries for {len(t['labels'])} GTs "
                             f"x {meta['dn_num_group']} groups: outputs and targets do not belong together")
        out.append((pos, gt))
    return out


