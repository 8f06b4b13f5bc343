"""`tdet eval --mot GT`: a clip through a served tracking ensemble (`<m>_track`, `tdet repo build --track`),
scored against its MOTChallenge ground truth (MOTA, IDF1, ... by py-motmetrics; HOTA, DetA, AssA, LocA by TrackEval's
code: tdet.client.mot_eval).

GT is a clip folder in MOTChallenge's layout (what `tdet data synth --video` writes: gt/gt.txt, seqinfo.ini and
the clip's video NAME.mp4) or its gt.txt; --video names the video when it is not NAME.mp4 in the clip folder.
Writes, in OUT: the annotated video, the JSONL and the summary of the run (tdet.client.video) and
mot_metrics.json (the metrics, the GT, the video, the model and the run's summary).
"""

from __future__ import annotations

import configparser
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError
from .files import atomic_write


@dataclass
class MotResult:
    metrics: dict[str, float]
    gt: Path
    video: Path
    jsonl: Path
    path: Path  # mot_metrics.json
    complete: bool  # every frame of the clip went through


def clip_files(gt: Path, video: Path | None = None) -> tuple[Path, Path]:
    """(gt.txt, video) of a MOTChallenge clip folder or of its gt/gt.txt; UserError naming what is missing."""
    if gt.is_dir():
        clip, gt_txt = gt, gt / "gt" / "gt.txt"
    else:
        clip, gt_txt = gt.parent.parent, gt
    if not gt_txt.is_file():
        raise UserError(f"--mot {gt}: no MOTChallenge ground truth {gt_txt} (give a clip folder with gt/gt.txt, "
                        "as `tdet data synth --video` writes, or a gt.txt)")
    if video is not None:
        if not video.is_file():
            raise UserError(f"--video {video}: no such file")
        return gt_txt, video
    name = clip.name
    if (clip / "seqinfo.ini").is_file():
        ini = configparser.ConfigParser()
        ini.read(clip / "seqinfo.ini")
        name = ini.get("Sequence", "name", fallback=name)
    found = clip / f"{name}.mp4"
    if not found.is_file():
        raise UserError(f"--mot {gt}: no clip video {found}; name the video with --video")
    return gt_txt, found


def check_tracking_model(url: str, model: str, protocol: str, timeout_s: float, retries: int) -> None:
    """UserError unless `model` returns TRACK_IDS (a `<m>_track` ensemble): plain detections have no ids."""
    from .triton import connect
    from .video import extra_outputs

    with connect(url, model, protocol, timeout_s=timeout_s, retries=retries) as client:
        if "TRACK_IDS" not in extra_outputs(client.config):
            raise UserError(f"--mot needs a tracking model: {model} returns no TRACK_IDS (build the repository "
                            f"with `tdet repo build --track` and evaluate {model}_track)")


def evaluate_mot(model: str, url: str, gt: Path, out: Path, *, video: Path | None = None, protocol: str = "grpc",
                 timeout_s: float = 60.0, retries: int = 2, iou_threshold: float = 0.5, conf: float | None = None,
                 iou: float | None = None) -> MotResult:
    """Run the clip of `gt` through the served tracking `model`, score the tracks (see the module doc)."""
    from .mot_eval import mot_metrics
    from .video import run_video

    if not 0 < iou_threshold <= 1:
        raise UserError(f"--mot-iou must be in (0, 1], got {iou_threshold}")
    gt_txt, video = clip_files(gt, video)
    check_tracking_model(url, model, protocol, timeout_s, retries)
    summary = run_video(str(video), model, url, protocol, out, concurrency=1, timeout_s=timeout_s, retries=retries,
                        conf=conf, iou=iou)
    if summary.error:
        print(f"warning: {summary.error}; scored the {summary.frames} frames that went through", file=sys.stderr)
    jsonl = Path(summary.jsonl)
    metrics = mot_metrics(gt_txt, jsonl, iou=iou_threshold)
    path = out / "mot_metrics.json"
    atomic_write(path, json.dumps({"model": model, "gt": str(gt_txt), "video": str(video), "iou": iou_threshold,
                                   "metrics": metrics, "run": asdict(summary)}, indent=1))
    return MotResult(metrics, gt_txt, video, jsonl, path, summary.complete)


def format_mot(res: MotResult) -> str:
    m = res.metrics
    return (f"HOTA {100 * m['hota']:.2f} (DetA {100 * m['deta']:.2f}  AssA {100 * m['assa']:.2f}  LocA "
            f"{100 * m['loca']:.2f})  MOTA {100 * m['mota']:.2f}  IDF1 {100 * m['idf1']:.2f}  "
            f"MOTP {m['motp']:.3f} (1 - IoU)  "
            f"ID switches {m['num_switches']:.0f}  false positives {m['num_false_positives']:.0f}  "
            f"misses {m['num_misses']:.0f}  ({m['num_frames']:.0f} frames, {m['num_objects']:.0f} ground-truth "
            f"boxes; {res.gt})")
