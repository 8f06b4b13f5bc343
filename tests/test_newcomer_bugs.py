"""Issue 16 ("A newcomer's first hour"): a restart on ports left in TIME-WAIT, an HTTP client at the gRPC port
(and the reverse), `tdet compare` of two models of one variant, and `tdet export --check` of RT-DETRv2."""

from __future__ import annotations

import shutil
import socket
import time

import pytest

from tdet.client.errors import UserError
from tdet.client.ports import port_free
from tdet.ensembles.server import free_port, start, stop_process


def _time_wait_on(port: int) -> None:
    """Leave TIME-WAIT sockets on `port` the way metrics scrapes do: the server side closes first."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        for _ in range(3):
            client = socket.create_connection(("127.0.0.1", port))
            conn, _ = listener.accept()
            conn.close()  # active close on the listening port's side: its TIME-WAIT holds `port`
            time.sleep(0.05)
            client.close()
    time.sleep(0.1)
    with socket.socket() as plain:  # the state the old check refused: a bind without SO_REUSEADDR fails
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))


def test_port_check_time_wait_is_free_listener_is_not():
    port = free_port()
    _time_wait_on(port)
    assert port_free(port)
    with socket.socket() as live:
        live.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tritonserver binds
        live.bind(("127.0.0.1", port))
        live.listen()
        assert not port_free(port)


@pytest.mark.server
def test_serve_restarts_on_time_wait_ports_but_not_on_a_listener(repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(repository / "damo_yolo_t_preprocess", repo / "damo_yolo_t_preprocess")
    http, grpc, metrics = free_port(), free_port(), free_port()
    _time_wait_on(metrics)
    with socket.socket() as live:
        live.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        live.bind(("127.0.0.1", metrics))
        live.listen()
        with pytest.raises(UserError, match=f"port {metrics} \\(--metrics-port\\) is already in use"):
            start(repo, http_port=http, grpc_port=grpc, metrics_port=metrics, log=tmp_path / "a.log")
    _time_wait_on(metrics)
    proc, info = start(repo, http_port=http, grpc_port=grpc, metrics_port=metrics, log=tmp_path / "b.log",
                       timeout_s=240)
    try:
        assert info.metrics_port == metrics
    finally:
        stop_process(proc.pid)
        proc.wait(timeout=30)


# --- an HTTP client at the gRPC port, and the reverse -------------------------------------------------------

@pytest.mark.server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_at_the_other_protocols_port_says_so(served, protocol):
    from tdet.client.errors import WrongProtocolError
    from tdet.client.triton import connect

    url = served.grpc_url if protocol == "http" else served.http_url  # the mix-up
    other, name = ("grpc", "gRPC") if protocol == "http" else ("http", "HTTP")
    with pytest.raises(WrongProtocolError) as err:
        connect(url, "damo_yolo_t", protocol, retries=0, timeout_s=10)
    assert isinstance(err.value, UserError)
    msg = str(err.value)
    assert f"{protocol}://{url} did not answer" in msg and f"is it the {name} port?" in msg, msg
    assert f"--protocol {other}" in msg, msg


@pytest.mark.server
def test_cli_at_the_other_protocols_port_is_one_line_exit_2(served, images, tmp_path):
    import subprocess
    import sys

    img = tmp_path / "a.jpg"
    img.write_bytes(images["wide.jpg"])
    for protocol, url in (("http", served.grpc_url), ("grpc", served.http_url)):
        res = subprocess.run([sys.executable, "-m", "tdet.client.cli", "infer", str(img), "--model", "damo_yolo_t",
                              "--url", url, "--protocol", protocol, "--retries", "0", "--timeout", "10",
                              "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "did not answer" in lines[0] and url in lines[0], res.stderr
        assert "Traceback" not in res.stderr and "internal error" not in res.stderr


# --- tdet compare of two models of one variant --------------------------------------------------------------

@pytest.mark.server
def test_compare_labels_rows_and_points_by_served_model_name(served, exported, tmp_path):
    import json

    import tritonclient.grpc as grpcclient

    from tdet.client.compare import compare, markdown_table
    from tdet.client.synth import synthesize
    from tdet.ensembles.builder import build_repository

    build_repository([exported["damo-yolo-t"]], served.repository, name="mine_ft")  # the "fine-tuned" A of the A/B
    admin = grpcclient.InferenceServerClient(served.grpc_url)
    admin.load_model("mine_ft")
    try:
        ann = synthesize(tmp_path / "data", num=2, seed=3, size=(320, 240))
        rows = compare(["mine_ft", "damo_yolo_t"], served.grpc_url, ann, tmp_path / "data/images",
                       out=tmp_path / "cmp", single=2, seconds=1, concurrency=1)
    finally:
        admin.unload_model("mine_ft", unload_dependents=True)
    assert [(r.model, r.variant) for r in rows] == [("mine_ft", "damo-yolo-t"), ("damo_yolo_t", "damo-yolo-t")]
    table = (tmp_path / "cmp/compare.md").read_text().splitlines()
    assert table[0].startswith("| Model | mAP 50:95 |") and table[0].endswith("| Variant |")
    assert table[2].startswith("| mine_ft |") and table[3].startswith("| damo_yolo_t |")
    assert table[2].endswith("| damo-yolo-t |") and table[3].endswith("| damo-yolo-t |")
    assert markdown_table(rows).splitlines()[:4] == table[:4]
    data = json.loads((tmp_path / "cmp/compare.json").read_text())
    assert [d["model"] for d in data] == ["mine_ft", "damo_yolo_t"]


def test_compare_plot_points_are_named_by_model(tmp_path, monkeypatch):
    """The chart's point labels: the served names (two rows of one variant stay apart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tdet.client.compare import Row, plot

    rows = [Row("mine_ft", "damo-yolo-t", 0.31, 0.5, 12.0, 80.0, 8.48, 18.1, "onnxruntime"),
            Row("damo_yolo_t", "damo-yolo-t", 0.28, 0.47, 11.5, 82.0, 8.48, 18.1, "onnxruntime")]
    seen = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (seen.append([t.get_text() for t in fig.axes[0].texts]),
                                                   real_close(fig)))
    plot(rows, tmp_path / "c.png")
    assert seen == [["mine_ft", "damo_yolo_t"]]
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- tdet export rtdetrv2-s --check -------------------------------------------------------------------------

SMALL = (128, 128)


@pytest.fixture(scope="module")
def small_rtdetr(tmp_path_factory):
    """A 128x128 rtdetrv2-s checkpoint (tame random init, seed 0) in the `tdet train` layout, its export, and
    the PyTorch export module the check compares with."""
    torch = pytest.importorskip("torch")
    from tdet.training.export import export_onnx
    from tdet.training.registry import build_model, family_of

    root = tmp_path_factory.mktemp("rtdetr128")
    ckpt = root / "rtdetrv2-s-128.pth"
    sd = build_model("rtdetrv2-s", seed=0, input_hw=SMALL).state_dict()
    torch.save({"ema": {"module": sd}, "tdet": {"variant": "rtdetrv2-s", "input_hw": list(SMALL)}}, ckpt)
    res = export_onnx("rtdetrv2-s", root / "rtdetrv2-s.onnx", weights=ckpt, check=True)
    wrapper = family_of("rtdetrv2-s").export_module(build_model("rtdetrv2-s", weights=ckpt, deploy=True).eval())
    return res, wrapper.eval()


def _check(path, wrapper, seed):
    from tdet.client import specs
    from tdet.training.export import check_against_torch

    return check_against_torch(path, wrapper, specs.RTDETRV2, SMALL, specs.PREPROCESS[specs.RTDETRV2].scale,
                               seed=seed)


def test_export_check_passes_a_correct_rtdetr_export_every_time(small_rtdetr):
    res, wrapper = small_rtdetr
    assert res.check is not None and all(c.ok for c in res.check.values()), res.check
    for seed in range(20):
        diffs = _check(res.path, wrapper, seed)
        assert set(diffs) == {"logits", "boxes"} and all(c.ok for c in diffs.values()), (seed, diffs)


def test_export_check_pairs_queries_that_swap_places(small_rtdetr):
    """What float noise does to RT-DETRv2's top-k query selection: the same queries in another order."""
    import numpy as np
    import torch

    from tdet.client import specs
    from tdet.ensembles.ort_session import ort_session
    from tdet.training.export import check_input, compare_outputs

    res, wrapper = small_rtdetr
    x = check_input(2, SMALL, specs.PREPROCESS[specs.RTDETRV2].scale, seed=5)
    with torch.no_grad():
        ref = dict(zip(("logits", "boxes"), (t.numpy() for t in wrapper(x))))
    got = dict(zip(("logits", "boxes"), ort_session(str(res.path)).run(["logits", "boxes"],
                                                                        {specs.EXPORT_INPUT: x.numpy()})))
    q = ref["boxes"].shape[1]
    order = np.random.default_rng(0).permutation(q)
    swapped = {n: v[:, order] for n, v in got.items()}
    assert all(c.ok for c in compare_outputs(specs.RTDETRV2, swapped, ref).values())
    moved = {"logits": got["logits"], "boxes": got["boxes"] + 0.05}  # every box off by 5% of the image
    assert not compare_outputs(specs.RTDETRV2, moved, ref)["boxes"].ok


def test_export_check_still_fails_a_broken_export(small_rtdetr, tmp_path):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    res, wrapper = small_rtdetr
    graph = onnx.load(str(res.path))
    # the largest weight matrix scaled by 1.5: a graph that computes something else
    init = max((i for i in graph.graph.initializer if i.data_type == onnx.TensorProto.FLOAT),
               key=lambda i: int(np.prod(i.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(graph, str(broken))
    diffs = _check(broken, wrapper, seed=0)
    assert not all(c.ok for c in diffs.values()), diffs


@pytest.mark.parametrize("variant", ["damo-yolo-t", "rtdetrv2-s"])
def test_export_of_another_class_count_names_both_counts(variant, tmp_path):
    torch = pytest.importorskip("torch")
    from tdet.training.export import export_onnx
    from tdet.training.registry import build_model

    sd = build_model(variant, seed=0, num_classes=3).state_dict()
    ckpt = tmp_path / "three.pth"  # a bare layout: no `tdet train` metadata saying it has 3 classes
    torch.save({"model": sd} if variant.startswith("damo") else {"ema": {"module": sd}}, ckpt)
    with pytest.raises(UserError, match="has 3 classes but this .* expects 80"):
        export_onnx(variant, tmp_path / "x.onnx", weights=ckpt)
    assert not (tmp_path / "x.onnx").exists()
