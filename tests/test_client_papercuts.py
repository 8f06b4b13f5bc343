"""A newcomer's first hour with the client (issue 16): commands find the one detached server without --url,
an unknown model's error names the served ones, class lists print whole when they are whole, classes="3,14"
splits as the CLI's --classes does, and the README's Python example does what its comments say."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from matching import assert_same_detections
from tdet.client.errors import ModelNotFoundError, UserError
from tdet.client.triton import connect, known_classes, metrics_url, server_url
from tdet.ensembles.server import ServerInfo, write_record

README = Path(__file__).parents[1] / "README.md"


def _record(served, http_port: int | None = None) -> ServerInfo:
    """A `tdet serve --detach` record of the session server (its real pid and ports; http_port to tell two apart)."""
    port = lambda url: int(url.rsplit(":", 1)[1])  # noqa: E731
    info = ServerInfo(pid=served.pid, http_port=http_port or port(served.http_url), grpc_port=port(served.grpc_url),
                      metrics_port=port(served.metrics_url.removesuffix("/metrics")), repository=str(served.repository),
                      log=str(served.log))
    write_record(info)
    return info


def _same(got, want) -> None:
    assert_same_detections((got.boxes, got.scores, got.category_ids), (want.boxes, want.scores, want.category_ids),
                           scale=1280)


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"url": None, "protocol": "grpc", "metrics_url": None, **kw})


def _tdet(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdet.client.cli", *args], capture_output=True, text=True,
                          timeout=240, env=env)


def test_commands_find_the_one_detached_server(served, images, tmp_path, monkeypatch):
    monkeypatch.delenv("TDET_URL", raising=False)
    monkeypatch.delenv("TDET_METRICS_URL", raising=False)
    monkeypatch.setenv("TDET_CACHE", str(tmp_path / "cache"))
    assert server_url(_args()) == "127.0.0.1:8001" and metrics_url(_args()) is None  # no record: the defaults
    _record(served)
    assert server_url(_args()) == served.grpc_url and server_url(_args(protocol="http")) == served.http_url
    assert metrics_url(_args()) == served.metrics_url
    assert server_url(_args(url="10.0.0.1:9001")) == "10.0.0.1:9001" and metrics_url(_args(url="h:1")) is None
    monkeypatch.setenv("TDET_URL", "10.0.0.2:9001")
    monkeypatch.setenv("TDET_METRICS_URL", "http://10.0.0.2:9002/metrics")
    assert server_url(_args()) == "10.0.0.2:9001" and metrics_url(_args()) == "http://10.0.0.2:9002/metrics"
    monkeypatch.delenv("TDET_URL")
    monkeypatch.delenv("TDET_METRICS_URL")

    (tmp_path / "street.jpg").write_bytes(images["wide.jpg"])
    env = {**os.environ, "TDET_CACHE": str(tmp_path / "cache")}
    for protocol in ("grpc", "http"):  # no --url: the record's port for the protocol
        res = _tdet("infer", str(tmp_path / "street.jpg"), "--model", "damo_yolo_t", "--protocol", protocol,
                    "--out", str(tmp_path / protocol), env=env)
        assert res.returncode == 0, res.stderr


def test_several_detached_servers_and_none_chosen_is_a_clear_error(served, images, tmp_path, monkeypatch):
    monkeypatch.delenv("TDET_URL", raising=False)
    monkeypatch.setenv("TDET_CACHE", str(tmp_path / "cache"))
    first = _record(served)
    second = _record(served, http_port=first.http_port + 1)
    with pytest.raises(UserError, match="2 detached servers are running") as err:
        server_url(_args())
    assert first.http_url in str(err.value) and second.http_url in str(err.value) and "--url" in str(err.value)
    (tmp_path / "street.jpg").write_bytes(images["wide.jpg"])
    env = {**os.environ, "TDET_CACHE": str(tmp_path / "cache")}
    res = _tdet("infer", str(tmp_path / "street.jpg"), "--model", "damo_yolo_t", "--out", str(tmp_path / "o"), env=env)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "2 detached servers are running" in lines[0], res.stderr
    res = _tdet("infer", str(tmp_path / "street.jpg"), "--model", "damo_yolo_t", "--out", str(tmp_path / "o"),
                env={**env, "TDET_URL": served.grpc_url})  # chosen: works
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_model_that_is_not_served_lists_the_served_ones(served, protocol):
    url = served.grpc_url if protocol == "grpc" else served.http_url
    with pytest.raises(ModelNotFoundError, match="'damo_yolo_x'") as err:
        connect(url, "damo_yolo_x", protocol, retries=0)
    listed = str(err.value).split("it serves: ", 1)[1].split(", ")
    assert {"damo_yolo_t", "rtdetrv2_s"} <= set(listed)
    assert not [n for n in listed if n.endswith(("_preprocess", "_engine", "_postprocess"))]


def test_class_lists_end_in_dots_only_when_cut(served):
    assert known_classes({3: "coin", 9: "kite", 14: "traffic cone"}) == "3=coin, 9=kite, 14=traffic cone"
    many = {i: f"c{i}" for i in range(20)}
    assert known_classes(many).endswith("11=c11, ... (20 classes)")
    with connect(served.grpc_url, "damo_yolo_t") as det:
        cut = r"no class\(es\) \['unicorn'\]; it knows 1=person, .*, \.\.\. \(80 classes\)$"
        with pytest.raises(UserError, match=cut):
            det.category_ids("unicorn")


def test_classes_as_a_string_splits_as_the_cli_does(served, images):
    with connect(served.grpc_url, "damo_yolo_t", conf=0.05) as det:
        assert det.category_ids("1, 3") == [1, 3] == det.category_ids("person,car") == det.category_ids([1, "car"])
        assert det.category_ids(3) == [3]
        as_text = det.infer(images["wide.jpg"], classes="1,3")
        as_list = det.infer(images["wide.jpg"], classes=[1, 3])
    _same(as_text, as_list)
    assert set(as_text.category_ids.tolist()) <= {1, 3}


def test_the_readme_python_example_returns_what_its_comments_say(served, images, tmp_path, monkeypatch, capsys):
    """The README's block, run unchanged but for the address, in a folder holding the image it names; its
    results checked against what its comments promise: one threshold (0.25) for every call, cars/trucks only,
    `strong` the subset above 0.4, the batch 20 images each as the single call found."""
    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index("### Python client"):], re.S).group(1)
    (tmp_path / "street.jpg").write_bytes(images["wide.jpg"])
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code.replace("127.0.0.1:8001", served.grpc_url), "README.md", "exec"), ns)
    dets, cars, strong, batch = ns["dets"], ns["cars"], ns["strong"], ns["batch"]
    assert len(dets) and (dets.scores > 0.25).all() and (cars.scores > 0.25).all()
    assert set(cars.class_names) <= {"car", "truck"}
    assert len(strong) == int((dets.scores >= 0.4).sum()) and (strong.scores >= 0.4).all()
    assert len(batch) == 20
    for row in batch:  # the same image 20 times: the same detections each time
        _same(row, batch[0])
    out = capsys.readouterr().out
    assert f"{len(dets)} detections, {len(strong)} above 0.4, {len(cars)} cars/trucks; 20 images" in out
