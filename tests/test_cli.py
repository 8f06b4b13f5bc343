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
