"""`tdet data synth`: a COCO-format detection dataset the project generates, so evaluation, demos and
tests have real image files with ground truth (no download needed).

Each image has a textured background (gradient + noise + stripes) and several objects: filled shapes
of varied size, colour and overlap, each labelled with a COCO category. Deterministic for a seed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from .labels import COCO_CATEGORY_IDS, COCO_CLASSES

# image sizes (w, h) drawn from when --size is not given: landscape, portrait, square, small
SIZES = ((640, 480), (800, 600), (1280, 720), (480, 640), (512, 512), (320, 240))
SHAPES = ("rectangle", "ellipse", "triangle")


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    c0, c1 = rng.integers(0, 255, 3), rng.integers(0, 255, 3)
    t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None] if rng.random() < 0.5 else \
        np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(c0 * (1 - t) + c1 * t, (h, w, 3)).astype(np.float32)
    img = img + rng.normal(0, 12, (h, w, 3)).astype(np.float32)
    if rng.random() < 0.5:  # stripes: texture the detector has to ignore
        period = int(rng.integers(8, 40))
        img[(np.arange(h) // period) % 2 == 0] *= 0.85
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw_object(img: np.ndarray, rng: np.random.Generator) -> list[float]:
    """Draw one filled shape; returns its COCO bbox [x, y, w, h] clipped to the image."""
    h, w = img.shape[:2]
    ow = int(rng.integers(max(8, w // 20), max(9, w // 2)))
    oh = int(rng.integers(max(8, h // 20), max(9, h // 2)))
    x0, y0 = int(rng.integers(-ow // 4, w - ow // 2)), int(rng.integers(-oh // 4, h - oh // 2))
    colour = tuple(int(c) for c in rng.integers(0, 255, 3))
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    if shape == "rectangle":
        cv2.rectangle(img, (x0, y0), (x0 + ow, y0 + oh), colour, -1)
    elif shape == "ellipse":
        cv2.ellipse(img, (x0 + ow // 2, y0 + oh // 2), (ow // 2, oh // 2), 0, 0, 360, colour, -1)
    else:
        pts = np.array([[x0 + ow // 2, y0], [x0, y0 + oh], [x0 + ow, y0 + oh]], np.int32)
        cv2.fillPoly(img, [pts], colour)
    if rng.random() < 0.5:  # a darker outline, as real objects have edges
        cv2.rectangle(img, (x0, y0), (x0 + ow, y0 + oh), tuple(c // 2 for c in colour), 2)
    x1, y1 = max(0, x0), max(0, y0)
    x2, y2 = min(w, x0 + ow + 1), min(h, y0 + oh + 1)
    return [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]


def synthesize(out: Path, num: int, seed: int = 0, size: tuple[int, int] | None = None,
               objects: tuple[int, int] = (2, 7)) -> Path:
    """Write `num` JPEGs to out/images and out/annotations.json (COCO format); returns the annotations path.

    size: (width, height) for every image, or None for a mix of sizes. The annotations file is written
    last, through a temp file and a rename, so a partial run never looks complete.
    """
    if num < 1:
        raise ValueError(f"--num must be >= 1, got {num}")
    if size is not None and (size[0] < 32 or size[1] < 32):
        raise ValueError(f"--size must be at least 32x32, got {size[0]}x{size[1]}")
    rng = np.random.default_rng(seed)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    (out / "annotations.json").unlink(missing_ok=True)
    images, annotations = [], []
    for i in range(num):
        w, h = size or SIZES[int(rng.integers(len(SIZES)))]
        img = _background(rng, w, h)
        name = f"{i:06d}.jpg"
        for _ in range(int(rng.integers(*objects))):
            label = int(rng.integers(len(COCO_CLASSES)))
            box = _draw_object(img, rng)
            if box[2] < 2 or box[3] < 2:
                continue
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": COCO_CATEGORY_IDS[label],
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise ValueError(f"could not encode image {name}")
        (img_dir / name).write_bytes(buf.tobytes())
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
    coco = {"info": {"description": f"tdet synthetic detection set (seed {seed})", "version": "1"},
            "images": images, "annotations": annotations,
            "categories": [{"id": c, "name": n, "supercategory": "object"}
                           for c, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES)]}
    fd, tmp = tempfile.mkstemp(prefix=".annotations.", suffix=".json", dir=out)
    with os.fdopen(fd, "w") as f:
        json.dump(coco, f)
    os.replace(tmp, out / "annotations.json")
    return out / "annotations.json"


