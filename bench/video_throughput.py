"""Video vs images through the same server at the same in-flight count (a benchmark, not a test).

    .venv/bin/python bench/video_throughput.py --url 127.0.0.1:8001 --model damo_yolo_t [--concurrency 4]

Video: tdet.client.video.infer_video on a generated clip (decode, JPEG-encode, send, in frame order). Images: the
same frames, JPEG-encoded the same way beforehand (not timed), sent with DetectorClient.infer_many. Rounds
alternate which goes first; prints frames/s of each per round and the median ratio video / images.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", default="damo_yolo_t")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from tdet.client.synth_video import synthesize_video
    from tdet.client.triton import connect
    from tdet.client.video import DEFAULT_JPEG_QUALITY, infer_video

    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        clip = synthesize_video(Path(tmp), 1, seed=3, size=(w, h), frames=args.frames, fps=10, split="val")[0]
        video = str(clip / f"{clip.name}.mp4")
        cap = cv2.VideoCapture(video)
        blobs = []
        while (frame := cap.read())[0]:
            blobs.append(cv2.imencode(".jpg", frame[1], [cv2.IMWRITE_JPEG_QUALITY, DEFAULT_JPEG_QUALITY])[1].tobytes())
        cap.release()
        with connect(args.url, args.model) as det:
            det.infer_many(blobs[:args.concurrency], concurrency=args.concurrency)  # warm

            def run_video() -> float:
                t = time.perf_counter()
                n = sum(1 for _ in infer_video(det, video, concurrency=args.concurrency))
                return n / (time.perf_counter() - t)

            def run_images() -> float:
                t = time.perf_counter()
                det.infer_many(blobs, concurrency=args.concurrency)
                return len(blobs) / (time.perf_counter() - t)

            ratios = []
            for r in range(args.rounds):
                order = (run_video, run_images) if r % 2 == 0 else (run_images, run_video)
                fps = {fn.__name__: fn() for fn in order}
                ratios.append(fps["run_video"] / fps["run_images"])
                print(f"round {r + 1}: video {fps['run_video']:.2f} frames/s, images {fps['run_images']:.2f} img/s, "
                      f"ratio {ratios[-1]:.3f}")
    print(f"{args.model}, {len(blobs)} frames {w}x{h}, {args.concurrency} in flight: median video / images = "
          f"{statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
