"""numpy postprocess per family (the served path's; the PyTorch references live in training/), and the
typed `Detections` every client call returns.

DAMO-YOLO (official eval): multi-label candidates with score > conf (no pre-NMS cap, as the
official), class-aware NMS, top K.
RT-DETRv2 (RTDETRPostProcessor, focal loss): sigmoid, top K over queries x classes, no NMS; then, as for
DAMO-YOLO, only scores > conf are kept (one meaning of the threshold for both families).

Both take an optional class mask (a request's `classes`, applied before NMS / top K, so K detections of
the wanted classes come back) and `clip` (boxes clipped to the image; off for COCO evaluation, as in the
official evaluations).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, overload

import numpy as np
import numpy.typing as npt

from .boxes import box_area, clip_boxes, cxcywh_to_xyxy
from .preprocess import boxes_to_original
from .specs import DAMO_YOLO, RTDETRV2, preprocess_spec

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

DEFAULT_CONF = 0.05  # the repository's default `conf` (DAMO-YOLO's official eval threshold)
DEFAULT_IOU = 0.7
DEFAULT_MAX_DET = 100
NMS_BLOCK = 128  # candidates per NMS step (bench/nms_speed.py): fewer numpy calls vs wasted IoU past max_det


class Detection(NamedTuple):
    """One detection: box (x1, y1, x2, y2) in original-image pixels, score, dataset category id, class name."""

    box: tuple[float, float, float, float]
    score: float
    category_id: int
    class_name: str


@dataclass(frozen=True)
class Detections:
    """Detections of one image, by descending score.

    boxes: float32 [K, 4] xyxy in original-image pixels; scores: float32 [K];
    category_ids: int32 [K] dataset category ids (COCO 1..90); class_names: K names.

    Iterating yields `Detection` records; `dets[i]` is one, `dets[1:3]` / `dets[mask]` / `dets[[0, 2]]`
    are Detections; `.filter(min_score, classes)` keeps a subset.
    """

    boxes: F32
    scores: F32
    category_ids: npt.NDArray[np.int32]
    class_names: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def _name(self, i: int) -> str:
        return self.class_names[i] if self.class_names else str(int(self.category_ids[i]))

    def __iter__(self) -> Iterator[Detection]:
        return (self[i] for i in range(len(self)))

    @overload
    def __getitem__(self, key: int) -> Detection: ...

    @overload
    def __getitem__(self, key: slice | Sequence[int] | npt.NDArray[Any]) -> Detections: ...

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = range(len(self))[key]  # negative indices, IndexError past the end
            return Detection(tuple(float(v) for v in self.boxes[i]), float(self.scores[i]),
                             int(self.category_ids[i]), self._name(i))
        index = np.arange(len(self))[key]  # slice, boolean mask or integer indices
        names = tuple(self.class_names[i] for i in index) if self.class_names else ()
        return Detections(self.boxes[index], self.scores[index], self.category_ids[index], names)

    def filter(self, min_score: float | None = None, classes: Iterable[int | str] | None = None) -> Detections:
        """The detections with score >= min_score whose category id or class name is in `classes`."""
        keep = np.ones(len(self), bool)
        if min_score is not None:
            keep &= self.scores >= min_score
        if classes is not None:
            wanted = set(classes)
            keep &= np.array([int(self.category_ids[i]) in wanted or self._name(i) in wanted
                              for i in range(len(self))], bool)
        return self[keep]

    def __repr__(self) -> str:
        shown = ", ".join(f"{d.class_name} {d.score:.2f}" for d in list(self)[:5])
        return f"Detections({len(self)} detections: {shown}{', ...' if len(self) > 5 else ''})"

    def to_list(self) -> list[dict[str, Any]]:
        """JSON-ready rows: {"box": [x1, y1, x2, y2], "score", "category_id", "class_name"}."""
        return [{"box": [round(v, 2) for v in d.box], "score": round(d.score, 5), "category_id": d.category_id,
                 "class_name": d.class_name if self.class_names else ""} for d in self]


def postprocess_damo_yolo(scores: F32, boxes: F32, orig_hw: tuple[int, int], *,
                          conf: float = DEFAULT_CONF, iou: float = DEFAULT_IOU,
                          max_det: int = DEFAULT_MAX_DET, input_hw: tuple[int, int] | None = None,
                          allowed: Mask | None = None, clip: bool = False) -> tuple[F32, F32, I64]:
    """One image: scores [N, C] (sigmoid), boxes [N, 4] xyxy in network-input px ->
    (boxes [K, 4] xyxy original px, scores [K], labels [K] 0-based), K <= max_det.
    input_hw: the network input (height, width) the boxes are in; None: 640x640.
    allowed: bool [C], the labels to keep (None: all); clip: clip boxes to the original image."""
    candidates = scores > conf
    if allowed is not None:
        candidates &= allowed[None, :]
    idx, labels = np.nonzero(candidates)
    cand_boxes = boxes[idx].astype(np.float32, copy=False)
    cand_scores = scores[idx, labels]
    keep = batched_nms(cand_boxes, cand_scores, labels, iou, max_keep=max_det)
    out = boxes_to_original(cand_boxes[keep], orig_hw, preprocess_spec(DAMO_YOLO, input_hw))
    if clip:
        out = clip_boxes(out, orig_hw)
    return out, cand_scores[keep].astype(np.float32), labels[keep].astype(np.int64)


def batched_nms(boxes: F32, scores: F32, labels: npt.NDArray[np.integer], iou: float, *,
                max_keep: int | None = None, block: int = NMS_BLOCK) -> I64:
    """Class-aware greedy NMS over xyxy boxes [N, 4], scores [N], labels [N] -> kept indices (int64) by
    descending score, ties by lower index, at most `max_keep`. A box is suppressed by a kept box of its
    label with IoU > `iou`.

    The same kept indices, in the same order, as tdet.client.boxes.nms (one numpy IoU row per kept box,
    5.7 ms for ~1,000 candidates), with the same float32 arithmetic per pair (torchvision's batched_nms
    too, but for an IoU exactly float32(iou) when that rounds above `iou`: it compares in double), but
    vectorized by blocks of `block` score-ordered candidates: a block is first tested against all boxes
    kept so far in one IoU matrix, then its survivors against each other in one more, resolved in a few
    vectorized passes. The numpy calls are per block, not per kept box, and the IoU work stops at
    `max_keep` (at most max_keep x N + N x block pairs).
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    n = len(scores)
    limit = n if max_keep is None else max(int(max_keep), 0)
    order = np.argsort(-scores, kind="stable")
    sorted_boxes = boxes[order]
    coords = [np.ascontiguousarray(sorted_boxes[:, k]) for k in range(4)]
    area, lab = box_area(sorted_boxes), labels[order]
    kept = np.empty(0, np.int64)  # positions in `order`
    for start in range(0, n, block):
        if kept.size >= limit:
            break
        cand = np.arange(start, min(start + block, n))
        if kept.size:
            cand = cand[~_suppresses(coords, area, lab, kept, cand, iou).any(0)]
        if cand.size:
            within = np.triu(_suppresses(coords, area, lab, cand, cand, iou), 1)  # earlier suppresses later
            cand = cand[_greedy(within)]
        kept = np.concatenate([kept, cand])
    return order[kept[:limit]].astype(np.int64)


def _suppresses(coords: list[npt.NDArray[Any]], area: npt.NDArray[Any], lab: npt.NDArray[np.integer],
                a: I64, b: I64, iou: float) -> Mask:
    """[len(a), len(b)]: box a[i] suppresses box b[j] (same label, IoU > iou). The float ops, in the same
    order, of tdet.client.boxes.nms's row (so the same bits, the same decisions at the threshold)."""
    x1, y1, x2, y2 = coords
    w = np.clip(np.minimum(x2[a, None], x2[None, b]) - np.maximum(x1[a, None], x1[None, b]), 0, None)
    h = np.clip(np.minimum(y2[a, None], y2[None, b]) - np.maximum(y1[a, None], y1[None, b]), 0, None)
    inter = w * h
    overlap = inter / np.maximum(area[a, None] + area[None, b] - inter, 1e-12)
    return (overlap > iou) & (lab[a, None] == lab[None, b])


def _greedy(within: Mask) -> Mask:
    """Greedy NMS inside one block, given `within` [k, k] (i suppresses j, only for i < j): which are kept.
    Each pass keeps every undecided box no kept-or-undecided box can suppress, then drops every undecided
    box a kept one suppresses; a pass decides at least the first undecided box, usually many."""
    keep = np.zeros(len(within), bool)
    decided = keep.copy()
    while not decided.all():
        undecided = ~decided
        new = undecided & ~within[undecided | keep].any(0)
        keep |= new
        decided |= new | (undecided & within[keep].any(0))
    return keep


def postprocess_rtdetrv2(logits: F32, boxes: F32, orig_hw: tuple[int, int], *, conf: float = 0.0,
                         max_det: int = DEFAULT_MAX_DET, allowed: Mask | None = None, clip: bool = False
                         ) -> tuple[F32, F32, I64]:
    """One image: logits [Q, C], boxes [Q, 4] normalized cxcywh ->
    (boxes [K, 4] xyxy original px, scores [K], labels [K] 0-based): the top min(max_det, Q*C) over
    queries x classes (of the `allowed` labels, bool [C]), then only scores > conf (0: the official
    RTDETRPostProcessor, which keeps them all). clip: clip boxes to the original image."""
    num_classes = logits.shape[-1]
    flat = logits.astype(np.float32)
    if allowed is not None:
        flat = np.where(allowed[None, :], flat, -np.inf)
    flat = flat.reshape(-1)
    k = min(max_det, flat.size)
    top = np.argpartition(-flat, k - 1)[:k]
    top = top[np.argsort(-flat[top], kind="stable")]
    with np.errstate(over="ignore"):  # exp(inf) of a masked-out logit: its score is 0, dropped below
        scores = (1.0 / (1.0 + np.exp(-flat[top]))).astype(np.float32)
    keep = scores > conf
    top, scores = top[keep], scores[keep]
    labels, query = top % num_classes, top // num_classes
    h, w = orig_hw
    xyxy = cxcywh_to_xyxy(boxes[query].astype(np.float32)) * np.array([w, h, w, h], np.float32)
    if clip:
        xyxy = clip_boxes(xyxy, orig_hw)
    return xyxy.astype(np.float32), scores, labels.astype(np.int64)


@dataclass(frozen=True)
class FamilyPostprocess:
    """What the served postprocess does per family: `run` (one image's engine outputs, in
    specs.EXPORT_OUTPUTS order -> boxes, scores, labels), whether `iou` means anything (an NMS), and the
    family's official COCO evaluation protocol (the request parameters `tdet eval` sends)."""

    run: Callable[..., tuple[F32, F32, I64]]
    nms: bool
    coco_eval: Mapping[str, float]


def _run_damo_yolo(outputs: Sequence[F32], orig_hw: tuple[int, int], **kw: Any) -> tuple[F32, F32, I64]:
    return postprocess_damo_yolo(outputs[0], outputs[1], orig_hw, **kw)


def _run_rtdetrv2(outputs: Sequence[F32], orig_hw: tuple[int, int], *, conf: float, max_det: int,
                  allowed: Mask | None, clip: bool, **_: Any) -> tuple[F32, F32, I64]:
    """No NMS (iou unused) and normalized boxes (input_hw unused)."""
    return postprocess_rtdetrv2(outputs[0], outputs[1], orig_hw, conf=conf, max_det=max_det, allowed=allowed,
                                clip=clip)


# Each family's official COCO evaluation protocol: DAMO-YOLO's nms_conf_thre / nms_iou_thre; RT-DETRv2's
# RTDETRPostProcessor keeps every top-K score (no threshold).
FAMILY_POSTPROCESS = {
    DAMO_YOLO: FamilyPostprocess(_run_damo_yolo, nms=True, coco_eval={"conf": 0.05, "iou": 0.7}),
    RTDETRV2: FamilyPostprocess(_run_rtdetrv2, nms=False, coco_eval={"conf": 0.0}),
}
COCO_EVAL_PARAMETERS: dict[str, Mapping[str, float]] = {f: p.coco_eval for f, p in FAMILY_POSTPROCESS.items()}


def family_postprocess(family: str) -> FamilyPostprocess:
    if family not in FAMILY_POSTPROCESS:
        raise ValueError(f"unknown family {family!r}")
    return FAMILY_POSTPROCESS[family]


def postprocess_one(family: str, outputs: Sequence[F32], orig_hw: tuple[int, int], *,
                    conf: float | None = None, iou: float = DEFAULT_IOU,
                    max_det: int = DEFAULT_MAX_DET, input_hw: tuple[int, int] | None = None,
                    allowed: Mask | None = None, clip: bool = False) -> tuple[F32, F32, I64]:
    """The family's postprocess (FAMILY_POSTPROCESS) of one image; `outputs` are its engine outputs in
    specs.EXPORT_OUTPUTS order, for a network input of `input_hw` (height, width; None: 640x640). conf
    None: the family's official COCO-eval threshold (COCO_EVAL_PARAMETERS)."""
    post = family_postprocess(family)
    return post.run(outputs, orig_hw, conf=post.coco_eval["conf"] if conf is None else conf, iou=iou,
                    max_det=max_det, input_hw=input_hw, allowed=allowed, clip=clip)


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
