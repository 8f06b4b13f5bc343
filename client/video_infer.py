"""Video inference's in-order core (torch-free): each frame JPEG-encoded and sent, several in flight, the answers
in frame order (`_results`); one frame's request (`infer_frame`) with the model's extra outputs (a tracker's
TRACK_IDS); stateful models get one sequence (correlation id, start/end flags). `infer_video` is the Python
client's call; `tdet infer` (tdet.client.video.run_video) writes the same results to files."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from .errors import InferenceError, ModelNotFoundError, ServerUnavailableError, UserError
from .image_input import wire_images
from .postprocess import Detections, from_wire
from .specs import WIRE_OUTPUTS
from .video_source import DEFAULT_RECONNECTS, Frame, LatestFrame, SourceLost, VideoSource, select_frames

DEFAULT_JPEG_QUALITY = 90


def extra_outputs(config: dict) -> list[str]:
    """The model's outputs beyond the four every ensemble has (e.g. a tracker ensemble's TRACK_IDS): requested
    too and passed through to the JSONL."""
    return [o["name"] for o in config.get("output", []) if o.get("name") not in WIRE_OUTPUTS]


def infer_frame(client: Any, blob: bytes, parameters: dict, extras: Sequence[str], sequence: dict | None = None
                ) -> tuple[Detections, dict[str, Any], dict[str, Any]]:
    """One encoded frame -> (Detections, {extra output: one value per detection}, {other extra output: value}),
    through the client's retrying call. An extra output is per detection when its first axis is the BOXES'
    (K, padded); sequence: tritonclient's sequence_id / sequence_start / sequence_end, for stateful models."""
    mod = client._module
    arr, datatype = wire_images([blob], client.config)
    inp = mod.InferInput("IMAGE", list(arr.shape), datatype)
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
