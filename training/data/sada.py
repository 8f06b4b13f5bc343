"""SADA: DAMO-YOLO's scale-aware box-level auto-augmentation (tinyvision/DAMO-YOLO @319572e:
damo/augmentations/scale_aware_aug.py and box_level_augs/{box_level_augs,color_augs,geometric_augs,gaussian_maps}.py,
after SA-AutoAug, Chen et al., CVPR 2021). On in the official recipe (damo/config/augmentations.py:
`train_transform.autoaug_dict = SADA`), applied to each training sample after the resize and the flip.

Per sample (`Sada.__call__`):
 - `autoaug_params` (the searched policy, 40 integers; the first 4 unused) decodes to 5 sub-policies, each a box
   colour op and a box geometric op (name, probability / 10, level), then two scale-ratio triples: `area`
   (indices into RATIOS: the gaussian's size per scale) and `prob` (weights of the box sampling per scale).
 - One sub-policy is drawn uniformly; its two ops run in turn, each with probability p x progress: `progress` is
   the fraction of the strong-augmentation epochs done (the official iteration / max_iters), so SADA ramps in from
   nothing.
 - Each box is picked with probability box_prob x its scale's normalised weight (colour ops: `area`, geometric
   ops: `prob`), the scale being area < s0, < s1 or larger, with `scale_splits` times min(h, w) / 800 (linear
   in the side, as the official has it).
 - Colour op (AutoContrast, Equalize, SolarizeAdd, Color, Contrast, Brightness, Sharpness): applied to the whole
   image, then blended in through the sum of one gaussian per picked box (centred on it, spread by its scale),
   clipped to 1.
 - Geometric op: each picked box's crop is flipped, rotated or sheared (PIL's bilinear affine about the crop's
   centre, as torchvision's `affine` does on a PIL image, filled with the official pixel mean) or moved by
   level/10 x 120 px (the moved copy is pasted and becomes one more box with the same label; the original stays),
   and pasted back through a gaussian over the crop.

Deviations from the official code:
 - Randomness comes from the sample's numpy Generator (Python's `random` there), drawn in the same order.
 - The official feeds the float result to the model; here it is rounded back to uint8 (<= 0.5 levels).
 - The image is RGB here, BGR there (cv2.imread): the grey weights go to the channels the official's have them
   on (its channel 0 is blue), and the fill is its pixel mean (BGR 102, 115, 122) in RGB order.
 - A moved box is clipped to the image (the official may leave it up to a pixel outside).
 - `progress` is exact; the official counts samples per loader worker, so its ramp is approximate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from tdet.client.errors import UserError

from .ops import F32, I64, U8, augment_from_dict

Img = npt.NDArray[np.float32]  # HWC RGB in [0, 1]
Op = tuple[str, float, int]  # name, probability, level
MAX_LEVEL = 10.0
RATIOS = (0.2, 0.4, 0.6, 0.8, 1.0, 2, 4, 6, 8, 10)  # `area` indices -> the gaussian's size factor
FILL_RGB = (122, 115, 102)  # the official fill: int(pixel_mean) on its BGR tensor (102.98, 115.95, 122.77)
GREY_RGB = np.array([0.1140, 0.5870, 0.2989], np.float32)  # rgb2gray's 0.2989 / 0.587 / 0.114 on B, G, R
SHARPEN = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / np.float32(13.0)


@dataclass(frozen=True)
class SadaConfig:
    """The recipe's `augment.sada` block: damo/config/augmentations.py's SADA dict."""

    box_prob: float = 0.3
    num_subpolicies: int = 5
    scale_splits: tuple[float, ...] = (2048, 10240, 51200)
    autoaug_params: tuple[int, ...] = (6, 9, 5, 3, 3, 4, 2, 4, 4, 4, 5, 2, 4, 1, 4, 2, 6, 4, 2, 2, 2, 6, 2, 2, 2,
                                       0, 5, 1, 3, 0, 8, 5, 2, 8, 7, 5, 1, 3, 3, 3)

    def __post_init__(self) -> None:
        need = 4 + 6 * self.num_subpolicies + 6
        if self.num_subpolicies < 1 or len(self.autoaug_params) < need:
            raise UserError(f"augment.sada: {self.num_subpolicies} sub-policies need {need} autoaug_params, got "
                            f"{len(self.autoaug_params)}")
        if not 0.0 <= self.box_prob <= 1.0 or len(self.scale_splits) != 3:
            raise UserError("augment.sada: box_prob is a probability and scale_splits three areas")

    @classmethod
    def from_dict(cls, block: dict[str, Any]) -> SadaConfig:
        """From the recipe's `sada` mapping (missing keys keep the defaults; unknown ones are refused)."""
        return augment_from_dict(cls, {"sada": block}, {"sada": {f.name: f.name for f in fields(cls)}}, {},
                                 "DAMO-YOLO")


# ---------------------------------------------------------------- colour ops (color_augs.py), on [0, 1]

def blend(a: Img | float, b: Img, factor: float) -> Img:
    """a + factor x (b - a): 0 gives a, 1 gives b; clipped to [0, 1] when it extrapolates (factor > 1)."""
    if factor == 0.0:
        return np.broadcast_to(np.asarray(a, np.float32), b.shape)
    if factor == 1.0:
        return b
    out = a + np.float32(factor) * (b - a)
    return out if 0.0 < factor < 1.0 else np.clip(out, 0.0, 1.0)


def grey(img: Img) -> Img:
    return np.repeat((img @ GREY_RGB)[..., None], 3, axis=2)


def autocontrast(img: Img) -> Img:
    out = img.copy()
    for c in range(3):
        lo, hi = img[..., c].min(), img[..., c].max()
        if hi > lo:
            scale = np.float32(1.0) / (hi - lo)
            out[..., c] = np.clip(img[..., c] * scale + (-lo * scale), 0.0, 1.0)
    return out


_EDGES = np.linspace(0, 255, 257, dtype=np.float32)  # torch.histc(bins=256, min=0, max=255)'s bin edges


def equalize(img: Img) -> Img:
    """PIL-style equalize per channel from a 256-bin histogram of the 0..255 values (the official's
    TF-autoaugment port: step from the histogram without its last non-empty bin, lut shifted by one)."""
    im = img * np.float32(255)
    out = np.empty_like(img)
    for c in range(3):
        ch = im[..., c]
        bins = np.clip(np.searchsorted(_EDGES, ch.ravel(), side="right") - 1, 0, 255)
        hist = np.bincount(bins, minlength=256).astype(np.float32)
        nonzero = hist[hist != 0]
        step = (nonzero.sum() - nonzero[-1]) // 255
        if step == 0:
            out[..., c] = ch
            continue
        lut = (np.cumsum(hist) + step // 2) // step
        lut = np.clip(np.concatenate([[0.0], lut[:-1]]), 0, 255).astype(np.float32)
        out[..., c] = lut[ch.astype(np.int64)]
    return out / np.float32(255)


def solarize_add(img: Img, addition: float, threshold: float = 0.5) -> Img:
    return np.where(img <= threshold, np.clip(img + np.float32(addition), 0.0, 1.0), img)


def sharpness(img: Img, factor: float) -> Img:
    # the official pads by reflection (no edge repeat) and convolves each channel: BORDER_REFLECT_101
    return blend(cv2.filter2D(img, -1, SHARPEN, borderType=cv2.BORDER_REFLECT_101), img, factor)


def _enhance(level: int) -> float:
    return level / MAX_LEVEL * 1.8 + 0.1


COLOR_OPS: dict[str, Callable[[Img, int], Img]] = {  # the official's order: sub-policy indices pick from it
    "AutoContrast": lambda x, level: autocontrast(x),
    "Equalize": lambda x, level: equalize(x),
    "SolarizeAdd": lambda x, level: solarize_add(x, level / MAX_LEVEL * 0.4296875),
    "Color": lambda x, level: blend(grey(x), x, _enhance(level)),
    "Contrast": lambda x, level: blend(np.float32(grey(x).mean()), x, max(_enhance(level), 1e-6)),
    "Brightness": lambda x, level: blend(np.zeros_like(x), x, _enhance(level)),
    "Sharpness": lambda x, level: sharpness(x, _enhance(level)),
}
GEOMETRIC_OPS = ("hflip", "rotate", "shearX", "shearY", "translateX", "translateY")


# ---------------------------------------------------------------- gaussian maps (gaussian_maps.py)

def _gaussian_scale(area: float, splits: Sequence[float], area_idx: Sequence[int]) -> float:
    if area < splits[0]:
        return RATIOS[area_idx[0]] * splits[0] / area
    if area < splits[1]:
        return RATIOS[area_idx[1]] * (splits[0] + splits[1]) / 2.0 / area
    if area < splits[2]:
        return RATIOS[area_idx[2]] * splits[2] / area
    return RATIOS[area_idx[2]]


def gaussian_map(hw: tuple[int, int], boxes: Sequence[Sequence[float]], splits: Sequence[float] | None = None,
                 area_idx: Sequence[int] | None = None) -> Img:
    """Sum over xyxy `boxes` of an axis-aligned gaussian on an (h, w) grid: centred at (x1 + w // 2, y1 + h // 2),
    sigma (h, w) / (H, W) x sqrt(s x H x W / 2 pi), s from the box's scale (1 without splits). Separable: the
    outer product of a row and a column profile."""
    height, width = hw
    g = np.zeros((height, width), np.float32)
    rows, cols = np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32)
    for x1, y1, x2, y2 in boxes:
        x1, y1, x2, y2 = (np.float32(v) for v in (x1, y1, x2, y2))
        h, w = y2 - y1, x2 - x1
        s = 1.0 if splits is None or area_idx is None else _gaussian_scale(float(h * w), splits, area_idx)
        r = math.sqrt(s * height * width / (2 * math.pi))
        var_r, var_c = np.float32(float(h) / height * r), np.float32(float(w) / width * r)
        g += np.outer(np.exp(-(rows - (y1 + h // 2)) ** 2 / (2 * var_r ** 2)),
                      np.exp(-(cols - (x1 + w // 2)) ** 2 / (2 * var_c ** 2)))
    return g


# ---------------------------------------------------------------- geometric ops (geometric_augs.py)

def inverse_affine(center: tuple[float, float], angle: float, shear: tuple[float, float]) -> list[float]:
    """PIL's output -> input matrix of a rotation by `angle` and shears (degrees, clockwise) about `center`,
    torchvision's `_get_inverse_affine_matrix` (scale 1, no translation)."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    cx, cy = center
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += m[0] * -cx + m[1] * -cy + cx
    m[5] += m[3] * -cx + m[4] * -cy + cy
    return m


def _pil_affine(crop: Img, angle: float, shear: tuple[float, float]) -> Img:
    """torchvision's to_pil_image (x 255, truncated), affine (bilinear, the pixel-mean fill), to_tensor."""
    u8 = np.ascontiguousarray((crop * np.float32(255)).astype(np.uint8))
    h, w = u8.shape[:2]
    m = inverse_affine((w * 0.5, h * 0.5), angle, shear)
    out = Image.fromarray(u8, "RGB").transform((w, h), Image.AFFINE, m, Image.BILINEAR, fillcolor=FILL_RGB)
    return np.asarray(out, np.float32) / np.float32(255)


def _crop_rect(box: npt.NDArray[np.float32], height: int, width: int) -> tuple[int, int, int, int]:
    """The official `scale_area` at ratio 1 in float32, truncated: (x1, y1, x2, y2) integer pixels."""
    x1, y1, x2, y2 = (np.float32(v) for v in box)
    h, w = y2 - y1, x2 - x1
    two = np.float32(2)
    top, left = max(y1 + h / two - h / two, np.float32(0)), max(x1 + w / two - w / two, np.float32(0))
    bottom, right = min(top + h, np.float32(height)), min(left + w, np.float32(width))
    return int(left), int(top), int(right), int(bottom)


def _shift(v: int, by: float, hi: int) -> int:
    return int(np.clip(np.float32(v) + np.float32(by), 0, hi))


def _geometric(x: Img, name: str, level: int, boxes: F32, labels: I64, probs: list[float],
               rng: np.random.Generator) -> tuple[Img, F32, I64]:
    amount = level / MAX_LEVEL
    angle = amount * 30 if name == "rotate" else 0.0
    shear = (amount * 15 if name == "shearX" else 0.0, amount * 15 if name == "shearY" else 0.0)
    translate = (amount * 120.0 if name == "translateX" else 0.0, amount * 120.0 if name == "translateY" else 0.0)
    picked = [i for i, p in enumerate(probs) if rng.random() < p]
    if rng.random() < 0.5:
        angle, translate, shear = -angle, (-translate[0], -translate[1]), (-shear[0], -shear[1])
    moves = translate[0] + translate[1] != 0  # the official's test (a level-0 move is an identity affine)
    height, width = x.shape[:2]
    crops, rects, moved, moved_labels = [], [], [], []
    for i in picked:
        rect = _crop_rect(boxes[i], height, width)
        x1, y1, x2, y2 = rect
        crop = x[y1:y2, x1:x2]
        rects.append(rect)
        if x1 >= x2 or y1 >= y2:
            crops.append(crop)
            continue
        if name == "hflip":
            crop = crop[:, ::-1]
        elif moves:
            dx, dy = _shift(x2, translate[0], width) - x2, _shift(y2, translate[1], height) - y2
            if dx or dy:
                moved.append(boxes[i] + np.array([dx, dy, dx, dy], np.float32))
                moved_labels.append(labels[i])
        else:
            crop = _pil_affine(crop, angle, shear)
        crops.append(crop)
    y = x.copy()
    for crop, (x1, y1, x2, y2) in zip(crops, rects):  # `_transform`: each crop pasted where it moved to
        c1, r1 = _shift(x1, translate[0], width), _shift(y1, translate[1], height)
        c2, r2 = _shift(x2, translate[0], width), _shift(y2, translate[1], height)
        under = y[r1:r2, c1:c2].copy()
        if under.shape[0] * under.shape[1] == 0:
            continue
        src = crop[:under.shape[0], :under.shape[1]]
        sh, sw = src.shape[:2]
        g = gaussian_map((sh, sw), [(0, 0, under.shape[1], under.shape[0])])[..., None]
        y[r1:r1 + sh, c1:c1 + sw] = g * src + (1 - g) * under[:sh, :sw]
    if moves and moved:
        new = np.stack(moved)
        new[:, 0::2] = new[:, 0::2].clip(0, width)
        new[:, 1::2] = new[:, 1::2].clip(0, height)
        boxes, labels = np.concatenate([boxes, new]), np.concatenate([labels, np.asarray(moved_labels, labels.dtype)])
    return y, boxes, labels


# ---------------------------------------------------------------- the policy (scale_aware_aug.py, box_level_augs.py)

def decode(cfg: SadaConfig) -> tuple[list[tuple[Op, Op]], tuple[int, ...], tuple[int, ...]]:
    """autoaug_params -> (sub-policies [(colour op, geometric op)], area scale indices, prob scale weights)."""
    params, colours = cfg.autoaug_params[4:], list(COLOR_OPS)
    policies = []
    for i in range(cfg.num_subpolicies):
        p = params[6 * i: 6 * i + 6]
        policies.append(((colours[p[0] % len(colours)], p[1] * 0.1, p[2]),
                         (GEOMETRIC_OPS[p[3] % len(GEOMETRIC_OPS)], p[4] * 0.1, p[5])))
    rest = params[6 * cfg.num_subpolicies:]
    return policies, tuple(rest[0:3]), tuple(rest[3:6])


def _pick_probs(boxes: F32, weights: Sequence[int], splits: Sequence[float], box_prob: float) -> list[float]:
    """Each box's probability of being augmented: box_prob x its scale's share of `weights` (0 for no area)."""
    ratios = np.asarray(weights, np.float64)
    ratios = ratios / ratios.sum()
    out = []
    for x1, y1, x2, y2 in boxes:
        area = (x2 - x1) * (y2 - y1)
        scale = 0 if area < splits[0] else 1 if area < splits[1] else 2
        out.append(0.0 if area == 0 else box_prob * float(ratios[scale]))
    return out


class Sada:
    """(RGB uint8 image, xyxy boxes, labels, progress in [0, 1], rng) -> the same, SADA-augmented."""

    def __init__(self, cfg: SadaConfig) -> None:
        self.cfg = cfg
        self.policies, self.area_idx, self.prob_weights = decode(cfg)

    def __call__(self, img: U8, boxes: F32, labels: I64, progress: float, rng: np.random.Generator
                 ) -> tuple[U8, F32, I64]:
        (colour, cp, clevel), (geometric, gp, glevel) = self.policies[int(rng.integers(len(self.policies)))]
        if progress > 1:
            return img, boxes, labels
        height, width = img.shape[:2]
        splits = [a * (min(height, width) / 800) for a in self.cfg.scale_splits]
        x: Img | None = None
        if not rng.random() > cp * progress:
            x = img.astype(np.float32) / np.float32(255)
            aug = COLOR_OPS[colour](x, clevel)  # computed before the boxes are drawn, as the official's
            probs = _pick_probs(boxes, self.area_idx, splits, self.cfg.box_prob)
            picked = [b for b, p in zip(boxes, probs) if rng.random() < p]
            g = np.clip(gaussian_map((height, width), picked, splits, self.area_idx), 0.0, 1.0)[..., None]
            x = x * (1 - g) + aug * g
        if not rng.random() > gp * progress:
            x = img.astype(np.float32) / np.float32(255) if x is None else x
            probs = _pick_probs(boxes, self.prob_weights, splits, self.cfg.box_prob)
            x, boxes, labels = _geometric(x, geometric, glevel, boxes, labels, probs, rng)
        if x is None:
            return img, boxes, labels
        return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8), boxes.astype(np.float32), labels
