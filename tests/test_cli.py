"""The `tdet` front: every subcommand has --help showing every option's help and default, the README's CLI
reference matches the parser, --version, and user errors exit 2 with one line naming the command."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tdet.client.cli import build_parser
from tdet.client.cli_reference import BEGIN, END, _subparsers, reference

README = Path(__file__).parents[1] / "README.md"


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def _leaves() -> list[str]:
    return [path.removeprefix("tdet ") for path, _ in _subparsers(build_parser(), "tdet")]


@pytest.mark.parametrize("command", _leaves())
def test_every_option_has_help_and_shows_its_default(command):
    parser = dict(_subparsers(build_parser(), "tdet"))[f"tdet {command}"]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = formatter._expand_help(action)
        assert action.help and text.strip(), f"tdet {command} {action.option_strings or action.dest}: no help text"
        meaningful = action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
        if meaningful:
            assert "default" in text, f"tdet {command} {action.option_strings}: the default is not shown: {text!r}"


def test_readme_cli_reference_matches_the_parser():
    text = README.read_text()
    block = text[text.index(BEGIN): text.index(END) + len(END)] + "\n"
    assert block == reference(build_parser()), \
        "README's CLI reference is stale: run `python -m tdet.client.cli_reference --write`"


def test_version_and_help_defaults_on_the_command_line():
    out = subprocess.run([sys.executable, "-m", "tdet.client.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("tdet ")
    out = subprocess.run([sys.executable, "-m", "tdet.client.cli", "infer", "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "200"})
    assert "127.0.0.1:8001 for gRPC" in out.stdout and "(default: 0.25)" in out.stdout
    assert "(default: build/infer/MODEL)" in out.stdout and "(default: 60.0)" in out.stdout


def test_errors_name_the_whole_command(tmp_path, capsys):
    from tdet.client.cli import main

    (tmp_path / "file").write_text("")
    assert main(["data", "synth", "--out", str(tmp_path / "file" / "sub"), "--num", "1"]) == 2
    assert capsys.readouterr().err.startswith("tdet data synth: error: ")
    assert main(["repo", "build", "--onnx", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.startswith("tdet repo build: error: ONNX file not found")


def test_core_subcommands_registered():
    assert {"info", "export", "train", "repo", "serve", "stop", "infer", "data", "eval", "loadtest",
            "compare"} <= set(_subcommands())


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
    assert "RANDOM" not in out.stdout  # arguments are checked before the random-init warning
    assert not (tmp_path / "x.onnx").exists()


def test_export_names_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    from tdet.client.cli import main

    (tmp_path / "notes.pth").write_text("hello, this is text")
    out = str(tmp_path / "x.onnx")
    assert main(["export", "damo-yolo-t", "--weights", str(tmp_path / "notes.pth"), "--out", out]) == 2
    out = capsys.readouterr()
    assert "is not a PyTorch checkpoint" in out.err and "KeyError" not in out.err
    assert "RANDOM" not in out.out and not (tmp_path / "x.onnx").exists()


def test_info_json_lists_variants_with_sizes():
    import json

    out = subprocess.run([sys.executable, "-m", "tdet.client.cli", "info", "--json", "damo-yolo-t", "rtdetrv2-s"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["damo-yolo-t"]["family"] == "damo-yolo" and rows["rtdetrv2-s"]["family"] == "rtdetrv2"
    assert rows["damo-yolo-t"]["input_size"] == [640, 640]
    # the published tables (DAMO-YOLO README: 8.5 M; RT-DETRv2 README: 60 GFLOPs)
    assert abs(rows["damo-yolo-t"]["params_m"] - 8.5) < 0.05 and abs(rows["rtdetrv2-s"]["gflops"] - 60) < 0.6
    assert rows["rtdetrv2-s"]["weights_url"].startswith("https://github.com/lyuwenyu/storage/releases/")


def test_the_shipped_info_table_is_what_the_code_measures(no_grad):
    """tdet info reads training/variants.json (no torch, instant); it must list exactly the registered
    variants with their official weights, and two re-measured variants must give its figures."""
    from tdet.training.info import all_info, shipped
    from tdet.training.registry import family_of, variant_names

    table = {r.name: r for r in shipped()}
    assert list(table) == variant_names()
    for name, row in table.items():
        w = family_of(name).WEIGHTS.get(name)
        assert (row.weights_url, row.published_map) == ((w.url, w.map_coco) if w else (None, None)), name
        assert row.weights_file == (str(Path(row.weights_file).parent / w.filename) if w else None)
    for measured in all_info(["damo-yolo-t", "rtdetrv2-s"], measured=True):
        assert measured == table[measured.name], "stale variants.json: python -m tdet.training.info --write"


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


def test_export_check_gives_a_verdict_and_fails_beyond_the_tolerance(tmp_path, monkeypatch, capsys):
    """--check passes within 1e-3 of each output's magnitude (measured ~1e-6); with a zero tolerance the same
    export must say FAILED and exit 1."""
    pytest.importorskip("torch")
    import tdet.training.export as export
    from tdet.client.cli import main

    assert export.CheckResult(1e-4, 1e-3).ok and not export.CheckResult(2e-3, 1e-3).ok
    monkeypatch.setattr(export, "CHECK_RTOL", 0.0)
    assert main(["export", "damo-yolo-t", "--out", str(tmp_path / "x.onnx"), "--check"]) == 1
    out = capsys.readouterr()
    assert "check FAILED" in out.err and "max abs diff" in out.out and (tmp_path / "x.onnx").is_file()
    assert (tmp_path / "x.onnx").stat().st_mode & 0o777 == 0o644  # readable by the serving user, not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["x.onnx"]  # no .part left behind


@pytest.mark.parametrize("area", ["tdet.training.cli", "tdet.ensembles.cli", "tdet.client.evaluation_cli"])
def test_a_broken_area_fails_loudly_instead_of_vanishing(area):
    """A packaging bug in one area (its cli module cannot be imported) stops `tdet` with the import error;
    the area's commands never disappear silently from the parser."""
    blocked = f'import sys; sys.modules["{area}"] = None; from tdet.client.cli import main; sys.exit(main(["--help"]))'
    out = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert area in out.stderr and "Error" in out.stderr.splitlines()[-1]


@pytest.mark.parametrize("argv, flag", [
    (["infer", "--model", "m", "x.jpg", "--concurrency", "0"], "--concurrency"),
    (["eval", "--model", "m", "--concurrency", "-1"], "--concurrency"),
    (["compare", "--models", "m", "--coco", "a.json", "--images", "d", "--concurrency", "0"], "--concurrency"),
    (["compare", "--models", "m", "--coco", "a.json", "--images", "d", "--seconds", "0"], "--seconds"),
    (["compare", "--models", "m", "--coco", "a.json", "--images", "d", "--seconds", "nan"], "--seconds"),
])
def test_counts_and_durations_must_be_positive(argv, flag, capsys):
    """--concurrency 0 ran with one request in flight anyway (infer, eval) or failed inside the thread pool
    (compare: an internal error); --seconds 0 measured a throughput over no time."""
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    assert stop.value.code == 2
    assert f"argument {flag}: must be > 0" in capsys.readouterr().err


@pytest.mark.parametrize("argv, said", [
    (["serve", "--http-port", "70000"], "argument --http-port: a port is a number from 0 to 65535, got '70000'"),
    (["serve", "--metrics-port", "-1"], "argument --metrics-port: a port is a number from 0 to 65535"),
    (["stop", "--http-port", "99999"], "argument --http-port: a port is a number from 0 to 65535"),
    (["serve", "--timeout", "0"], "argument --timeout: must be > 0, got 0"),
])
def test_serve_ports_and_timeout_are_checked_by_the_parser(argv, said, capsys):
    """Out-of-range ports were an OverflowError traceback from the socket probe; --timeout 0 waited 0 s and
    printed an empty log."""
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    assert stop.value.code == 2 and said in capsys.readouterr().err


def test_repo_build_refuses_a_tensorrt_precision_for_an_onnxruntime_engine(tmp_path, capsys):
    # --precision fp32 without --engine tensorrt was silently ignored (the ORT engine runs the ONNX as exported)
    from tdet.client.cli import main

    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"not read: refused first")
    assert main(["repo", "build", "--onnx", str(onnx_file), "--out", str(tmp_path / "repo"), "--precision",
                 "fp32"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--precision fp32 is the TensorRT plan's (--engine tensorrt)" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "repo").exists()
