"""`tdet infer PATH... [--model M] [--out DIR]`: detections from a running server, written as each image's
answer arrives: an annotated copy (<name>.jpg) and JSON (<name>.json) per input, plus an index
(detections.json). A file the server refuses (not an image, truncated, too small) is skipped with a
warning naming it; the rest go on.

Output names mirror the inputs below their common folder (`a/x.jpg b/x.jpg` -> OUT/a/x.*, OUT/b/x.*);
two inputs with the same stem in one folder (x.jpg, x.png) keep their suffix (x.jpg.*, x.png.*), so
no result ever overwrites another.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from .errors import InferenceError, ModelNotFoundError, ServerUnavailableError, UserError
from .files import atomic_write, collect_images
from .pool import finished_batches
from .postprocess import Detections
from .preprocess import decode_bgr
from .triton import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, add_connection_args, add_url_args, server_url

INDEX = "detections.json"
DEFAULT_CONF = 0.25  # Ultralytics' predict default: what a deployment user expects to see drawn and counted


def draw_detections(bgr: npt.NDArray[np.uint8], dets: Detections) -> npt.NDArray[np.uint8]:
    """A copy of the BGR uint8 [H, W, 3] image with boxes (original px, xyxy) and "name score" labels."""
    out = bgr.copy()
    thick = max(1, round(max(out.shape[:2]) / 500))
    for d in dets:
        color = tuple(int(c) for c in np.random.default_rng(d.category_id).integers(64, 256, 3))  # stable per class
        x1, y1, x2, y2 = (int(round(v)) for v in d.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick)
        cv2.putText(out, f"{d.class_name} {d.score:.2f}", (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thick, color, thick, cv2.LINE_AA)
    return out


def output_names(paths: list[Path]) -> list[str]:
    """One distinct output name (no suffix) per input: its path below the inputs' common folder, without
    the suffix unless another input in that folder has the same stem; `detections` is the index's."""
    resolved = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in resolved])) if resolved else Path(".")
    rel = [p.relative_to(root) for p in resolved]
    stems = [str(r.with_suffix("")) for r in rel]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    taken = {INDEX.removesuffix(".json")}
    names = []
    for r, s in zip(rel, stems):
        name = str(r) if counts[s] > 1 or s in taken else s
        base, n = name, 2
        while name in taken:  # e.g. an input literally named "x.jpg.png" next to x.jpg and x.png
            name, n = f"{base}_{n}", n + 1
        taken.add(name)
        names.append(name)
    return names


@dataclass
class InferSummary:
    """What a run did: rows of the index (one per input), and how many were written / skipped."""

    out: Path
    rows: list[dict] = field(default_factory=list)
    written: int = 0
    skipped: int = 0
    servers: str = ""  # per-server counts when --url lists several servers


def _write_result(path: Path, blob: bytes, dets: Detections, out: Path, name: str, model: str,
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


def run_infer(paths: list[Path], model: str, url: str, protocol: str, out: Path, *, concurrency: int = 4,
              timeout_s: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES, echo: bool = False,
              **options) -> InferSummary:
    """Infer every image (files, or the images in folders) and write each result as it arrives:
    <out>/<name>.jpg (annotated), <out>/<name>.json (detections), and <out>/detections.json (the index,
    one row per input; a skipped one has "error"). options: conf, iou, max_det, classes, clip, sent as
    request parameters, so the JSON, the count and the drawing hold the same detections.

    An image the server refuses, or one that fails on the server side, is skipped with a warning naming
    it. An unreachable server or a model that is not served stops the run (what was written stays)."""
    from tqdm import tqdm

    from .fleet import connect_fleet

    images = collect_images(paths)
    names = output_names(images)
    out.mkdir(parents=True, exist_ok=True)
    summary = InferSummary(out)
    rows: dict[int, dict] = {}
    with connect_fleet(url, model, protocol, timeout_s=timeout_s, retries=retries) as fleet, \
            ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool, \
            tqdm(total=len(images), desc=f"infer {model}", unit="img", disable=None, file=sys.stderr) as bar:
        parameters = fleet.first.request_parameters(options)  # checked (class names known) before anything is sent

        def one(i: int) -> dict:
            blob = images[i].read_bytes()
            dets = fleet.call(lambda c: c.infer_encoded([blob], parameters))[0]
            return _write_result(images[i], blob, dets, out, names[i], model, parameters)

        rounds = finished_batches(pool, one, range(len(images)), 2 * max(1, concurrency))
        try:
            with contextlib.closing(rounds):
                for finished in rounds:  # results written as they arrive
                    for i, fut in finished:
                        try:
                            rows[i] = fut.result()
                            summary.written += 1
                            if echo:
                                bar.write(f"{images[i]}: {rows[i]['count']} detections -> {rows[i]['annotated']}")
                        except (ServerUnavailableError, ModelNotFoundError) as err:
                            raise type(err)(f"{err}; stopped after {summary.written} of {len(images)} images "
                                            f"(written to {out})", status=err.status) from None
                        except (InferenceError, UserError, OSError) as err:
                            rows[i] = {"image": str(images[i]), "error": str(err)}
                            summary.skipped += 1
                            bar.write(f"warning: skipped {images[i]}: {err}", file=sys.stderr)
                        bar.update()
        finally:
            summary.rows = [rows[i] for i in sorted(rows)]
            summary.servers = fleet.format_summary() if len(fleet.urls) > 1 else ""
            atomic_write(out / INDEX, json.dumps(summary.rows, indent=1))
    return summary


def register_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="detect objects in images through a running Triton server",
                       description="Send each image to the served ensemble MODEL and write, as each answer arrives, "
                                   "an annotated copy (NAME.jpg) and its detections (NAME.json: boxes xyxy in "
                                   "original pixels, scores, category ids, class names) to --out, plus an index "
                                   f"({INDEX}). A file the server refuses is skipped with a warning. Exit status: 0 "
                                   "all written, 1 some skipped, 2 nothing could run (bad arguments, no server).")
    p.add_argument("paths", nargs="+", type=Path, help="image files or folders (folders: the images directly in them)")
    p.add_argument("--model", required=True, help="served ensemble, e.g. damo_yolo_t or rtdetrv2_s")
    add_url_args(p)
    p.add_argument("--out", type=Path, help="output folder (default: build/infer/MODEL)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
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
    p.set_defaults(func=cmd_infer)


def cmd_infer(args: argparse.Namespace) -> int:
    out = args.out or Path("build/infer") / args.model
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    summary = run_infer(args.paths, args.model, server_url(args), args.protocol, out, concurrency=args.concurrency,
                        timeout_s=args.timeout, retries=args.retries, echo=True, conf=args.conf, iou=args.iou,
                        max_det=args.max_det, classes=classes, clip=args.clip)
    total = summary.written + summary.skipped
    print(f"{total} images: {summary.written} written to {out}, {summary.skipped} skipped"
          + (" (warnings above)" if summary.skipped else "") + f"; index: {out / INDEX}")
    if summary.servers:
        print(summary.servers)
    return 1 if summary.skipped else 0
