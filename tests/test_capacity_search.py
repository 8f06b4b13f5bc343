"""`tdet capacity --search` against a real tritonserver in explicit model-control mode on a tmp repository: an
ensemble `cam` of a python preprocess (fast; it refuses a second instance, as a step short of memory would)
and the sleeper of test_capacity as its engine (one request at a time, SERVICE_S each: one instance holds
CAPACITY cameras, two hold twice that). The search must find that, reload between trials, and leave the
repository byte-identical (or, with --apply, the best config loaded); an interrupted search restores too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from tdet.client.cli import main
from tdet.ensembles.server import free_port, start, stop_process
from tests import test_capacity
from tests.test_capacity import CAPACITY, CONFIG, FPS, MODEL

frames = test_capacity.frames  # the fixture: a 6-frame mp4

pytestmark = pytest.mark.server

ENGINE = CONFIG.replace('name: "sleeper"', 'name: "cam_engine"').replace('name: "IMAGE"', 'name: "x"').replace(
    "TYPE_STRING", "TYPE_INT32")
PRE_CONFIG = """name: "cam_preprocess"
backend: "python"
max_batch_size: 1
input [ { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "x" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
PRE = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        if not args["model_instance_name"].endswith("_0"):  # cam_preprocess_0_0: the first of group 0
            raise pb_utils.TritonModelException("cam_preprocess holds one instance only")

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("x", np.zeros((1, 1), np.int32))]) for _ in requests]
'''
ENSEMBLE = """name: "cam"
platform: "ensemble"
max_batch_size: 1
input [ { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] } ]
output [
  { name: "NUM_DETECTIONS" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "BOXES" data_type: TYPE_FP32 dims: [ 1, 4 ] },
  { name: "SCORES" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "CLASSES" data_type: TYPE_INT32 dims: [ 1 ] }
]
ensemble_scheduling { step [
  { model_name: "cam_preprocess" model_version: -1 input_map { key: "IMAGE" value: "IMAGE" }
    output_map { key: "x" value: "x" } },
  { model_name: "cam_engine" model_version: -1 input_map { key: "x" value: "x" }
    output_map [ { key: "NUM_DETECTIONS" value: "NUM_DETECTIONS" }, { key: "BOXES" value: "BOXES" },
                 { key: "SCORES" value: "SCORES" }, { key: "CLASSES" value: "CLASSES" } ] }
] }
"""
MODELS = ("cam_preprocess", "cam_engine", "cam")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("search") / "repo"
    for name, config, code in (("cam_preprocess", PRE_CONFIG, PRE), ("cam_engine", ENGINE, MODEL),
                               ("cam", ENSEMBLE, None)):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(config)
        if code:
            (repo / name / "1" / "model.py").write_text(code)
    return repo


def _serve(repo: Path, log: Path, mode: str):
    return start(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), log=log,
                 timeout_s=240, model_control_mode=mode)


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    proc, info = _serve(repo, tmp_path_factory.mktemp("search-log") / "server.log", "explicit")
    try:
        yield info
    finally:
        stop_process(proc.pid)
        proc.wait(timeout=30)


def _files(repo: Path) -> dict[str, bytes]:
    return {m: (repo / m / "config.pbtxt").read_bytes() for m in MODELS}


def _counts(url: str) -> dict[str, int]:
    """The instance counts the server has loaded (all ready)."""
    client = grpcclient.InferenceServerClient(url)
    assert all(client.is_model_ready(m) for m in MODELS)
    return {m: client.get_model_config(m).config.instance_group[0].count for m in MODELS[:2]}


def _search(server, repo, frames, out, *extra) -> list[str]:
    return ["capacity", "--search", "--model", "cam", "--url", server.grpc_url, "--repository", str(repo),
            "--source", str(frames), "--fps", str(FPS), "--hold", "1.5", "--max-cameras", "12",
            "--instances", "1,2", "--batch-sizes", "", "--queue-delays", "", "--metrics-url", "",
            "--out", str(out), *extra]


def _measured_search(args: list[str], capsys, tries: int = 3) -> tuple[int, str]:
    """`tdet capacity --search`, again when the tool voided a trial because its own load generator fell behind
    schedule (a stalled 2-core VM: "the numbers describe the generator, not the server"), at most `tries` times."""
    for _ in range(tries):
        rc = main(args)
        stdout = capsys.readouterr().out
        if "the load generator was late" not in stdout:
            break
    return rc, stdout


def test_search_doubles_the_capacity_with_two_engine_instances_and_restores(server, repo, frames, tmp_path,
                                                                            capsys):
    before = _files(repo)
    out = tmp_path / "search"
    rc, stdout = _measured_search(_search(server, repo, frames, out), capsys)
    assert rc == 0, stdout
    result = json.loads((out / "search.json").read_text())
    base, engine2, pre2 = result["trials"]
    assert base["label"] == "as in the repository" and abs(base["capacity"] - CAPACITY) <= 1, stdout
    assert engine2["label"] == "engine instances 2" and engine2["config"]["cam_engine"]["instances"] == 2
    assert abs(engine2["capacity"] - 2 * CAPACITY) <= 1, stdout
    assert pre2["label"] == "preprocess instances 2, engine instances 2" and "refused" in pre2["error"]
    assert "one instance only" in pre2["error"] and pre2["capacity"] is None
    assert result["best"] == 1 and not result["applied"] and result["restored"] == ""
    assert engine2["p99_ms"] <= 1000 / FPS and (Path(engine2["report"]) / "capacity.json").is_file()
    # the repository as it began, the originals loaded; the best as a patch
    assert _files(repo) == before and _counts(server.grpc_url) == {"cam_preprocess": 1, "cam_engine": 1}
    patched = (out / "best_config" / "cam_engine" / "config.pbtxt").read_text()
    assert "count: 2" in patched and not (out / "best_config" / "cam_preprocess").exists()
    assert "+  count: 2" in (out / "best_config.diff").read_text()
    assert "engine instances 2" in stdout and "the repository is as it was" in stdout
    assert "engine instances 2" in (out / "search.html").read_text()


def test_sigint_mid_search_restores_the_files_and_the_loaded_models(server, repo, frames, tmp_path):
    before = _files(repo)
    out = tmp_path / "search"
    # --hold 4: trial 1's levels take ~4 s each, so the interrupt lands inside it on a loaded machine too
    args = _search(server, repo, frames, out, "--hold", "4")
    run = subprocess.Popen([sys.executable, "-m", "tdet.client.cli", *args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while b"count: 2" not in (repo / "cam_engine" / "config.pbtxt").read_bytes():  # trial 1 written
            assert time.monotonic() < deadline and run.poll() is None, "hang guard: trial 1 never started"
            time.sleep(0.05)
        while _counts(server.grpc_url)["cam_engine"] != 2:  # and loaded
            assert time.monotonic() < deadline and run.poll() is None, "hang guard: trial 1 never loaded"
            time.sleep(0.05)
        while not (out / "trials" / "01" / "capacity.json").is_file():  # and its first level measured
            assert time.monotonic() < deadline and run.poll() is None, "hang guard: trial 1 never measured"
            time.sleep(0.05)
        os.kill(run.pid, signal.SIGINT)  # while trial 1 measures its next level
        stdout, err = run.communicate(timeout=120)  # hang guard
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, stdout + err
    assert "Traceback" not in err, err
    assert _files(repo) == before and _counts(server.grpc_url) == {"cam_preprocess": 1, "cam_engine": 1}
    result = json.loads((out / "search.json").read_text())
    assert result["stopped"].startswith("interrupted") and not result["applied"] and result["restored"] == ""


def test_apply_leaves_the_best_config_in_the_repository_and_loaded(server, repo, frames, tmp_path, capsys):
    before = _files(repo)
    out = tmp_path / "search"
    try:
        # one trial, then two: no more
        rc, stdout = _measured_search(_search(server, repo, frames, out, "--apply", "--budget", "1"), capsys)
        result = json.loads((out / "search.json").read_text())
        assert rc == 0 and result["applied"], stdout
        assert [t["label"] for t in result["trials"]] == ["as in the repository"]
        assert "budget" in result["stopped"] and result["best"] == 0
        assert _files(repo) == before  # the best is the config as it was: nothing to write

        rc, stdout = _measured_search(_search(server, repo, frames, out, "--apply", "--budget", "600"), capsys)
        assert rc == 0, stdout
        assert _counts(server.grpc_url) == {"cam_preprocess": 1, "cam_engine": 2}
        assert b"count: 2" in (repo / "cam_engine" / "config.pbtxt").read_bytes()
        assert _files(repo)["cam_preprocess"] == before["cam_preprocess"]  # the refused trial was put back
        assert "applied to" in stdout
    finally:  # the next test's repository as it began
        for m, data in before.items():
            (repo / m / "config.pbtxt").write_bytes(data)
        grpcclient.InferenceServerClient(server.grpc_url).load_model("cam_engine")


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_search_without_repository_or_explicit_mode_is_one_line_exit_2(server, repo, frames, tmp_path, capsys):
    args = _search(server, repo, frames, tmp_path)
    no_repo = args[:args.index("--repository")] + args[args.index("--repository") + 2:]
    assert main(no_repo) == 2 and "--search needs --repository" in _error_line(capsys)
    other = tmp_path / "other"
    other.mkdir()
    args[args.index("--repository") + 1] = str(other)
    assert main(args) == 2 and "is not the repository the server" in _error_line(capsys)
    proc, info = _serve(repo, tmp_path / "none.log", "none")
    try:
        assert main(_search(info, repo, frames, tmp_path)) == 2
        assert "not in explicit model-control mode" in _error_line(capsys)
    finally:
        stop_process(proc.pid)
