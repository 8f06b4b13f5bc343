"""numpy postprocess per family (the served path's; the PyTorch references live in training/), and the
typed `Detections` every client call returns.

DAMO-YOLO (official eval): multi-label candidates with score > score_thr, class-aware NMS, top K.
RT-DETRv2 (RTDETRPostProcessor, focal loss): sigmoid, top K over queries x classes, no NMS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from .boxes import cxcywh_to_xyxy, nms
from .preprocess import boxes_to_original
from .specs import DAMO_YOLO, RTDETRV2, preprocess_spec

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

DEFAULT_SCORE_THR = 0.05
DEFAULT_IOU = 0.7
DEFAULT_MAX_DET = 100


@dataclass(frozen=True)
class Detections:
    """Detections of one image, by descending score.

    boxes: float32 [K, 4] xyxy in original-image pixels; scores: float32 [K];
    category_ids: int32 [K] dataset category ids (COCO 1..90); class_names: K names.
    """

    boxes: F32
    scores: F32
    category_ids: npt.NDArray[np.int32]
    class_names: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to_list(self) -> list[dict[str, Any]]:
        """JSON-ready rows: {"box": [x1, y1, x2, y2], "score", "category_id", "class_name"}."""
        names = self.class_names or ("",) * len(self)
        return [{"box": [round(float(v), 2) for v in b], "score": round(float(s), 5),
                 "category_id": int(c), "class_name": n}
                for b, s, c, n in zip(self.boxes, self.scores, self.category_ids, names)]


def postprocess_damo_yolo(scores: F32, boxes: F32, orig_hw: tuple[int, int], *,
                          score_thr: float = DEFAULT_SCORE_THR, iou: float = DEFAULT_IOU,
                          max_det: int = DEFAULT_MAX_DET, input_hw: tuple[int, int] | None = None
                          ) -> tuple[F32, F32, I64]:
    """One image: scores [N, C] (sigmoid), boxes [N, 4] xyxy in network-input px ->
    (boxes [K, 4] xyxy original px, scores [K], labels [K] 0-based), K <= max_det.
    input_hw: the network input (height, width) the boxes are in; None: 640x640."""
    idx, labels = np.nonzero(scores > score_thr)
    cand_boxes = boxes[idx].astype(np.float32, copy=False)
    cand_scores = scores[idx, labels]
    keep = nms(cand_boxes, cand_scores, iou, labels=labels, max_keep=max_det)
    out = boxes_to_original(cand_boxes[keep], orig_hw, preprocess_spec(DAMO_YOLO, input_hw))
    return out, cand_scores[keep].astype(np.float32), labels[keep].astype(np.int64)


def postprocess_rtdetrv2(logits: F32, boxes: F32, orig_hw: tuple[int, int], *,
                         max_det: int = DEFAULT_MAX_DET) -> tuple[F32, F32, I64]:
    """One image: logits [Q, C], boxes [Q, 4] normalized cxcywh ->
    (boxes [K, 4] xyxy original px, scores [K], labels [K] 0-based), K = min(max_det, Q*C)."""
    num_classes = logits.shape[-1]
    flat = logits.reshape(-1).astype(np.float32)
    k = min(max_det, flat.size)
    top = np.argpartition(-flat, k - 1)[:k]
    top = top[np.argsort(-flat[top], kind="stable")]
    scores = (1.0 / (1.0 + np.exp(-flat[top]))).astype(np.float32)
    labels, query = top % num_classes, top // num_classes
    h, w = orig_hw
    xyxy = cxcywh_to_xyxy(boxes[query].astype(np.float32)) * np.array([w, h, w, h], np.float32)
    return xyxy.astype(np.float32), scores, labels.astype(np.int64)


def postprocess_one(family: str, outputs: Sequence[F32], orig_hw: tuple[int, int], *,
                    score_thr: float = DEFAULT_SCORE_THR, iou: float = DEFAULT_IOU,
                    max_det: int = DEFAULT_MAX_DET, input_hw: tuple[int, int] | None = None
                    ) -> tuple[F32, F32, I64]:
    """Dispatch on family; `outputs` are one image's engine outputs in specs.EXPORT_OUTPUTS order, for a
    network input of `input_hw` (height, width; None: 640x640)."""
    if family == DAMO_YOLO:
        return postprocess_damo_yolo(outputs[0], outputs[1], orig_hw, score_thr=score_thr, iou=iou,
                                     max_det=max_det, input_hw=input_hw)
    if family == RTDETRV2:
        return postprocess_rtdetrv2(outputs[0], outputs[1], orig_hw, max_det=max_det)
    raise ValueError(f"unknown family {family!r}")


def to_wire(boxes: F32, scores: F32, labels: I64, category_ids: npt.NDArray[np.int32], max_det: int
            ) -> tuple[npt.NDArray[np.int32], F32, F32, npt.NDArray[np.int32]]:
    """Pad one image's detections to the wire contract: NUM_DETECTIONS int32 [1], BOXES float32 [K, 4],
    SCORES float32 [K], CLASSES int32 [K] (category ids), K = max_det, zero rows after NUM_DETECTIONS."""
    n = min(len(scores), max_det)
    out_boxes = np.zeros((max_det, 4), np.float32)
    out_scores = np.zeros((max_det,), np.float32)
    out_classes = np.zeros((max_det,), np.int32)
    out_boxes[:n], out_scores[:n], out_classes[:n] = boxes[:n], scores[:n], category_ids[labels[:n]]
    return np.array([n], np.int32), out_boxes, out_scores, out_classes


def from_wire(num: npt.NDArray[np.integer], boxes: F32, scores: F32, classes: npt.NDArray[np.integer],
              names: dict[int, str] | None = None) -> Detections:
    """One row of the wire outputs -> Detections (drops the padding)."""
    n = int(np.asarray(num).reshape(-1)[0])
    ids = np.asarray(classes[:n], np.int32)
    return Detections(np.asarray(boxes[:n], np.float32).reshape(n, 4), np.asarray(scores[:n], np.float32), ids,
                      tuple(names.get(int(c), str(int(c))) for c in ids) if names is not None else ())
