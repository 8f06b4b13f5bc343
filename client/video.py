"""Video through the served detector: `tdet infer VIDEO|CAMERA|STREAM` and `run_video`.

A source is a video file (anything OpenCV's FFmpeg build reads: mp4, avi, mkv, ...), a camera index ("0") or a
stream URL (rtsp://, rtsps://, rtmp://, or http(s):// whose path ends in a video or stream suffix: .mp4, .mjpg,
.m3u8, ...; `tdet infer` also asks an http(s) URL with neither an image nor a video suffix for its Content-Type:
video/*, MJPEG or HLS is a video). Frames are JPEG-encoded (--jpeg-quality) and sent as separate requests, several
in flight (the client's threads, as for images); results are written in frame order:

    OUT/NAME.mp4           the annotated video: the input's size (odd sizes one pixel less: mp4v) and fps
                           (fps / N with --vid-stride N; a live stream's nominal fps)
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
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import ModelNotFoundError, ServerUnavailableError, UserError
from .files import atomic_write, refuse_overwriting
from .video_infer import (  # noqa: F401 - the Python client's video API, re-exported with the sources'
    DEFAULT_JPEG_QUALITY,
    FrameResult,
    _check_video_options,
    _results,
    extra_outputs,
    infer_frame,
    infer_video,
    is_sequence_model,
    new_sequence_id,
)
from .video_outputs import VideoOutputs, VideoSummary, _percentile, display_available, draw_frame, frame_record
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


class _Writer:
    """Writes each finished frame in order: JSONL line, annotated video frame, summary counts, progress."""

    def __init__(self, summary: VideoSummary, outputs: VideoOutputs, bar: Any, show: bool) -> None:
        self.summary, self.outputs, self.bar, self.show = summary, outputs, bar, show
        self.latencies: list[float] = []
        self.reader: LatestFrame | None = None

    def write(self, r: FrameResult) -> None:
        frame = r.frame
        self.summary.last_frame = frame.index
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
              name: str | None = None, **options: Any) -> VideoSummary:
    """Run one video source through the served `model` (see the module doc); returns the summary, also written
    next to the outputs. UserError for a source that cannot be opened or bad options; a stream that dies or a
    truncated file stops the run with the outputs valid up to there (summary.error says why). name: the outputs'
    base name (default source_name's; video_names gives distinct ones to several sources)."""
    from tqdm import tqdm

    from .fleet import connect_fleet

    _check_video_options(jpeg_quality, vid_stride, start_s, end_s, max_frames, concurrency, reconnects)
    name = name or source_name(source)
    refuse_overwriting([source], [out / f"{name}{ext}" for ext in (".mp4", ".jsonl", ".summary.json")])
    src = VideoSource(source, reconnects=reconnects)
    expected = _expected(src, vid_stride, start_s, end_s, max_frames)  # the progress bar's total too
    if src.frame_count and expected == 0:
        src.close()
        raise UserError(f"--start/--end select no frame of {source} ({src.frame_count} frames at {src.fps:g} fps: "
                        f"{src.frame_count / src.fps:.2f} s)")
    (out / name).parent.mkdir(parents=True, exist_ok=True)  # a name may mirror a subfolder (video_names)
    summary = VideoSummary(str(source), model, str(out / f"{name}.mp4"), str(out / f"{name}.jsonl"),
                           src.size[0], src.size[1], round(src.fps, 3), src.live)
    if show and not display_available():
        summary.warnings.append("--show: no display (or OpenCV without GUI) here; not shown")
        print(f"warning: {summary.warnings[-1]}", file=sys.stderr)
        show = False
    outputs = VideoOutputs(Path(summary.video), Path(summary.jsonl), src.fps / vid_stride, live=src.live)
    writer: _Writer | None = None
    began = time.monotonic()
    try:
        with connect_fleet(url, model, protocol, timeout_s=timeout_s, retries=retries) as fleet, \
                tqdm(total=expected, desc=f"{name} {model}", unit="frame", disable=None, file=sys.stderr) as bar:
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
            except KeyboardInterrupt:
                summary.error = f"interrupted after {summary.frames} frames"
                raise
            if not summary.frames and not summary.error:  # nothing was sent: not a complete run of the source
                summary.error = "the source gave no frame in the --start/--end range"
            summary.complete = not summary.error and summary.corrupt == summary.failed == 0
    finally:
        _close(src, outputs, writer, summary, show, time.monotonic() - began)
        atomic_write(out / f"{name}.summary.json", json.dumps(asdict(summary), indent=1))
    return summary


def video_names(sources: Sequence[str]) -> list[str]:
    """Distinct output base names, one per source: files as `tdet infer`'s images (their path below the files'
    common folder, the suffix kept where two share a stem), cameras and streams by source_name, with _2, _3...
    where two would still share one (rtsp://a/stream, rtsp://b/stream -> stream, stream_2)."""
    from .infer import output_names, unique_name

    files = [s for s in sources if "://" not in str(s) and Path(s).is_file()]
    file_names = iter(output_names(files))
    taken: set[str] = set()
    return [unique_name(next(file_names) if s in files else source_name(s), taken) for s in sources]


def _close(src: VideoSource, outputs: VideoOutputs, writer: _Writer | None, summary: VideoSummary, show: bool,
           elapsed: float) -> None:
    """Stop the reader, finalise the outputs and fill in the summary's totals, whatever stopped the run."""
    if writer is not None and writer.reader is not None:
        writer.reader.close()
        summary.dropped = writer.reader.dropped
    src.close()
    outputs.close()
    summary.video_frames = outputs.written
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
    for source, name in zip(sources, video_names(sources)):
        s = run_video(source, model, url, args.protocol, out, concurrency=args.concurrency,
                      jpeg_quality=args.jpeg_quality, vid_stride=args.vid_stride, start_s=args.start, end_s=args.end,
                      max_frames=args.max_frames, show=args.show, reconnects=args.reconnect, timeout_s=args.timeout,
                      retries=args.retries, name=name, **options)
        print(s.line())
        if s.error:
            upto = f"up to frame {s.last_frame}" if s.last_frame >= 0 else "empty: no frame was written"
            print(f"warning: {s.error}; outputs are complete {upto} (video finalised)", file=sys.stderr)
        status = max(status, 0 if s.complete and not s.error else 1)
    return status
