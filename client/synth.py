"""`tdet data synth`: a COCO-format detection dataset the project generates, so training, evaluation, demos
and tests have real image files with ground truth (no download needed).

The set is learnable: an object's class is what is drawn. Six shape kinds (rectangle, ellipse, triangle,
star, cross, ring) are the dataset's own categories (ids 1..6 with their names in the COCO file), drawn
with random colour, size (log-uniform, so COCO's small / medium / large buckets are all populated), aspect,
rotation and overlap on textured backgrounds (gradients, noise, stripes, checkers, thin clutter lines), then
blurred, noised and JPEG-compressed at a random quality. Boxes are of the visible pixels. Train and val
splits come from different seeds. Deterministic for (seed, split).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import cv2
import numpy as np

from .errors import UserError
from .files import atomic_write

# image sizes (w, h) drawn from when --size is not given: landscape, portrait, square, small
SIZES = ((640, 480), (800, 600), (1280, 720), (480, 640), (512, 512), (320, 240))
SHAPES = ("rectangle", "ellipse", "triangle", "star", "cross", "ring")
CATEGORY_IDS = tuple(range(1, len(SHAPES) + 1))  # the dataset's own ids, one per shape kind
SPLITS = ("train", "val")
MIN_VISIBLE = 0.4  # fraction of a shape's area that must stay visible for it to be annotated
MIN_SIDE_FRACTION = 0.04  # smallest object side as a fraction of the image's shorter side


def split_seed(seed: int, split: str) -> int:
    """The generator seed of one split: train and val never share images for the same --seed."""
    if split not in SPLITS:
        raise UserError(f"--split must be one of {SPLITS}, got {split!r}")
    return zlib.crc32(f"{seed}/{split}".encode())


def background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    c0, c1 = rng.integers(0, 255, 3), rng.integers(0, 255, 3)
    t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None] if rng.random() < 0.5 else \
        np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(c0 * (1 - t) + c1 * t, (h, w, 3)).astype(np.float32)
    img = img + rng.normal(0, rng.uniform(3, 15), (h, w, 3)).astype(np.float32)
    texture = rng.random()
    if texture < 0.3:  # stripes
        period = int(rng.integers(8, 40))
        img[(np.arange(h) // period) % 2 == 0] *= rng.uniform(0.8, 0.95)
    elif texture < 0.5:  # checkers
        period = int(rng.integers(10, 60))
        yy, xx = np.mgrid[:h, :w]
        img[((yy // period) + (xx // period)) % 2 == 0] *= rng.uniform(0.8, 0.95)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 6))):  # thin clutter lines: edges that are no object
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(img, p0, p1, tuple(int(c) for c in rng.integers(0, 255, 3)), 1, cv2.LINE_AA)
    return img


def _polygon(shape: str, cx: float, cy: float, ow: float, oh: float, angle: float) -> list[np.ndarray]:
    """Outline points (one or more polygons) of a polygonal shape, rotated by `angle` radians."""
    if shape == "rectangle":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    elif shape == "triangle":
        pts = np.array([[0, -1], [1, 1], [-1, 1]], np.float64)
    elif shape == "star":
        a = np.arange(10) * np.pi / 5 - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        pts = np.stack([r * np.cos(a), r * np.sin(a)], 1)
    elif shape == "cross":
        t = 0.33
        pts = np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t], [-1, t],
                        [-1, -t], [-t, -t]], np.float64)
    else:
        raise ValueError(shape)
    pts = pts * [ow / 2, oh / 2]
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return [np.round(pts @ rot.T + [cx, cy]).astype(np.int32)]


def _draw_object(img: np.ndarray, ids: np.ndarray, pad: int, k: int, shape: str, rng: np.random.Generator) -> None:
    """Draw shape number k (1-based) into the RGB image and, with value k, into the instance map `ids`
    (uint8 [H + 2 pad, W + 2 pad]: the image with a margin, so a shape's full area is known even where it
    leaves the image); later shapes overwrite earlier ones there as they do in the image."""
    h, w = img.shape[:2]
    lo, hi = np.log(max(10.0, MIN_SIDE_FRACTION * min(w, h))), np.log(max(16.0, min(w, h) * 0.55))
    size = float(np.exp(rng.uniform(lo, hi)))
    aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
    ow, oh = size * aspect ** 0.5, size / aspect ** 0.5
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    angle = float(rng.uniform(-np.pi, np.pi)) if shape != "rectangle" or rng.random() < 0.5 else 0.0
    colour = tuple(int(c) for c in rng.integers(0, 255, 3))
    edge = tuple(int(c * rng.uniform(0.3, 0.7)) for c in colour) if rng.random() < 0.5 else None
    render_object(img, ids, pad, k, shape, (cx, cy, ow, oh, angle), colour, edge)


def render_object(img: np.ndarray, ids: np.ndarray, pad: int, k: int, shape: str,
                  pose: tuple[float, float, float, float, float], colour: tuple[int, ...],
                  edge: tuple[int, ...] | None) -> None:
    """Draw one shape at pose (cx, cy, width, height, angle in radians) into the RGB image and, with value k,
    into the padded instance map `ids` (see _draw_object); the video clips (synth_video) draw with it too."""
    cx, cy, ow, oh, angle = pose
    for canvas, shift, fill, outline in ((img, 0, colour, edge), (ids, pad, k, k if edge is not None else None)):
        if shape in ("ellipse", "ring"):
            centre, axes = (int(cx) + shift, int(cy) + shift), (max(1, int(ow / 2)), max(1, int(oh / 2)))
            deg = float(np.degrees(angle))
            if shape == "ellipse":
                cv2.ellipse(canvas, centre, axes, deg, 0, 360, fill, -1, cv2.LINE_8)
            else:  # a ring: a thick elliptic band, the background visible through its hole
                thickness = max(2, int(min(ow, oh) * 0.18))
                cv2.ellipse(canvas, centre, axes, deg, 0, 360, fill, thickness, cv2.LINE_8)
            if outline is not None and shape == "ellipse":
                cv2.ellipse(canvas, centre, axes, deg, 0, 360, outline, 2, cv2.LINE_8)
        else:
            polys = _polygon(shape, cx + shift, cy + shift, ow, oh, angle)
            cv2.fillPoly(canvas, polys, fill, cv2.LINE_8)
            if outline is not None:
                cv2.polylines(canvas, polys, True, outline, 2, cv2.LINE_8)


def visible_boxes(ids: np.ndarray, drawn: dict[int, int], min_visible: float
                   ) -> dict[int, tuple[list[float], int]]:
    """{k: (COCO bbox [x, y, w, h] of shape k's visible pixels, visible pixel count)} for the shapes with
    at least `min_visible` of their full area visible in the image (not cut off by its border, not hidden
    behind later shapes): a shape mostly out of sight no longer shows its kind. COCO boxes are of what is seen."""
    out = {}
    for k, total in drawn.items():
        ys, xs = np.nonzero(ids == k)
        if xs.size < max(16, min_visible * total):
            continue  # (nearly) hidden behind later shapes or off the image: not annotated
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        if x2 - x1 >= 4 and y2 - y1 >= 4:
            out[k] = ([float(x1), float(y1), float(x2 - x1), float(y2 - y1)], int(xs.size))
    return out


def degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera-like nuisances: optional blur and sensor noise (JPEG quality is drawn at encoding)."""
    if rng.random() < 0.3:
        k = int(rng.choice([3, 5]))
        img = cv2.GaussianBlur(img, (k, k), 0)
    if rng.random() < 0.3:
        img = np.clip(img + rng.normal(0, rng.uniform(2, 10), img.shape), 0, 255).astype(np.uint8)
    return img


def _make_image(job: tuple[Path, int, int, tuple[int, int] | None, tuple[int, int]]
                ) -> tuple[dict, list[tuple[int, list[float], float]]]:
    """Image `i` of a split (its own generator, so images are independent of each other and of the number
    of processes making them): writes the JPEG, returns (image record, [(category id, bbox, area)])."""
    img_dir, stream, i, size, objects = job
    rng = np.random.default_rng([stream, i])
    w, h = size or SIZES[int(rng.integers(len(SIZES)))]
    img = background(rng, w, h)
    pad = max(w, h) // 2
    ids = np.zeros((h + 2 * pad, w + 2 * pad), np.uint8)
    drawn, labels = {}, {}
    for k in range(1, int(rng.integers(*objects)) + 1):
        labels[k] = int(rng.integers(len(SHAPES)))
        _draw_object(img, ids, pad, k, SHAPES[labels[k]], rng)
        drawn[k] = int((ids == k).sum())  # drawn last, so all its pixels are k now
    anns = [(CATEGORY_IDS[labels[k]], box, float(area))
            for k, (box, area) in visible_boxes(ids[pad:pad + h, pad:pad + w], drawn, MIN_VISIBLE).items()]
    img = degrade(img, rng)
    name = f"{i:06d}.jpg"
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 96))])
    if not ok:
        raise ValueError(f"could not encode image {name}")
    (img_dir / name).write_bytes(buf.tobytes())
    return {"id": i + 1, "file_name": name, "width": w, "height": h}, anns


MARKER = ".tdet-synth"  # written first into a folder being generated: an interrupted run's folder is ours too


def check_folder(folder: Path, annotations: Path, images: Path) -> None:
    """UserError when `folder` holds a dataset this generator did not write (its annotations.json would be
    replaced and its images drawn over): `tdet data synth --out` on a real dataset. Writes nothing."""
    if annotations.is_file():
        try:
            info = json.loads(annotations.read_text()).get("info") or {}
            ours = str(info.get("description", "")).startswith("tdet synthetic shapes")
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise UserError(f"{annotations} is not a dataset `tdet data synth` wrote; it would be replaced: "
                            "pick another --out")
    elif images.is_dir() and any(images.iterdir()) and not (folder / MARKER).is_file():
        raise UserError(f"{images} holds files `tdet data synth` did not write; they would be drawn over: "
                        "pick another --out")


def mark_folder(folder: Path) -> None:
    """Make `folder` this generator's (after check_folder): later runs may write over it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).touch()


def check_size(size: tuple[int, int]) -> None:
    """--size within 32x32 .. 8192x8192: smaller leaves no room for a shape, larger is no detector's input
    (and 100000x100000 would be 30 GB of pixels per image)."""
    if not (32 <= size[0] <= 8192 and 32 <= size[1] <= 8192):
        raise UserError(f"--size must be from 32x32 to 8192x8192, got {size[0]}x{size[1]}")


def synthesize(out: Path, num: int, seed: int = 0, size: tuple[int, int] | None = None,
               objects: tuple[int, int] = (2, 9), split: str = "train", workers: int = 1) -> Path:
    """Write `num` JPEGs to out/images and out/annotations.json (COCO format); returns the annotations path.

    size: (width, height) for every image, or None for a mix of sizes. split: "train" or "val" (another
    seed stream). Image i depends only on (seed, split, i): a run of N images is the first N of a larger
    run, whatever `workers` (processes) made them. The annotations file is written last, through a temp
    file and a rename, so a partial run never looks complete.
    """
    if num < 1:
        raise UserError(f"--num must be >= 1, got {num}")
    if size is not None:
        check_size(size)
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    stream = split_seed(seed, split)
    img_dir = out / "images"
    check_folder(out, out / "annotations.json", img_dir)
    mark_folder(out)
    img_dir.mkdir(exist_ok=True)
    (out / "annotations.json").unlink(missing_ok=True)
    jobs = [(img_dir, stream, i, size, objects) for i in range(num)]
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as pool:
            made = pool.map(_make_image, jobs, chunksize=8)
    else:
        made = [_make_image(j) for j in jobs]
    images, annotations = [], []
    for record, anns in made:
        images.append(record)
        for cat, box, area in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": record["id"], "category_id": cat,
                                "bbox": box, "area": area, "iscrowd": 0})
    # a previous, larger run into the same folder leaves images with no ground truth: remove them
    for stale in img_dir.glob("[0-9][0-9][0-9][0-9][0-9][0-9].jpg"):
        if int(stale.stem) >= num:
            stale.unlink()
    coco = {"info": {"description": f"tdet synthetic shapes ({split} split, seed {seed})", "version": "2"},
            "images": images, "annotations": annotations,
            "categories": [{"id": c, "name": n, "supercategory": "shape"} for c, n in zip(CATEGORY_IDS, SHAPES)]}
    return atomic_write(out / "annotations.json", json.dumps(coco))  # 0644: the dataset is meant to be shared
