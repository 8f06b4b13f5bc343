"""`tdet data synth --video`: short clips of the synthetic shapes moving over the image set's textured backgrounds,
with ground truth in MOTChallenge form (gt/gt.txt) and COCO form (annotations.json over the clip's frames).

Same classes, backgrounds and drawing as the image set (client/synth.py), so a model trained on it detects them.
Each object keeps its shape, colour and size and follows a linear or curved (constant turn rate) path at its own
speed, spinning slowly; some enter from outside the frame or appear later, most leave before the end, and every
clip has two objects crossing the same point at the same time (one hides the other). A box is of the object's
visible pixels and is annotated while at least MIN_VISIBLE of the object is visible (as in the image set).
Deterministic for (seed, split, clip): clip i of a longer run is clip i of a shorter one.

Layout per clip (MOTChallenge's, plus the video and the COCO file):

    OUT/clip-000/clip-000.mp4       the clip (mp4v, --fps)
    OUT/clip-000/img1/000001.jpg    its frames (1-based, as MOTChallenge numbers them)
    OUT/clip-000/gt/gt.txt          frame,id,x,y,w,h,conf(1),class(category id),visibility
    OUT/clip-000/seqinfo.ini        name, frameRate, seqLength, imWidth, imHeight, imExt
    OUT/clip-000/annotations.json   COCO: images = frames (file_name in img1/, frame_id), annotations with track_id
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import UserError
from .files import atomic_write
from .synth import (
    CATEGORY_IDS,
    MIN_VISIBLE,
    SHAPES,
    background,
    check_folder,
    check_size,
    mark_folder,
    render_object,
    split_seed,
    visible_boxes,
)

VIDEO_SIZE = (640, 480)
FRAME_QUALITY = 92  # JPEG quality of img1/ frames: close to the video's frames, far smaller than PNG


@dataclass(frozen=True)
class Mover:
    """One object of a clip: its look and its path (frames t0 <= f < t1; px and radians per frame)."""

    shape: int  # index into SHAPES
    size: tuple[float, float]  # width, height
    colour: tuple[int, ...]
    edge: tuple[int, ...] | None
    t0: int
    t1: int
    start: tuple[float, float]  # centre at t0
    speed: float
    heading: float
    turn: float  # 0: a straight line
    angle: float
    spin: float

    def pose(self, f: int) -> tuple[float, float, float, float, float]:
        """(cx, cy, width, height, angle) at frame f: the heading turns at a constant rate (a circular arc)."""
        dt = f - self.t0
        if abs(self.turn) < 1e-9:
            dx, dy = self.speed * dt * np.cos(self.heading), self.speed * dt * np.sin(self.heading)
        else:
            r = self.speed / self.turn
            h1 = self.heading + self.turn * dt
            dx, dy = r * (np.sin(h1) - np.sin(self.heading)), -r * (np.cos(h1) - np.cos(self.heading))
        return (self.start[0] + dx, self.start[1] + dy, *self.size, self.angle + self.spin * dt)


def _mover(rng: np.random.Generator, w: int, h: int, frames: int, *, through: tuple[float, float, int] | None = None,
           across: float | None = None) -> Mover:
    """A random object; `through` (x, y, frame): its path passes that point at that frame (a staged crossing),
    crossing the heading `across` (if given) at an angle of 90 to 270 degrees, at a speed that clears it."""
    short = min(w, h)
    side = float(np.exp(rng.uniform(np.log(0.1 * short), np.log(0.3 * short))))
    aspect = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    size = (side * aspect ** 0.5, side / aspect ** 0.5)
    speed = float(np.exp(rng.uniform(np.log(0.4), np.log(5.0)))) * short / 240  # varied: near-still to fast
    heading = float(rng.uniform(-np.pi, np.pi))
    turn = 0.0 if rng.random() < 0.5 else float(rng.choice([-1, 1]) * rng.uniform(0.02, 0.12))
    shape = int(rng.integers(len(SHAPES)))
    colour = tuple(int(c) for c in rng.integers(0, 255, 3))
    edge = tuple(int(c * rng.uniform(0.3, 0.7)) for c in colour) if rng.random() < 0.5 else None
    angle, spin = float(rng.uniform(-np.pi, np.pi)), float(rng.uniform(-0.05, 0.05))
    if through is not None:  # start where the path must be to reach the point at that frame
        x, y, f = through
        speed = max(speed, 1.2 * side / max(1, f))  # comes from (and goes) clear of the crossing point
        heading = heading if across is None else float(across + rng.uniform(0.5 * np.pi, 1.5 * np.pi))
        dx, dy, *_ = Mover(shape, size, colour, edge, 0, frames, (0.0, 0.0), speed, heading, turn, 0, 0).pose(f)
        return Mover(shape, size, colour, edge, 0, frames, (x - dx, y - dy), speed, heading, turn, angle, spin)
    mode = rng.random()
    if mode < 0.4:  # enters: starts just outside an edge, heading into the frame
        edge_side = int(rng.integers(4))
        cx = (-side, w + side, rng.uniform(0, w), rng.uniform(0, w))[edge_side]
        cy = (rng.uniform(0, h), rng.uniform(0, h), -side, h + side)[edge_side]
        heading = float(np.arctan2(h / 2 - cy, w / 2 - cx) + rng.uniform(-0.5, 0.5))
        speed = max(speed, 1.5 * short / 240)  # fast enough to come in within the clip
    else:
        cx, cy = rng.uniform(0.15 * w, 0.85 * w), rng.uniform(0.15 * h, 0.85 * h)
    t0 = int(rng.integers(0, max(1, frames // 2))) if rng.random() < 0.3 else 0  # some appear later
    t1 = int(rng.integers(t0 + max(2, frames // 3), frames + 1)) if rng.random() < 0.3 else frames  # some vanish
    return Mover(shape, size, colour, edge, t0, t1, (float(cx), float(cy)), speed, heading, turn, angle, spin)


def _movers(rng: np.random.Generator, w: int, h: int, frames: int, objects: tuple[int, int]) -> list[Mover]:
    """The clip's objects in drawing order (later ones hide earlier ones); the first two cross mid-clip."""
    point = (float(rng.uniform(0.35 * w, 0.65 * w)), float(rng.uniform(0.35 * h, 0.65 * h)), frames // 2)
    first = _mover(rng, w, h, frames, through=point)
    crossing = [first, _mover(rng, w, h, frames, through=point, across=first.heading)]
    return crossing + [_mover(rng, w, h, frames) for _ in range(max(0, int(rng.integers(*objects)) - 2))]


def _frame(bg: np.ndarray, movers: list[Mover], f: int, blur: int, noise: float, rng: np.random.Generator
           ) -> tuple[np.ndarray, list[tuple[int, int, list[float], int, float]]]:
    """Frame f (RGB) and its ground truth [(track id, category id, visible-pixel bbox xywh, visible pixels,
    visibility)]."""
    h, w = bg.shape[:2]
    img = bg.copy()
    pad = max(w, h)
    ids = np.zeros((h + 2 * pad, w + 2 * pad), np.uint8)
    drawn = {}
    for k, m in enumerate(movers, 1):
        if m.t0 <= f < m.t1:
            render_object(img, ids, pad, k, SHAPES[m.shape], m.pose(f), m.colour, m.edge)
            drawn[k] = int((ids == k).sum())  # drawn last, so all its pixels are k now
    seen = visible_boxes(ids[pad:pad + h, pad:pad + w], {k: n for k, n in drawn.items() if n}, MIN_VISIBLE)
    gt = [(k, CATEGORY_IDS[movers[k - 1].shape], box, area, area / drawn[k]) for k, (box, area) in sorted(seen.items())]
    if blur:
        img = cv2.GaussianBlur(img, (blur, blur), 0)
    if noise:
        img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
    return img, gt


def write_clip(out: Path, name: str, stream: int, index: int, size: tuple[int, int], frames: int, fps: float,
               objects: tuple[int, int]) -> Path:
    """One clip (see the module doc) into out/name; returns its folder."""
    rng = np.random.default_rng([stream, index])
    w, h = size
    bg = background(rng, w, h)
    movers = _movers(rng, w, h, frames, objects)
    blur = int(rng.choice([0, 0, 3]))
    noise = float(rng.uniform(2, 6)) if rng.random() < 0.3 else 0.0
    clip = out / name
    (clip / "img1").mkdir(parents=True, exist_ok=True)
    (clip / "gt").mkdir(exist_ok=True)
    video = clip / f"{name}.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise UserError(f"OpenCV cannot write {video} (mp4v): this OpenCV build has no video encoder")
    rows, images, annotations = [], [], []
    try:
        for f in range(frames):
            img, gt = _frame(bg, movers, f, blur, noise, np.random.default_rng([stream, index, f]))
            bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
            writer.write(bgr)
            file_name = f"{f + 1:06d}.jpg"
            cv2.imwrite(str(clip / "img1" / file_name), bgr, [cv2.IMWRITE_JPEG_QUALITY, FRAME_QUALITY])
            images.append({"id": f + 1, "file_name": file_name, "width": w, "height": h, "frame_id": f,
                           "video": name})
            for track, cat, (x, y, bw, bh), area, vis in gt:
                rows.append(f"{f + 1},{track},{x:g},{y:g},{bw:g},{bh:g},1,{cat},{vis:.3f}")
                annotations.append({"id": len(annotations) + 1, "image_id": f + 1, "category_id": cat,
                                    "bbox": [x, y, bw, bh], "area": float(area), "iscrowd": 0,
                                    "track_id": track, "visibility": round(vis, 3)})
    finally:
        writer.release()
    atomic_write(clip / "gt" / "gt.txt", "".join(r + "\n" for r in rows))
    atomic_write(clip / "seqinfo.ini", f"[Sequence]\nname={name}\nimDir=img1\nframeRate={fps:g}\nseqLength={frames}\n"
                                       f"imWidth={w}\nimHeight={h}\nimExt=.jpg\n")
    coco = {"info": {"description": f"tdet synthetic shapes clip {name}", "version": "2"},
            "images": images, "annotations": annotations,
            "categories": [{"id": c, "name": n, "supercategory": "shape"} for c, n in zip(CATEGORY_IDS, SHAPES)]}
    atomic_write(clip / "annotations.json", json.dumps(coco))  # last: a partial clip never looks complete
    return clip


def synthesize_video(out: Path, num: int, seed: int = 0, size: tuple[int, int] | None = None, frames: int = 50,
                     fps: float = 10.0, objects: tuple[int, int] = (3, 7), split: str = "train") -> list[Path]:
    """Write `num` clips of `frames` frames at `fps` into out/clip-000, ...; returns their folders."""
    if num < 1:
        raise UserError(f"--num must be >= 1, got {num}")
    if frames < 2:
        raise UserError(f"--frames must be >= 2, got {frames}")
    if not fps > 0:
        raise UserError(f"--fps must be > 0, got {fps}")
    size = size or VIDEO_SIZE
    check_size(size)
    stream = split_seed(seed, split)
    names = [f"clip-{i:03d}" for i in range(num)]
    for name in names:  # every folder checked before any is written (a refusal leaves no empty clip folder)
        check_folder(out / name, out / name / "annotations.json", out / name / "img1")
    for name in names:
        mark_folder(out / name)
    return [write_clip(out, name, stream, i, size, frames, fps, objects) for i, name in enumerate(names)]
