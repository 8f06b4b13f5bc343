"""`tdet infer PATH... --model M --url U [--protocol grpc|http] --out DIR`: detections from a running
server, written as annotated images (<stem>.jpg) and JSON (<stem>.json) per input, plus an index."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from .postprocess import Detections

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def draw_detections(bgr: npt.NDArray[np.uint8], dets: Detections, *, min_score: float = 0.0
                    ) -> npt.NDArray[np.uint8]:
    """A copy of the BGR uint8 [H, W, 3] image with boxes (original px, xyxy) and "name score" labels."""
    out = bgr.copy()
    thick = max(1, round(max(out.shape[:2]) / 500))
    for i in range(len(dets)):
        score = float(dets.scores[i])
        if score < min_score:
            continue
        cid = int(dets.category_ids[i])
        color = tuple(int(c) for c in np.random.default_rng(cid).integers(64, 256, 3))  # stable per class
        x1, y1, x2, y2 = (int(round(v)) for v in dets.boxes[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick)
        name = dets.class_names[i] if dets.class_names else str(cid)
        cv2.putText(out, f"{name} {score:.2f}", (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thick, color, thick, cv2.LINE_AA)
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file + rename: an interrupted run never leaves a file that looks complete."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def collect_images(paths: list[Path]) -> list[Path]:
    """Files as given, directories expanded to their image files (sorted). FileNotFoundError if missing."""
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    if not found:
        raise FileNotFoundError(f"no images found in {', '.join(map(str, paths))}")
    return found


def run_infer(paths: list[Path], model: str, url: str, protocol: str, out: Path, *, concurrency: int = 4,
              min_score: float = 0.3) -> list[dict]:
    """Infer every image, write <out>/<stem>.jpg (annotated, boxes with score >= min_score) and
    <out>/<stem>.json (all detections), and <out>/detections.json (index). Returns the index rows."""
    from .triton import connect

    images = collect_images(paths)
    out.mkdir(parents=True, exist_ok=True)
    blobs = [p.read_bytes() for p in images]
    with connect(url, model, protocol) as client:
        results = client.infer_many(blobs, concurrency=concurrency)
    index = []
    for path, blob, dets in zip(images, blobs, results):
        bgr = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
        ok, jpg = cv2.imencode(".jpg", draw_detections(bgr, dets, min_score=min_score))
        if not ok:
            raise ValueError(f"could not encode the annotated image for {path}")
        _atomic_write(out / f"{path.stem}.jpg", jpg.tobytes())
        row = {"image": str(path), "model": model, "height": bgr.shape[0], "width": bgr.shape[1],
               "detections": dets.to_list()}
        _atomic_write(out / f"{path.stem}.json", json.dumps(row, indent=1).encode())
        index.append({"image": str(path), "annotated": str(out / f"{path.stem}.jpg"), "count": len(dets)})
    _atomic_write(out / "detections.json", json.dumps(index, indent=1).encode())
    return index


def register_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="detect objects in images through a running Triton server",
                       description="Send each image to the served ensemble MODEL and write annotated images "
                                   "(<stem>.jpg) and detections (<stem>.json: boxes xyxy in original pixels, "
                                   "scores, COCO category ids, class names) to --out.")
    p.add_argument("paths", nargs="+", type=Path, help="image files or folders")
    p.add_argument("--model", required=True, help="served ensemble, e.g. damo_yolo_t or rtdetrv2_s")
    p.add_argument("--url", default=None, help="server host:port (default localhost:8001 gRPC / :8000 HTTP)")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--min-score", type=float, default=0.3, help="draw boxes with at least this score")
    p.set_defaults(func=cmd_infer)


def cmd_infer(args: argparse.Namespace) -> int:
    from .triton import DEFAULT_PORTS

    url = args.url or f"localhost:{DEFAULT_PORTS[args.protocol]}"
    index = run_infer(args.paths, args.model, url, args.protocol, args.out, concurrency=args.concurrency,
                      min_score=args.min_score)
    for row in index:
        print(f"{row['image']}: {row['count']} detections -> {row['annotated']}")
    return 0
