"""`tdet loadtest` in Locust's distributed mode against real local tritonservers (127.0.0.1 only, real Locust,
runs of a few seconds): users spread over `--url a,b` across workers, a master whose workers join from
"other machines" (`--remote-workers` / `--master-host`, here other processes), a metrics URL balanced over two
servers, a server killed under `--workers 2`, and the chart's Locust running once. Nothing asserts on speed."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tdet.client.loadtest.metrics import scrape
from tdet.client.synth import synthesize
from tdet.client.triton import connect
from tdet.ensembles.server import free_port, stop_process

pytestmark = pytest.mark.server

MODEL = "damo_yolo_t"
ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "ensembles" / "deploy" / "helm" / "tdet"


def _stop(proc) -> None:
    stop_process(proc.pid)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def two_servers(small_repository, start_server, tmp_path_factory):
    """Two real tritonservers serving the same repository (the `--url a,b` of a fleet)."""
    started = []
    try:
        for i in range(2):
            started.append(start_server(small_repository, tmp_path_factory.mktemp("srv") / f"server{i}.log"))
        yield [info for _, info in started]
    finally:
        for proc, _ in started:
            _stop(proc)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ltd_images")
    synthesize(root, num=4, seed=5, size=(320, 240))
    return root / "images"


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tdet.client.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_workers_spread_the_users_over_every_server(two_servers, images, tmp_path):
    # users used to be numbered per worker: each worker's first user took server a (2 users on 2 workers: b got
    # nothing); now they are numbered over all workers
    a, b = two_servers
    out = tmp_path / "o"
    run = _cli("loadtest", "--model", MODEL, "--url", f"{a.grpc_url},{b.grpc_url}", "--users", "4", "--spawn-rate",
               "4", "--workers", "2", "--duration", "4", "--images", str(images), "--out", str(out),
               "--metrics-url", "")
    stdout, err = run.communicate(timeout=180)
    assert run.returncode == 0, stdout + err
    servers = json.loads((out / "summary.json").read_text())["servers"]
    assert set(servers) == {a.grpc_url, b.grpc_url}, servers
    assert all(s["requests"] > 0 and s["failures"] == 0 for s in servers.values()), servers
    rows = _rows(out / "latencies.csv")
    assert {r["server"] for r in rows} == {a.grpc_url, b.grpc_url}
    # every user once over both workers (0..3), user i on server i mod 2
    assert {int(r["user"]) for r in rows} == {0, 1, 2, 3}
    assert all(r["server"] == [a.grpc_url, b.grpc_url][int(r["user"]) % 2] for r in rows)


def test_remote_workers_give_the_master_every_request(two_servers, images, tmp_path):
    # the cross-machine mode, with the "machines" as processes: the master waits on its port, workers join it
    a = two_servers[0]
    env = dict(os.environ, TDET_LOCUST_MASTER_PORT=str(free_port()), TDET_LOCUST_MASTER_BIND="127.0.0.1")
    master_out, worker_outs = tmp_path / "master", [tmp_path / "w0", tmp_path / "w1"]
    master = _cli("loadtest", "--model", MODEL, "--url", a.grpc_url, "--users", "2", "--spawn-rate", "2",
                  "--duration", "4", "--workers", "2", "--remote-workers", "--images", str(images),
                  "--out", str(master_out), "--metrics-url", a.metrics_url, env=env)
    workers = [_cli("loadtest", "--model", MODEL, "--url", a.grpc_url, "--images", str(images), "--out", str(w),
                    "--master-host", "127.0.0.1", env=env) for w in worker_outs]
    try:
        stdout, err = master.communicate(timeout=180)
        worker_logs = [w.communicate(timeout=90) for w in workers]
    finally:
        for p in [master, *workers]:
            if p.poll() is None:
                p.kill()
    assert master.returncode == 0 and "Traceback" not in err, stdout + err
    summary = json.loads((master_out / "summary.json").read_text())
    assert summary["requests"] > 0 and summary["failures"] == 0 and not summary["aborted"]
    assert len(_rows(master_out / "latencies.csv")) == summary["requests"]
    # the server's own count of the run's ensemble requests: no worker's requests were lost on the way (a worker
    # lost would be about half of them; one request per user may be in flight at the stop, answered, not recorded)
    assert abs(summary["triton"][MODEL]["requests"] - summary["requests"]) <= 2
    total = next(r for r in _rows(master_out / "locust_stats.csv") if r["Name"] == "Aggregated")
    assert 0 < int(total["Request Count"]) <= summary["requests"]
    # each worker leaves its own finished latencies.csv (no <pid> part); together they are the master's rows
    for w, (_, werr) in zip(workers, worker_logs):
        assert w.returncode == 0, werr
    per_worker = [_rows(w / "latencies.csv") for w in worker_outs]
    assert all(per_worker) and sum(map(len, per_worker)) == summary["requests"]
    assert not [p for w in [master_out, *worker_outs] for p in w.glob("latencies.csv.*")]


class _Balancer:
    """A round-robin HTTP load balancer over the real metrics endpoints of two servers (what a Kubernetes
    Service over two replicas does): the first GET goes to the first server, the next to the second, ..."""

    def __init__(self, backends: list[str]):
        turn = iter(range(1 << 30))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # http.server's name
                backend = backends[next(turn) % len(backends)]
                with urllib.request.urlopen(backend, timeout=10) as r:
                    body = r.read()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _a_ahead_of_b(a, b, images: Path) -> None:
    """Server a has answered more requests than b (b gets no load in the tests that use this)."""
    def answered(server) -> float:
        return scrape(server.metrics_url).get(MODEL, {}).get("nv_inference_request_success", 0.0)

    blob = next(images.glob("*.jpg")).read_bytes()
    with connect(a.grpc_url, MODEL) as client:
        while answered(a) <= answered(b):
            client.infer(blob)


def test_metrics_through_a_load_balancer_are_refused_not_reported_negative(two_servers, images, tmp_path):
    a, b = two_servers
    _a_ahead_of_b(a, b, images)
    lb = _Balancer([a.metrics_url, b.metrics_url])  # scrape before the run: a; after it: b
    try:
        out = tmp_path / "o"
        run = _cli("loadtest", "--model", MODEL, "--url", a.grpc_url, "--users", "1", "--spawn-rate", "1",
                   "--duration", "2", "--images", str(images), "--out", str(out), "--metrics-url", lb.url)
        stdout, err = run.communicate(timeout=120)
    finally:
        lb.close()
    assert run.returncode == 0, stdout + err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] > 0
    assert summary["triton"] == {}, summary["triton"]  # was: requests = -N, batch sizes and ms from garbage
    assert "went backwards" in summary["triton_skipped"] and "load-balanced" in summary["triton_skipped"]
    assert "warning:" in err and "went backwards" in err and "Traceback" not in err, err
    assert "no Triton breakdown" in stdout


def test_capacity_refuses_a_levels_metrics_that_went_backwards(two_servers, images, tmp_path):
    a, b = two_servers
    _a_ahead_of_b(a, b, images)
    lb = _Balancer([b.metrics_url, a.metrics_url])  # the check before the search: b; the level's: a, then b
    try:
        out = tmp_path / "cap"
        run = _cli("capacity", "--model", MODEL, "--url", a.grpc_url, "--source", str(images), "--fps", "2",
                   "--cameras", "1", "--hold", "2", "--metrics-url", lb.url, "--out", str(out))
        stdout, err = run.communicate(timeout=120)
    finally:
        lb.close()
    assert run.returncode in (0, 1) and "Traceback" not in err, stdout + err  # 1: the level missed (a slow CI)
    level = json.loads((out / "capacity.json").read_text())["levels"][0]
    assert level["sent"] > 0 and level["triton"] == {}, level["triton"]  # was: negative requests and times
    assert "warning: Triton's counters" in err and "went backwards" in err, err


def test_server_killed_under_workers_stops_the_run_as_partial(small_repository, start_server, images, tmp_path):
    proc, info = start_server(small_repository, tmp_path / "server.log")
    try:
        out = tmp_path / "lt"
        run = _cli("loadtest", "--model", MODEL, "--url", info.grpc_url, "--users", "2", "--spawn-rate", "2",
                   "--workers", "2", "--duration", "300", "--images", str(images), "--out", str(out),
                   "--metrics-url", "")  # not the metrics: an unreadable endpoint after the run would abort too
        with connect(info.grpc_url, MODEL) as client:  # 1 probe request before the load, then 5 of the load
            deadline = time.monotonic() + 120
            while int(client.statistics().get("inference_count", 0)) < 6:
                assert time.monotonic() < deadline and run.poll() is None, "hang guard: no load-test requests"
                time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # as a crash or an OOM kill would
        proc.wait(timeout=30)
        stdout, err = run.communicate(timeout=150)  # hang guard (the run was asked for 300 s)
    finally:
        if run.poll() is None:
            run.kill()
        _stop(proc)
    assert run.returncode == 2, stdout + err  # as without --workers: the run is partial
    assert "stopped early" in err and "unavailable" in err and "Traceback" not in err, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["aborted"].startswith(f"the server at {info.grpc_url} is unavailable"), summary["aborted"]
    assert summary["requests"] - summary["failures"] >= 5 and summary["failures"] >= 1
    assert len(_rows(out / "latencies.csv")) == summary["requests"]
    assert "STOPPED EARLY" in stdout


def _helm() -> Path:
    if os.environ.get("TDET_HELM"):
        return Path(os.environ["TDET_HELM"])
    import k8s_tools  # tests/ is on the path, as for test_deploy.py

    try:
        return k8s_tools.helm()
    except Exception as why:  # offline: no helm to install
        found = shutil.which("helm")
        if not found:
            pytest.skip(f"no helm: {why}")
        return Path(found)


def test_the_charts_locust_runs_once_without_load_balanced_metrics(tmp_path):
    res = subprocess.run([str(_helm()), "template", "tdet", str(CHART), "--namespace", "tdet", "-f",
                          str(CHART / "values-autoscaling.yaml")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    docs = [d for d in yaml.safe_load_all(res.stdout) if d]
    values = yaml.safe_load((CHART / "values-autoscaling.yaml").read_text())["loadtest"]
    locust = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in docs
              if d["metadata"].get("labels", {}).get("app.kubernetes.io/component", "").startswith("locust-")}
    assert set(locust) == {"locust-master", "locust-worker"}
    for job in locust.values():  # a Deployment restarts a finished run: the test loops
        assert job["kind"] == "Job" and job["spec"]["backoffLimit"] == 0, job["kind"]
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert locust["locust-worker"]["spec"]["parallelism"] == locust["locust-worker"]["spec"]["completions"] \
        == values["workers"]
    args = locust["locust-master"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--workers={values['workers']}" in args and "--remote-workers" in args
    # the Service balances over the replicas: its metrics would go backwards between two scrapes
    assert [a for a in args if a.startswith("--metrics-url")] == ["--metrics-url="]
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-locust-master"))
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "locust-master"
