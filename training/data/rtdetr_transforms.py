"""RT-DETRv2 training augmentation (lyuwenyu/RT-DETR @068dfde rtdetrv2_pytorch: configs/rtdetrv2/include/
dataloader.yml, src/data/transforms/_transforms.py, container.py), re-written from torchvision.transforms.v2's
semantics (v0.29 source; the official pipeline runs them on a PIL image):

 1. RandomPhotometricDistort(p): brightness U(0.875, 1.125), contrast U(0.5, 1.5), saturation U(0.5, 1.5),
    hue U(-0.05, 0.05), each drawn with probability p (else skipped); contrast goes before saturation/hue with
    probability 0.5, else after them; a random channel permutation with probability p. On PIL that is
    ImageEnhance.Brightness / Contrast / Color and a hue shift of PIL's HSV "H" byte by
    uint8(int32(hue x 255)) with wrap-around; here the same PIL calls, so the pixels are torchvision's.
 2. RandomZoomOut(fill, side_range, p): with probability p, r = U(side_range), canvas int(w r) x int(h r)
    filled with `fill`, the image at (int((W' - w) u1), int((H' - h) u2)); boxes shift with it.
 3. RandomIoUCrop(p): with probability p, loop: draw an IoU threshold from sampler_options (>= 1: no crop);
    up to `trials` times draw scales U(min_scale, max_scale) for w and h (int sizes), reject aspect outside
    [min_aspect_ratio, max_aspect_ratio], draw the offset int((w - w') u), reject empty crops, crops with no
    box centre strictly inside, and crops whose best IoU with the boxes centred inside is below the
    threshold. The crop shifts and clamps boxes; boxes whose centre is outside become [0, 0, 0, 0].
 4. SanitizeBoundingBoxes(min_size): keep boxes with w, h >= min_size, area >= 1 (torchvision's min_area),
    all coordinates >= 0 and x <= W, y <= H; labels follow.
 5. RandomHorizontalFlip(hflip): x1' = W - x2, x2' = W - x1 (albumentations HorizontalFlip).
 6. Resize(input_hw): PIL bilinear (the client's `resize_rgb` "pil-bilinear": torchvision's Resize on PIL);
    boxes scale per axis.
 7. SanitizeBoundingBoxes(min_size) again.
strong=False (the `stop_epoch` policy: epoch >= stop_epoch) skips 1-3; 4-7 always run.

Deviations: randomness comes from the numpy Generator passed in, not torch's global generator; ZoomOut's
ratio is float64 (torch draws float32, so int(w r) can differ by one pixel); IoUCrop gives up (no crop)
after 1000 threshold draws, where torchvision loops forever (only reachable when sampler_options has no
value >= 1 and no box can be centred in a crop). albumentations has no transform with these semantics for
1-3 (its ColorJitter uses other formulas, its RandomSizedBBoxSafeCrop/BBoxSafeRandomCrop other samplers),
so numpy + PIL for those.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance

from tdet.client.boxes import box_iou, xyxy_to_cxcywh
from tdet.client.errors import UserError
from tdet.client.specs import RTDETRV2

from .batch import SampleKey, TrainBatch, images_tensor
from .coco import CocoDetection, Sample
from .ops import F32, I64, U8, augment_from_dict, hflip, stretch_resize

_MAX_THRESHOLD_DRAWS = 1000


@dataclass(frozen=True)
class RTDETRAugment:
    """The recipe's `augment` block, defaults from dataloader.yml and torchvision's defaults."""

    photometric_p: float = 0.5
    brightness: tuple[float, float] = (0.875, 1.125)
    contrast: tuple[float, float] = (0.5, 1.5)
    saturation: tuple[float, float] = (0.5, 1.5)
    hue: tuple[float, float] = (-0.05, 0.05)
    zoom_out_p: float = 0.5
    zoom_out_fill: int = 0
    side_range: tuple[float, float] = (1.0, 4.0)
    iou_crop_p: float = 0.8
    min_scale: float = 0.3
    max_scale: float = 1.0
    min_aspect_ratio: float = 0.5
    max_aspect_ratio: float = 2.0
    sampler_options: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
    trials: int = 40
    flip_prob: float = 0.5
    min_size: float = 1.0

    _KEYS = {"photometric": {"p": "photometric_p", "brightness": "brightness", "contrast": "contrast",
                             "saturation": "saturation", "hue": "hue"},
             "zoom_out": {"p": "zoom_out_p", "fill": "zoom_out_fill", "side_range": "side_range"},
             "iou_crop": {"p": "iou_crop_p", "min_scale": "min_scale", "max_scale": "max_scale",
                          "min_aspect_ratio": "min_aspect_ratio", "max_aspect_ratio": "max_aspect_ratio",
                          "sampler_options": "sampler_options", "trials": "trials"}}

    def __post_init__(self) -> None:
        if self.side_range[0] < 1.0 or self.side_range[0] > self.side_range[1]:
            raise UserError(f"zoom_out.side_range must be [lo, hi] with 1 <= lo <= hi, got {self.side_range}")
        if self.min_size < 1.0:
            raise UserError(f"min_size must be >= 1 (torchvision's SanitizeBoundingBoxes), got {self.min_size}")

    @classmethod
    def from_dict(cls, augment: dict[str, Any]) -> RTDETRAugment:
        """From `{photometric: {p, ...}, zoom_out: {p, fill, side_range}, iou_crop: {p, ...}, hflip, min_size}`
        (missing keys keep the defaults). Unknown keys raise ValueError."""
        return augment_from_dict(cls, augment, cls._KEYS, {"hflip": "flip_prob", "min_size": "min_size"}, "RT-DETRv2")


@dataclass(frozen=True)
class PhotometricParams:
    """One RandomPhotometricDistort draw; None: that operation is skipped."""

    brightness: float | None
    contrast: float | None
    saturation: float | None
    hue: float | None
    contrast_before: bool
    permutation: tuple[int, int, int] | None


def sample_photometric(rng: np.random.Generator, aug: RTDETRAugment) -> PhotometricParams:
    def maybe(lo_hi: tuple[float, float]) -> float | None:
        return float(rng.uniform(*lo_hi)) if rng.random() < aug.photometric_p else None

    b, c, s, h = maybe(aug.brightness), maybe(aug.contrast), maybe(aug.saturation), maybe(aug.hue)
    before = bool(rng.random() < 0.5)
    perm = tuple(int(i) for i in rng.permutation(3)) if rng.random() < aug.photometric_p else None
    return PhotometricParams(b, c, s, h, before, perm)  # type: ignore[arg-type]


def photometric_distort(img: U8, p: PhotometricParams) -> U8:
    """RGB uint8 [H, W, 3] -> distorted, with the PIL operations torchvision applies to a PIL image."""
    im = Image.fromarray(img)
    if p.brightness is not None:
        im = ImageEnhance.Brightness(im).enhance(p.brightness)
    if p.contrast is not None and p.contrast_before:
        im = ImageEnhance.Contrast(im).enhance(p.contrast)
    if p.saturation is not None:
        im = ImageEnhance.Color(im).enhance(p.saturation)
    if p.hue is not None:
        h, s, v = im.convert("HSV").split()
        hue = np.array(h, dtype=np.uint8)
        hue += np.int32(p.hue * 255).astype(np.uint8)  # wraps around, as PIL hue is a circle of 256
        im = Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert("RGB")
    if p.contrast is not None and not p.contrast_before:
        im = ImageEnhance.Contrast(im).enhance(p.contrast)
    out = np.asarray(im)
    return np.ascontiguousarray(out[..., list(p.permutation)]) if p.permutation is not None else out


def zoom_out(img: U8, boxes: F32, ratio: float, u: tuple[float, float], fill: int) -> tuple[U8, F32]:
    """Place img on a canvas `ratio` times its size at offset fractions u = (x, y); boxes follow."""
    h, w = img.shape[:2]
    cw, ch = int(w * ratio), int(h * ratio)
    left, top = int((cw - w) * u[0]), int((ch - h) * u[1])
    canvas = np.full((ch, cw, 3), fill, np.uint8)
    canvas[top:top + h, left:left + w] = img
    return canvas, boxes + np.array([left, top, left, top], np.float32)


def iou_crop_window(rng: np.random.Generator, boxes: F32, hw: tuple[int, int], aug: RTDETRAugment
                    ) -> tuple[int, int, int, int, npt.NDArray[np.bool_]] | None:
    """torchvision RandomIoUCrop's sampler: -> (top, left, height, width, box centre inside [N]) or None."""
    orig_h, orig_w = hw
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    for _ in range(_MAX_THRESHOLD_DRAWS):
        min_iou = aug.sampler_options[int(rng.integers(len(aug.sampler_options)))]
        if min_iou >= 1.0:
            return None
        for _ in range(aug.trials):
            r = aug.min_scale + (aug.max_scale - aug.min_scale) * rng.random(2)
            new_w, new_h = int(orig_w * r[0]), int(orig_h * r[1])
            if new_h == 0 or not aug.min_aspect_ratio <= new_w / new_h <= aug.max_aspect_ratio:
                continue
            u = rng.random(2)
            left, top = int((orig_w - new_w) * u[0]), int((orig_h - new_h) * u[1])
            right, bottom = left + new_w, top + new_h
            if left == right or top == bottom:
                continue
            inside = (left < cx) & (cx < right) & (top < cy) & (cy < bottom)
            if not inside.any():
                continue
            ious = box_iou(boxes[inside], np.array([[left, top, right, bottom]], np.float32))
            if ious.max() < min_iou:
                continue
            return top, left, new_h, new_w, inside
    return None


def crop(img: U8, boxes: F32, window: tuple[int, int, int, int, npt.NDArray[np.bool_]]) -> tuple[U8, F32]:
    """Crop to (top, left, height, width); boxes shift and clamp, those centred outside become zeros."""
    top, left, h, w, inside = window
    out = boxes - np.array([left, top, left, top], np.float32)
    out[:, 0::2] = out[:, 0::2].clip(0, w)
    out[:, 1::2] = out[:, 1::2].clip(0, h)
    out[~inside] = 0
    return np.ascontiguousarray(img[top:top + h, left:left + w]), out


def sanitize(boxes: F32, labels: I64, hw: tuple[int, int], min_size: float) -> tuple[F32, I64]:
    """torchvision SanitizeBoundingBoxes(min_size, min_area=1) on xyxy pixel boxes of an image hw."""
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    valid = (bw >= min_size) & (bh >= min_size) & (boxes >= 0).all(1) & (bw * bh >= 1)
    valid &= (boxes[:, 0] <= hw[1]) & (boxes[:, 2] <= hw[1]) & (boxes[:, 1] <= hw[0]) & (boxes[:, 3] <= hw[0])
    return boxes[valid], labels[valid]


class RTDETRTrainTransform:
    """`(index, rng, strong, progress) -> Sample` at input_hw: the RT-DETRv2 training pipeline over a CocoDetection."""

    def __init__(self, dataset: CocoDetection, input_hw: tuple[int, int], augment: RTDETRAugment | dict[str, Any]):
        self.dataset = dataset
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.aug = augment if isinstance(augment, RTDETRAugment) else RTDETRAugment.from_dict(augment)

    def __call__(self, index: int, rng: np.random.Generator, strong: bool, progress: float = 0.0) -> Sample:
        """progress (the fraction of the strong epochs done) is DAMO-YOLO's SADA ramp: nothing here ramps."""
        s, aug = self.dataset.load(index), self.aug
        img, boxes, labels = s.image, s.boxes, s.labels
        if strong:
            img = photometric_distort(img, sample_photometric(rng, aug))
            if rng.random() < aug.zoom_out_p:
                ratio = aug.side_range[0] + rng.random() * (aug.side_range[1] - aug.side_range[0])
                img, boxes = zoom_out(img, boxes, ratio, (rng.random(), rng.random()), aug.zoom_out_fill)
            if rng.random() < aug.iou_crop_p:
                window = iou_crop_window(rng, boxes, img.shape[:2], aug)
                if window is not None:
                    img, boxes = crop(img, boxes, window)
        boxes, labels = sanitize(boxes, labels, img.shape[:2], aug.min_size)
        if rng.random() < aug.flip_prob:
            img, boxes, labels = hflip(img, boxes, labels)
        img, boxes = stretch_resize(img, boxes, self.input_hw, RTDETRV2)
        boxes, labels = sanitize(boxes, labels, self.input_hw, aug.min_size)
        return Sample(np.ascontiguousarray(img), boxes, labels, s.image_id, s.orig_hw)


class RTDETRCollate:
    """TrainBatch with images 0..1, targets cxcywh normalized, optional multi-scale (nearest) resize."""

    def __init__(self, multi_scale: Sequence[int] | None = None) -> None:
        self.multi_scale = tuple(int(s) for s in multi_scale) if multi_scale else None

    def __call__(self, items: list[tuple[Sample, SampleKey]]) -> TrainBatch:
        samples, keys = [s for s, _ in items], [k for _, k in items]
        targets = []
        for s in samples:
            h, w = s.image.shape[:2]
            norm = xyxy_to_cxcywh(s.boxes.reshape(-1, 4)) / np.array([w, h, w, h], np.float32)
            targets.append({"boxes": torch.from_numpy(norm.astype(np.float32)), "labels": torch.from_numpy(s.labels)})
        images = images_tensor(samples, 1 / 255)
        size = self.scale_for(keys)
        if size is not None:
            images = F.interpolate(images, size=(size, size))  # mode "nearest", as the official collate
        return TrainBatch(images, targets, keys)

    def scale_for(self, keys: Sequence[SampleKey]) -> int | None:
        """The batch's square size: a function of its keys (None: no multi-scale for this batch)."""
        if self.multi_scale is None or not all(k.strong for k in keys):
            return None
        rng = np.random.default_rng([k.seed for k in keys])
        return self.multi_scale[int(rng.integers(len(self.multi_scale)))]
