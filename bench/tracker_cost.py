"""ByteTrack's cost per frame at N objects (client/bytetrack.py, the code the server's tracker model runs).

    .venv/bin/python bench/tracker_cost.py [--objects 20] [--frames 300]
Boxes move linearly with 1 px noise and scores uniform in [0.3, 0.95] (so both associations run)."""

import argparse
import time

import numpy as np

from tdet.client.bytetrack import ByteTracker


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--objects", type=int, default=20)
    ap.add_argument("--frames", type=int, default=300)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    pos, vel = rng.uniform(0, 600, (a.objects, 2)), rng.uniform(-5, 5, (a.objects, 2))
    wh = rng.uniform(20, 60, (a.objects, 2))
    frames = [(np.c_[pos + vel * f, pos + vel * f + wh] + rng.normal(0, 1, (a.objects, 4)),
               rng.uniform(0.3, 0.95, a.objects)) for f in range(a.frames)]
    tracker = ByteTracker()
    t0 = time.perf_counter()
    for boxes, scores in frames:
        tracker.update(boxes, scores, np.zeros(a.objects, np.int32))
    ms = (time.perf_counter() - t0) / a.frames * 1e3
    print(f"ByteTrack: {ms:.2f} ms/frame at {a.objects} objects ({a.frames} frames, {tracker.next_id} ids)")


if __name__ == "__main__":
    main()
