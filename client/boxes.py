"""numpy box ops shared by the served postprocess, the client and the tests (the one copy).

Boxes are float32 [N, 4]; "xyxy" is (x1, y1, x2, y2), "cxcywh" is (center x, center y, width, height),
in whatever coordinate space the caller uses (the ops are space-agnostic).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


def cxcywh_to_xyxy(boxes: F32) -> F32:
    """[..., 4] cxcywh -> [..., 4] xyxy."""
    c, wh = boxes[..., :2], boxes[..., 2:] / 2
    return np.concatenate([c - wh, c + wh], axis=-1).astype(np.float32, copy=False)


def xyxy_to_cxcywh(boxes: F32) -> F32:
    """[..., 4] xyxy -> [..., 4] cxcywh."""
    p1, p2 = boxes[..., :2], boxes[..., 2:]
    return np.concatenate([(p1 + p2) / 2, p2 - p1], axis=-1).astype(np.float32, copy=False)


def box_area(boxes: F32) -> F32:
    """[N, 4] xyxy -> [N] areas (degenerate boxes count 0)."""
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def box_iou(a: F32, b: F32) -> F32:
    """IoU matrix [N, M] between xyxy boxes a [N, 4] and b [M, 4]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / np.maximum(union, 1e-12)


def nms(boxes: F32, scores: F32, iou: float, *, labels: npt.NDArray[np.integer] | None = None,
        max_keep: int | None = None) -> npt.NDArray[np.int64]:
    """Greedy NMS over xyxy boxes [N, 4] with scores [N]; class-aware when `labels` [N] is given
    (boxes of different labels never suppress each other).

    Returns kept indices by descending score (ties: lower index first, like a stable sort). Stops after
    `max_keep` kept boxes: greedy NMS keeps in score order, so the first K are the same as a full run's.
    Each step is one vectorized IoU row, so memory stays O(N) even for thousands of candidates.
    """
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    limit = len(order) if max_keep is None else max_keep
    area = box_area(boxes)
    while order.size and len(keep) < limit:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.clip(rb - lt, 0, None).prod(-1)
        overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-12)
        suppress = overlap > iou
        if labels is not None:
            suppress &= labels[rest] == labels[i]
        order = rest[~suppress]
    return np.asarray(keep, dtype=np.int64)


def xyxy_to_xywh(boxes: F32) -> F32:
    """[..., 4] (x1, y1, x2, y2) -> COCO (x, y, width, height)."""
    out = np.asarray(boxes, np.float32).copy()
    out[..., 2:] -= out[..., :2]
    return out


def clip_boxes(boxes: F32, image_hw: tuple[int, int]) -> F32:
    """xyxy boxes [N, 4] clipped to an image of (height, width): x to [0, width], y to [0, height]."""
    h, w = image_hw
    return np.clip(boxes, 0, np.array([w, h, w, h], np.float32)).astype(np.float32, copy=False)
