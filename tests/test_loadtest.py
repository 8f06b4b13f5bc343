"""`tdet loadtest`: real bounded Locust runs on 127.0.0.1 over gRPC and HTTP, with reports."""

import csv
import json
import subprocess
import sys

import pytest

from tdet.client.loadtest.metrics import scrape
from tdet.client.loadtest.runner import run_once
from tdet.client.synth import synthesize


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("lt")
    synthesize(root, num=4, seed=5, size=(640, 480))
    return root / "images"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_ten_second_loadtest_completes_with_reports(served, images, tmp_path, protocol):
    url = served.grpc_url if protocol == "grpc" else served.http_url
    out = tmp_path / protocol
    res = subprocess.run([sys.executable, "-m", "tdet.client.cli", "loadtest", "--model", "damo_yolo_t", "--url", url,
                          "--protocol", protocol, "--users", "2", "--spawn-rate", "2", "--duration", "10",
                          "--images", str(images), "--out", str(out), "--metrics-url", served.metrics_url],
                         capture_output=True, text=True, timeout=150)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] > 0 and summary["failures"] == 0
    assert summary["latency_ms"]["p50"] > 0 and summary["latency_ms"]["max"] >= summary["latency_ms"]["p99"]
    with open(out / "latencies.csv") as f:
        assert sum(1 for _ in csv.DictReader(f)) == summary["requests"]
    with open(out / "locust_stats.csv") as f:  # Locust's own count agrees (written after the users stopped)
        total = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    assert int(total["Request Count"]) == summary["requests"] and int(total["Failure Count"]) == 0
    engine = summary["triton"]["damo_yolo_t_engine"]
    assert engine["requests"] >= summary["requests"] and engine["avg_batch_size"] >= 1
    page = (out / "report.html").read_text()
    assert page.count("<table>") >= 3 and "damo_yolo_t_engine" in page and "data:image/png;base64," in page
    assert f"<td>{summary['requests']}</td>" in page and f"{summary['latency_ms']['p95']:.1f}" in page
    assert (out / "report.png").stat().st_size > 0


def test_the_breakdown_is_the_ensembles_steps_not_models_with_its_prefix(served, exported, images, tmp_path):
    # another model named damo_yolo_t_<x> on the server, loaded, used and unloaded: its counters read as zeros
    # afterwards, and a breakdown by name prefix took them for counters of this run that went backwards
    import tritonclient.grpc as grpcclient

    from tdet.client.triton import connect
    from tdet.ensembles.builder import build_repository

    name = "damo_yolo_t_twin"
    build_repository([exported["damo-yolo-t"]], served.repository, name=name)
    admin = grpcclient.InferenceServerClient(served.grpc_url)
    admin.load_model(name)
    try:
        with connect(served.grpc_url, name) as client:
            client.infer(next(images.glob("*.jpg")).read_bytes())
        s = run_once("damo_yolo_t", served.grpc_url, users=1, spawn_rate=1, duration_s=3, images=images,
                     out=tmp_path / "o", metrics_url=served.metrics_url)
    finally:
        admin.unload_model(name, unload_dependents=True)
    assert not s.triton_skipped, s.triton_skipped
    assert list(s.triton) == ["damo_yolo_t", "damo_yolo_t_preprocess", "damo_yolo_t_engine",
                              "damo_yolo_t_postprocess"]  # what one request runs, in order
    assert s.triton["damo_yolo_t_engine"]["requests"] >= s.requests


def test_composing_models_follow_nested_ensembles_once():
    from tdet.client.loadtest.metrics import composing_models

    configs = {"cam": {"ensemble_scheduling": {"step": [{"model_name": "m"}, {"model_name": "tracker"}]}},
               "m": {"ensemble_scheduling": {"step": [{"model_name": "m_pre"}, {"model_name": "m_engine"},
                                                      {"model_name": "m_pre"}]}},
               "m_pre": {}, "m_engine": {}, "tracker": {"sequence_batching": {}}}
    assert composing_models("cam", configs.__getitem__) == ["cam", "m", "tracker", "m_pre", "m_engine"]
    assert composing_models("m_engine", configs.__getitem__) == ["m_engine"]


def test_failures_are_counted_not_hidden(served, images, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a_good.jpg").write_bytes(next(images.glob("*.jpg")).read_bytes())
    (mixed / "b_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    s = run_once("damo_yolo_t", served.grpc_url, users=1, spawn_rate=1, duration_s=2, images=mixed, out=tmp_path / "o",
                 metrics_url="")
    assert s.requests >= 2 and 0 < s.failures < s.requests  # the user alternates: good, broken, good, ...
    assert any("not a decodable image" in e or "corrupt" in e for e in s.errors)
    assert sum(s.errors.values()) == s.failures  # every failure is attributed to a message


def test_a_refused_first_image_stops_the_run_before_the_load(served, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"not an image at all")
    res = subprocess.run([sys.executable, "-m", "tdet.client.cli", "loadtest", "--model", "damo_yolo_t", "--url",
                          served.grpc_url, "--duration", "30", "--images", str(bad), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"the server refuses the first image, {bad / 'broken.jpg'}" in res.stderr
    assert not (tmp_path / "o" / "latencies.csv").exists()  # no load was started


def test_metrics_default_to_the_servers_host_on_port_8002():
    from tdet.client.loadtest.runner import _metrics_before, default_metrics_url

    assert default_metrics_url("10.0.0.7:8001") == "http://10.0.0.7:8002/metrics"
    assert default_metrics_url("grpc://gpu-box:9001") == "http://gpu-box:8002/metrics"
    assert _metrics_before("", "127.0.0.1:8001", "m") == ("", {})
    with pytest.raises(ConnectionError):  # an explicit URL must answer
        _metrics_before("http://127.0.0.1:9/metrics", "127.0.0.1:8001", "m")


def test_metrics_default_to_the_detached_server_that_url_names(served, tmp_path, monkeypatch):
    """A detached `tdet serve` on ports 0 has its metrics on a random port: --url naming its gRPC or HTTP port
    finds them from its record; any other server keeps the port-8002 default (None here)."""
    import argparse

    from tdet.client.server_args import metrics_url
    from tdet.ensembles.server import ServerInfo, write_record

    monkeypatch.setenv("TDET_CACHE", str(tmp_path))
    monkeypatch.delenv("TDET_METRICS_URL", raising=False)
    port = {name: int(u.rpartition(":")[2].split("/")[0])
            for name, u in (("grpc", served.grpc_url), ("http", served.http_url), ("metrics", served.metrics_url))}
    write_record(ServerInfo(served.pid, port["http"], port["grpc"], port["metrics"], str(served.repository),
                            str(served.log)))
    for url in (served.grpc_url, f"localhost:{port['http']}", f"grpc://{served.grpc_url}"):
        assert metrics_url(argparse.Namespace(metrics_url=None, url=url)) == served.metrics_url, url
    assert metrics_url(argparse.Namespace(metrics_url=None, url="127.0.0.1:9")) is None
    assert metrics_url(argparse.Namespace(metrics_url=None, url=f"{served.grpc_url},127.0.0.1:9")) is None
    assert metrics_url(argparse.Namespace(metrics_url="", url=served.grpc_url)) == ""


def test_bad_loadtest_arguments_are_refused_before_any_load(tmp_path, capsys):
    from tdet.client.cli import main

    base = ["loadtest", "--model", "damo_yolo_t", "--url", "127.0.0.1:9", "--images", str(tmp_path),
            "--out", str(tmp_path / "o")]
    for extra, said in ((["--workers", "-1"], "--workers must be 0"),
                        (["--remote-workers"], "--remote-workers needs --workers N"),
                        (["--sweep", "2,4,2"], "--sweep lists 2 more than once"),
                        (["--master-host", "10.0.0.1", "--workers", "2"], "--workers belong on the master")):
        assert main(base + extra) == 2, extra
        assert said in capsys.readouterr().err, extra
    assert not (tmp_path / "o").exists()


def test_bad_images_argument_is_one_clear_error(served, images, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = subprocess.run([sys.executable, "-m", "tdet.client.cli", "loadtest", "--model", "damo_yolo_t", "--url",
                          served.grpc_url, "--duration", "1", "--images", str(empty), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "no images" in res.stderr and "Traceback" not in res.stderr
    one = next(images.glob("*.jpg"))  # a single image file is a valid --images
    s = run_once("damo_yolo_t", served.grpc_url, users=1, spawn_rate=1, duration_s=2, images=one, out=tmp_path / "f")
    assert s.requests > 0 and s.failures == 0


def test_only_loopback_targets_when_asked(images, tmp_path):
    with pytest.raises(ValueError, match="only loopback"):
        run_once("damo_yolo_t", "10.1.2.3:8001", duration_s=1, images=images, out=tmp_path, local_only=True)


def test_metrics_scrape_parses_triton_counters(served):
    m = scrape(served.metrics_url)
    assert "damo_yolo_t_engine" in m and "nv_inference_exec_count" in m["damo_yolo_t_engine"]


def test_two_workers_sum_their_requests_to_the_servers_count(served, images, tmp_path):
    out = tmp_path / "w2"
    res = subprocess.run([sys.executable, "-m", "tdet.client.cli", "loadtest", "--model", "damo_yolo_t", "--url",
                          served.grpc_url, "--users", "4", "--spawn-rate", "4", "--duration", "8", "--workers", "2",
                          "--images", str(images), "--out", str(out), "--metrics-url", served.metrics_url],
                         capture_output=True, text=True, timeout=200)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "latencies.csv") as f:
        assert sum(1 for _ in csv.DictReader(f)) == summary["requests"] > 0
    with open(out / "locust_stats.csv") as f:  # the master's stats: it quits before the workers' last reports
        total = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    assert 0 < int(total["Request Count"]) <= summary["requests"]
    # the server's own count of ensemble requests during the run
    assert summary["triton"]["damo_yolo_t"]["requests"] == summary["requests"]
    assert not list(out.glob("latencies.csv.*")) and (out / "locust_workers.log").is_file()
