"""Differentiable box operations for the RT-DETRv2 matcher, losses and denoising (torch, autograd-safe).

The client's numpy box ops (tdet.client.boxes) serve inference; training needs gradients, hence these.
IoU and GIoU are the shared ones (tdet.training.models.box_ops, unfloored: eps=None as the official).
Boxes are normalized: cxcywh = (centre x, centre y, width, height), xyxy = (x0, y0, x1, y1).
"""

from __future__ import annotations

import torch


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit(x) with x clipped to [0, 1] and both odds terms to >= eps (finite at 0 and 1)."""
    x = x.clip(0.0, 1.0)
    return torch.log(x.clip(min=eps) / (1 - x).clip(min=eps))


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] cxcywh -> [..., 4] xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] xyxy -> [..., 4] cxcywh."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)
