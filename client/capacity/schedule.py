"""One open-loop level: N virtual cameras, each sending a frame every 1/F s whatever happened to the last one.

Camera c of N sends frame k at t0 + (k + c/N) / F: the cameras' phases are spread evenly over one frame
interval, as independent cameras are. A frame whose camera already has `max_in_flight` unanswered frames is
dropped (a real camera pipeline skips it) and counted as missed; so is a frame answered after the deadline or
not at all. Sends go through gRPC's asynchronous call (the answer comes back on gRPC's threads), so the
sending loop never waits for the server; its own lateness (actual vs scheduled send time) is measured and a
level where the generator fell behind is flagged: its numbers describe the generator, not the server.
`workers` > 1 splits the cameras over that many processes, for when one process cannot keep the schedule.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from .. import interrupts
from ..connection import classify
from ..errors import InvalidInputError, ServerUnavailableError, UserError

# The generator, not the server, limits a level when most of its sends lag (p90 lateness over this share of the
# deadline: it cannot keep up) or one stall lasts a whole deadline; a few OS-scheduling hiccups of a loaded
# machine in the tail are reported (p99, max) but do not void the level.
LATE_FRACTION = 0.1
START_DELAY_S = 0.2  # t0 this far ahead, so every sender is ready for frame 0
POOL_START_DELAY_S = 1.0  # with worker processes: the task must reach each of them (pickled) before frame 0
OK, FAILED, DROPPED = 1, 2, 3  # per-frame status (0: not sent, the level stopped early)


def load_frames(source: Path, limit: int = 100) -> list[bytes]:
    """The first `limit` frames of a video file (JPEG-encoded once, here, as a camera's encoder would) or the
    image files of a folder (their bytes as they are). UserError when the source has no frames."""
    from ..files import collect_images
    from ..video_source import VideoSource, is_video_source

    if limit < 1:
        raise UserError(f"--frames must be >= 1, got {limit}")
    if source.is_dir() or not is_video_source(source):
        return [p.read_bytes() for p in collect_images(source, recursive=True)[:limit]]
    import cv2

    video = VideoSource(str(source), reconnects=0)
    try:
        frames = []
        for frame in video.frames():
            if frame.bgr is not None:
                frames.append(cv2.imencode(".jpg", frame.bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
            if len(frames) >= limit:
                break
    finally:
        video.close()
    if not frames:
        raise UserError(f"{source} has no frames that decode: nothing to send")
    return frames


@dataclass
class LevelResult:
    """One level: `cameras` at `fps` for `hold_s`. Counts are frames; latency from send to answer (answered
    frames); lateness from scheduled to actual send (every frame the generator handled)."""

    cameras: int
    fps: float
    hold_s: float
    deadline_ms: float
    scheduled: int = 0  # frames the schedule reached (all of them unless the level stopped early)
    sent: int = 0
    on_time: int = 0
    late: int = 0  # answered after the deadline
    failed: int = 0  # answered with an error, or not at all within the request timeout
    dropped: int = 0  # not sent: the camera had max_in_flight frames unanswered
    miss_rate: float = 0.0  # (late + failed + dropped) / scheduled
    achieved_fps: float = 0.0  # frames answered on time per second, all cameras together
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50 p90 p99 max mean
    lateness_ms: dict[str, float] = field(default_factory=dict)  # p50 p90 p99 max
    generator_late: bool = False
    errors: dict[str, int] = field(default_factory=dict)
    triton: dict[str, dict[str, float]] = field(default_factory=dict)  # per step, loadtest.metrics.per_model
    aborted: str = ""  # why the level stopped before its end ("" : it ran to the end)
    passed: bool = False  # set by the search: miss_rate <= max_miss and p99 <= deadline, generator on time

    def judge(self, max_miss: float) -> bool:
        """Sets and returns `passed`: the level held (and measured the server, not the generator)."""
        self.passed = (not self.aborted and not self.generator_late and self.sent > 0
                       and self.miss_rate <= max_miss and self.latency_ms.get("p99", math.inf) <= self.deadline_ms)
        return self.passed


class _Sender:
    """Sends one process's share of the schedule over one gRPC channel and records every frame."""

    def __init__(self, url: str, model: str, frames: list[bytes], timeout_s: float) -> None:
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(url)
        self.model, self.timeout_s = model, timeout_s
        self.inputs = []
        for blob in frames:  # serialized once: the loop only hands them to gRPC
            inp = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[blob]], dtype=np.object_))
            self.inputs.append([inp])
        self.outputs = [grpcclient.InferRequestedOutput("NUM_DETECTIONS")]
        # one answered request first: the channel is connected and the call path warm before any level's clock
        from tritonclient.utils import InferenceServerException

        try:
            self.client.infer(model, self.inputs[0], outputs=self.outputs, client_timeout=timeout_s)
        except InferenceServerException as err:
            raise classify(err.status(), f"{model}: {err.message()}") from None

    def run(self, cams: list[int], n_cams: int, fps: float, n_frames: int, t0: float,
            max_in_flight: int) -> dict:
        """Frame k of camera c at t0 + (k + c / n_cams) / fps, for c in `cams`, k < n_frames (perf_counter clock,
        the same in every process of this machine). Returns per-frame arrays and the error counts."""
        entries = [(c, k) for k in range(n_frames) for c in cams]
        total = len(entries)
        rec = {"sched": np.array([t0 + (k + c / n_cams) / fps for c, k in entries]), "sent": np.full(total, np.nan),
               "done": np.full(total, np.nan), "status": np.zeros(total, np.int8)}
        errors: Counter = Counter()
        in_flight = [0] * n_cams
        cond = threading.Condition()
        stop = {"why": ""}
        stride = max(1, len(self.inputs) // n_cams)  # cameras start at different places of the clip

        def answered(j: int, c: int, result: object, error: object) -> None:
            now = time.perf_counter()
            with cond:
                rec["done"][j] = now
                rec["status"][j] = OK if error is None else FAILED
                in_flight[c] -= 1
                if error is not None:
                    err = classify(error.status(), str(error.message()))
                    errors[str(err)] += 1
                    if isinstance(err, ServerUnavailableError) and not stop["why"]:
                        stop["why"] = f"the server went away: {err}"
                cond.notify_all()

        for j, (c, k) in enumerate(entries):
            interrupts.check()  # a Ctrl-C that gRPC's C core swallowed stops the level here
            if stop["why"]:
                break
            delay = rec["sched"][j] - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            with cond:
                busy = in_flight[c] >= max_in_flight
                if not busy:
                    in_flight[c] += 1
            rec["sent"][j] = time.perf_counter()
            if busy:
                rec["status"][j] = DROPPED
                continue
            self.client.async_infer(self.model, self.inputs[(k + c * stride) % len(self.inputs)],
                                    lambda result, error, j=j, c=c: answered(j, c, result, error),
                                    outputs=self.outputs, client_timeout=self.timeout_s)
        with cond:  # the answers still on their way; a request times out at timeout_s at the latest
            cond.wait_for(lambda: sum(in_flight) == 0, timeout=self.timeout_s + 5)
            rec = {k: v.copy() for k, v in rec.items()}  # late callbacks must not change what is counted
        return {**rec, "errors": dict(errors), "aborted": stop["why"]}

    def close(self) -> None:
        self.client.close()


_WORKER: dict = {}


def _worker_init(url: str, model: str, frames: list[bytes], timeout_s: float) -> None:
    _WORKER["sender"] = _Sender(url, model, frames, timeout_s)


def _worker_run(args: tuple) -> dict:
    return _WORKER["sender"].run(*args)


def _ready(_: int) -> int:
    time.sleep(0.05)  # so that one fast worker does not take every probe while another is still starting
    return os.getpid()


class Generator:
    """The senders of a capacity run, made once: this process alone (workers=1) or a pool of worker processes,
    each with its own gRPC channel and the frames, started before the first level."""

    def __init__(self, url: str, model: str, frames: list[bytes], *, timeout_s: float = 10.0,
                 workers: int = 1) -> None:
        if workers < 1:
            raise UserError(f"--workers must be >= 1, got {workers}")
        self.workers, self.pool, self.local = workers, None, None
        if workers == 1:
            self.local = _Sender(url, model, frames, timeout_s)
        else:
            self.pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init,
                                            initargs=(url, model, frames, timeout_s))
            pids: set[int] = set()
            while len(pids) < workers:  # every worker started (spawned lazily) before any level's clock
                pids.update(self.pool.map(_ready, range(workers)))

    def run(self, n_cams: int, fps: float, n_frames: int, max_in_flight: int) -> dict:
        """Every camera's frames on schedule; the per-frame records of all senders, concatenated."""
        t0 = time.perf_counter() + (START_DELAY_S if self.local is not None else POOL_START_DELAY_S)
        if self.local is not None:
            return self.local.run(list(range(n_cams)), n_cams, fps, n_frames, t0, max_in_flight)
        shares = [list(range(w, n_cams, self.workers)) for w in range(self.workers)]
        parts = list(self.pool.map(_worker_run, [(s, n_cams, fps, n_frames, t0, max_in_flight) for s in shares if s]))
        errors: Counter = Counter()
        for p in parts:
            errors.update(p["errors"])
        merged = {k: np.concatenate([p[k] for p in parts]) for k in ("sched", "sent", "done", "status")}
        return {**merged, "errors": dict(errors), "aborted": next((p["aborted"] for p in parts if p["aborted"]), "")}

    def close(self) -> None:
        if self.local is not None:
            self.local.close()
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pct(values: np.ndarray, qs: tuple[int, ...]) -> dict[str, float]:
    return {f"p{q}": float(np.percentile(values, q)) if values.size else 0.0 for q in qs}


def summarize(rec: dict, cameras: int, fps: float, hold_s: float, deadline_ms: float) -> LevelResult:
    """The level's counts and percentiles from the per-frame records."""
    status, handled = rec["status"], ~np.isnan(rec["sent"])
    latency = (rec["done"] - rec["sent"]) * 1000
    ok = status == OK
    lat = latency[ok]
    on_time = int(np.sum(lat <= deadline_ms))
    lateness = (rec["sent"] - rec["sched"])[handled] * 1000
    r = LevelResult(cameras, fps, hold_s, deadline_ms, scheduled=int(handled.sum()),
                    sent=int(np.sum(handled & (status != DROPPED))), on_time=on_time, late=int(lat.size - on_time),
                    failed=int(np.sum(handled & (status != OK) & (status != DROPPED))),
                    dropped=int(np.sum(status == DROPPED)), errors=rec["errors"], aborted=rec["aborted"])
    r.miss_rate = (r.late + r.failed + r.dropped) / r.scheduled if r.scheduled else 1.0
    r.achieved_fps = on_time * cameras * fps / r.scheduled if r.scheduled else 0.0  # over the time it ran
    r.latency_ms = {**_pct(lat, (50, 90, 99)), "max": float(lat.max()) if lat.size else 0.0,
                    "mean": float(lat.mean()) if lat.size else 0.0}
    r.lateness_ms = {**_pct(lateness, (50, 90, 99)), "max": float(lateness.max()) if lateness.size else 0.0}
    r.generator_late = r.lateness_ms["p90"] > LATE_FRACTION * deadline_ms or r.lateness_ms["max"] > deadline_ms
    return r


def check_first_frame(url: str, model: str, frame: bytes, timeout_s: float) -> list[str]:
    """Before any load: the server is there, serves `model` (ModelNotFoundError otherwise) and answers a frame.
    Returns the models a request of `model` runs (metrics.composing_models: the per-step breakdown's)."""
    from ..loadtest.metrics import composing_models
    from ..triton import connect

    with connect(url, model, "grpc", timeout_s=timeout_s, retries=0) as client:
        try:
            client.infer_encoded([frame], {})
        except InvalidInputError as err:
            raise UserError(f"the server refuses the first frame: {err}; every frame would be a miss") from None
        return composing_models(model, client.model_config)


def run_level(generator: Generator, cameras: int, fps: float, hold_s: float, *, deadline_ms: float | None = None,
              max_in_flight: int = 2, metrics_url: str = "", steps: Sequence[str] = ()) -> LevelResult:
    """`cameras` open-loop cameras at `fps` for `hold_s` seconds through `generator` (the function a config
    search calls per trial). deadline_ms: default one frame interval. metrics_url (with `steps`, what
    check_first_frame returns): Triton's Prometheus counters scraped around the level give the per-step queue /
    compute times."""
    from ..loadtest import metrics as triton_metrics

    if cameras < 1 or not fps > 0 or not hold_s > 0 or max_in_flight < 1:
        raise UserError(f"need cameras >= 1, fps > 0, hold > 0 s and max_in_flight >= 1; got {cameras}, {fps}, "
                        f"{hold_s}, {max_in_flight}")
    deadline_ms = 1000 / fps if deadline_ms is None else deadline_ms
    before = triton_metrics.scrape(metrics_url) if metrics_url else {}
    rec = generator.run(cameras, fps, max(1, round(hold_s * fps)), max_in_flight)
    level = summarize(rec, cameras, fps, hold_s, deadline_ms)
    if metrics_url and not level.aborted:
        try:
            after = triton_metrics.scrape(metrics_url)
        except ConnectionError as err:
            level.aborted = f"metrics unreadable after the level: {err}"
        else:
            level.triton, back = triton_metrics.breakdown(before, after, list(steps))
            if back:
                print(f"warning: Triton's counters at {metrics_url} went backwards during the level "
                      f"({'; '.join(back[:3])}): no per-step breakdown for it", file=sys.stderr)
    return level
