"""client/bytetrack.py vs supervision's ByteTrack (a reference run OUTSIDE the project) on the same detections.

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install "numpy<2" scipy supervision==0.25.1  # 0.26+: no ByteTrack
    /tmp/ref/bin/python bench/bytetrack_reference.py
Compares the tracks frame by frame: the same boxes get the same track, i.e. ids map one-to-one over the whole
clip (supervision numbers ids only once a track is confirmed, the paper's code at birth, so raw numbers differ).
Detections: objects moving linearly with noise, scores in [0.05, 0.95] (both associations), entering/leaving."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import supervision as sv

spec = importlib.util.spec_from_file_location("bytetrack", Path(__file__).parents[1] / "client" / "bytetrack.py")
bt = sys.modules["bytetrack"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bt)


def detections(seed, n=20, frames=200):
    rng = np.random.default_rng(seed)
    pos, vel = rng.uniform(0, 600, (n, 2)), rng.uniform(-4, 4, (n, 2))
    wh, life = rng.uniform(20, 60, (n, 2)), np.sort(rng.integers(0, frames, (n, 2)), 1)
    for f in range(frames):
        on = (life[:, 0] <= f) & (f <= life[:, 1]) & (rng.random(n) > 0.05)  # enter, leave, 5% missed
        p = pos[on] + vel[on] * f
        yield (np.c_[p, p + wh[on]] + rng.normal(0, 1.5, (on.sum(), 4))).astype(np.float32), \
            rng.uniform(0.05, 0.95, on.sum()).astype(np.float32)


def compare(seed):
    ours = bt.ByteTracker(bt.ByteTrackParams(track_thresh=0.5, match_thresh=0.8, track_buffer=30))
    ref = sv.ByteTrack(track_activation_threshold=0.5, lost_track_buffer=30, minimum_matching_threshold=0.8,
                       frame_rate=30, minimum_consecutive_frames=1)
    mapping, frames, boxes_n = {}, 0, 0
    for boxes, scores in detections(seed):
        d = sv.Detections(xyxy=boxes, confidence=scores, class_id=np.zeros(len(scores), int))
        r = ref.update_with_detections(d)
        ob, _, _, oid = ours.update(boxes, scores, np.zeros(len(scores)))
        if len(r) != len(oid):
            return f"seed {seed} frame {frames}: {len(oid)} tracks here, {len(r)} in supervision"
        # pair by box (both output the Kalman-updated/detection boxes in different orders)
        for rb, rid in zip(r.xyxy, r.tracker_id):
            j = int(np.argmin(np.abs(ob - rb).sum(1)))
            if mapping.setdefault(int(oid[j]), int(rid)) != int(rid):
                return f"seed {seed} frame {frames}: track {oid[j]} here is {rid} there, was {mapping[int(oid[j])]}"
        frames, boxes_n = frames + 1, boxes_n + len(oid)
    if len(set(mapping.values())) != len(mapping):
        return f"seed {seed}: two tracks here are one track in supervision"
    return f"seed {seed}: same tracks in all {frames} frames ({boxes_n} tracked boxes, {len(mapping)} tracks)"


if __name__ == "__main__":
    print(f"supervision {sv.__version__}")
    results = [compare(s) for s in range(5)]
    print("\n".join(results))
    sys.exit(0 if all("same tracks" in r for r in results) else 1)
