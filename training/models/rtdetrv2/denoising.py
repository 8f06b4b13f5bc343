"""Contrastive denoising queries (DINO's CDN as RT-DETR uses it, src/zoo/rtdetr/denoising.py).

Every ground-truth box is fed to the decoder as extra queries in G groups; each group holds a positive
copy (box jittered by less than half its size, to be reconstructed) and a negative copy (jittered by
between half and one size, to be rejected as background) of every GT of the image, padded to the batch's
largest GT count. Labels are replaced by a random class with probability label_noise_ratio / 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .box_ops import cxcywh_to_xyxy, inverse_sigmoid, xyxy_to_cxcywh


@dataclass
class DenoisingGroup:
    content: torch.Tensor  # [B, n_dn, D] class embeddings of the (noised) labels
    ref_unact: torch.Tensor  # [B, n_dn, 4] inverse-sigmoid of the noised cxcywh boxes
    attn_mask: torch.Tensor  # bool [n_dn + Q, n_dn + Q], True = may not attend
    meta: dict  # official dn_meta: dn_positive_idx (per image), dn_num_group, dn_num_split


def attention_mask(num_dn: int, group_size: int, num_queries: int, device: torch.device | None = None
                   ) -> torch.Tensor:
    """bool [num_dn + Q, num_dn + Q]: the Q matching queries never see the denoising queries (they would
    read the answer), and each denoising group of `group_size` queries sees only itself and the matching
    queries."""
    mask = torch.zeros(num_dn + num_queries, num_dn + num_queries, dtype=torch.bool, device=device)
    mask[num_dn:, :num_dn] = True
    group = torch.arange(num_dn, device=device) // group_size
    mask[:num_dn, :num_dn] = group[:, None] != group[None, :]
    return mask


def contrastive_denoising_group(targets: list[dict[str, torch.Tensor]], num_classes: int, num_queries: int,
                                class_embed: nn.Embedding, *, num_denoising: int = 100,
                                label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0) -> DenoisingGroup:
    """targets: per image {"boxes": [N,4] normalized cxcywh, "labels": int64 [N]}. Groups G =
    num_denoising // max_gt (>= 1). Random draws come from the global torch generator, in the official
    order and shapes (label flips, new labels, box signs, box magnitudes), so a seeded run reproduces it.

    A batch without any GT still gets one group with one padded dummy query (centre box, padding class):
    it never counts as a positive, but keeps the denoising embedding in the graph on every rank so DDP's
    gradient reduction sees the same parameters everywhere (official fix for issue #672)."""
    device = class_embed.weight.device
    num_gts = [len(t["labels"]) for t in targets]
    bs, max_gt = len(targets), max(num_gts, default=0)
    empty = max_gt == 0
    if empty:
        max_gt, num_group = 1, 1
    else:
        num_group = max(num_denoising // max_gt, 1)

    labels = torch.full([bs, max_gt], num_classes, dtype=torch.int32, device=device)
    boxes = torch.zeros([bs, max_gt, 4], device=device)
    if empty:  # a valid box, so the noise and inverse sigmoid below stay finite
        boxes[..., :2], boxes[..., 2:] = 0.5, 0.1
    is_gt = torch.zeros([bs, max_gt], dtype=torch.bool, device=device)
    for i, (t, n) in enumerate(zip(targets, num_gts)):
        if n:
            labels[i, :n] = t["labels"].to(device)
            boxes[i, :n] = t["boxes"].to(device)
            is_gt[i, :n] = True

    # G groups of [positives (max_gt), negatives (max_gt)]
    labels, is_gt = labels.tile(1, 2 * num_group), is_gt.tile(1, 2 * num_group)
    boxes = boxes.tile(1, 2 * num_group, 1)
    negative = torch.zeros([bs, 2 * max_gt, 1], device=device)
    negative[:, max_gt:] = 1
    negative = negative.tile(1, num_group, 1)
    num_dn = 2 * max_gt * num_group

    if label_noise_ratio > 0:
        flip = torch.rand(labels.shape, device=device) < label_noise_ratio * 0.5
        new_labels = torch.randint_like(labels, 0, num_classes)
        labels = torch.where(flip & is_gt, new_labels, labels)
    if box_noise_scale > 0:
        # corners move by up to half the box size (positives) or between one half and one (negatives)
        half_wh = (boxes[..., 2:] * 0.5).tile(1, 1, 2) * box_noise_scale
        sign = torch.randint_like(boxes, 0, 2) * 2.0 - 1.0
        magnitude = torch.rand_like(boxes)
        magnitude = (magnitude + 1.0) * negative + magnitude * (1 - negative)
        xyxy = (cxcywh_to_xyxy(boxes) + sign * magnitude * half_wh).clip(0.0, 1.0)
        boxes = xyxy_to_cxcywh(xyxy)

    # query index of each real GT's positive copies, group-major: matches gt index arange(n).tile(G)
    offsets = torch.arange(num_group, device=device)[:, None] * (2 * max_gt)
    positive_idx = tuple((offsets + torch.arange(n, device=device)[None]).flatten() for n in num_gts)
    meta = {"dn_positive_idx": positive_idx, "dn_num_group": num_group, "dn_num_split": [num_dn, num_queries]}
    return DenoisingGroup(class_embed(labels), inverse_sigmoid(boxes),
                          attention_mask(num_dn, 2 * max_gt, num_queries, device), meta)
