"""Box IoU and GIoU in torch for both families' training code (assigners, matchers, losses) and the
reference postprocess; autograd-safe. The client's numpy box ops (tdet.client.boxes) serve inference.

Boxes are xyxy [..., 4]. Each caller passes its own `eps`, the floor on the union (and, for GIoU, on the
enclosing area) of the implementation it reproduces: DAMO-YOLO's assigner and loss floor at 1e-6 (mmdet's
`bbox_overlaps`), its NMS at 1e-12, RT-DETRv2 does not floor (eps=None). The arithmetic is written once in
the order all of them used, so each call site gives the values it gave with its own copy, bit for bit.
"""

from __future__ import annotations

import torch


def box_area(boxes: torch.Tensor, *, clip_degenerate: bool = False) -> torch.Tensor:
    """Areas [...] of xyxy boxes [..., 4]; clip_degenerate: a negative width or height counts 0."""
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    if clip_degenerate:
        w, h = w.clamp(min=0), h.clamp(min=0)
    return w * h


def _floor(x: torch.Tensor, eps: float | None) -> torch.Tensor:
    return x if eps is None else x.clamp(min=eps)


def _overlap_union(a: torch.Tensor, b: torch.Tensor, eps: float | None,
                   clip_degenerate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(intersection, union floored at eps) of broadcastable box tensors a, b [..., 4]."""
    wh = (torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = box_area(a, clip_degenerate=clip_degenerate) + box_area(b, clip_degenerate=clip_degenerate) - overlap
    return overlap, _floor(union, eps)


def _hull(a: torch.Tensor, b: torch.Tensor, eps: float | None) -> torch.Tensor:
    """Area of the smallest box enclosing a and b (broadcastable [..., 4]), floored at eps."""
    wh = (torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2])).clamp(min=0)
    return _floor(wh[..., 0] * wh[..., 1], eps)


def _pairs(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a [..., N, 4], b [..., M, 4] -> views broadcasting to every (n, m) pair: [..., N, 1, 4], [..., 1, M, 4]."""
    return a[..., :, None, :], b[..., None, :, :]


def pairwise_iou(a: torch.Tensor, b: torch.Tensor, *, eps: float | None,
                 clip_degenerate: bool = False) -> torch.Tensor:
    """IoU matrix [..., N, M] of a [..., N, 4] with b [..., M, 4]; the union floored at `eps`."""
    overlap, union = _overlap_union(*_pairs(a, b), eps, clip_degenerate)
    return overlap / union


def pairwise_giou(a: torch.Tensor, b: torch.Tensor, *, eps: float | None) -> torch.Tensor:
    """GIoU matrix [..., N, M] of a [..., N, 4] with b [..., M, 4]; union and enclosing area floored at `eps`."""
    a, b = _pairs(a, b)
    overlap, union = _overlap_union(a, b, eps)
    hull = _hull(a, b, eps)
    return overlap / union - (hull - union) / hull


def aligned_iou_giou(a: torch.Tensor, b: torch.Tensor, *, eps: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise (IoU, GIoU) [...] of a, b [..., 4] (row i with row i): the diagonal of the pairwise matrices."""
    overlap, union = _overlap_union(a, b, eps)
    iou = overlap / union
    hull = _hull(a, b, eps)
    return iou, iou - (hull - union) / hull


def aligned_giou(a: torch.Tensor, b: torch.Tensor, *, eps: float | None) -> torch.Tensor:
    """Row-wise GIoU [...] of a, b [..., 4]; union and enclosing area floored at `eps`."""
    return aligned_iou_giou(a, b, eps=eps)[1]
