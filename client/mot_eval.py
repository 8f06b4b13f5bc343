"""Tracking metrics against MOTChallenge ground truth (gt.txt), with py-motmetrics (MOTA, MOTP, IDF1, ID
switches; the CLEAR-MOT and identity metrics as the MOTChallenge devkit computes them). HOTA is not here:
motmetrics 1.4.0 has none and TrackEval needs numpy >= 2 (README, Tracking on the server).

Tracked output: MOTChallenge results (frame,id,x,y,w,h,...; frames from 1) or a JSONL with one line per frame
{"frame": i (from 0), "detections": [{"box": [x1, y1, x2, y2], "track_id": n}, ...]}."""

from __future__ import annotations

import json
from pathlib import Path

METRICS = ("mota", "motp", "idf1", "num_switches", "num_frames", "num_objects", "num_false_positives", "num_misses")


def _jsonl_to_frame(path: Path):
    import pandas as pd

    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            for d in rec.get("detections", []) if "error" in rec else rec["detections"]:  # no frame: no tracks
                if d.get("track_id"):
                    x1, y1, x2, y2 = (float(v) for v in d["box"])
                    rows.append((int(rec["frame"]) + 1, int(d["track_id"]), x1, y1, x2 - x1, y2 - y1, 1.0))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{n}: not a tracked-frame line ({type(err).__name__}: {err})") from None
    df = pd.DataFrame(rows, columns=["FrameId", "Id", "X", "Y", "Width", "Height", "Confidence"])
    return df.set_index(["FrameId", "Id"])


def mot_metrics(gt: str | Path, tracked: str | Path, iou: float = 0.5) -> dict[str, float]:
    """MOTA/MOTP/IDF1/... of `tracked` against `gt` (MOTChallenge gt.txt) at IoU `iou`."""
    import motmetrics as mm

    gt, tracked = Path(gt), Path(tracked)
    for p in (gt, tracked):
        if not p.is_file():
            raise FileNotFoundError(f"tracking file not found: {p}")
    gt_df = mm.io.loadtxt(str(gt), fmt="mot15-2D", min_confidence=1)
    ts_df = _jsonl_to_frame(tracked) if tracked.suffix == ".jsonl" else mm.io.loadtxt(str(tracked), fmt="mot15-2D")
    acc = mm.utils.compare_to_groundtruth(gt_df, ts_df, "iou", distth=1 - iou)
    summary = mm.metrics.create().compute(acc, metrics=list(METRICS), name="clip")
    return {k: float(summary[k].iloc[0]) for k in METRICS}
