"""DAMO-YOLO training augmentation (tinyvision/DAMO-YOLO @319572e: damo/dataset/datasets/mosaic_wrapper.py,
damo/dataset/transforms/transforms.py, damo/config/augmentations.py, configs/damoyolo_tinynasL*.py).

strong=True (all epochs but the last `no_aug_epochs`), as `MosaicWrapper.__getitem__` then the train transforms:
 1. Mosaic, with probability mosaic.prob: the centre (xc, yc) = int(U(0.5, 1.5) x (w, h)) on a (2h, 2w) canvas
    filled with 114; the sample and 3 images drawn uniformly from the dataset (repeats allowed) are each
    STRETCHED to (h, w) (keep_ratio False, as every official config; True: min-ratio resize) with
    cv2 INTER_LINEAR and pasted top-left / top-right / bottom-left / bottom-right of the centre, cut at the
    canvas. Boxes are scaled, shifted and clipped to the canvas.
 2. Random affine of the canvas to (h, w): M = T @ S @ R @ C, C moves the canvas centre to the origin,
    R = cv2.getRotationMatrix2D(angle U(+-degrees), scale U(mosaic.scale)), S = shear tan(U(+-shear) deg) on
    x and y, T = U(0.5 +- translate) x (w, h). cv2.warpAffine (INTER_LINEAR, border 114). Box corners are
    transformed, the axis-aligned hull clipped to the image, and `box_candidates` keeps boxes with
    w, h > 2 px, area > 0.1 x (scale^2 x area before) and aspect < 20.
 3. MixUp, with probability mixup.prob when there are boxes (YOLOX style): an image with boxes drawn
    uniformly is letterboxed top-left into an (h, w) canvas filled with 114, resized by a jitter
    U(mixup.scale), flipped with probability 0.5, padded with 0 to at least (h, w), cropped at a random offset,
    and blended 0.5 / 0.5 (float, truncated to uint8). Its boxes follow, clipped; they join the sample's.
 4. Boxes with area <= 4 px^2 are dropped.
 5. Stretch resize to the input size (cv2 INTER_LINEAR: the client's `resize_rgb`, the served resize), then
    horizontal flip with probability hflip (albumentations HorizontalFlip: x -> W - x).
strong=False (the last epochs; `set_mosaic(False)`): the dataset image, stretch resize, horizontal flip.

 6. SADA, the scale-aware box-level auto-augmentation, when the recipe has an `augment.sada` block (the
    official recipe does): training/data/sada.py, ramped in by the fraction of the strong epochs done.

Deviations from the official code (none changes the distribution of samples):
 - Randomness comes from the numpy Generator passed in (a sample is a function of (index, seed)), not from
   Python's `random`; integer offsets uniform on {0..n-1} are drawn as int(U[0,1) x n).
 - The official `pull_item` drops empty boxes after clipping without dropping their labels (labels can shift
   to the wrong box); boxes and labels stay aligned here.
 - The MixUp partner is drawn uniformly among images with at least one valid box (official: redraw until an
   image with a non-crowd annotation comes up, the same distribution up to images whose every box is invalid).
 - An image whose stretched size is already the input size is not passed through cv2.resize again (that
   call is an exact copy).
Why not albumentations' Affine: it warps to the input's own size (the official maps the 2x canvas to the
input size), composes shift/scale/rotate/shear in another order around the pixel-centre (w/2 - 0.5), and
filters boxes by visibility instead of `box_candidates`; so OpenCV with the official matrix. albumentations
is used for the flip, whose semantics match.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch

from tdet.client.errors import UserError
from tdet.client.specs import DAMO_YOLO

from .batch import SampleKey, TrainBatch, images_tensor
from .coco import CocoDetection, Sample
from .ops import F32, U8, augment_from_dict, hflip, stretch_resize
from .sada import Sada, SadaConfig

PAD = 114  # the official fill of the mosaic canvas, the affine border and the MixUp letterbox


@dataclass(frozen=True)
class DamoAugment:
    """The recipe's `augment` block. Defaults: damo/config/augmentations.py with the mixup prob (0.15) every
    config sets; per variant the configs change `shear` (T, N*: 0.2) and `mosaic_scale` (Ns: 0.75-1.25)."""

    mosaic_prob: float = 1.0
    mosaic_scale: tuple[float, float] = (0.1, 2.0)
    degrees: float = 10.0
    translate: float = 0.2
    shear: float = 2.0
    keep_ratio: bool = False
    mixup_prob: float = 0.15
    mixup_scale: tuple[float, float] = (0.5, 1.5)
    flip_prob: float = 0.5
    sada: SadaConfig | None = None  # None: no SADA (a recipe without an `augment.sada` block)

    # recipe key -> {sub-key: field}
    _KEYS = {"mosaic": {"prob": "mosaic_prob", "scale": "mosaic_scale", "degrees": "degrees",
                        "translate": "translate", "shear": "shear", "keep_ratio": "keep_ratio"},
             "mixup": {"prob": "mixup_prob", "scale": "mixup_scale"}}

    @classmethod
    def from_dict(cls, augment: dict[str, Any]) -> DamoAugment:
        """From `{mosaic: {prob, scale, degrees, translate, shear, keep_ratio}, mixup: {prob, scale}, hflip}`
        plus `sada: {box_prob, num_subpolicies, scale_splits, autoaug_params}` or null (missing keys keep the
        defaults). Unknown keys raise ValueError."""
        rest = {k: v for k, v in augment.items() if k != "sada"}
        aug = augment_from_dict(cls, rest, cls._KEYS, {"hflip": "flip_prob"}, "DAMO-YOLO")
        sada = augment.get("sada")
        if sada is not None and not isinstance(sada, dict):
            raise UserError(f"augment.sada: a mapping of SADA settings or null, got {sada!r}")
        return replace(aug, sada=SadaConfig.from_dict(sada)) if sada is not None else aug


def mosaic(parts: list[tuple[U8, F32]], center_xy: tuple[int, int], input_hw: tuple[int, int],
           keep_ratio: bool = False) -> tuple[U8, F32]:
    """Four (RGB uint8 [h, w, 3], xyxy boxes [N, 4]) -> (canvas uint8 [2H, 2W, 3], boxes [sum N, 4] in canvas
    pixels, clipped to it). Part i goes top-left, top-right, bottom-left, bottom-right of center_xy."""
    in_h, in_w = input_hw
    xc, yc = center_xy
    canvas = np.full((2 * in_h, 2 * in_w, 3), PAD, np.uint8)
    out = []
    for i, (img, boxes) in enumerate(parts):
        h0, w0 = img.shape[:2]
        sh, sw = (min(in_h / h0, in_w / w0),) * 2 if keep_ratio else (in_h / h0, in_w / w0)
        img = cv2.resize(img, (int(w0 * sw), int(h0 * sh)), interpolation=cv2.INTER_LINEAR)
        h, w = img.shape[:2]
        lx1, lx2, sx1, sx2 = _span(xc, w, 2 * in_w, right=bool(i % 2))
        ly1, ly2, sy1, sy2 = _span(yc, h, 2 * in_h, right=i >= 2)
        canvas[ly1:ly2, lx1:lx2] = img[sy1:sy2, sx1:sx2]
        out.append(boxes * np.array([sw, sh, sw, sh], np.float32) + np.array([lx1 - sx1, ly1 - sy1] * 2, np.float32))
    boxes = np.concatenate(out).reshape(-1, 4)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, 2 * in_w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, 2 * in_h)
    return canvas, boxes


def _span(c: int, size: int, limit: int, right: bool) -> tuple[int, int, int, int]:
    """1-D placement of a part of length `size` ending (or, right=True, starting) at c on [0, limit]:
    (canvas lo, canvas hi, part lo, part hi)."""
    if right:
        hi = min(c + size, limit)
        return c, hi, 0, hi - c
    lo = max(c - size, 0)
    return lo, c, size - (c - lo), size


@dataclass(frozen=True)
class AffineParams:
    """One draw of the official random affine: degrees, scale, shear angles (degrees), translation fractions."""

    angle: float
    scale: float
    shear_x: float
    shear_y: float
    translate_x: float
    translate_y: float


def sample_affine(rng: np.random.Generator, aug: DamoAugment) -> AffineParams:
    return AffineParams(angle=rng.uniform(-aug.degrees, aug.degrees), scale=rng.uniform(*aug.mosaic_scale),
                        shear_x=rng.uniform(-aug.shear, aug.shear), shear_y=rng.uniform(-aug.shear, aug.shear),
                        translate_x=rng.uniform(0.5 - aug.translate, 0.5 + aug.translate),
                        translate_y=rng.uniform(0.5 - aug.translate, 0.5 + aug.translate))


def affine_matrix(src_hw: tuple[int, int], out_hw: tuple[int, int], p: AffineParams) -> npt.NDArray[np.float64]:
    """3x3 M = T @ S @ R @ C (`get_transform_matrix`): source pixels -> output pixels."""
    C = np.eye(3)
    C[0, 2], C[1, 2] = -src_hw[1] / 2, -src_hw[0] / 2
    R = np.eye(3)
    R[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=p.angle, scale=p.scale)
    S = np.eye(3)
    S[0, 1], S[1, 0] = math.tan(math.radians(p.shear_x)), math.tan(math.radians(p.shear_y))
    T = np.eye(3)
    T[0, 2], T[1, 2] = p.translate_x * out_hw[1], p.translate_y * out_hw[0]
    return T @ S @ R @ C


def random_affine(img: U8, boxes: F32, p: AffineParams, out_hw: tuple[int, int]
                  ) -> tuple[U8, F32, npt.NDArray[np.bool_]]:
    """Warp `img` to out_hw with `affine_matrix`; -> (image, boxes [N, 4] transformed and clipped, keep [N]:
    the `box_candidates` mask; boxes[keep] are the ones to train on)."""
    M = affine_matrix(img.shape[:2], out_hw, p)
    out_h, out_w = out_hw
    img = cv2.warpAffine(img, M[:2], dsize=(out_w, out_h), borderValue=(PAD, PAD, PAD))
    n = len(boxes)
    xy = np.ones((n * 4, 3))
    xy[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)  # the 4 corners
    xy = (xy @ M.T)[:, :2].reshape(n, 8)
    x, y = xy[:, 0::2], xy[:, 1::2]
    new = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1) if n else np.zeros((0, 4))
    new[:, 0::2] = new[:, 0::2].clip(0, out_w)
    new[:, 1::2] = new[:, 1::2].clip(0, out_h)
    keep = box_candidates(boxes * p.scale, new)
    return img, new.astype(np.float32), keep


def box_candidates(before: npt.NDArray, after: npt.NDArray, wh_thr: float = 2, ar_thr: float = 20,
                   area_thr: float = 0.1, eps: float = 1e-16) -> npt.NDArray[np.bool_]:
    """Boxes [N, 4] xyxy worth keeping after a warp: w, h > wh_thr, area > area_thr x area before, aspect < ar_thr."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


@dataclass(frozen=True)
class MixupParams:
    """One MixUp draw: the jitter, the flip, and the crop offsets as fractions of their ranges, in [0, 1)."""

    jitter: float
    flip: bool
    offset_x: float
    offset_y: float


def sample_mixup(rng: np.random.Generator, aug: DamoAugment) -> MixupParams:
    return MixupParams(jitter=rng.uniform(*aug.mixup_scale), flip=bool(rng.uniform() > 0.5),
                       offset_x=rng.random(), offset_y=rng.random())


def mixup(origin: U8, partner: U8, partner_boxes: F32, input_hw: tuple[int, int], p: MixupParams
          ) -> tuple[U8, F32]:
    """YOLOX MixUp of `partner` (RGB uint8, boxes [M, 4] xyxy) into `origin` (RGB uint8 [h, w, 3]).
    -> (blended image, same shape as origin; partner boxes [M, 4] in origin pixels, clipped to it)."""
    in_h, in_w = input_hw
    ph, pw = partner.shape[:2]
    ratio = min(in_h / ph, in_w / pw)
    letterbox = np.full((in_h, in_w, 3), PAD, np.uint8)
    rw, rh = int(pw * ratio), int(ph * ratio)
    letterbox[:rh, :rw] = cv2.resize(partner, (rw, rh), interpolation=cv2.INTER_LINEAR)
    jittered = cv2.resize(letterbox, (int(in_w * p.jitter), int(in_h * p.jitter)))
    ratio *= p.jitter
    if p.flip:
        jittered = jittered[:, ::-1]
    jh, jw = jittered.shape[:2]
    th, tw = origin.shape[:2]
    padded = np.zeros((max(jh, th), max(jw, tw), 3), np.uint8)
    padded[:jh, :jw] = jittered
    # official: randint(0, padded - target - 1), i.e. uniform on {0 .. padded - target - 1}
    oy = int(p.offset_y * (padded.shape[0] - th)) if padded.shape[0] > th else 0
    ox = int(p.offset_x * (padded.shape[1] - tw)) if padded.shape[1] > tw else 0
    crop = padded[oy:oy + th, ox:ox + tw]
    boxes = partner_boxes.astype(np.float32) * np.float32(ratio)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, jw)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, jh)
    if p.flip:
        boxes[:, 0::2] = jw - boxes[:, 2::-2]
    boxes[:, 0::2] = (boxes[:, 0::2] - ox).clip(0, tw)
    boxes[:, 1::2] = (boxes[:, 1::2] - oy).clip(0, th)
    blended = 0.5 * origin.astype(np.float32) + 0.5 * crop.astype(np.float32)
    return blended.astype(np.uint8), boxes


class DamoTrainTransform:
    """`(index, rng, strong, progress) -> Sample` at input_hw: the DAMO-YOLO training pipeline over a CocoDetection."""

    def __init__(self, dataset: CocoDetection, input_hw: tuple[int, int], augment: DamoAugment | dict[str, Any]):
        self.dataset = dataset
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.aug = augment if isinstance(augment, DamoAugment) else DamoAugment.from_dict(augment)
        self._with_boxes = np.flatnonzero(dataset.num_boxes > 0)  # MixUp partners
        self.sada = Sada(self.aug.sada) if self.aug.sada is not None else None

    def __call__(self, index: int, rng: np.random.Generator, strong: bool, progress: float = 0.0) -> Sample:
        """progress: the fraction of the strong epochs done at this sample's batch (SADA's ramp)."""
        first = self.dataset.load(index)
        img, boxes, labels = first.image, first.boxes, first.labels
        if strong:
            img, boxes, labels = self._strong(first, rng)
        img, boxes = stretch_resize(img, boxes, self.input_hw, DAMO_YOLO)
        if rng.random() < self.aug.flip_prob:
            img, boxes, labels = hflip(img, boxes, labels)
        if strong and self.sada is not None:  # the official's iteration / max_iters passes 1 in the no-aug epochs
            img, boxes, labels = self.sada(img, boxes, labels, progress, rng)
        return Sample(np.ascontiguousarray(img), boxes.astype(np.float32), labels.astype(np.int64),
                      first.image_id, first.orig_hw)

    def _strong(self, first: Sample, rng: np.random.Generator) -> tuple[U8, F32, npt.NDArray[np.int64]]:
        """Mosaic + affine, MixUp, the area filter (before the resize and the flip)."""
        aug, (in_h, in_w) = self.aug, self.input_hw
        img, boxes, labels = first.image, first.boxes, first.labels
        if rng.random() < aug.mosaic_prob:
            center = (int(rng.uniform(0.5 * in_w, 1.5 * in_w)), int(rng.uniform(0.5 * in_h, 1.5 * in_h)))
            others = [self.dataset.load(int(j)) for j in rng.integers(0, len(self.dataset), 3)]
            parts = [(s.image, s.boxes) for s in [first, *others]]
            canvas, boxes = mosaic(parts, center, self.input_hw, aug.keep_ratio)
            labels = np.concatenate([first.labels] + [s.labels for s in others])
            img, boxes, keep = random_affine(canvas, boxes, sample_affine(rng, aug), self.input_hw)
            boxes, labels = boxes[keep], labels[keep]
        if len(labels) and len(self._with_boxes) and rng.random() < aug.mixup_prob:
            partner = self.dataset.load(int(self._with_boxes[rng.integers(len(self._with_boxes))]))
            img, extra = mixup(img, partner.image, partner.boxes, self.input_hw, sample_mixup(rng, aug))
            boxes, labels = np.concatenate([boxes, extra]), np.concatenate([labels, partner.labels])
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return img, boxes[area > 4], labels[area > 4]


class DamoCollate:
    """TrainBatch with images 0..255 and targets xyxy in pixels (one size: DAMO-YOLO has no multi-scale)."""

    def __init__(self, multi_scale: Sequence[int] | None = None) -> None:
        if multi_scale:
            raise UserError(f"multi_scale is RT-DETRv2's collate; {DAMO_YOLO} trains at one size")

    def __call__(self, items: list[tuple[Sample, SampleKey]]) -> TrainBatch:
        samples = [s for s, _ in items]
        targets = [{"boxes": torch.from_numpy(s.boxes.reshape(-1, 4)), "labels": torch.from_numpy(s.labels)}
                   for s in samples]
        return TrainBatch(images_tensor(samples, 1.0), targets, [k for _, k in items])
