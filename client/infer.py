"""`tdet infer PATH... [--model M] [--out DIR]`: detections from a running server, written as each image's
answer arrives: an annotated copy (<name>.jpg) and JSON (<name>.json) per input, plus an index
(detections.json). PATH: an image file, a folder of images or an http(s) URL (fetched first; a URL that
fails stops the run with its HTTP status or network error); a video, camera or stream goes to tdet.client.video.
A file the server refuses (not an image, truncated, too small) is skipped with a warning naming it; the
rest go on.

Output names mirror the inputs below their common folder (`a/x.jpg b/x.jpg` -> OUT/a/x.*, OUT/b/x.*);
two inputs with the same stem in one folder (x.jpg, x.png) keep their suffix (x.jpg.*, x.png.*), so
no result ever overwrites another. A URL's result is named after its last path segment, sanitized.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import numpy.typing as npt

from .errors import InferenceError, ModelNotFoundError, ServerUnavailableError, UserError
from .files import atomic_write, collect_images, refuse_overwriting
from .image_input import check_not_video, fetch_url, is_url
from .pool import finished_batches
from .postprocess import Detections
from .preprocess import decode_bgr
from .server_args import positive
from .triton import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, add_connection_args, add_url_args, server_url
from .video import add_video_args, is_sequence_model, is_video_source, run_videos

INDEX = "detections.json"
DEFAULT_CONF = 0.25  # Ultralytics' predict default: what a deployment user expects to see drawn and counted
FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color(category_id: int) -> tuple[int, int, int]:
    """A BGR colour per class, the same in every picture."""
    return tuple(int(c) for c in np.random.default_rng(category_id).integers(64, 256, 3))


def label_layout(boxes: npt.ArrayLike, sizes: npt.ArrayLike, shape: tuple[int, ...]) -> npt.NDArray[np.int64]:
    """Where each box's label goes: int [N, 4] rectangles x1, y1, x2, y2 (x2, y2 exclusive) of sizes [N, 2]
    (width, height) in an image of `shape` (H, W, ...). A label sits on its box's top edge, above it, or just
    inside when there is no room above; it stays within the image, and one that would cover a label placed
    before it (earlier boxes first: the higher scores) moves up or down to the nearest free slot (when there is
    none in its column, it keeps its place)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
    img_h, img_w = shape[:2]
    placed = np.zeros((len(boxes), 4), np.int64)
    for i, ((bx1, by1), (w, h)) in enumerate(zip(np.rint(boxes[:, :2]).astype(np.int64), sizes)):
        x = int(np.clip(bx1, 0, max(0, img_w - w)))
        y = int(np.clip(by1 - h if by1 - h >= 0 else by1, 0, max(0, img_h - h)))
        placed[i] = _free_slot(placed[:i], x, y, w, h, img_h)
    return placed


def _free_slot(placed: npt.NDArray[np.int64], x: int, y: int, w: int, h: int, img_h: int) -> tuple[int, ...]:
    """The w x h rectangle at column x nearest to row y that overlaps none of `placed`: the nearest free row is
    y itself, an image edge, or against an edge of a placed rectangle, so only those are tried."""
    column = placed[(placed[:, 0] < x + w) & (x < placed[:, 2])]  # only these can be in the way
    if not len(column):
        return x, y, x + w, y + h
    tops = np.concatenate([[y, 0, img_h - h], column[:, 3], column[:, 1] - h])
    tops = tops[(tops >= 0) & (tops <= img_h - h)]
    free = ~((tops[:, None] < column[None, :, 3]) & (column[None, :, 1] < tops[:, None] + h)).any(axis=1)
    if not free.any():
        return x, y, x + w, y + h
    best = tops[free][np.lexsort((tops[free] < y, np.abs(tops[free] - y)))[0]]  # nearest; below first on a tie
    return x, int(best), x + w, int(best) + h


def _label_style(shape: tuple[int, ...]) -> tuple[int, float, int]:
    """(line thickness, font scale, label padding) in px, growing with the image so labels stay legible."""
    thick = max(1, round(max(shape[:2]) / 500))
    return thick, 0.4 * thick, 2 * thick


def label_rects(dets: Detections, shape: tuple[int, ...]) -> tuple[list[str], npt.NDArray[np.int64]]:
    """The "name score" text of each detection and where draw_detections puts it (label_layout's rectangles)."""
    thick, scale, pad = _label_style(shape)
    texts = [f"{d.class_name} {d.score:.2f}" for d in dets]
    metrics = [cv2.getTextSize(t, FONT, scale, thick) for t in texts]  # ((w, h), baseline)
    sizes = [(w + 2 * pad, h + base + 2 * pad) for (w, h), base in metrics]
    return texts, label_layout(dets.boxes, sizes, shape)


def draw_detections(bgr: npt.NDArray[np.uint8], dets: Detections) -> npt.NDArray[np.uint8]:
    """A copy of the BGR uint8 [H, W, 3] image with boxes (original px, xyxy) and "name score" labels: each on a
    filled background in its box's colour, kept within the image and off the other labels (label_layout)."""
    out = bgr.copy()
    thick, scale, pad = _label_style(out.shape)
    for d in dets:  # every box first, so no box line crosses a label
        x1, y1, x2, y2 = (int(round(v)) for v in d.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), class_color(d.category_id), thick)
    for d, text, rect in zip(dets, *label_rects(dets, out.shape)):
        color = class_color(d.category_id)
        lx1, ly1, lx2, ly2 = (int(v) for v in rect)
        cv2.rectangle(out, (lx1, ly1), (lx2 - 1, ly2 - 1), color, cv2.FILLED)
        ink = (0, 0, 0) if 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2] > 140 else (255, 255, 255)
        (_, h), _ = cv2.getTextSize(text, FONT, scale, thick)
        cv2.putText(out, text, (lx1 + pad, ly1 + pad + h), FONT, scale, ink, thick, cv2.LINE_AA)
    return out


def output_names(inputs: Sequence[Path | str]) -> list[str]:
    """One distinct output name (no suffix) per input: a file's path below the files' common folder, a URL's
    last path segment (sanitized), without the suffix unless another input there has the same stem;
    `detections` is the index's."""
    files = [Path(p).resolve() for p in inputs if not is_url(p)]
    root = Path(os.path.commonpath([str(p.parent) for p in files])) if files else Path(".")
    files_rel = iter([p.relative_to(root) for p in files])
    rel = [PurePosixPath(url_name(p)) if is_url(p) else next(files_rel) for p in inputs]
    stems = [str(r.with_suffix("")) for r in rel]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    taken = {INDEX.removesuffix(".json")}
    names = []
    for r, s in zip(rel, stems):
        # unique_name: e.g. an input literally named "x.jpg.png" next to x.jpg and x.png
        names.append(unique_name(str(r) if counts[s] > 1 or s in taken else s, taken))
    return names


def unique_name(base: str, taken: set[str]) -> str:
    """`base`, or base_2, base_3, ... the first not in `taken`; added to `taken`."""
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def url_name(url: str) -> str:
    """A safe file name from a URL's last path segment ("https://h/a/bus%201.jpg?s=2" -> "bus_1.jpg")."""
    segment = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rpartition("/")[2])
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", segment)[-100:].lstrip("._")
    return name or "image"


def collect_inputs(sources: Sequence[Path | str]) -> list[Path | str]:
    """What `tdet infer` reads, in the order given: files, folders expanded to their images
    (files.collect_images) and http(s) URLs as they are. UserError for a video (not supported yet) or when
    there is no image at all; FileNotFoundError for a missing path."""
    found: list[Path | str] = []
    for s in sources:
        check_not_video(s, "`tdet infer`")
        if is_url(s):
            found.append(str(s))
            continue
        with contextlib.suppress(UserError):  # an image-less folder: an error only when nothing is found
            found += collect_images([Path(s)])
    if not found:
        collect_images([Path(s) for s in sources])  # raises, naming them
    return found


@dataclass
class InferSummary:
    """What a run did: rows of the index (one per input), and how many were written / skipped."""

    out: Path
    rows: list[dict] = field(default_factory=list)
    written: int = 0
    skipped: int = 0
    servers: str = ""  # per-server counts when --url lists several servers


def _write_result(path: Path | str, blob: bytes, dets: Detections, out: Path, name: str, model: str,
                  parameters: dict) -> dict:
    bgr = decode_bgr(blob)  # as the server decoded it: same orientation, same size
    ok, jpg = cv2.imencode(".jpg", draw_detections(bgr, dets))
    if not ok:
        raise ValueError(f"could not encode the annotated image for {path}")
    annotated, detections = out / f"{name}.jpg", out / f"{name}.json"
    annotated.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(annotated, jpg.tobytes())
    row = {"image": str(path), "model": model, "height": bgr.shape[0], "width": bgr.shape[1],
           "parameters": parameters, "detections": dets.to_list()}
    atomic_write(detections, json.dumps(row, indent=1))
    return {"image": str(path), "annotated": str(annotated), "json": str(detections), "count": len(dets)}


def run_infer(paths: Sequence[Path | str], model: str, url: str, protocol: str, out: Path, *, concurrency: int = 4,
              timeout_s: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES, echo: bool = False,
              **options) -> InferSummary:
    """Infer every image (files, the images in folders, http(s) URLs) and write each result as it arrives:
    <out>/<name>.jpg (annotated), <out>/<name>.json (detections), and <out>/detections.json (the index,
    one row per input; a skipped one has "error"). options: conf, iou, max_det, classes, clip, sent as
    request parameters, so the JSON, the count and the drawing hold the same detections.

    An image the server refuses, or one that fails on the server side, is skipped with a warning naming
    it. An unreachable server or a model that is not served stops the run (what was written stays). URLs are
    fetched first (timeout_s each), so a URL that fails (HTTP status, network error) stops before any request."""
    from tqdm import tqdm

    from .fleet import connect_fleet

    images = collect_inputs(paths)
    names = output_names(images)
    refuse_overwriting(images, [out / f"{n}{ext}" for n in names for ext in (".jpg", ".json")] + [out / INDEX])
    fetched = {i: fetch_url(src, timeout_s=timeout_s) for i, src in enumerate(images) if is_url(src)}
    out.mkdir(parents=True, exist_ok=True)
    summary = InferSummary(out)
    rows: dict[int, dict] = {}
    stopped, started = "the run stopped early", False  # why inputs without a row were not run; a row per input
    try:
        with connect_fleet(url, model, protocol, timeout_s=timeout_s, retries=retries) as fleet, \
                ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool, \
                tqdm(total=len(images), desc=f"infer {model}", unit="img", disable=None, file=sys.stderr) as bar:
            parameters = fleet.first.request_parameters(options)  # checked (class names known) before anything is sent
            if is_sequence_model(fleet.first):
                raise UserError(f"{model} is a tracking (stateful) model: it takes a video, a camera or a stream "
                                "(one sequence of frames), not images; for images use the model without _track")
            started = True

            def one(i: int) -> dict:
                blob = fetched.pop(i) if i in fetched else Path(images[i]).read_bytes()
                dets = fleet.call(lambda c: c.infer_encoded([blob], parameters))[0]
                # The worker records its row: a request in flight at Ctrl-C still finishes (the pool waits for
                # it) and writes its files, and the index must list every result on disk.
                rows[i] = _write_result(images[i], blob, dets, out, names[i], model, parameters)
                return rows[i]

            rounds = finished_batches(pool, one, range(len(images)), 2 * max(1, concurrency))
            try:
                with contextlib.closing(rounds):
                    for finished in rounds:  # results written as they arrive
                        for i, fut in finished:
                            try:
                                fut.result()
                                summary.written += 1
                                if echo:
                                    bar.write(f"{images[i]}: {rows[i]['count']} detections -> {rows[i]['annotated']}")
                            except (ServerUnavailableError, ModelNotFoundError) as err:
                                stopped = "the run stopped (server unavailable)"
                                raise type(err)(f"{err}; stopped after {summary.written} of {len(images)} images "
                                                f"(written to {out})", status=err.status) from None
                            except (InferenceError, UserError, OSError) as err:
                                rows[i] = {"image": str(images[i]), "error": str(err)}
                                summary.skipped += 1
                                bar.write(f"warning: skipped {images[i]}: {err}", file=sys.stderr)
                            bar.update()
            except KeyboardInterrupt:
                stopped = "interrupted"
                raise
            finally:
                summary.servers = fleet.format_summary() if len(fleet.urls) > 1 else ""
    finally:  # after the pool has finished what was in flight: one row per input, the ones not run say so
        if started:  # (nothing sent: no index)
            summary.rows = [rows.get(i, {"image": str(src), "error": f"not run: {stopped}"})
                            for i, src in enumerate(images)]
            atomic_write(out / INDEX, json.dumps(summary.rows, indent=1))
    return summary


def register_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="detect objects in images through a running Triton server",
                       description="Send each image to the served ensemble MODEL and write, as each answer arrives, "
                                   "an annotated copy (NAME.jpg) and its detections (NAME.json: boxes xyxy in "
                                   "original pixels, scores, category ids, class names) to --out, plus an index "
                                   f"({INDEX}). A file the server refuses is skipped with a warning. A video, "
                                   "camera or stream: its annotated video (NAME.mp4), one JSON line per frame "
                                   "(NAME.jsonl) and a summary (NAME.summary.json). Exit status: 0 all written, 1 "
                                   "some skipped (or video frames lost), 2 nothing could run (bad arguments, no "
                                   "server, a source that cannot be opened).")
    p.add_argument("paths", nargs="+", help="image files, folders (the images directly in them) or http(s) URLs "
                                            "(fetched first); video files, camera indices (0) or stream URLs "
                                            "(rtsp://, http(s)://...mjpg|.m3u8|.mp4, or an http(s) URL "
                                            "that answers a video Content-Type): NAME.mp4 annotated, "
                                            "NAME.jsonl one line per frame, NAME.summary.json")
    p.add_argument("--model", required=True, help="served ensemble, e.g. damo_yolo_t or rtdetrv2_s")
    add_url_args(p)
    p.add_argument("--out", type=Path, help="output folder (default: build/infer/MODEL)")
    p.add_argument("--concurrency", type=positive(), default=4, help="requests in flight")
    p.add_argument("--conf", "--min-score", dest="conf", type=float, default=DEFAULT_CONF,
                   help="keep detections with score > CONF (sent to the server: the JSON, the count and the "
                        "drawing agree)")
    p.add_argument("--iou", type=float, help="DAMO-YOLO NMS IoU (default: the server's, 0.7 unless built otherwise)")
    p.add_argument("--max-det", type=int, help="at most this many detections per image (default: the server's K)")
    p.add_argument("--classes", help="keep only these classes: comma-separated names or category ids, e.g. "
                                     "person,car or 1,3 (default: all)")
    p.add_argument("--clip", action=argparse.BooleanOptionalAction, default=True,
                   help="clip boxes to the image")
    add_connection_args(p)
    add_video_args(p)
    p.set_defaults(func=cmd_infer)


def cmd_infer(args: argparse.Namespace) -> int:
    out = args.out or Path("build/infer") / args.model
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    videos = [p for p in args.paths if is_video_source(p, probe=True)]
    images = [p for p in args.paths if p not in videos]
    status = run_videos(videos, args, args.model, server_url(args), out, conf=args.conf, iou=args.iou,
                        max_det=args.max_det, classes=classes, clip=args.clip) if videos else 0
    if not images:
        return status
    summary = run_infer(images, args.model, server_url(args), args.protocol, out, concurrency=args.concurrency,
                        timeout_s=args.timeout, retries=args.retries, echo=True, conf=args.conf, iou=args.iou,
                        max_det=args.max_det, classes=classes, clip=args.clip)
    total = summary.written + summary.skipped
    print(f"{total} images: {summary.written} written to {out}, {summary.skipped} skipped"
          + (" (warnings above)" if summary.skipped else "") + f"; index: {out / INDEX}")
    if summary.servers:
        print(summary.servers)
    return max(status, 1 if summary.skipped else 0)
