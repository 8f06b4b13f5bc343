"""Faults: the server killed in the middle of `tdet eval` and of `tdet loadtest` (both stop with a clear
message and a non-zero exit, keep what they measured, eval resumes), a hung server (the request timeout),
retries only when the server is unavailable, and `tdet serve` naming a model that fails to load with the
model's own error. Every wait has a generous hang guard; nothing asserts on wall-clock speed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tdet.client.errors import InvalidInputError, RequestTimeoutError, ServerUnavailableError
from tdet.client.synth import synthesize
from tdet.client.triton import connect
from tdet.ensembles.server import stop_process

pytestmark = pytest.mark.server

MODEL = "damo_yolo_t"


@pytest.fixture
def doomed(small_repository, start_server, tmp_path):
    """A server this test may kill (stopped at the end if it is still there)."""
    proc, info = start_server(small_repository, tmp_path / "server.log")
    try:
        yield proc, info
    finally:
        stop_process(proc.pid)
        proc.wait(timeout=30)


def _kill(proc) -> None:
    """SIGKILL the server and its stubs, as a crash or an OOM kill would."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _tdet(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tdet.client.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(condition, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"hang guard: {what} did not happen within {timeout_s:.0f}s"
        time.sleep(0.2)


def test_server_killed_during_eval_stops_keeps_results_and_resumes(doomed, small_repository, start_server, tmp_path):
    proc, info = doomed
    ann = synthesize(tmp_path / "data", num=30, seed=3, size=(320, 240))
    out = tmp_path / "eval"
    partial = out / "results.partial.jsonl"
    args = ["eval", "--model", MODEL, "--coco", str(ann), "--images", str(tmp_path / "data/images"), "--out",
            str(out), "--concurrency", "1", "--retries", "2"]
    run = _tdet(*args, "--url", info.grpc_url)
    _wait_for(lambda: partial.is_file() and len(partial.read_text().splitlines()) >= 4, "3 finished images")
    _kill(proc)
    t0 = time.monotonic()
    _, err = run.communicate(timeout=120)  # hang guard
    print(f"eval stopped {time.monotonic() - t0:.1f}s after the server was killed")
    assert run.returncode == 2, err
    assert "Traceback" not in err and "run the same command again to resume" in err, err
    assert "unavailable" in err.lower() or "connect" in err.lower(), err
    done = len(partial.read_text().splitlines()) - 1
    assert 3 <= done < 30 and not (out / "results.json").exists()

    proc2, info2 = start_server(small_repository, tmp_path / "server2.log")  # the server is back (new ports)
    try:
        resumed = _tdet(*args, "--url", info2.grpc_url)
        stdout, err = resumed.communicate(timeout=600)
        assert resumed.returncode == 0, err
        with connect(info2.grpc_url, MODEL) as client:
            sent = int(client.statistics()["inference_count"])
    finally:
        stop_process(proc2.pid)
        proc2.wait(timeout=30)
    assert sent == 30 - done + 1  # the images the first run had not finished, and one it had (the model check)
    rows = json.loads((out / "results.json").read_text())
    assert {r["image_id"] for r in rows} <= set(range(1, 31)) and not partial.exists()
    assert "AP" in stdout


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_server_killed_during_loadtest_stops_with_what_it_measured(doomed, tmp_path, protocol):
    proc, info = doomed
    synthesize(tmp_path / "data", num=4, seed=5, size=(320, 240))
    out = tmp_path / "lt"
    url = info.grpc_url if protocol == "grpc" else info.http_url
    run = _tdet("loadtest", "--model", MODEL, "--url", url, "--protocol", protocol, "--users", "2",
                "--duration", "300", "--images", str(tmp_path / "data/images"), "--out", str(out),
                "--metrics-url", info.metrics_url)
    with connect(info.grpc_url, MODEL) as client:  # the run is under way: the server has answered some
        # 1 probe request before the load (the first image must be accepted), then 5 of the load
        _wait_for(lambda: int(client.statistics().get("inference_count", 0)) >= 6, "5 load-test requests")
    _kill(proc)
    t0 = time.monotonic()
    stdout, err = run.communicate(timeout=120)  # hang guard (the run was asked for 300 s)
    print(f"loadtest stopped {time.monotonic() - t0:.1f}s after the server was killed")
    assert run.returncode == 2, stdout + err
    assert "stopped early" in err and "unavailable" in err and "Traceback" not in err, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["aborted"] and summary["requests"] - summary["failures"] >= 5 and summary["failures"] >= 1
    assert (out / "latencies.csv").is_file() and (out / "report.png").is_file()
    assert "STOPPED EARLY" in stdout


def test_hung_server_hits_the_request_timeout(served, images):
    """A server that stops answering (SIGSTOP) fails each request after the client's timeout, and serves
    again once it resumes."""
    with connect(served.grpc_url, MODEL, timeout_s=2, retries=0) as client:
        os.kill(served.pid, signal.SIGSTOP)
        try:
            with pytest.raises(RequestTimeoutError, match="Deadline Exceeded"):
                client.infer(images["small.bmp"])
        finally:
            os.kill(served.pid, signal.SIGCONT)
        assert len(client.infer(images["small.bmp"])) > 0
    with connect(served.http_url, MODEL, "http", timeout_s=2, retries=0) as client:
        os.kill(served.pid, signal.SIGSTOP)
        try:
            with pytest.raises(RequestTimeoutError):
                client.infer(images["small.bmp"])
        finally:
            os.kill(served.pid, signal.SIGCONT)
        assert len(client.infer(images["small.bmp"])) > 0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_requests_are_never_retried(served, protocol):
    """retries=3, a bad image: the preprocess step sees it exactly once (the server's own statistics)."""
    url = served.grpc_url if protocol == "grpc" else served.http_url
    step = f"{MODEL}_preprocess"
    with connect(url, MODEL, protocol, retries=3) as client:
        before = int(client.statistics(step).get("inference_count", 0))
        with pytest.raises(InvalidInputError, match="empty image"):
            client.infer(b"")
        # Triton records a step's statistics after the error has gone back to the client: wait for the count
        # to move, then read it again once it has settled (a retried request would show up by then)
        deadline = time.monotonic() + 10
        while (after := int(client.statistics(step).get("inference_count", 0))) == before \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        after = int(client.statistics(step).get("inference_count", 0))
    assert after - before == 1


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unavailable_server_is_retried_a_bounded_number_of_times(protocol, small_repository, start_server, tmp_path,
                                                                  images):
    proc, info = start_server(small_repository, tmp_path / "server.log")
    url = info.grpc_url if protocol == "grpc" else info.http_url
    try:
        client = connect(url, MODEL, protocol, retries=2, backoff_s=0.1)
        assert len(client.infer(images["small.bmp"])) > 0
    finally:
        _kill(proc)
    with pytest.raises(ServerUnavailableError, match=r"after 2 retries"):
        client.infer(images["small.bmp"])
    client.close()
    with pytest.raises(ServerUnavailableError, match="cannot reach Triton"):
        connect(url, MODEL, protocol, retries=1, backoff_s=0.1)


def test_serve_names_the_model_that_failed_to_load_with_its_own_error(small_repository, tmp_path):
    import shutil

    repo = tmp_path / "broken"
    shutil.copytree(small_repository, repo)
    post = repo / f"{MODEL}_postprocess" / "1" / "model.py"
    post.write_text(post.read_text().replace(
        "    def initialize(self, args):\n",
        "    def initialize(self, args):\n        raise RuntimeError('category table is missing (test)')\n"))
    (repo / f"{MODEL}_engine" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    res = subprocess.run([sys.executable, "-m", "tdet.client.cli", "serve", "--repository", str(repo), "--http-port",
                          "0", "--grpc-port", "0", "--metrics-port", "0"], capture_output=True, text=True, timeout=240)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"model '{MODEL}_postprocess' failed to load: RuntimeError: category table is missing (test)" in res.stderr
    assert f"model '{MODEL}_engine' failed to load:" in res.stderr and "INVALID_PROTOBUF" in res.stderr


def test_a_server_side_fault_stays_internal(small_repository, start_server, tmp_path, images):
    """A fault in a step (here: a postprocess with an empty category table, so mapping a detection's
    label fails) is INTERNAL / HTTP 500 and ServerError in the client, never INVALID_ARGUMENT: the
    request was fine."""
    import shutil

    from tdet.client.errors import ServerError
    from tdet.ensembles.configs import read_config, write_config

    repo = tmp_path / "faulty"
    shutil.copytree(small_repository, repo)
    path = repo / f"{MODEL}_postprocess" / "config.pbtxt"
    cfg = read_config(path)
    cfg.parameters["category_ids"].string_value = "[]"  # no id for any of the 80 labels
    write_config(path, cfg)
    proc, info = start_server(repo, tmp_path / "server.log")
    try:
        for protocol, url, status in (("grpc", info.grpc_url, "StatusCode.INTERNAL"), ("http", info.http_url, "500")):
            with connect(url, MODEL, protocol, retries=2) as client:
                with pytest.raises(ServerError, match="postprocess: IndexError") as err:
                    client.infer(images["small.bmp"])
                assert err.value.status == status and not isinstance(err.value, InvalidInputError)
    finally:
        stop_process(proc.pid)
        proc.wait(timeout=30)
