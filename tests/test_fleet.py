"""client/fleet.py and `--url a,b`: url-list parsing, round-robin, failover only on an unreachable server, and
`tdet infer` / `tdet eval` spread over two real tritonservers serving the same repository (issue 22 item 5)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from matching import assert_same_detections

from tdet.client.errors import InvalidInputError, ServerUnavailableError, UserError
from tdet.client.fleet import AllServersFailed, Fleet, connect_fleet, split_urls

MODEL = "damo_yolo_t"


def test_split_urls_strips_and_keeps_order():
    assert split_urls("127.0.0.1:8001, 127.0.0.1:9001") == ["127.0.0.1:8001", "127.0.0.1:9001"]
    assert split_urls("h:1") == ["h:1"]


@pytest.mark.parametrize("bad,word", [("a:1,,b:2", "empty"), ("a:1,a:1", "twice"), ("grpc://a:1,a:1/", "twice"),
                                      ("localhost:8001,127.0.0.1:8001", "twice"), ("127.0.0.1,a:1", "host:port"),
                                      ("a:abc,b:1", "'abc' is not a number"), ("a:70000", "1 to 65535")])
def test_split_urls_bad_lists_named(bad, word):
    with pytest.raises(UserError, match=word):
        split_urls(bad)


def test_a_url_whose_scheme_disagrees_with_the_protocol_is_refused_not_tried(tmp_path):
    from tdet.client.connection import strip_scheme

    assert strip_scheme("grpc://h:8001/", "grpc") == "h:8001" and strip_scheme("https://h:8000", "http") == "h:8000"
    assert strip_scheme("[::1]:8001") == "[::1]:8001"
    with pytest.raises(UserError, match="is a http URL but the protocol is grpc: pass --protocol http"):
        strip_scheme("http://127.0.0.1:8000", "grpc")
    cv2.imwrite(str(tmp_path / "x.jpg"), np.zeros((32, 32, 3), np.uint8))
    res = _tdet("infer", str(tmp_path / "x.jpg"), "--model", MODEL, "--url", "grpc://127.0.0.1:1", "--protocol", "http")
    assert res.returncode == 2 and "is a grpc URL but the protocol is http" in res.stderr, res.stderr


def test_one_server_commands_refuse_a_list_naming_themselves(tmp_path):
    res = _tdet("capacity", "--model", MODEL, "--source", str(tmp_path), "--url", "127.0.0.1:1,127.0.0.1:2")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "tdet capacity measures one server, but --url '127.0.0.1:1,127.0.0.1:2' lists 2: pass one" in res.stderr


def test_round_robin_reaches_every_server():
    fleet = Fleet(["a", "b"], ["A", "B"])
    got = [fleet.call(lambda c: c) for _ in range(6)]
    assert sorted(set(got)) == ["A", "B"]
    assert fleet.summary() == {"a": {"ok": 3, "failed": 0, "down": None}, "b": {"ok": 3, "failed": 0, "down": None}}


def test_unreachable_server_failed_over_and_marked_down_all_failed_named():
    def fn(c):
        if c == "A":
            raise ServerUnavailableError("connection refused")
        return c
    fleet = Fleet(["a", "b"], ["A", "B"])
    assert [fleet.call(fn) for _ in range(4)] == ["B"] * 4
    s = fleet.summary()
    assert s["b"]["ok"] == 4 and s["a"] == {"ok": 0, "failed": 1, "down": "connection refused"}  # not tried again
    assert "a: 0 answered, DOWN (connection refused), 1 failed over" in fleet.format_summary()
    with pytest.raises(AllServersFailed, match="a: connection refused"):
        Fleet(["a"], ["A"]).call(fn)


def test_bad_request_raised_at_once_not_failed_over():
    calls = []

    def fn(c):
        calls.append(c)
        raise InvalidInputError("not a decodable image", status="StatusCode.INVALID_ARGUMENT")
    fleet = Fleet(["a", "b"], ["A", "B"])
    with pytest.raises(InvalidInputError):
        fleet.call(fn)
    assert calls == ["A"] and not fleet.summary()["a"]["down"] and fleet.summary()["a"]["failed"] == 0


# --- two real servers -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_only(served, tmp_path_factory) -> Path:
    """A repository of MODEL's own models (links into `served`'s): the extra servers start faster without
    rtdetrv2-s and what other tests built into the shared repository."""
    repo = tmp_path_factory.mktemp("fleet") / "model_repository"
    repo.mkdir()
    for d in served.repository.iterdir():
        if d.name == MODEL or d.name in {f"{MODEL}_{s}" for s in ("preprocess", "engine", "postprocess")}:
            (repo / d.name).symlink_to(d, target_is_directory=True)
    return repo


@pytest.fixture(scope="module")
def second(model_only, tmp_path_factory):
    """A second tritonserver on free ports serving MODEL as `served` does."""
    from tdet.ensembles.server import free_port, start, stop_process

    log = tmp_path_factory.mktemp("server2") / "tritonserver.log"
    proc, info = start(model_only, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                       log=log, timeout_s=240, model_control_mode="explicit")
    try:
        yield info
    finally:
        stop_process(proc.pid)
        proc.wait(timeout=30)


def _dead_url() -> str:
    """host:port of a server that is not there (stopped): nothing listens, the connection is refused."""
    from tdet.ensembles.server import free_port

    return f"127.0.0.1:{free_port()}"


def _successes(url: str) -> int:
    """Triton's statistics API on that server: requests the ensemble answered."""
    from tdet.client.triton import connect

    with connect(url, MODEL) as c:
        return int(c.statistics().get("inference_stats", {}).get("success", {}).get("count", 0))  # 0: omitted


def _tdet(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdet.client.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _photos(images, root: Path) -> Path:
    root.mkdir()
    for name, blob in images.items():
        (root / name).write_bytes(blob)
    return root


def _detections(out: Path) -> dict[str, tuple]:
    got = {}
    for row in json.loads((out / "detections.json").read_text()):
        if "error" in row:  # skipped (broken.jpg)
            continue
        dets = json.loads(Path(row["json"]).read_text())["detections"]
        got[Path(row["image"]).name] = ([d["box"] for d in dets], [d["score"] for d in dets],
                                        [d["category_id"] for d in dets])
    return got


def _assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in got:  # JSON rounds boxes to 0.01 px and scores to 1e-5
        assert_same_detections(got[name], want[name], scale=1280, box_tol=0.02 / 1280, score_tol=2e-5, what=name)


@pytest.mark.server
def test_infer_spreads_over_two_servers_same_detections(served, second, images, tmp_path):
    src = _photos(images, tmp_path / "photos")
    (src / "broken.jpg").write_bytes(b"not an image")  # a bad request: skipped, no server marked down
    before = {u: _successes(u) for u in (served.grpc_url, second.grpc_url)}
    res = _tdet("infer", str(src), "--model", MODEL, "--url", f"{served.grpc_url},{second.grpc_url}",
                "--out", str(tmp_path / "two"), "--concurrency", "2")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr  # 1: broken.jpg skipped
    assert "5 images: 4 written" in res.stdout, res.stdout
    after = {u: _successes(u) for u in before}
    assert all(after[u] > before[u] for u in before), (before, after)  # both servers answered
    assert sum(after[u] - before[u] for u in before) == 4  # each good image once, on one server
    for u in before:
        assert f"server {u}: {after[u] - before[u]} answered" in res.stdout, res.stdout
    assert "DOWN" not in res.stdout
    one = _tdet("infer", str(src), "--model", MODEL, "--url", served.grpc_url, "--out", str(tmp_path / "one"))
    assert one.returncode == 1 and "answered" not in one.stdout, one.stdout  # one server: no per-server lines
    _assert_same(_detections(tmp_path / "two"), _detections(tmp_path / "one"))


@pytest.mark.server
def test_infer_completes_on_the_other_server_when_one_is_down(served, images, tmp_path):
    src = _photos(images, tmp_path / "photos")
    dead = _dead_url()
    res = _tdet("infer", str(src), "--model", MODEL, "--url", f"{dead},{served.grpc_url}", "--retries", "0",
                "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert f"{len(images)} images: {len(images)} written" in res.stdout
    assert f"server {dead}: 0 answered, DOWN (cannot reach Triton at {dead}" in res.stdout, res.stdout
    assert f"server {served.grpc_url}: {len(images)} answered" in res.stdout


def test_all_servers_down_is_one_line_error(tmp_path, images):
    src = _photos(images, tmp_path / "photos")
    a, b = _dead_url(), _dead_url()
    res = _tdet("infer", str(src), "--model", MODEL, "--url", f"{a},{b}", "--retries", "0",
                "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert a in res.stderr and b in res.stderr
    bad = _tdet("infer", str(src), "--model", MODEL, "--url", f"{a},,{b}")
    assert bad.returncode == 2 and "empty server" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.server
def test_eval_over_two_servers_matches_one(served, second, tmp_path):
    from tdet.client.evaluation import evaluate
    from tdet.client.synth import synthesize

    ann = synthesize(tmp_path / "synth", num=4, seed=11)
    images = tmp_path / "synth" / "images"
    one = evaluate(MODEL, served.grpc_url, ann, images, out=tmp_path / "one", concurrency=2)
    two = evaluate(MODEL, f"{served.grpc_url},{second.grpc_url}", ann, images, out=tmp_path / "two", concurrency=2)
    assert one.servers == "" and f"server {second.grpc_url}: 2 answered" in two.servers, two.servers
    for m, v in one.metrics.items():
        assert abs(two.metrics[m] - v) <= 1e-6 + 1e-4 * abs(v), m
    with connect_fleet(f"{_dead_url()},{second.grpc_url}", MODEL, retries=0) as fleet:
        assert fleet.first.url == second.grpc_url and len(fleet.down) == 1


@pytest.mark.server
def test_loadtest_spreads_users_over_two_servers(served, second, tmp_path):
    """A bounded real Locust run (127.0.0.1 only) with 2 users over 2 servers: one user each; every request the
    report counts for a server is one that server's metrics counted (plus the first-image check per server)."""
    from tdet.client.loadtest.metrics import scrape
    from tdet.client.synth import synthesize

    synthesize(tmp_path / "lt", num=2, seed=5, size=(320, 240))
    metrics = {served.grpc_url: served.metrics_url, second.grpc_url: second.metrics_url}
    before = {u: scrape(m)[MODEL]["nv_inference_request_success"] for u, m in metrics.items()}
    out = tmp_path / "out"
    res = _tdet("loadtest", "--model", MODEL, "--url", ",".join(metrics), "--users", "2", "--spawn-rate", "2",
                "--duration", "4", "--images", str(tmp_path / "lt" / "images"), "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["servers"]) == set(metrics) and summary["failures"] == 0
    assert sum(s["requests"] for s in summary["servers"].values()) == summary["requests"]
    for u, m in metrics.items():
        n = summary["servers"][u]["requests"]
        assert n > 0 and f"server {u}: {n} requests, 0 failures" in res.stdout, res.stdout
        assert scrape(m)[MODEL]["nv_inference_request_success"] - before[u] == n + 1


# --- one of two real servers stopped mid-run -------------------------------------------------------------

def _stop_when_answered(proc, metrics_url: str, n: int, how: str, stopped: dict) -> None:
    """Stop the server of `proc` as soon as its own metrics count `n` answered requests of MODEL: requests to it
    are then in flight or about to be sent. how: "stop" (SIGTERM to its process group, as `tdet stop` does:
    Triton refuses new requests while it drains) or "kill" (SIGKILL: a crash, connections reset)."""
    import os
    import signal
    import time

    from tdet.client.loadtest.metrics import scrape
    from tdet.ensembles.server import stop_process

    while proc.poll() is None:
        answered = scrape(metrics_url).get(MODEL, {}).get("nv_inference_request_success", 0)
        if answered >= n:
            stopped["answered"] = answered
            if how == "kill":
                stopped["shm"] = _shm_regions(proc.pid)  # a killed server cannot unlink its own
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                stop_process(proc.pid)
            proc.wait(timeout=60)
            stopped["done"] = True
            return
        time.sleep(0.02)  # polling the counter, not waiting for an event


def _shm_regions(pgid: int) -> set[Path]:
    """The /dev/shm files the processes of a server's process group (server and python stubs) have mapped."""
    found = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            if int(maps.with_name("stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            found |= {Path(line.split(None, 5)[5].strip()) for line in maps.read_text().splitlines()
                      if "/dev/shm/" in line}
        except (OSError, IndexError):  # gone meanwhile
            continue
    return found


def _coco_detections(out: Path) -> dict[int, tuple]:
    """results.json of `tdet eval` -> {image_id: (xyxy boxes, scores, category ids)}."""
    got: dict[int, tuple] = {}
    for r in json.loads((out / "results.json").read_text()):
        x, y, w, h = r["bbox"]
        boxes, scores, cats = got.setdefault(r["image_id"], ([], [], []))
        boxes.append([x, y, x + w, y + h])
        scores.append(r["score"])
        cats.append(r["category_id"])
    return got


@pytest.mark.server
@pytest.mark.parametrize("how", ["stop", "kill"])
def test_eval_survives_one_of_two_servers_stopped_mid_run(served, model_only, tmp_path, how):
    """Two real servers, one stopped (or killed) after it answered 3 requests while 4 are in flight: every image
    still gets its detections (the same as a one-server run), the stopped server is reported DOWN, and the
    survivor's own metrics count exactly the requests the stopped one did not answer (its share after the stop
    plus the requests that failed over)."""
    import re
    import threading

    from tdet.client.evaluation import evaluate
    from tdet.client.loadtest.metrics import scrape
    from tdet.client.synth import synthesize
    from tdet.ensembles.server import free_port, start, stop_process

    n = 24
    ann = synthesize(tmp_path / "synth", num=n, seed=23, size=(320, 240))
    images = tmp_path / "synth" / "images"
    one = evaluate(MODEL, served.grpc_url, ann, images, out=tmp_path / "one", concurrency=4)
    proc, victim = start(model_only, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                         log=tmp_path / "victim.log", timeout_s=240, model_control_mode="explicit")
    stopped: dict = {}
    try:
        stopper = threading.Thread(target=_stop_when_answered, args=(proc, victim.metrics_url, 3, how, stopped))
        before = scrape(served.metrics_url)[MODEL]["nv_inference_request_success"]
        stopper.start()
        two = evaluate(MODEL, f"{victim.grpc_url},{served.grpc_url}", ann, images, out=tmp_path / "two",
                       concurrency=4, retries=0)
        stopper.join(timeout=120)
    finally:
        stop_process(proc.pid)  # returns at once when it is gone
        proc.wait(timeout=60)
        for region in stopped.get("shm", ()):
            region.unlink(missing_ok=True)
    assert stopped.get("done"), f"the run ended before the server was stopped: {two.servers}"
    lines = dict(re.findall(r"server (\S+): (.*)", two.servers))
    assert lines.keys() == {victim.grpc_url, served.grpc_url}, two.servers
    assert "DOWN (" in lines[victim.grpc_url] and "DOWN" not in lines[served.grpc_url], two.servers
    ok = {u: int(re.match(r"(\d+) answered", s).group(1)) for u, s in lines.items()}
    failed = re.search(r"(\d+) failed over", lines[victim.grpc_url])
    assert failed and int(failed.group(1)) >= 1, two.servers  # the first request the stop broke went elsewhere
    # a kill may lose the answer to a request the server counted; a drain sends every answer it counted
    assert ok[victim.grpc_url] >= (1 if how == "kill" else 3), two.servers
    assert ok[victim.grpc_url] + ok[served.grpc_url] == n, two.servers  # every image answered once
    survivor = scrape(served.metrics_url)[MODEL]["nv_inference_request_success"] - before
    assert survivor == ok[served.grpc_url] == n - ok[victim.grpc_url], (survivor, two.servers)
    got, want = _coco_detections(tmp_path / "two"), _coco_detections(tmp_path / "one")
    assert got.keys() == want.keys() and len(want) > n // 2, (len(got), len(want))  # random-init: most have boxes
    for image_id in want:  # results.json rounds nothing; the two servers may batch differently: last bits
        assert_same_detections(got[image_id], want[image_id], scale=320, box_tol=1e-4, score_tol=1e-4,
                               what=f"image {image_id}")
    for m, v in one.metrics.items():
        assert abs(two.metrics[m] - v) <= 1e-6 + 1e-4 * abs(v), m
