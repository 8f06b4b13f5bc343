"""Tracking metrics against MOTChallenge ground truth (gt.txt): py-motmetrics (MOTA, MOTP, IDF1, ID switches; the
CLEAR-MOT and identity metrics as the MOTChallenge devkit computes them) and TrackEval's HOTA (HOTA, DetA, AssA,
LocA; sn-trackeval 0.4.0, the official TrackEval code, fed per-frame arrays as its MOTChallenge loader would).

Tracked output: MOTChallenge results (frame,id,x,y,w,h,...; frames from 1) or a JSONL with one line per frame
{"frame": i (from 0), "detections": [{"box": [x1, y1, x2, y2], "track_id": n}, ...]}. Both metrics see the same
boxes: the gt rows with confidence >= 1, class-agnostic, IoU of x,y,w,h boxes (x + w the right edge)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

METRICS = ("mota", "motp", "idf1", "num_switches", "num_frames", "num_objects", "num_false_positives", "num_misses")
HOTA_METRICS = {"hota": "HOTA", "deta": "DetA", "assa": "AssA", "loca": "LocA"}  # ours -> TrackEval's field


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
                    # frame from 1; x, y - 1: the shift motmetrics' loadtxt applies to gt.txt (MATLAB's 1-based
                    # pixels), so a JSONL box and a gt.txt row with the same numbers are the same box
                    rows.append((int(rec["frame"]) + 1, int(d["track_id"]), x1 - 1, y1 - 1, x2 - x1, y2 - y1, 1.0))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{n}: not a tracked-frame line ({type(err).__name__}: {err})") from None
    df = pd.DataFrame(rows, columns=["FrameId", "Id", "X", "Y", "Width", "Height", "Confidence"])
    return df.set_index(["FrameId", "Id"])


def _per_frame(df, frames):
    """Per frame of `frames`: (ids 0..n-1 over the whole clip, as TrackEval relabels them; x,y,w,h boxes)."""
    fr = df.index.get_level_values("FrameId").to_numpy()
    raw = df.index.get_level_values("Id").to_numpy()
    ids = np.searchsorted(np.unique(raw), raw)
    boxes = df[["X", "Y", "Width", "Height"]].to_numpy(dtype=float)
    return [(ids[fr == f], boxes[fr == f]) for f in frames], len(np.unique(raw))


def hota_data(gt_df, ts_df) -> dict:
    """The sequence dict TrackEval's metrics take (what its MOTChallenge loader and preprocessing produce)."""
    from trackeval.datasets._base_dataset import _BaseDataset

    frames = np.union1d(gt_df.index.get_level_values("FrameId"), ts_df.index.get_level_values("FrameId"))
    (gt, n_gt), (ts, n_ts) = _per_frame(gt_df, frames), _per_frame(ts_df, frames)
    return {"num_timesteps": len(frames), "num_gt_ids": n_gt, "num_tracker_ids": n_ts,
            "gt_ids": [i for i, _ in gt], "tracker_ids": [i for i, _ in ts],
            "num_gt_dets": len(gt_df), "num_tracker_dets": len(ts_df),
            "similarity_scores": [_BaseDataset._calculate_box_ious(g, t, box_format="xywh")
                                  for (_, g), (_, t) in zip(gt, ts)]}


def hota(gt_df, ts_df) -> dict[str, float]:
    """HOTA, DetA, AssA, LocA: TrackEval's HOTA, each the mean over the IoU thresholds alpha = 0.05..0.95."""
    from trackeval.metrics import HOTA

    res = HOTA().eval_sequence(hota_data(gt_df, ts_df))
    return {k: float(np.mean(res[f])) for k, f in HOTA_METRICS.items()}


def mot_metrics(gt: str | Path, tracked: str | Path, iou: float = 0.5) -> dict[str, float]:
    """MOTA/MOTP/IDF1/... of `tracked` against `gt` (MOTChallenge gt.txt) at IoU `iou`, and HOTA/DetA/AssA/LocA."""
    import motmetrics as mm

    gt, tracked = Path(gt), Path(tracked)
    for p in (gt, tracked):
        if not p.is_file():
            raise FileNotFoundError(f"tracking file not found: {p}")
    gt_df = mm.io.loadtxt(str(gt), fmt="mot15-2D", min_confidence=1)
    ts_df = _jsonl_to_frame(tracked) if tracked.suffix == ".jsonl" else mm.io.loadtxt(str(tracked), fmt="mot15-2D")
    acc = mm.utils.compare_to_groundtruth(gt_df, ts_df, "iou", distth=1 - iou)
    summary = mm.metrics.create().compute(acc, metrics=list(METRICS), name="clip")
    return {**{k: float(summary[k].iloc[0]) for k in METRICS}, **hota(gt_df, ts_df)}
