"""`tdet infer PATH... --model M --url U [--protocol grpc|http] --out DIR`: detections from a running
server, written as annotated images (<stem>.jpg) and JSON (<stem>.json) per input, plus an index."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from .files import atomic_write, collect_images
from .postprocess import Detections
from .preprocess import decode_bgr
from .triton import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, add_connection_args


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


def run_infer(paths: list[Path], model: str, url: str, protocol: str, out: Path, *, concurrency: int = 4,
              min_score: float = 0.3, timeout_s: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES
              ) -> list[dict]:
    """Infer every image, write <out>/<stem>.jpg (annotated, boxes with score >= min_score) and
    <out>/<stem>.json (all detections), and <out>/detections.json (index). Returns the index rows.
    Boxes refer to the image as displayed (EXIF orientation applied), as the annotated copy shows it."""
    from .triton import connect

    images = collect_images(paths)
    out.mkdir(parents=True, exist_ok=True)
    blobs = [p.read_bytes() for p in images]
    with connect(url, model, protocol, timeout_s=timeout_s, retries=retries) as client:
        results = client.infer_many(blobs, concurrency=concurrency)
    index = []
    for path, blob, dets in zip(images, blobs, results):
        bgr = decode_bgr(blob)  # as the server decoded it: same orientation, same size
        ok, jpg = cv2.imencode(".jpg", draw_detections(bgr, dets, min_score=min_score))
        if not ok:
            raise ValueError(f"could not encode the annotated image for {path}")
        atomic_write(out / f"{path.stem}.jpg", jpg.tobytes())
        row = {"image": str(path), "model": model, "height": bgr.shape[0], "width": bgr.shape[1],
               "detections": dets.to_list()}
        atomic_write(out / f"{path.stem}.json", json.dumps(row, indent=1).encode())
        index.append({"image": str(path), "annotated": str(out / f"{path.stem}.jpg"), "count": len(dets)})
    atomic_write(out / "detections.json", json.dumps(index, indent=1).encode())
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
    add_connection_args(p)
    p.set_defaults(func=cmd_infer)


def cmd_infer(args: argparse.Namespace) -> int:
    from .triton import DEFAULT_PORTS

    url = args.url or f"localhost:{DEFAULT_PORTS[args.protocol]}"
    index = run_infer(args.paths, args.model, url, args.protocol, args.out, concurrency=args.concurrency,
                      min_score=args.min_score, timeout_s=args.timeout, retries=args.retries)
    for row in index:
        print(f"{row['image']}: {row['count']} detections -> {row['annotated']}")
    return 0
