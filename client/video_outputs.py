"""What a video run writes (torch-free): the annotated video and the JSONL frame by frame (`VideoOutputs`), one
frame's JSONL line and drawing, and the run's summary (`VideoSummary`, OUT/NAME.summary.json)."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import UserError
from .postprocess import Detections
from .video_source import Frame

VIDEO_FOURCC = "mp4v"  # in every OpenCV FFmpeg build (H.264 encoders are not)


@dataclass
class VideoSummary:
    """What a video run did (also written as OUT/NAME.summary.json)."""

    source: str
    model: str
    video: str
    jsonl: str
    width: int = 0
    height: int = 0
    source_fps: float = 0.0
    live: bool = False
    frames: int = 0  # frames with detections written (JSONL; the video too for a file)
    video_frames: int = 0  # frames in the video (live: one per 1/fps from the first frame's time_s to the last's)
    last_frame: int = -1  # the source's index of the last frame in the JSONL (-1: none)
    dropped: int = 0  # live sources: frames replaced by newer ones before they could be sent
    corrupt: int = 0  # frames the decoder could not give (a JSONL line with "error", no video frame)
    failed: int = 0  # frames the server refused (a JSONL line with "error", no video frame)
    reconnects: int = 0
    achieved_fps: float = 0.0
    latency_ms_p50: float = 0.0
    latency_ms_p99: float = 0.0
    complete: bool = False  # the source ended normally (or at --end / --max-frames) and nothing was lost
    error: str = ""
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = (f"{self.source}: {self.frames} frames -> {self.video} ({self.achieved_fps:.1f} fps, latency p50 "
                f"{self.latency_ms_p50:.1f} ms, p99 {self.latency_ms_p99:.1f} ms")
        text += f", {self.dropped} dropped (live source, latest-frame policy)" if self.live else ""
        text += f", {self.corrupt} corrupt" if self.corrupt else ""
        text += f", {self.failed} refused by the server" if self.failed else ""
        text += f", {self.reconnects} reconnects" if self.reconnects else ""
        return text + ")" + (f"; stopped: {self.error}" if self.error else "")


class VideoOutputs:
    """The annotated video and the JSONL, written frame by frame (the JSONL flushed per line) and finalised on
    close, whatever stopped the run. `live`: the video follows the frames' `time_s` at `fps` (a frame is held
    while no newer one came, as a recorder does), so dropped frames and outages do not make it play faster
    than it happened; two frames within one frame interval: the later is in the JSONL only."""

    def __init__(self, video: Path, jsonl: Path, fps: float, live: bool = False) -> None:
        video.parent.mkdir(parents=True, exist_ok=True)
        self.video_path, self.fps, self.live = video, fps, live
        self.writer: cv2.VideoWriter | None = None
        self.jsonl = jsonl.open("w")
        self.written = 0  # video frames
        self._first_s = 0.0
        self._last: np.ndarray | None = None

    def write(self, record: dict, annotated: np.ndarray | None) -> None:
        if annotated is not None:
            if self.writer is None:  # opened on the first frame: its size is the output's
                h, w = annotated.shape[:2]
                self.writer = cv2.VideoWriter(str(self.video_path), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), self.fps,
                                              (w, h))
                if not self.writer.isOpened():
                    raise UserError(f"OpenCV cannot write {self.video_path} ({VIDEO_FOURCC})")
                self._first_s = record["time_s"]
            self._write_video(annotated, record["time_s"])
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()

    def _write_video(self, annotated: np.ndarray, time_s: float) -> None:
        if not self.live:
            self.writer.write(annotated)
            self.written += 1
            return
        slot = math.floor((time_s - self._first_s) * self.fps)  # video frame `slot` starts at first + slot / fps
        while self.written < slot:  # the frame on screen until this one came
            self.writer.write(self._last)
            self.written += 1
        if self.written == slot:
            self.writer.write(annotated)
            self.written += 1
        self._last = annotated

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        self.jsonl.close()


def detection_field(output: str) -> str:
    """A per-detection output's JSONL key: TRACK_IDS -> track_id."""
    return output.lower().removesuffix("s")


def frame_record(frame: Frame, dets: Detections, per_det: dict[str, list], other: dict[str, Any],
                 latency_ms: float) -> dict:
    """The JSONL line of one frame: per-detection extras (e.g. TRACK_IDS -> "track_id") go into each detection,
    other extra outputs into the line itself (lower-case names)."""
    rows = dets.to_list()
    record: dict[str, Any] = {"frame": frame.index, "time_s": round(frame.time_s, 4)}
    for name, values in per_det.items():
        for row, v in zip(rows, values):
            row[detection_field(name)] = v
    record.update({name.lower(): v for name, v in other.items()})
    record["detections"] = rows
    record["latency_ms"] = round(latency_ms, 2)
    return record


def draw_frame(bgr: np.ndarray, dets: Detections, rows: list[dict]) -> np.ndarray:
    """The frame with boxes and "name score" labels (tdet infer's drawing); "#id name score" with track ids."""
    from .infer import draw_detections

    if rows and "track_id" in rows[0]:
        names = tuple(f"#{r['track_id']} {r['class_name'] or r['category_id']}" for r in rows)
        dets = Detections(dets.boxes, dets.scores, dets.category_ids, names)
    return draw_detections(bgr, dets)


def display_available() -> bool:
    """--show works only with a GUI build of OpenCV and a display (never required: outputs are files)."""
    gui = next((line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines()
                if line.strip().startswith("GUI:")), "NONE")
    if gui.upper().startswith("NONE"):
        return False
    return sys.platform != "linux" or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2) if values else 0.0
