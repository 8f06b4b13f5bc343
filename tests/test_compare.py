"""`tdet compare`: the table and chart, measured through the real server."""

import json

from tdet.client.compare import compare
from tdet.client.synth import synthesize


def test_compare_writes_table_and_chart(served, tmp_path):
    ann = synthesize(tmp_path / "data", num=3, seed=2, size=(480, 360))
    rows = compare(["damo_yolo_t", "rtdetrv2_s"], served.grpc_url, ann, tmp_path / "data/images",
                   out=tmp_path / "cmp", single=3, seconds=2, concurrency=2)
    assert [r.variant for r in rows] == ["damo-yolo-t", "rtdetrv2-s"]
    table = (tmp_path / "cmp/compare.md").read_text()
    assert table.startswith("| Model | mAP 50:95 |") and "| damo-yolo-t |" in table and "| rtdetrv2-s |" in table
    data = json.loads((tmp_path / "cmp/compare.json").read_text())
    assert data[0]["params_m"] == 8.48 and abs(data[1]["gflops"] - 60.06) < 0.1
    assert all(r["latency_p50_ms"] > 0 and r["throughput_img_s"] > 0 for r in data)
    assert (tmp_path / "cmp/compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_refuses_a_model_listed_twice_before_any_request(tmp_path, capsys):
    from tdet.client.cli import main

    # no server runs on this port: the list is checked first, so the error is the list's, not the connection's
    args = ["compare", "--coco", str(tmp_path / "a.json"), "--images", str(tmp_path), "--url", "127.0.0.1:9"]
    assert main([*args, "--models", "damo_yolo_t, rtdetrv2_s,damo_yolo_t"]) == 2
    assert "--models lists damo_yolo_t more than once" in capsys.readouterr().err
    assert main([*args, "--models", " , "]) == 2
    assert "--models needs a served model name" in capsys.readouterr().err
    assert not (tmp_path / "compare.md").exists()
