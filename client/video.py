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
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import InferenceError, ModelNotFoundError, ServerUnavailableError, UserError
from .files import atomic_write
from .postprocess import Detections, from_wire
from .specs import WIRE_OUTPUTS
from .video_source import (  # noqa: F401 - the sources' API, re-exported: tdet.client.video is the one to import
    DEFAULT_RECONNECTS,
    Frame,
    LatestFrame,
    SourceLost,
    VideoSource,
    is_live,
    is_video_source,
    select_frames,
    source_name,
)

DEFAULT_JPEG_QUALITY = 90
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


def is_sequence_model(client: Any) -> bool:
    """A stateful model (Triton's sequence batcher, e.g. a tracker), itself or a step of the ensemble (as in
    `<m>_track`, whose own config has no sequence batcher): one stream is one sequence, sent in order."""
    if "sequence_batching" in client.config:
        return True
    steps = client.config.get("ensemble_scheduling", {}).get("step", [])
    return any("sequence_batching" in client.model_config(step["model_name"]) for step in steps)


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
        sequence = is_sequence_model(client)
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
            sequence = is_sequence_model(fleet.first)
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
