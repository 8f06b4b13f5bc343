"""Reference (PyTorch) DAMO-YOLO postprocess, as the official eval (`damo/utils/boxes.py::postprocess`):
multi-label candidates with score > threshold, class-aware NMS (torchvision's `batched_nms`, written out
here since torchvision is not a dependency), top K. The served path does the same in numpy
(tdet.client.postprocess); a test checks the two agree.
"""

from __future__ import annotations

import torch

from ..box_ops import pairwise_iou


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float, *, labels: torch.Tensor | None = None,
        max_keep: int | None = None) -> torch.Tensor:
    """Greedy NMS over xyxy boxes [N, 4] with scores [N]; class-aware when `labels` [N] is given.

    Returns kept indices (int64) by descending score, ties broken by lower index. A box is suppressed
    by a kept box of the same label with IoU > `iou`. Stops after `max_keep` kept boxes (greedy NMS
    keeps in score order, so they are the first `max_keep` of a full run). One IoU row per kept box:
    memory O(N) even for tens of thousands of candidates.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    limit = len(order) if max_keep is None else max_keep
    keep: list[int] = []
    while order.numel() and len(keep) < limit:
        i, rest = int(order[0]), order[1:]
        keep.append(i)
        suppress = pairwise_iou(boxes[i, None], boxes[rest], eps=1e-12, clip_degenerate=True)[0] > iou
        if labels is not None:
            suppress &= labels[rest] == labels[i]
        order = rest[~suppress]
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def postprocess(scores: torch.Tensor, boxes: torch.Tensor, *, conf: float = 0.05, iou: float = 0.7,
                max_det: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image: scores [N, C] (sigmoid), boxes [N, 4] xyxy input px ->
    (boxes [K, 4] xyxy input px, scores [K], labels [K] int64 0-based), by descending score, K <= max_det.

    The official eval keeps 500 (`max_det=500`); the served contract keeps 100.
    """
    if scores.ndim != 2 or boxes.shape != (scores.shape[0], 4):
        raise ValueError(f"expected scores [N, C] and boxes [N, 4], got {tuple(scores.shape)} and "
                         f"{tuple(boxes.shape)}")
    idx, labels = torch.nonzero(scores > conf, as_tuple=True)
    cand_boxes, cand_scores = boxes[idx], scores[idx, labels]
    keep = nms(cand_boxes, cand_scores, iou, labels=labels, max_keep=max_det)
    return cand_boxes[keep], cand_scores[keep], labels[keep]

