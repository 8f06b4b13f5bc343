"""Video sources for `tdet infer` and tdet.client.video: what counts as a video (file, camera index, stream URL),
opening it with clear errors, reading its frames in order (corrupt frames, truncated files, streams that die and
are reopened with backoff), the latest-frame policy for live sources, and --start/--end/--vid-stride.
OpenCV (its FFmpeg build) does the decoding; torch-free.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import UserError
from .files import IMAGE_SUFFIXES
from .image_input import VIDEO_SUFFIXES, is_url

LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "udp://", "tcp://", "srt://")
STREAM_SUFFIXES = frozenset({".mjpg", ".mjpeg", ".m3u8", ".ts"})  # http(s) URLs that are live streams
DEFAULT_RECONNECTS = 3
RECONNECT_BACKOFF_S = 0.5
OPEN_TIMEOUT_S = 10.0
EXACT_COUNT_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".avi"})  # the frame count is in the header
MAX_BAD_FRAMES = 8  # failed reads in a row that a file may have before it counts as ended / truncated
DEFAULT_FPS = 25.0  # when a source does not say (some cameras and streams): only the output video's rate


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
        last, last_s = -1, -1 / self.fps  # the last good frame and its time
        while True:
            ok = self.cap.grab()
            ok, bgr = self.cap.retrieve() if ok else (False, None)
            if ok and bgr is not None:
                for _ in range(bad):  # they were corrupt: a later frame read again
                    index += 1
                    yield Frame(index, last_s + (index - last) / self.fps, None,
                                "corrupt frame: the decoder could not read it, skipped")
                bad, self._tries = 0, 0
                index += 1
                last, last_s = index, time.monotonic() - start if self.live else self._file_time(index)
                yield Frame(index, last_s, bgr)
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

    def _file_time(self, index: int) -> float:
        """The frame just read's presentation time in s (its container timestamp: right for variable frame rates
        too); index / fps when the container has none."""
        ms = float(self.cap.get(cv2.CAP_PROP_POS_MSEC))
        return ms / 1000 if np.isfinite(ms) and (ms > 0 or (ms == 0 and index == 0)) else index / self.fps

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
