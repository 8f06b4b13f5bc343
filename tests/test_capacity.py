"""`tdet capacity` against a real tritonserver serving a python model whose capacity is known by construction:
one instance that sleeps SERVICE_S per frame holds floor(1 / (SERVICE_S x FPS)) cameras at FPS. The search
must find that within one; above it the open-loop schedule keeps sending (misses, drops and latency rise while
the generator stays on time); bad input is one line and exit 2; a server that goes away mid-run leaves a report
marked incomplete. No wall-clock asserts beyond the tool's own generator-lateness verdict."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tdet.client.cli import main
from tdet.ensembles.server import free_port, start, stop_process

SERVICE_S = 0.05
FPS = 4.0
CAPACITY = math.floor(1 / (SERVICE_S * FPS))  # 5 cameras

CONFIG = """name: "sleeper"
backend: "python"
max_batch_size: 1
input [ { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] } ]
output [
  { name: "NUM_DETECTIONS" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "BOXES" data_type: TYPE_FP32 dims: [ 1, 4 ] },
  { name: "SCORES" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "CLASSES" data_type: TYPE_INT32 dims: [ 1 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

# One request at a time (one instance, no batching), each taking SERVICE_S: a fixed service time.
MODEL = '''
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            time.sleep(SERVICE_S)
            t = {"NUM_DETECTIONS": np.array([[1]], np.int32), "BOXES": np.array([[[1, 1, 9, 9]]], np.float32),
                 "SCORES": np.array([[0.9]], np.float32), "CLASSES": np.array([[0]], np.int32)}
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in t.items()]))
        return out
'''.replace("SERVICE_S", repr(SERVICE_S))

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def sleeper_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("capacity") / "repo"
    (repo / "sleeper" / "1").mkdir(parents=True)
    (repo / "sleeper" / "config.pbtxt").write_text(CONFIG)
    (repo / "sleeper" / "1" / "model.py").write_text(MODEL)
    return repo


def _start(repo: Path, log: Path):
    return start(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), log=log,
                 timeout_s=240)


@pytest.fixture(scope="module")
def sleeper(sleeper_repo, tmp_path_factory):
    proc, info = _start(sleeper_repo, tmp_path_factory.mktemp("capacity-log") / "server.log")
    try:
        yield info
    finally:
        stop_process(proc.pid)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    """A 6-frame 64x48 mp4 (the video path: decoded and JPEG-encoded once up front)."""
    path = tmp_path_factory.mktemp("capacity-src") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (64, 48))
    for i in range(6):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    return path


def test_search_finds_the_known_capacity_and_overload_stays_open_loop(sleeper, frames, tmp_path, capsys):
    out = tmp_path / "cap"
    rc = main(["capacity", "--model", "sleeper", "--url", sleeper.grpc_url, "--source", str(frames), "--fps",
               str(FPS), "--hold", "2", "--max-cameras", "8", "--metrics-url", sleeper.metrics_url, "--out", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    result = json.loads((out / "capacity.json").read_text())
    assert result["complete"] and abs(result["capacity"] - CAPACITY) <= 1, stdout
    levels = {lv["cameras"]: lv for lv in result["levels"]}
    assert {1, 2, 4, 8} <= set(levels)  # doubling, then bisection between the last pass and the first fail
    over = levels[8]  # 160% of what the server can do
    assert not over["passed"] and over["miss_rate"] > 0.2 and over["dropped"] > 0
    # open loop: every scheduled frame of every camera was sent or dropped, on time, however slow the answers
    assert over["scheduled"] == 8 * round(2 * FPS) == over["sent"] + over["dropped"]
    assert not over["generator_late"] and over["lateness_ms"]["p90"] <= 0.1 * over["deadline_ms"]
    assert over["latency_ms"]["p99"] > levels[1]["latency_ms"]["p99"]
    assert levels[1]["passed"] and levels[1]["miss_rate"] == 0
    assert levels[1]["latency_ms"]["p50"] >= SERVICE_S * 1000  # the server's own service time is in it
    # Triton's view of each level and the autoscaling figures at the capacity
    # Triton counts a request after its answer is sent, so the warm-up request just before the level's first
    # scrape (or the level's last one before its closing scrape) can land on either side on a loaded machine
    assert abs(levels[1]["triton"]["sleeper"]["requests"] - levels[1]["sent"]) <= 1
    assert list(levels[1]["triton"]) == ["sleeper"]  # the models a request runs, not every "sleeper_*" one
    hpa = result["hpa"]
    assert hpa["cameras_per_replica"] == result["capacity"] and hpa["metric_model"] == "sleeper"
    assert hpa["queue_ms_per_request"] >= 0 and "nv_inference_queue_duration_us" in hpa["promql"]
    assert "autoscaling (per replica)" in stdout and f"capacity: {result['capacity']} cameras" in stdout
    with open(out / "levels.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["cameras"]) for r in rows) == sorted(levels)
    assert int(next(r for r in rows if r["cameras"] == "8")["dropped"]) == over["dropped"]
    assert (out / "capacity.png").stat().st_size > 0
    page = (out / "report.html").read_text()
    assert "Autoscaling, per replica" in page and "Triton, per step" in page and "data:image/png" in page


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("flags, word", [(["--fps", "0"], "--fps"), (["--fps", "-2"], "--fps"),
                                         (["--slo-ms", "0"], "--slo-ms"), (["--slo-ms", "-5"], "--slo-ms"),
                                         (["--hold", "0"], "--hold"), (["--max-miss", "1.5"], "--max-miss"),
                                         (["--start", "5", "--max-cameras", "2"], "--start 5 is above"),
                                         (["--instances", "1,2"], "--instances goes with --search"),
                                         (["--batch-sizes", ""], "--batch-sizes goes with --search"),
                                         (["--queue-delays", "0"], "--queue-delays goes with --search")])
def test_bad_settings_are_one_line_exit_2(flags, word, frames, tmp_path, capsys):
    rc = main(["capacity", "--model", "m", "--url", "127.0.0.1:1", "--source", str(frames), "--out", str(tmp_path),
               *flags])
    assert rc == 2 and word in _error_line(capsys)


def test_source_without_frames_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.mp4").write_bytes(b"")
    for source, word in ((tmp_path / "empty", "no images"), (tmp_path / "empty.mp4", "cannot open")):
        rc = main(["capacity", "--model", "m", "--url", "127.0.0.1:1", "--source", str(source)])
        assert rc == 2 and word in _error_line(capsys)


def test_model_not_loaded_is_one_line_exit_2(sleeper, frames, tmp_path, capsys):
    rc = main(["capacity", "--model", "nope", "--url", sleeper.grpc_url, "--source", str(frames), "--out",
               str(tmp_path)])
    err = _error_line(capsys)
    assert rc == 2 and "'nope' is not ready" in err and "sleeper" in err


def _answered(metrics_url: str) -> float:
    from tdet.client.loadtest.metrics import scrape

    try:
        return scrape(metrics_url).get("sleeper", {}).get("nv_inference_request_success", 0)
    except ConnectionError:  # a busy machine: asked again until the hang guard
        return 0


def test_server_gone_mid_run_stops_and_writes_an_incomplete_report(sleeper_repo, frames, tmp_path):
    proc, info = _start(sleeper_repo, tmp_path / "server.log")
    out = tmp_path / "cap"
    try:
        run = subprocess.Popen([sys.executable, "-m", "tdet.client.cli", "capacity", "--model", "sleeper", "--url",
                                info.grpc_url, "--source", str(frames), "--fps", str(FPS), "--cameras", "2",
                                "--hold", "300", "--workers", "2", "--metrics-url", info.metrics_url,
                                "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while _answered(info.metrics_url) < 8:
            assert time.monotonic() < deadline and run.poll() is None, "hang guard: no load within 120 s"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # as a crash or an OOM kill would
        proc.wait(timeout=30)
        stdout, err = run.communicate(timeout=120)  # hang guard (the level was asked for 300 s)
    finally:
        stop_process(proc.pid)
    assert run.returncode == 2, stdout + err
    assert "Traceback" not in err, err
    assert "incomplete" in err and "went away" in err, err
    result = json.loads((out / "capacity.json").read_text())
    level = result["levels"][0]
    assert not result["complete"] and result["capacity"] is None and "went away" in level["aborted"]
    # 8 answered before the kill: the first-frame probe, one warm-up per worker, then 5 of the load
    assert level["on_time"] >= 5 and level["failed"] >= 1
    assert (out / "report.html").is_file() and "Incomplete run" in (out / "report.html").read_text()


def _records(cameras: int, fps: float, frames: int, latency_s: float, lateness_s: float = 0.0) -> dict:
    """Per-frame records as a sender writes them: every frame sent `lateness_s` behind its schedule and answered
    `latency_s` later (the search's and the verdict's logic, without a server)."""
    sched = np.array([(k + c / cameras) / fps for k in range(frames) for c in range(cameras)])
    sent = sched + lateness_s
    return {"sched": sched, "sent": sent, "done": sent + latency_s, "status": np.ones(sched.size, np.int8),
            "errors": {}, "aborted": ""}


def test_search_doubles_then_bisects_to_the_largest_level_that_holds():
    from tdet.client.capacity.schedule import summarize
    from tdet.client.capacity.search import find_capacity

    def measure(n: int):  # on time up to 37 cameras, every frame late above
        return summarize(_records(n, 10, 5, 0.05 if n <= 37 else 0.2), n, 10, 0.5, 100)

    levels = []
    capacity, at_least, why = find_capacity(measure, max_miss=0.01, max_cameras=256, levels=levels)
    assert (capacity, at_least, why) == (37, False, "")
    assert [r.cameras for r in levels] == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]
    assert find_capacity(measure, max_miss=0.01, max_cameras=20)[:2] == (20, True)  # never failed: at least


def test_a_late_generator_voids_the_level_and_no_capacity_is_reported():
    from tdet.client.capacity.run import _verdict
    from tdet.client.capacity.schedule import summarize
    from tdet.client.capacity.search import CapacityResult, find_capacity

    result = CapacityResult("m", "u", 10, 100, 0.01, 0.5, 2, 1, 5)
    late = lambda n: summarize(_records(n, 10, 5, 0.01, lateness_s=0.03 * (n >= 4)), n, 10, 0.5, 100)  # noqa: E731
    result.capacity, result.at_least, why = find_capacity(late, max_miss=0.01, levels=result.levels)
    result.complete = True
    level = result.levels[-1]
    assert level.cameras == 4 and level.generator_late and not level.passed and level.miss_rate == 0
    assert "generator was late at 4 cameras" in why
    verdict = _verdict(result, why)
    assert result.capacity is None and "no capacity reported" in verdict and "--workers" in verdict
