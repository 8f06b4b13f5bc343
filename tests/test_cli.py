"""The `tdet` front: every subcommand has --help, and user errors exit 2 with one line, no traceback."""

import subprocess
import sys

import pytest

from tdet.client.cli import build_parser


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_core_subcommands_registered():
    assert {"info", "export"} <= set(_subcommands())


@pytest.mark.parametrize("cmd", _subcommands())
def test_every_subcommand_has_help(cmd):
    out = subprocess.run([sys.executable, "-m", "tdet.client.cli", cmd, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "usage: tdet" in out.stdout


def test_unknown_variant_is_a_clean_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tdet.client.cli", "export", "yolo-nope", "--out",
                          str(tmp_path / "x.onnx")], capture_output=True, text=True)
    assert out.returncode == 2
    assert "unknown variant 'yolo-nope'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_info_json_lists_variants_with_sizes():
    import json

    out = subprocess.run([sys.executable, "-m", "tdet.client.cli", "info", "--json", "damo-yolo-t", "rtdetrv2-s"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["damo-yolo-t"]["family"] == "damo-yolo" and rows["rtdetrv2-s"]["family"] == "rtdetrv2"
    assert rows["damo-yolo-t"]["input_size"] == [640, 640]
    assert abs(rows["damo-yolo-t"]["params_m"] - 8.48) < 0.01 and abs(rows["rtdetrv2-s"]["gflops"] - 60.1) < 0.6
    assert rows["rtdetrv2-s"]["weights_url"].startswith("https://github.com/lyuwenyu/storage/releases/")


def test_info_lists_every_registered_variant():
    from tdet.training.registry import variant_names

    names = variant_names()
    for want in ("damo-yolo-t", "damo-yolo-s", "damo-yolo-m", "damo-yolo-l", "rtdetrv2-s", "rtdetrv2-m34",
                 "rtdetrv2-m", "rtdetrv2-l", "rtdetrv2-x", "rtdetrv2-s-dsp", "rtdetrv2-l-dsp"):
        assert want in names


def test_internal_errors_show_the_traceback_user_errors_one_line(monkeypatch, capsys, tmp_path):
    """A bug (here: a command that raises KeyError) is shown with its traceback and exit 1; a user error is
    one line, exit 2, no traceback."""
    import tdet.client.evaluation_cli as evaluation_cli
    from tdet.client.cli import main

    monkeypatch.setattr(evaluation_cli, "cmd_synth", lambda args: {}["a bug"])
    assert main(["data", "synth", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'a bug'" in err and "internal error" in err
    assert main(["eval", "--model", "m", "--coco", "c.json", "--images", str(tmp_path), "--weights", "w.pth"]) == 2
    err = capsys.readouterr().err
    assert err == "tdet eval: error: --weights goes with --reference VARIANT\n"
    assert main(["infer", str(tmp_path / "missing.jpg"), "--model", "m", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().endswith("no such image or folder: " + str(tmp_path / "missing.jpg"))
