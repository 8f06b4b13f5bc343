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
MIN_VISIBLE = 0.3  # fraction of a shape that must stay visible to be annotated


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


def _draw_object(img: np.ndarray, ids: np.ndarray, k: int, rng: np.random.Generator) -> None:
    """Draw filled shape number k (1-based) into the RGB image and, with value k, into the instance map
    `ids` (uint8 [H, W]); later shapes overwrite earlier ones there as they do in the image."""
    h, w = img.shape[:2]
    # log-uniform sides, so COCO's small (<32^2), medium and large buckets are all populated
    lo, hi = np.log(10), np.log(max(12, min(w, h) * 0.6))
    ow, oh = (int(np.exp(rng.uniform(lo, hi)) * rng.uniform(0.7, 1.4)) for _ in range(2))
    x0, y0 = int(rng.integers(-ow // 4, max(1, w - ow // 2))), int(rng.integers(-oh // 4, max(1, h - oh // 2)))
    colour = tuple(int(c) for c in rng.integers(0, 255, 3))
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    outline = rng.random() < 0.5  # a darker edge, as real objects have edges
    for canvas, fill, edge in ((img, colour, tuple(c // 2 for c in colour)), (ids, k, k)):
        if shape == "rectangle":
            cv2.rectangle(canvas, (x0, y0), (x0 + ow, y0 + oh), fill, -1)
            if outline:
                cv2.rectangle(canvas, (x0, y0), (x0 + ow, y0 + oh), edge, 2)
        elif shape == "ellipse":
            cv2.ellipse(canvas, (x0 + ow // 2, y0 + oh // 2), (ow // 2, oh // 2), 0, 0, 360, fill, -1)
            if outline:
                cv2.ellipse(canvas, (x0 + ow // 2, y0 + oh // 2), (ow // 2, oh // 2), 0, 0, 360, edge, 2)
        else:
            pts = np.array([[x0 + ow // 2, y0], [x0, y0 + oh], [x0 + ow, y0 + oh]], np.int32)
            cv2.fillPoly(canvas, [pts], fill)
            if outline:
                cv2.polylines(canvas, [pts], True, edge, 2)


def _visible_boxes(ids: np.ndarray, drawn: dict[int, int], min_visible: float
                   ) -> dict[int, tuple[list[float], int]]:
    """{k: (COCO bbox [x, y, w, h] of shape k's visible pixels, visible pixel count)} for the shapes
    with at least `min_visible` of their drawn pixels still visible (COCO boxes are of what is seen)."""
    out = {}
    for k, total in drawn.items():
        ys, xs = np.nonzero(ids == k)
        if xs.size < max(4, min_visible * total):
            continue  # (nearly) hidden behind later shapes or off the image: not annotated
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        if x2 - x1 >= 2 and y2 - y1 >= 2:
            out[k] = ([float(x1), float(y1), float(x2 - x1), float(y2 - y1)], int(xs.size))
    return out


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
        ids = np.zeros((h, w), np.uint8)
        name = f"{i:06d}.jpg"
        drawn, labels = {}, {}
        for k in range(1, int(rng.integers(*objects)) + 1):
            labels[k] = int(rng.integers(len(COCO_CLASSES)))
            _draw_object(img, ids, k, rng)
            drawn[k] = int((ids == k).sum())  # drawn last, so all its in-image pixels are k now
        for k, (box, area) in _visible_boxes(ids, drawn, MIN_VISIBLE).items():
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": COCO_CATEGORY_IDS[labels[k]], "bbox": box, "area": float(area),
                                "iscrowd": 0})
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise ValueError(f"could not encode image {name}")
        (img_dir / name).write_bytes(buf.tobytes())
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
    # a previous, larger run into the same folder leaves images with no ground truth: remove them
    for stale in img_dir.glob("[0-9][0-9][0-9][0-9][0-9][0-9].jpg"):
        if int(stale.stem) >= num:
            stale.unlink()
    coco = {"info": {"description": f"tdet synthetic detection set (seed {seed})", "version": "1"},
            "images": images, "annotations": annotations,
            "categories": [{"id": c, "name": n, "supercategory": "object"}
                           for c, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES)]}
    fd, tmp = tempfile.mkstemp(prefix=".annotations.", suffix=".json", dir=out)
    with os.fdopen(fd, "w") as f:
        json.dump(coco, f)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; the dataset is meant to be shared
    os.replace(tmp, out / "annotations.json")
    return out / "annotations.json"


