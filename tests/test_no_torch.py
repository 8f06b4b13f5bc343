"""The client and the Triton-side code must work where torch is not installed (`pip install .`)."""

import subprocess
import sys

CODE = r"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError, as on a client-only install
import importlib
for name in ("tdet.client.triton", "tdet.client.infer", "tdet.client.evaluation", "tdet.client.compare",
             "tdet.client.errors", "tdet.client.files", "tdet.ensembles.ort_session",
             "tdet.client.synth", "tdet.client.loadtest.runner", "tdet.client.pipeline", "tdet.client.postprocess",
             "tdet.ensembles.builder", "tdet.ensembles.server", "tdet.ensembles.cli", "tdet.training.cli",
             "tdet.client.options", "tdet.client.image_input", "tdet.client.cli_reference", "tdet.ensembles.options",
             "tdet.training.info"):
    importlib.import_module(name)
from tdet.client.cli import build_parser
sub = next(a for a in build_parser()._actions if a.dest == "command")
print(sorted(sub.choices))
"""


def test_client_and_server_side_import_without_torch():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for cmd in ("infer", "eval", "loadtest", "compare", "serve", "repo", "data"):
        assert f"'{cmd}'" in out.stdout


def test_info_answers_and_export_says_what_to_install_without_torch(tmp_path):
    """The client-only install: `tdet info` reads the shipped table; `tdet export` is one line, not a traceback."""
    import json

    blocked = 'import sys; sys.modules["torch"] = None; from tdet.client.cli import main; sys.exit(main(sys.argv[1:]))'
    out = subprocess.run([sys.executable, "-c", blocked, "info", "--json", "rtdetrv2-s"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["gflops"] > 0
    for args in (["export", "damo-yolo-t", "--out", str(tmp_path / "x.onnx")], ["info", "--measure"]):
        out = subprocess.run([sys.executable, "-c", blocked, *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert "pip install 'tdet[train]'" in out.stderr


def test_triton_python_models_import_no_torch():
    from pathlib import Path

    root = Path(__file__).parents[1] / "ensembles"
    for f in list(root.glob("*/model.py")) + list(root.glob("backends/*/model.py")):
        text = f.read_text()
        assert "import torch" not in text and "tdet.training" not in text, f


def test_client_code_never_imports_training():
    """client/ works without training/ (no torch): only the CLI front (client/cli.py) reaches into it."""
    import ast
    from pathlib import Path

    root = Path(__file__).parents[1] / "client"
    for f in root.rglob("*.py"):
        if f == root / "cli.py":
            continue
        package = ["tdet", "client", *f.relative_to(root).parent.parts]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):  # resolve relative imports against the file's package
                base = package[: len(package) - node.level + 1] if node.level else []
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                continue
            assert not any(n.startswith("tdet.training") for n in names), (f, names)
        assert "tdet.training" not in "".join(line for line in f.read_text().splitlines() if "import_module" in line), f
