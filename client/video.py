"""Video through the served detector: `tdet infer VIDEO|CAMERA|STREAM` and `run_video`.

A source is a video file (anything OpenCV's FFmpeg build reads: mp4, avi, mkv, ...), a camera index ("0") or a
stream URL (rtsp://, rtsps://, rtmp://, or http(s):// whose path ends in a video or stream suffix: .mp4, .mjpg,
.m3u8, ...; `tdet infer` also asks an http(s) URL with neither an image nor a video suffix for its Content-Type:
video/*, MJPEG or HLS is a video). Frames are JPEG-encoded (--jpeg-quality) and sent as separate requests, several
in flight (the client's threads, as for images); results are written in frame order:

    OUT/NAME.mp4           the annotated video: the input's size and fps (fps / N with --vid-stride N)
    OUT/NAME.jsonl         one line per frame: {"frame", "time_s", "detections": [...], "latency_ms"}; a
                           detection carries "track_id" (and any other per-detection output the model has, e.g.
                           a tracker ensemble's TRACK_IDS) when the model returns one; a frame that could not be
                           decoded has "error" instead of detections
    OUT/NAME.summary.json  frames, dropped, corrupt, achieved fps, latency p50/p99, reconnects, complete

A file never drops a frame. A live source (camera, rtsp/rtmp, an http MJPEG or HLS stream) keeps only the newest
frame while the requests in flight are busy (latest-frame policy) and counts the frames it dropped. A stream that
dies is reopened with backoff (0.5 s, doubling) up to --reconnect times in a row, then the run stops with what was
written flushed. The video file is finalised and the JSONL is complete up to the last frame whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import InferenceError, ModelNotFoundError, ServerUnavailableError, UserError
from .files import IMAGE_SUFFIXES, atomic_write
from .image_input import VIDEO_SUFFIXES, is_url
from .postprocess import Detections, from_wire
from .specs import WIRE_OUTPUTS

LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "udp://", "tcp://", "srt://")
STREAM_SUFFIXES = frozenset({".mjpg", ".mjpeg", ".m3u8", ".ts"})  # http(s) URLs that are live streams
DEFAULT_JPEG_QUALITY = 90
DEFAULT_RECONNECTS = 3
RECONNECT_BACKOFF_S = 0.5
OPEN_TIMEOUT_S = 10.0
EXACT_COUNT_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".avi"})  # the frame count is in the header
MAX_BAD_FRAMES = 8  # failed reads in a row that a file may have before it counts as ended / truncated
DEFAULT_FPS = 25.0  # when a source does not say (some cameras and streams): only the output video's rate
VIDEO_FOURCC = "mp4v"  # in every OpenCV FFmpeg build (H.264 encoders are not)


def is_video_source(source: str | os.PathLike, *, probe: bool = False) -> bool:
    """A camera index ("0"), a stream URL (rtsp://...) or a video file / URL by its suffix. probe: also ask an
    http(s) URL without an image or video suffix (http://cam/video) for its Content-Type (video/*, MJPEG, HLS)."""
    text = str(source)
    if text.isdigit() and not Path(text).exists():
        return True
    if text.lower().startswith(LIVE_SCHEMES):
        return True
    path = urllib.parse.urlsplit(text).path if is_url(text) else text
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_SUFFIXES | STREAM_SUFFIXES:
        return True
    return probe and is_url(text) and suffix not in IMAGE_SUFFIXES and bool(_video_type(text))


def is_live(source: str | os.PathLike) -> bool:
    """Camera, rtsp/rtmp/..., or an http(s) MJPEG/HLS stream (by suffix, or by a Content-Type probed before):
    frames come at the source's pace, stale ones drop."""
    text = str(source)
    if text.isdigit() and not Path(text).exists():
        return True
    if text.lower().startswith(LIVE_SCHEMES):
        return True
    if not is_url(text):
        return False
    return (Path(urllib.parse.urlsplit(text).path).suffix.lower() in STREAM_SUFFIXES
            or _PROBED.get(text, "") in LIVE_TYPES)


LIVE_TYPES = ("multipart/x-mixed-replace", "application/vnd.apple.mpegurl", "application/x-mpegurl")
_PROBED: dict[str, str] = {}  # url -> its video Content-Type ("" : not a video)


def _video_type(url: str, timeout_s: float = 5.0) -> str:
    """The Content-Type of `url` when it is a video or stream (video/*, MJPEG, HLS), else "" (also when it does not
    answer: the image path then reports the failure). Only the headers are read."""
    import urllib.request

    if url not in _PROBED:
        kind = ""
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "tdet"}),
                                        timeout=timeout_s) as response:
                kind = response.headers.get_content_type().lower()
        except (OSError, ValueError):
            pass
        _PROBED[url] = kind if kind.startswith("video/") or kind in LIVE_TYPES else ""
    return _PROBED[url]


def source_name(source: str | os.PathLike) -> str:
    """The outputs' base name: a file's stem, camera0, a URL's last path segment (sanitized) without suffix."""
    text = str(source)
    if text.isdigit() and not Path(text).exists():
        return f"camera{text}"
    if "://" in text:
        from .infer import url_name

        return Path(url_name(text)).stem or "stream"
    return Path(text).stem


@dataclass
class Frame:
    """One decoded frame: index in the source (0-based, its own numbering), time in s, BGR pixels (None: the
    frame could not be decoded; `error` says why)."""

    index: int
    time_s: float
    bgr: np.ndarray | None
    error: str = ""


class SourceLost(Exception):
    """The source stopped delivering frames before its end (the message says how and where)."""


def _quiet_decoder() -> None:
    """FFmpeg's and OpenCV's own log lines (a refused connection, each undecodable packet) off: every failure is
    reported once, in tdet's words, naming the source and frame. OPENCV_FFMPEG_LOGLEVEL set by the user wins."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; read when FFmpeg is first used
    cv2.setLogLevel(1)  # fatal only (no "VIDEOIO(FFMPEG): backend ... can't be used", "Camera index out of range")


class VideoSource:
    """A cv2.VideoCapture with what `tdet infer` needs around it: clear open errors, frame numbering that shows
    frames the decoder skipped (corrupt ones), and reconnecting with backoff for streams."""

    def __init__(self, source: str, *, reconnects: int = DEFAULT_RECONNECTS, backoff_s: float = RECONNECT_BACKOFF_S,
                 open_timeout_s: float = OPEN_TIMEOUT_S) -> None:
        self.source, self.live = str(source), is_live(source)
        self._camera = self.source.isdigit() and not Path(self.source).exists()
        self.network = "://" in self.source or self._camera
        self.reconnects, self.backoff_s, self.open_timeout_s = int(reconnects), float(backoff_s), float(open_timeout_s)
        self.reconnected, self._tries = 0, 0
        _quiet_decoder()
        if not self.network and not Path(self.source).is_file():
            raise UserError(f"cannot open video {self.source}: no such file")
        self.cap = self._open()
        if self.cap is None:
            why = ("no camera with that index here (or it is in use)" if self._camera else
                   "OpenCV (FFmpeg) could not open or read it")
            raise UserError(f"cannot open video source {self.source}: {why}")
        fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0)
        self.fps = fps if 0 < fps <= 1000 else DEFAULT_FPS
        count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 and not self.live else 0  # 0: unknown
        self.size = (int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))

    def _open(self) -> cv2.VideoCapture | None:
        ms = int(self.open_timeout_s * 1000)
        if self._camera:
            cap = cv2.VideoCapture(int(self.source))
        else:
            cap = cv2.VideoCapture(self.source, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def _reconnect(self, after: int) -> None:
        """Reopen a dead stream, waiting backoff_s, 2 backoff_s, ... before each try; SourceLost after `reconnects`
        tries with no frame in between (a stream that reopens but gives nothing uses them up too)."""
        self.cap.release()
        while self._tries < self.reconnects:
            time.sleep(self.backoff_s * 2 ** self._tries)
            self._tries += 1
            cap = self._open()
            if cap is not None:
                self.cap = cap
                self.reconnected += 1
                print(f"warning: {self.source}: stream lost {_where(after)}, reopened "
                      f"(try {self._tries} of {self.reconnects})", file=sys.stderr)
                return
        raise SourceLost(f"{self.source}: stream lost {_where(after)}; gave up after {self.reconnects} "
                         "reconnect tries")

    def frames(self) -> Iterator[Frame]:
        """Every frame in order, indexed as the source numbers them. A file: a frame the decoder cannot give
        (corrupt data) comes as Frame(bgr=None, error=...) once a later frame reads again; a file that stops
        before its frame count raises SourceLost (truncated). A stream: reopened when it dies (indices keep
        counting; time_s is seconds since opening), SourceLost when it cannot be."""
        start = time.monotonic()
        index, bad = -1, 0  # bad: failed reads since the last good frame
        while True:
            ok = self.cap.grab()
            ok, bgr = self.cap.retrieve() if ok else (False, None)
            if ok and bgr is not None:
                for _ in range(bad):  # they were corrupt: a later frame read again
                    index += 1
                    yield Frame(index, index / self.fps, None, "corrupt frame: the decoder could not read it, skipped")
                bad, self._tries = 0, 0
                index += 1
                yield Frame(index, time.monotonic() - start if self.live else index / self.fps, bgr)
                continue
            bad += 1
            if self.frame_count and index + bad >= self.frame_count:
                if bad == 1 or self._short_enough(index):
                    return  # read to its end
                raise self._truncated(index)
            if not self.live and bad <= MAX_BAD_FRAMES:
                continue  # a corrupt frame, or the end: the next reads tell
            if not self.network:
                if self.frame_count and not self._short_enough(index):
                    raise self._truncated(index)
                return
            self._reconnect(index)
            if not self.live:  # a file over http starts again from its first frame: skip what was read
                for _ in range(index + 1):
                    self.cap.grab()
            bad = 0

    def _short_enough(self, index: int) -> bool:
        """Whether ending after `index` is the file's end after all: a container without a frame count in its
        header (mkv, webm, ...) has it estimated from duration x fps, off by a frame or two (or ~1 %)."""
        exact = Path(urllib.parse.urlsplit(self.source).path).suffix.lower() in EXACT_COUNT_SUFFIXES
        return not exact and self.frame_count - (index + 1) <= max(2, 0.01 * self.frame_count)

    def _truncated(self, index: int) -> SourceLost:
        return SourceLost(f"{self.source}: ended {_where(index)} of {self.frame_count} "
                          "(the file is truncated or its end is unreadable)")

    def close(self) -> None:
        self.cap.release()


def _where(index: int) -> str:
    return f"after frame {index}" if index >= 0 else "before its first frame"


class LatestFrame:
    """A reader thread keeping only the newest frame of a live source: iterating waits for and takes it;
    frames replaced before anyone took them are counted as dropped (latest-frame policy)."""

    def __init__(self, frames: Iterator[Frame]) -> None:
        self._frames = frames
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._done = False
        self._error: BaseException | None = None
        self._stop = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="video-reader")
        self._thread.start()

    def _run(self) -> None:
        try:
            for frame in self._frames:
                with self._cond:
                    if self._stop:
                        return
                    if self._slot is not None and self._slot.bgr is not None:
                        self.dropped += 1
                    self._slot = frame
                    self._cond.notify_all()
        except BaseException as err:  # handed to the consumer, raised there
            self._error = err
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def __iter__(self) -> Iterator[Frame]:
        while True:
            with self._cond:
                while self._slot is None and not self._done:
                    self._cond.wait()
                if self._slot is not None:
                    frame, self._slot = self._slot, None
                elif self._error is not None:
                    raise self._error
                else:
                    return
            yield frame

    def close(self) -> None:
        with self._cond:
            self._stop = True
        self._thread.join(timeout=OPEN_TIMEOUT_S)


def select_frames(frames: Iterator[Frame], *, stride: int = 1, start_s: float = 0.0, end_s: float | None = None
                  ) -> Iterator[Frame]:
    """--start/--end (seconds of the source) and --vid-stride (every N-th frame from the first kept one)."""
    first = None
    for f in frames:
        if f.time_s < start_s:
            continue
        if end_s is not None and f.time_s >= end_s:
            return
        first = f.index if first is None else first
        if (f.index - first) % stride == 0:
            yield f


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
    frames: int = 0  # frames with detections written (video and JSONL)
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
    close, whatever stopped the run."""

    def __init__(self, video: Path, jsonl: Path, fps: float) -> None:
        video.parent.mkdir(parents=True, exist_ok=True)
        self.video_path, self.fps = video, fps
        self.writer: cv2.VideoWriter | None = None
        self.jsonl = jsonl.open("w")

    def write(self, record: dict, annotated: np.ndarray | None) -> None:
        if annotated is not None:
            if self.writer is None:  # opened on the first frame: its size is the output's
                h, w = annotated.shape[:2]
                self.writer = cv2.VideoWriter(str(self.video_path), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), self.fps,
                                              (w, h))
                if not self.writer.isOpened():
                    raise UserError(f"OpenCV cannot write {self.video_path} ({VIDEO_FOURCC})")
            self.writer.write(annotated)
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        self.jsonl.close()


def extra_outputs(config: dict) -> list[str]:
    """The model's outputs beyond the four every ensemble has (e.g. a tracker ensemble's TRACK_IDS): requested
    too and passed through to the JSONL."""
    return [o["name"] for o in config.get("output", []) if o.get("name") not in WIRE_OUTPUTS]


def detection_field(output: str) -> str:
    """A per-detection output's JSONL key: TRACK_IDS -> track_id."""
    return output.lower().removesuffix("s")


def infer_frame(client: Any, blob: bytes, parameters: dict, extras: Sequence[str], sequence: dict | None = None
                ) -> tuple[Detections, dict[str, Any], dict[str, Any]]:
    """One encoded frame -> (Detections, {extra output: one value per detection}, {other extra output: value}),
    through the client's retrying call. An extra output is per detection when its first axis is the BOXES'
    (K, padded); sequence: tritonclient's sequence_id / sequence_start / sequence_end, for stateful models."""
    mod = client._module
    arr = np.array([[blob]], dtype=np.object_)
    inp = mod.InferInput("IMAGE", list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr)
    names = [*WIRE_OUTPUTS, *extras]
    outputs = [mod.InferRequestedOutput(n) for n in names]
    res = client._call(lambda c: c.infer(client.model, [inp], model_version=client.version, outputs=outputs,
                                         parameters=parameters or None, **(sequence or {}), **client._timeout_kw()))
    num, boxes, scores, classes = (res.as_numpy(n) for n in WIRE_OUTPUTS)
    dets = from_wire(num[0], boxes[0], scores[0], classes[0], client.class_names)
    per_det, other = {}, {}
    for n in extras:
        value = np.asarray(res.as_numpy(n)[0])
        if value.ndim >= 1 and value.shape[0] == boxes.shape[1]:
            per_det[n] = value[:len(dets)].tolist()
        else:
            other[n] = value.tolist()
    return dets, per_det, other


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


@dataclass
class FrameResult:
    """One frame's answer, in frame order. detections None: the frame has none (`error` says why: the decoder
    could not give it, `decoded` False, or the server refused it). per_detection: the model's extra per-detection
    outputs by name (a tracker ensemble's TRACK_IDS), one value per detection; extras: its other extra outputs."""

    frame: Frame
    detections: Detections | None
    per_detection: dict[str, list] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    latency_ms: float = 0.0
    error: str = ""

    @property
    def decoded(self) -> bool:
        return self.frame.bgr is not None

    @property
    def track_ids(self) -> list | None:
        """The tracker's id of each detection, when the model returns TRACK_IDS (None otherwise)."""
        return self.per_detection.get("TRACK_IDS")


def is_sequence_model(config: dict) -> bool:
    """A stateful model (Triton's sequence batcher, e.g. a tracker): one stream is one sequence, sent in order."""
    return "sequence_batching" in config


def _flagged(frames: Iterator[Frame], lookahead: bool) -> Iterator[tuple[Frame, bool]]:
    """(frame, is it the last) with one frame of lookahead, or (frame, False) without (live sources: no delay)."""
    if not lookahead:
        yield from ((f, False) for f in frames)
        return
    current = next(frames, None)
    while current is not None:
        try:
            upcoming = next(frames, None)
        except SourceLost:
            yield current, True  # the stream's last frame after all
            raise
        yield current, upcoming is None
        current = upcoming


def _results(frames: Iterator[Frame], call: Any, *, concurrency: int,
             jpeg_quality: int, max_frames: int | None, sequence_id: int = 0, lookahead: bool = False
             ) -> Iterator[FrameResult]:
    """The core of video inference: JPEG-encode each frame and call(blob, sequence) -> infer_frame's triple on a
    thread pool, `concurrency` in flight (the next frame is taken only when a slot is free: for a live source,
    the newest one), results in frame order. sequence_id: a stateful model's correlation id (then concurrency 1,
    start flag on the first frame, end flag on the last where `lookahead` can tell). SourceLost is raised after
    the frames already sent were yielded; a server that went away raises at once, cancelling the rest."""

    def one(frame: Frame, last: bool, first: bool) -> FrameResult:
        ok, jpg = cv2.imencode(".jpg", frame.bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            return FrameResult(frame, None, error="could not JPEG-encode the frame")
        sequence = {"sequence_id": sequence_id, "sequence_start": first, "sequence_end": last} if sequence_id else None
        t0 = time.perf_counter()
        try:
            dets, per_det, other = call(jpg.tobytes(), sequence)
        except (ServerUnavailableError, ModelNotFoundError):
            raise
        except (InferenceError, UserError) as err:  # this frame only (the server refused it)
            return FrameResult(frame, None, error=str(err))
        return FrameResult(frame, dets, per_det, other, (time.perf_counter() - t0) * 1000)

    in_flight: deque[Future | FrameResult] = deque()
    sent, lost = 0, None
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        try:
            flagged = _flagged(frames, lookahead)
            while max_frames is None or sent < max_frames:
                while len(in_flight) >= concurrency:  # a free slot first, then the (newest) frame
                    yield _done(in_flight.popleft())
                try:
                    frame, last = next(flagged, (None, False))
                except SourceLost as err:
                    lost = err
                    break
                if frame is None:
                    break
                if frame.bgr is None:
                    in_flight.append(FrameResult(frame, None, error=frame.error))
                    continue
                last = last or (max_frames is not None and sent + 1 >= max_frames)
                in_flight.append(pool.submit(one, frame, last, sent == 0))
                sent += 1
            while in_flight:
                yield _done(in_flight.popleft())
        finally:
            for fut in in_flight:
                if isinstance(fut, Future):
                    fut.cancel()
    if lost is not None:
        raise lost


def _done(item: Future | FrameResult) -> FrameResult:
    return item.result() if isinstance(item, Future) else item


def infer_video(client: Any, source: str, *, concurrency: int = 4, jpeg_quality: int = DEFAULT_JPEG_QUALITY,
                vid_stride: int = 1, start_s: float = 0.0, end_s: float | None = None, max_frames: int | None = None,
                reconnects: int = DEFAULT_RECONNECTS, **options: Any) -> Iterator[FrameResult]:
    """The Python client's video call: FrameResult per frame of `source` (file, camera index, stream URL), in
    order, through a connected DetectorClient (tdet.client.triton.connect); options: conf, iou, max_det,
    classes, clip. Raises UserError when the source cannot be opened, SourceLost (after the frames read) when a
    stream dies for good or a file is truncated.

        with connect("127.0.0.1:8001", "damo_yolo_t") as det:
            for r in infer_video(det, "street.mp4", conf=0.3):
                print(r.frame.index, len(r.detections or []), r.track_ids)
    """
    _check_video_options(jpeg_quality, vid_stride, start_s, end_s, max_frames, concurrency, reconnects)
    src = VideoSource(source, reconnects=reconnects)
    reader = None
    try:
        parameters = client.request_parameters(options)
        extras = extra_outputs(client.config)
        frames = select_frames(src.frames(), stride=vid_stride, start_s=start_s, end_s=end_s)
        if src.live:
            reader = LatestFrame(frames)
            frames = iter(reader)
        sequence = is_sequence_model(client.config)
        yield from _results(frames, lambda blob, seq: infer_frame(client, blob, parameters, extras, seq),
                            concurrency=1 if sequence else concurrency,
                            jpeg_quality=jpeg_quality, max_frames=max_frames,
                            sequence_id=new_sequence_id() if sequence else 0, lookahead=sequence and not src.live)
    finally:
        if reader is not None:
            reader.close()
        src.close()


def new_sequence_id() -> int:
    """A correlation id for one stream of a stateful model: random, so two clients never share one."""
    import secrets

    return secrets.randbits(62) + 1


class _Writer:
    """Writes each finished frame in order: JSONL line, annotated video frame, summary counts, progress."""

    def __init__(self, summary: VideoSummary, outputs: VideoOutputs, bar: Any, show: bool) -> None:
        self.summary, self.outputs, self.bar, self.show = summary, outputs, bar, show
        self.latencies: list[float] = []
        self.reader: LatestFrame | None = None

    def write(self, r: FrameResult) -> None:
        frame = r.frame
        if r.detections is None:
            self.summary.corrupt += not r.decoded
            self.summary.failed += r.decoded
            self.outputs.write({"frame": frame.index, "time_s": round(frame.time_s, 4), "error": r.error}, None)
            self.bar.write(f"warning: {self.summary.source}: frame {frame.index}: {r.error}", file=sys.stderr)
            return
        record = frame_record(frame, r.detections, r.per_detection, r.extras, r.latency_ms)
        annotated = draw_frame(frame.bgr, r.detections, record["detections"])
        self.outputs.write(record, annotated)
        self.latencies.append(r.latency_ms)
        self.summary.frames += 1
        self.bar.update()
        if self.reader is not None:
            self.bar.set_postfix(dropped=self.reader.dropped, refresh=False)
        if self.show:
            cv2.imshow(f"tdet {Path(self.outputs.video_path).stem}", annotated)
            cv2.waitKey(1)


def run_video(source: str, model: str, url: str, protocol: str, out: Path, *, concurrency: int = 4,
              jpeg_quality: int = DEFAULT_JPEG_QUALITY, vid_stride: int = 1, start_s: float = 0.0,
              end_s: float | None = None, max_frames: int | None = None, show: bool = False,
              reconnects: int = DEFAULT_RECONNECTS, timeout_s: float = 60.0, retries: int = 2,
              **options: Any) -> VideoSummary:
    """Run one video source through the served `model` (see the module doc); returns the summary, also written
    next to the outputs. UserError for a source that cannot be opened or bad options; a stream that dies or a
    truncated file stops the run with the outputs valid up to there (summary.error says why)."""
    from tqdm import tqdm

    from .fleet import connect_fleet

    _check_video_options(jpeg_quality, vid_stride, start_s, end_s, max_frames, concurrency, reconnects)
    src = VideoSource(source, reconnects=reconnects)
    name = source_name(source)
    out.mkdir(parents=True, exist_ok=True)
    summary = VideoSummary(str(source), model, str(out / f"{name}.mp4"), str(out / f"{name}.jsonl"),
                           src.size[0], src.size[1], round(src.fps, 3), src.live)
    if show and not display_available():
        summary.warnings.append("--show: no display (or OpenCV without GUI) here; not shown")
        print(f"warning: {summary.warnings[-1]}", file=sys.stderr)
        show = False
    outputs = VideoOutputs(Path(summary.video), Path(summary.jsonl), src.fps / vid_stride)
    writer: _Writer | None = None
    began = time.monotonic()
    try:
        with connect_fleet(url, model, protocol, timeout_s=timeout_s, retries=retries) as fleet, \
                tqdm(total=_expected(src, vid_stride, start_s, end_s, max_frames), desc=f"{name} {model}",
                     unit="frame", disable=None, file=sys.stderr) as bar:
            parameters = fleet.first.request_parameters(options)
            extras = extra_outputs(fleet.first.config)
            sequence = is_sequence_model(fleet.first.config)
            writer = _Writer(summary, outputs, bar, show)
            frames: Iterator[Frame] = select_frames(src.frames(), stride=vid_stride, start_s=start_s, end_s=end_s)
            if src.live:
                writer.reader = LatestFrame(frames)
                frames = iter(writer.reader)
            results = _results(frames, lambda blob, seq: fleet.call(
                lambda c: infer_frame(c, blob, parameters, extras, seq)),
                concurrency=1 if sequence else concurrency, jpeg_quality=jpeg_quality, max_frames=max_frames,
                sequence_id=new_sequence_id() if sequence else 0, lookahead=sequence and not src.live)
            try:
                for r in results:
                    writer.write(r)
            except SourceLost as err:
                summary.error = str(err)
            except (ServerUnavailableError, ModelNotFoundError) as err:
                summary.error = f"{err}; stopped after {summary.frames} frames"
                raise type(err)(f"{summary.error} (written to {out})", status=err.status) from None
            summary.complete = not summary.error and summary.corrupt == summary.failed == 0
    finally:
        _close(src, outputs, writer, summary, show, time.monotonic() - began)
        atomic_write(out / f"{name}.summary.json", json.dumps(asdict(summary), indent=1))
    return summary


def _close(src: VideoSource, outputs: VideoOutputs, writer: _Writer | None, summary: VideoSummary, show: bool,
           elapsed: float) -> None:
    """Stop the reader, finalise the outputs and fill in the summary's totals, whatever stopped the run."""
    if writer is not None and writer.reader is not None:
        writer.reader.close()
        summary.dropped = writer.reader.dropped
    src.close()
    outputs.close()
    if show:
        with contextlib.suppress(cv2.error):
            cv2.destroyAllWindows()
    latencies = writer.latencies if writer is not None else []
    summary.reconnects = src.reconnected
    summary.achieved_fps = round(summary.frames / elapsed, 3) if elapsed > 0 else 0.0
    summary.latency_ms_p50, summary.latency_ms_p99 = _percentile(latencies, 50), _percentile(latencies, 99)


def _expected(src: VideoSource, stride: int, start_s: float, end_s: float | None, max_frames: int | None
              ) -> int | None:
    """How many frames a file run will send (the progress bar's total); None for live sources."""
    if not src.frame_count:
        return max_frames
    first = min(src.frame_count, int(np.ceil(start_s * src.fps - 1e-9)))
    last = src.frame_count if end_s is None else min(src.frame_count, int(np.ceil(end_s * src.fps - 1e-9)))
    n = max(0, -(-(last - first) // stride))
    return n if max_frames is None else min(n, max_frames)


def _check_video_options(jpeg_quality: int, stride: int, start_s: float, end_s: float | None,
                         max_frames: int | None, concurrency: int, reconnects: int) -> None:
    if not 1 <= jpeg_quality <= 100:
        raise UserError(f"--jpeg-quality must be in 1..100, got {jpeg_quality}")
    if stride < 1:
        raise UserError(f"--vid-stride must be >= 1, got {stride}")
    if start_s < 0 or (end_s is not None and end_s <= start_s):
        raise UserError(f"--start/--end: need 0 <= start < end, got {start_s} and {end_s}")
    if max_frames is not None and max_frames < 1:
        raise UserError(f"--max-frames must be >= 1, got {max_frames}")
    if concurrency < 1:
        raise UserError(f"--concurrency must be >= 1, got {concurrency}")
    if reconnects < 0:
        raise UserError(f"--reconnect must be >= 0, got {reconnects}")


def add_video_args(p: argparse.ArgumentParser) -> None:
    """The video options of `tdet infer` (used only for video sources)."""
    g = p.add_argument_group("video sources (a file, a camera index such as 0, rtsp:// or http(s) stream URLs)")
    g.add_argument("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY, help="JPEG quality of the frames sent")
    g.add_argument("--vid-stride", type=int, default=1, metavar="N", help="send every N-th frame")
    g.add_argument("--start", type=float, default=0.0, metavar="SECONDS", help="skip the source's first SECONDS")
    g.add_argument("--end", type=float, metavar="SECONDS", help="stop at SECONDS of the source")
    g.add_argument("--max-frames", type=int, metavar="N", help="stop after sending N frames")
    g.add_argument("--show", action="store_true", help="also show the annotated frames in a window, where a "
                                                       "display exists (ignored with a warning elsewhere)")
    g.add_argument("--reconnect", type=int, default=DEFAULT_RECONNECTS, metavar="N",
                   help="reopen a stream that died up to N times in a row (backoff 0.5 s, doubling)")


def run_videos(sources: Sequence[str], args: argparse.Namespace, model: str, url: str, out: Path,
               **options: Any) -> int:
    """`tdet infer`'s video part: each source in turn; prints each summary line. Exit status 0 when every
    source was read to its end with nothing lost, 1 otherwise."""
    status = 0
    for source in sources:
        s = run_video(source, model, url, args.protocol, out, concurrency=args.concurrency,
                      jpeg_quality=args.jpeg_quality, vid_stride=args.vid_stride, start_s=args.start, end_s=args.end,
                      max_frames=args.max_frames, show=args.show, reconnects=args.reconnect, timeout_s=args.timeout,
                      retries=args.retries, **options)
        print(s.line())
        if s.error:
            print(f"warning: {s.error}; outputs are complete up to frame {s.frames} (video finalised)",
                  file=sys.stderr)
        status = max(status, 0 if s.complete and not s.error else 1)
    return status
